"""Shared pytest fixtures."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

FOOTAGE = Path(__file__).resolve().parents[2] / "shared" / "footage"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory):
    """The real pipeline (local Ray, TransNetV2, rapidocr, x264) over ``../shared/footage/archive``
    plus the five broken files of ``../shared/footage/bad``: ``(output root, report)``."""
    from multishot.config import load_config
    from multishot.pipeline.config import PipelineConfig
    from multishot.pipeline.run import run_pipeline

    work = tmp_path_factory.mktemp("pipeline")
    listing = work / "inputs.txt"
    listing.write_text("\n".join(str(p) for d in ("archive", "bad") for p in sorted((FOOTAGE / d).glob("*.mp4"))))
    config = load_config(
        REPO / "configs" / "pipeline" / "demo.yaml", PipelineConfig,
        {"input": str(listing), "output": str(work / "out"), "ray": {"num_cpus": os.cpu_count() or 2}},
    )
    report = run_pipeline(config, progress=False)
    return str(work / "out"), report


@pytest.fixture(scope="session")
def footage_shards(pipeline_run):
    """Root folder (str) of a shard set the real pipeline made from the real footage."""
    return pipeline_run[0]


# ---- small multi-shot shards cut from the real footage, for the training tests -----------------
# 128×72 samples keep CPU training fast; the corrupt-sample shard is one the pipeline never writes.

#: (footage file, start second) of each shot source; consecutive shots come from different films
TRAIN_SHOT_SOURCES = [
    ("archive/sintel_film_excerpt_26s.mp4", 3.0),
    ("archive/bbb_first60s_360p.mp4", 40.0),
    ("archive/tos_excerpt_64s_512x120_fmp4.mp4", 20.0),
    ("archive/sintel_trailer_480p.mp4", 12.0),
    ("archive/bbb_first60s_360p.mp4", 15.0),
    ("archive/sintel_film_excerpt_26s.mp4", 15.0),
]


def _footage_frames(name: str, start_s: float, count: int, size: tuple[int, int]) -> list:
    import av

    frames = []
    with av.open(str(FOOTAGE / name)) as container:
        stream = container.streams.video[0]
        container.seek(int(start_s / stream.time_base), stream=stream)
        for frame in container.decode(stream):
            if frame.time is not None and frame.time < start_s:
                continue
            frames.append(frame.to_ndarray(format="rgb24", width=size[0], height=size[1]))
            if len(frames) == count:
                return frames
    raise RuntimeError(f"{name} has fewer than {count} frames after {start_s}s")


def _encode_mp4(frames: list, fps: int) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for rgb in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode())
    return buf.getvalue()


def make_footage_sample(key: str, sources: list[tuple[str, float]], shot_frames: list[int],
                        captioned: bool, size: tuple[int, int] = (128, 72), fps: int = 16):
    """A (SampleRecord, mp4 bytes) pair: one shot per source, joined by hard cuts."""
    from multishot.dataset.record import SampleRecord, Shot, latent_cut_frame, num_latent_frames

    frames, shots, start = [], [], 0
    for i, ((name, start_s), count) in enumerate(zip(sources, shot_frames)):
        frames += _footage_frames(name, start_s, count, size)
        shots.append(Shot(
            index=i, source_start_frame=int(start_s * 24), source_end_frame=int(start_s * 24) + count,
            source_start_s=start_s, source_end_s=start_s + count / fps, start_frame=start,
            end_frame=start + count, latent_start_frame=latent_cut_frame(start) if start else 0,
            brightness=float(frames[-1].mean()), ocr_text_ratio=0.0, aesthetic=None,
            caption=Path(name).stem.split("_")[0] if captioned else ""))
        start += count
    cuts = [s.start_frame for s in shots[1:]]
    record = SampleRecord(
        key=key, source=sources[0][0], source_id="footage", bucket="2s", target_duration_s=2.0,
        fps=fps, width=size[0], height=size[1], num_frames=start,
        num_latent_frames=num_latent_frames(start), duration_s=start / fps, cut_frames=cuts,
        latent_cut_frames=[latent_cut_frame(c) for c in cuts], shots=shots, aesthetic_status="skipped",
        caption_status="ok" if captioned else "pending",
        global_caption="Blender films" if captioned else "", samples_hash="test")
    return record, _encode_mp4(frames, fps)


@pytest.fixture(scope="session")
def train_footage_shards(tmp_path_factory) -> dict[str, str]:
    """Shard sets cut from the real footage, 128×72 at 16 fps, 33 frames (2–3 shots) a sample.

    Returns ``{"clean": root, "corrupt": root}``: ``clean`` has 2 shards of 3 samples (some
    captioned, some ``pending``); ``corrupt`` has 1 shard of 4 samples of which the second's
    mp4 is ``bad/corrupt_random_bytes.mp4`` and the fourth's is cut to its first 2000 bytes.
    """
    from multishot.dataset.shards import write_shard
    from multishot.dataset.storage import resolve

    root = tmp_path_factory.mktemp("train_footage")
    fs, _ = resolve(str(root))
    splits = [[17, 16], [13, 12, 8], [9, 24], [21, 12], [5, 16, 12], [25, 8]]
    samples = [make_footage_sample(f"clip{i:02d}", [TRAIN_SHOT_SOURCES[(i + j) % 6] for j in range(len(s))],
                                   s, captioned=i % 2 == 0) for i, s in enumerate(splits)]
    clean = root / "clean"
    write_shard(fs, str(clean / "shards" / "a-00000.tar"), samples[:3])
    write_shard(fs, str(clean / "shards" / "a-00001.tar"), samples[3:])
    bad_bytes = (FOOTAGE / "bad" / "corrupt_random_bytes.mp4").read_bytes()
    mixed = [samples[0], (samples[1][0].model_copy(update={"key": "broken"}), bad_bytes), samples[2],
             (samples[3][0].model_copy(update={"key": "truncated"}), samples[3][1][:2000])]
    write_shard(fs, str(root / "corrupt" / "shards" / "b-00000.tar"), mixed)
    return {"clean": str(clean), "corrupt": str(root / "corrupt")}


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory) -> dict[str, str]:
    """Random tiny frozen encoders saved in ``save_pretrained`` layout (no weights can be
    downloaded here), as ``make demo-train`` and ``multishot generate``'s ``random_weights``
    make them (:func:`multishot.generate.random_models.make_random_encoders`): a Wan VAE
    (16 latent channels, stride 4×8×8), a UMT5 encoder of width 32 (the ``tiny`` DiT's
    text_dim) and a word-level tokenizer whose HoloCine tags are single tokens.
    Returns ``{"vae": dir, "text_encoder": dir}``."""
    from multishot.generate.random_models import make_random_encoders

    return make_random_encoders(tmp_path_factory.mktemp("tiny_encoders"))


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A "pretrained" base for LoRA runs: random `tiny` weights with a non-zero head (Wan
    zero-inits the head, which would leave every block, and every adapter, without gradient),
    in official Wan names."""
    import torch

    from multishot.model.checkpoint import save_safetensors
    from multishot.model.config import get_config
    from multishot.model.dit import WanModel

    torch.manual_seed(0)
    model = WanModel(get_config("tiny"))
    torch.nn.init.normal_(model.head.head.weight, std=0.1)
    return save_safetensors(model.state_dict(), tmp_path_factory.mktemp("base") / "base.safetensors")[0]
