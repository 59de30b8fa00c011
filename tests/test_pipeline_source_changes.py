"""Nothing lost when a source changes while it is read, or when settings change between runs.

A stage inserted after ``probe`` does to the file what an unlucky user does (deletes it, truncates
it, lets it grow as a copy in progress does) while the real stages read it; the sequential runner
runs the real stage list on an 8 s clip cut from the real footage. Each rerun after the file is
whole again must give what a clean run gives.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import av
import pyarrow.parquet as pq
import pytest
import yaml

from footage_clips import FOOTAGE, cut_clip
from multishot.cli import main
from multishot.dataset.shards import ShardSetLayout
from multishot.pipeline import stages as pipeline_stages
from multishot.pipeline.stages import Stage


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """(root, config, clean keys): an 8 s Sintel clip as fragmented MP4 (a prefix of it is a
    shorter, readable video, as with a copy in progress or a truncation), a quick no-Ray
    config, and the sample keys a clean run of it gives."""
    root = tmp_path_factory.mktemp("changes")
    cut_clip(FOOTAGE / "archive" / "sintel_film_excerpt_26s.mp4", 2.0, 8.0, root / "plain.mp4")
    _fragmented(root / "plain.mp4", root / "clip.mp4")
    config = {"detect": {"backend": "content"}, "analyse": {"ocr_backend": "none"},
              "pack": {"buckets": [{"name": "2s", "target_s": 2, "tolerance_s": 1}]},
              "render": {"width": 160, "height": 96}, "ray": {"runner": "sequential"}}
    (root / "quick.yaml").write_text(yaml.safe_dump(config))
    out = root / "clean"
    assert _run(root / "quick.yaml", _films(root, "clean"), out) == 0
    return root, root / "quick.yaml", _keys(out)


def _films(root: Path, name: str) -> Path:
    films = root / f"in-{name}"
    films.mkdir(exist_ok=True)
    shutil.copy(root / "clip.mp4", films / "clip.mp4")
    return films


def _run(config: Path, inp: Path, out: Path) -> int:
    return main(["pipeline", "run", "--config", str(config), "--input", str(inp), "--output", str(out), "--no-progress"])


def _keys(out: Path) -> list[str]:
    return sorted(pq.read_table(ShardSetLayout(str(out)).samples_index).column("key").to_pylist())


def _verify(out: Path) -> int:
    return main(["shards", "verify", str(out), "-q"])


@pytest.fixture
def after_probe(monkeypatch):
    """Insert a stage right after probe into the real stage list; returns a setter for what it does."""
    actions = []

    def setup(config, samples_hash):
        def process(task):
            for action in actions:
                action(Path(task.source))
        return process

    monkeypatch.setattr(pipeline_stages, "STAGES", [pipeline_stages.STAGES[0], Stage("tamper", setup, "probe"),
                                                    *pipeline_stages.STAGES[1:]])
    monkeypatch.setattr(pipeline_stages.run_sequential, "__defaults__", (pipeline_stages.STAGES,))
    return actions


def test_a_video_deleted_mid_run_is_redone_when_it_is_back(job, tmp_path, after_probe, caplog, capsys):
    root, config, clean = job
    films, out = _films(root, "deleted"), tmp_path / "out"
    kept = tmp_path / "kept.mp4"
    after_probe.append(lambda path: shutil.move(path, kept))
    _run(config, films, out)
    after_probe.clear()
    shutil.move(kept, films / "clip.mp4")  # back, byte-identical
    caplog.set_level(logging.INFO)
    assert _run(config, films, out) == 0
    assert "1 to process, 0 already done" in caplog.text
    assert _keys(out) == clean and _verify(out) == 0


def test_a_video_truncated_mid_run_is_redone_whole_when_restored(job, tmp_path, after_probe, caplog):
    root, config, clean = job
    films, out = _films(root, "truncated"), tmp_path / "out"
    whole = (films / "clip.mp4").read_bytes()
    after_probe.append(lambda path: path.write_bytes(whole[: len(whole) * 2 // 5]))
    _run(config, films, out)
    after_probe.clear()
    (films / "clip.mp4").write_bytes(whole)
    caplog.set_level(logging.INFO)
    assert _run(config, films, out) == 0
    assert "1 to process, 0 already done" in caplog.text
    assert _keys(out) == clean and _verify(out) == 0



def test_no_segment_result_of_a_truncated_read_is_reused(job, tmp_path, after_probe):
    root, config, clean = job
    films, out = _films(root, "truncated2"), tmp_path / "out"
    whole = (films / "clip.mp4").read_bytes()
    after_probe.append(lambda path: path.write_bytes(whole[: len(whole) * 2 // 5]))
    _run(config, films, out)
    after_probe.clear()
    (films / "clip.mp4").write_bytes(whole)
    other = tmp_path / "other.yaml"  # other sample settings, same scan settings: segments would be reused
    other.write_text(config.read_text().replace("width: 160", "width: 192"))
    assert _run(other, films, out) == 0
    assert _keys(out) == clean and _verify(out) == 0


def _fragmented(src: Path, dst: Path) -> None:
    """``src`` remuxed as fragmented MP4, which is readable while it is still being written."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "frag_keyframe+empty_moov"}) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)


def test_a_video_that_grows_while_it_is_read_is_one_video(job, tmp_path, after_probe):
    root, config, clean = job
    films, out = tmp_path / "films", tmp_path / "out"
    films.mkdir()
    whole = (root / "clip.mp4").read_bytes()
    (films / "clip.mp4").write_bytes(whole[: len(whole) // 2])  # the copy is half done

    after_probe.append(lambda path: path.write_bytes(whole))  # the copy completes mid-read
    _run(config, films, out)
    after_probe.clear()
    assert _run(config, films, out) == 0
    keys = _keys(out)
    assert keys == clean and len(set(keys)) == len(keys)
    ids = {json.loads(p.read_text())["source_id"] for p in (out / "_work").glob("*.json")}
    assert len(ids) == 1 and _verify(out) == 0


def test_a_rerun_with_other_settings_never_overwrites_finished_shards(job, tmp_path):
    root, config, clean = job
    films, out = _films(root, "settings"), tmp_path / "out"
    assert _run(config, films, out) == 0
    before = {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")}
    manifest_before = json.loads((out / "manifest.json").read_text())
    other = tmp_path / "other.yaml"
    other.write_text(config.read_text().replace("width: 160", "width: 192"))

    seen = []  # what a reader of the set finds while the rerun runs: the manifest agrees with its shards

    def reader_check(path):
        manifest = json.loads((out / "manifest.json").read_text())
        for entry in manifest["shards"]:
            assert (out / "shards" / entry["name"]).stat().st_size == entry["bytes"]
        seen.append(manifest == manifest_before)

    pipeline_stages.STAGES.append(Stage("reader", lambda c, h: reader_check, "write", every_task=True))
    try:
        assert _run(other, films, out) == 0
    finally:
        pipeline_stages.STAGES.pop()
    assert seen == [True]
    aside = {p.name: p.read_bytes() for p in (out / "_work" / "set_aside").glob("*.tar")}
    assert aside == before  # every finished shard of the first settings, byte for byte
    assert not set(before) & {p.name for p in (out / "shards").glob("*.tar")}
    assert _verify(out) == 0 and len(_keys(out)) == len(clean)
