"""A caption source (annotate/caption_source.py): captions an archive already has, keyed by
source video and time span, joined to the pipeline's packed samples — here the synthetic world's
films, whose ground-truth captions must come back exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from multishot.annotate.caption_source import CaptionSource, join_captions
from multishot.dataset import synthetic_world as w
from multishot.dataset.record import SampleRecord, Shot, latent_cut_frame, num_latent_frames


def _record(key: str, source: str, spans: list[tuple[int, int]], fps: float) -> SampleRecord:
    """A packed sample of the source frame ranges ``spans`` (as the pipeline records one)."""
    shots, start = [], 0
    for i, (a, b) in enumerate(spans):
        n = b - a
        shots.append(Shot(index=i, source_start_frame=a, source_end_frame=b, source_start_s=a / fps,
                          source_end_s=b / fps, start_frame=start, end_frame=start + n,
                          latent_start_frame=0 if start == 0 else latent_cut_frame(start),
                          brightness=80.0, ocr_text_ratio=0.0, aesthetic=None))
        start += n
    cuts = [s.start_frame for s in shots[1:]]
    return SampleRecord(key=key, source=source, source_id="fp-" + key, bucket="2s",
                        target_duration_s=2.0, fps=fps, width=64, height=64, num_frames=start,
                        num_latent_frames=num_latent_frames(start), duration_s=start / fps,
                        cut_frames=cuts, latent_cut_frames=[latent_cut_frame(c) for c in cuts],
                        shots=shots, aesthetic_status="skipped", samples_hash="test")


def test_world_captions_join_back_to_packed_samples(tmp_path):
    films = [w.sample_film(s, num_shots=3) for s in (1, 2)]
    path = tmp_path / "captions.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for f in films
                            for e in w.caption_source_entries(f, f"/archive/{f.name}.mp4")))
    source = CaptionSource.read(path)
    for film in films:
        spans = [(s.start_frame, s.end_frame) for s in film.shots]
        record = _record(film.name, f"/archive/{film.name}.mp4", spans, film.fps)
        joined, why = join_captions(record, source)
        assert why is None and joined.caption_status == "ok"
        assert joined.prompt() == film.prompt and joined.caption_model == "caption_source:captions.jsonl"
        # a sample packing only the last two shots, found by file name: captions follow the spans
        (a1, b1), (a2, b2) = spans[1:]
        tail = _record(film.name + "-tail", f"{film.name}.mp4", [(a1, b1), (a2, b2 - 3)], film.fps)
        joined, why = join_captions(tail, source)
        assert why is None and [s.caption for s in joined.shots] == [f"{x}." for x in film.scenes[1:]]
        assert "This scene contains 2 shots." in joined.global_caption


def test_uncovered_shots_and_bad_lines_are_reported(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"source": "v.mp4", "start_s": 0, "end_s": 1.0, "caption": "a"}) + "\n")
    record = _record("k", "/x/v.mp4", [(0, 16), (16, 33)], 16.0)
    joined, why = join_captions(record, CaptionSource.read(path))
    assert joined is record and "shot 1" in why and joined.caption_status == "pending"
    path.write_text('{"source": "v.mp4", "start_s": 2, "end_s": 1, "caption": "a"}\n')
    with pytest.raises(ValueError, match="c.jsonl:1"):
        CaptionSource.read(path)


def test_the_pipelines_caption_stage_joins_the_configs_source(tmp_path, monkeypatch):
    """``caption.source`` (``multishot pipeline run --caption-source``): the caption stage fills
    the samples it covers and leaves the others pending with the reason."""
    from multishot.pipeline.config import PipelineConfig
    from multishot.pipeline.stages import STAGES
    from multishot.pipeline.task import RenderedSample, VideoTask

    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI"):
        monkeypatch.delenv(name, raising=False)  # the source alone captions here
    film = w.sample_film(3, num_shots=2)
    path = tmp_path / "captions.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in w.caption_source_entries(film, f"{film.name}.mp4")))
    config = PipelineConfig(output=str(tmp_path / "out"), caption={"source": path})
    spans = [(s.start_frame, s.end_frame) for s in film.shots]
    covered = _record("a", f"/films/{film.name}.mp4", spans, film.fps)
    other = _record("b", "/films/other.mp4", spans, film.fps)
    task = VideoTask(source=covered.source, source_id="x",
                     rendered=[RenderedSample(record=r, mp4=b"") for r in (covered, other)])
    caption = next(s for s in STAGES if s.name == "caption")
    caption.setup(config, "test")(task)
    joined, left = (r.record for r in task.rendered)
    assert joined.caption_status == "ok" and joined.prompt() == film.prompt
    assert left.caption_status == "pending" and "no caption covering" in left.caption_error


def test_a_bad_caption_source_is_a_config_error_naming_the_key(tmp_path):
    bad = tmp_path / "c.jsonl"
    bad.write_text("not json\n")
    for source in (bad, tmp_path / "missing.jsonl"):
        run = subprocess.run([sys.executable, "-m", "multishot", "pipeline", "run", "--config",
                              "configs/pipeline/learn.yaml", "--input", str(tmp_path), "--output",
                              str(tmp_path / "out"), "--caption-source", str(source)],
                             capture_output=True, text=True, cwd=Path(__file__).parents[1])
        assert run.returncode == 2 and "caption.source" in run.stderr, run.stderr
        assert len(run.stderr.strip().splitlines()) == 1
