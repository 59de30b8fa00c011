"""Near-duplicate shots (pipeline/dedup.py): both indexes (pHash, CLIP embedding) against brute
force, the rule over mixed results, the bundled footage's shared shot, a re-encoded rescaled
copy, a second run into the same output, and the CLIP path through Ray with a small random CLIP
loaded by the real loading code."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from multishot.dataset.shards import ShardSetLayout
from multishot.pipeline.config import PipelineConfig
from multishot.pipeline.analyse import ShotScores
from multishot.pipeline.dedup import mark_duplicates, near_pairs, pack_embedding, similar_pairs
from multishot.pipeline.detect import DetectedShot
from multishot.pipeline.run import run_pipeline
from multishot.pipeline.task import ShotRow, VideoTask

FOOTAGE = Path(__file__).resolve().parents[2] / "shared" / "footage" / "archive"
FILM = "sintel_film_excerpt_26s.mp4"
TRAILER = "sintel_trailer_480p.mp4"


@pytest.mark.parametrize("max_distance", [0, 3, 7, 10, 13])
def test_index_finds_exactly_the_pairs_brute_force_finds(max_distance):
    """Multi-index hashing finds every pair within the distance and nothing else (brute force over
    all pairs of 500 hashes, 200 of them copies of others with 0-15 bits flipped)."""
    rng = np.random.default_rng(max_distance)
    base = rng.integers(0, 2**64, size=300, dtype=np.uint64)
    flips = [rng.choice(64, rng.integers(0, 16), replace=False) for _ in range(200)]
    copies = [h ^ np.uint64(sum(1 << int(b) for b in bits)) for h, bits in zip(base, flips)]
    hashes = np.concatenate([base, np.array(copies, np.uint64)])
    i, j, distance = near_pairs(hashes, max_distance)
    brute = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    want_i, want_j = np.nonzero(np.triu(brute <= max_distance, 1))
    assert list(zip(i.tolist(), j.tolist())) == list(zip(want_i.tolist(), want_j.tolist()))
    assert (distance == brute[i, j]).all()
    assert len(i) >= sum(len(b) <= max_distance for b in flips)  # the planted copies are there


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _at_cosine(rng: np.random.Generator, x: np.ndarray, cosine: np.ndarray) -> np.ndarray:
    """Unit vectors at exactly ``cosine`` ``[N]`` from the unit rows of ``x`` ``[N, D]``."""
    noise = rng.standard_normal(x.shape)
    noise -= (noise * x).sum(1, keepdims=True) * x
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return cosine[:, None] * x + np.sqrt(1 - cosine[:, None] ** 2) * noise


@pytest.mark.parametrize("min_cosine", [0.9, 0.99])
@pytest.mark.parametrize("exact_up_to", [10_000, 400])
def test_embedding_index_finds_the_pairs_brute_force_finds(min_cosine, exact_up_to):
    """Up to ``exact_up_to`` embeddings every pair above the threshold, exactly; above, within
    k-means lists: nothing below the threshold, and at least 98% of the pairs brute force finds
    (2,400 random 64-d unit vectors, 400 of them copies of others at cosines from 0.03 under the
    threshold to 1: the hard case, no cluster structure to follow)."""
    rng = np.random.default_rng(7)
    base = _unit(rng, 2000, 64)
    copies = _at_cosine(rng, base[:400], rng.uniform(min_cosine - 0.03, 1.0, 400))
    x = np.concatenate([base, copies]).astype(np.float32)
    i, j, cosine = similar_pairs(x, min_cosine, exact_up_to=exact_up_to)
    brute = x @ x.T
    want = set(zip(*[a.tolist() for a in np.nonzero(np.triu(brute >= min_cosine, 1))]))
    got = list(zip(i.tolist(), j.tolist()))
    assert len(got) == len(set(got)) and got == sorted(got) and (i < j).all()
    np.testing.assert_allclose(cosine, brute[i, j], atol=1e-5)
    assert set(got) <= want  # every pair found is above the threshold
    if exact_up_to >= len(x):
        assert set(got) == want
    else:
        assert len(want) > 80 and len(set(got) & want) >= 0.98 * len(want)


def _video(name: str, shots: list[tuple[list[int], str]], embeddings: list[np.ndarray | None] | None = None
           ) -> VideoTask:
    """A task with one 48-frame shot per ``(keyframe hashes, reason)``; ``embeddings``: each
    shot's one keyframe embedding (None: none, as a result made without CLIP)."""
    embeddings = embeddings or [None] * len(shots)
    rows = [ShotRow(shot=DetectedShot(48 * k, 48 * k + 48, False), scores=ShotScores(100.0, 0.0, None),
                    keyframe_hashes=[f"{h:016x}" for h in hashes], reason=reason,
                    keyframe_embeddings=[] if e is None else [pack_embedding(e)])
            for k, ((hashes, reason), e) in enumerate(zip(shots, embeddings))]
    return VideoTask(source=f"/films/{name}", source_id=name.split(".")[0] * 4, shots=rows)


def _marks(tasks: list[VideoTask]) -> dict[tuple[str, int], tuple[str, int, int] | None]:
    return {(t.source_id, k): row.duplicate_of for t in tasks for k, row in enumerate(t.shots)}


def test_the_later_copy_is_marked_whatever_order_the_videos_come_in():
    """Path order decides within a run (b.mp4's shot, not a.mp4's), earlier runs come before it
    (c.mp4, finished, beats a.mp4), the nearest kept twin is named, a shot removed for another
    reason is neither marked nor anyone's twin, and the task order Ray delivers changes nothing."""
    far = 0xFFFF_FFFF_0000_0000

    def make() -> tuple[list[VideoTask], list[VideoTask]]:
        earlier = [_video("c.mp4", [([0x00FF], ""), ([far ^ 0xF0F0], "")])]
        tasks = [_video("b.mp4", [([0x0001, 0x1234_5678_9ABC_DEF0], ""), ([far], ""), ([0xAAAA_0000_0000_0000], "")]),
                 _video("a.mp4", [([0xAAAA_0000_0000_0001], ""), ([far ^ 0x1], "too_dark"), ([0x0FFF_0000_00FF], "")])]
        return earlier, tasks

    earlier, tasks = make()
    assert mark_duplicates(earlier, tasks, max_distance=10, min_cosine=0.99) == {"marked": 3, "clip": 0, "phash": 7}
    marks = _marks(tasks)
    assert marks == {("bbbb", 0): ("cccc", 0, 7),   # 0x0001 is 7 bits from c's 0x00FF: the earlier run's shot
                     ("bbbb", 1): ("cccc", 1, 8),   # far is 8 bits from c's; a's too-dark copy is 1 bit but removed
                     ("bbbb", 2): ("aaaa", 0, 1),   # a.mp4 comes before b.mp4
                     ("aaaa", 0): None, ("aaaa", 1): None,
                     ("aaaa", 2): None}             # 0x0FFF_0000_00FF: 12 bits from c's first, over 10
    assert [r.reason for t in tasks for r in t.shots] == ["duplicate"] * 3 + ["", "too_dark", ""]
    assert all(r.duplicate_of is None for t in earlier for r in t.shots)  # earlier runs' decisions stand
    again_earlier, again = make()
    mark_duplicates(again_earlier, list(reversed(again)), max_distance=10, min_cosine=0.99)
    assert _marks(again) == marks


def test_embeddings_decide_where_both_shots_have_them_and_phash_elsewhere():
    """A mixed output: c.mp4 is an earlier result without embeddings. a.mp4's first shot has
    one but c.mp4 has none: compared by pHash (1 bit: a duplicate). b.mp4's first shot is at
    cosine 0.995 from a.mp4's second, their hashes far apart: a duplicate by embedding, its
    cosine recorded, no distance. b.mp4's second shot has a.mp4's second hash to a bit but
    another picture by embedding: both have embeddings, so pHash is not asked, and it stays.
    ``min_cosine`` over 0.995 keeps b.mp4's first shot too."""
    rng = np.random.default_rng(3)
    e1, e2, e3 = _unit(rng, 3, 768)
    near = _at_cosine(rng, e2[None], np.array([0.995]))[0]

    def make() -> tuple[list[VideoTask], list[VideoTask]]:
        earlier = [_video("c.mp4", [([0xF0F0_0000_0000_0000], "")])]
        tasks = [_video("a.mp4", [([0xF0F0_0000_0000_0001], ""), ([0x1234_5678_9ABC_DEF0], "")], [e1, e2]),
                 _video("b.mp4", [([0x0F0F_FFFF_0000_FFFF], ""), ([0x1234_5678_9ABC_DEF1], "")], [near, e3])]
        return earlier, tasks

    earlier, tasks = make()
    assert mark_duplicates(earlier, tasks, max_distance=10, min_cosine=0.99) == {"marked": 2, "clip": 4, "phash": 1}
    assert _marks(tasks) == {("aaaa", 0): ("cccc", 0, 1), ("aaaa", 1): None,
                             ("bbbb", 0): ("aaaa", 1, None), ("bbbb", 1): None}
    assert [r.duplicate_cosine for t in tasks for r in t.shots] == [None, None, pytest.approx(0.995, abs=2e-3), None]
    earlier, tasks = make()
    assert mark_duplicates(earlier, tasks, max_distance=10, min_cosine=0.997)["marked"] == 1
    assert _marks(tasks)[("bbbb", 0)] is None


def _shots(out: Path) -> list[dict]:
    return pq.read_table(ShardSetLayout(str(out)).shots_table).to_pylist()


def test_bundled_footage_only_the_shot_the_trailer_shares_with_the_film(pipeline_run):
    """Counted by hand (contact sheets of both at 2 and 4 frames a second): the trailer shares 2
    shots with the film excerpt, both re-rendered and graded differently in the trailer (a
    pre-release render): Sintel's close-up looking up over rubble (trailer 22.3-23.8 s, film
    3.04-4.84 s) and the flight over the ruined city with the red dragon (trailer 23.8-25.9 s,
    film 4.84-12.76 s, its 7.5-10 s). The close-up fades in from black in the trailer and what
    is left after the fade is 0.75 s: too short, never analysed. So exactly one shot of the
    archive is marked: the trailer's flight, a duplicate of the film's. The run also holds the
    damaged copies of Big Buck Bunny (footage/bad): each of their shots the filter keeps is a
    duplicate of the intact film's shot at the same time, 0 bits apart."""
    out, _ = pipeline_run
    shots = _shots(Path(out))
    marked = [s for s in shots if "duplicate" in s["reason"].split(",")]
    archive = [s for s in marked if Path(s["source"]).parent.name == "archive"]
    assert [(Path(s["source"]).name, round(s["start_s"], 1), round(s["end_s"], 1)) for s in archive] == \
        [(TRAILER, 23.8, 25.9)]
    bbb = {s["shot_index"]: s for s in shots if Path(s["source"]).name == "bbb_first60s_360p.mp4"}
    damaged = [s for s in shots if Path(s["source"]).name.startswith("corrupt_") and s["reason"] in ("", "duplicate")
               and s["brightness"] is not None]
    assert {Path(s["source"]).name for s in damaged} == {"corrupt_truncated_faststart_bbb.mp4",
                                                         "corrupt_zeroed_middle_bbb.mp4"}
    for s in damaged:
        twin = bbb[s["duplicate_of_shot"]]
        assert s["reason"] == "duplicate" and s["duplicate_of_source_id"] == twin["source_id"] and twin["kept"]
        assert abs(twin["start_s"] - s["start_s"]) < 0.2 and abs(twin["end_s"] - s["end_s"]) < 0.2
    assert len(marked) == len(archive) + len(damaged)
    (dup,) = archive
    (twin,) = [s for s in shots if s["source_id"] == dup["duplicate_of_source_id"]
               and s["shot_index"] == dup["duplicate_of_shot"]]
    assert Path(twin["source"]).name == FILM and twin["start_s"] <= 7.5 and twin["end_s"] >= 10.0 and twin["kept"]
    assert 0 <= dup["duplicate_distance"] <= 10 and not dup["kept"]
    # every analysed shot has its keyframes (2 a second) on record
    assert all(len(s["keyframe_hashes"]) >= 1 for s in shots if s["brightness"] is not None)


def _reencode(src: Path, dst: Path, size: tuple[int, int], crf: int = 32, frames: int | None = None) -> Path:
    """``src`` decoded, scaled to ``size`` and encoded again with other x264 settings (CRF
    ``crf``, ultrafast) at its own frame rate: another file, another resolution, the same
    pictures; its first ``frames`` frames only when given."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream_in = inp.streams.video[0]
        rate = stream_in.average_rate
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"crf": str(crf), "preset": "ultrafast"}
        for k, frame in enumerate(inp.decode(stream_in)):
            if k == frames:
                break
            picture = frame.reformat(width=size[0], height=size[1], format="yuv420p")
            picture.pts, picture.time_base = k, 1 / Fraction(rate)
            out.mux(stream.encode(picture))
        out.mux(stream.encode())
    return dst


def test_second_run_finds_a_rescaled_reencoded_copy_of_the_first_runs_film(tmp_path):
    """Run 1: the film excerpt. Run 2, into the same output: a 640x360 CRF-32 copy of it, named
    so that it sorts first (earlier runs come before path order). Every shot of the copy that
    the filter keeps is a duplicate of a kept shot of run 1's film, at the same time; the copy
    gives no sample; run 1's shots stay as they were."""
    first, second = tmp_path / "in1", tmp_path / "in2"
    first.mkdir(), second.mkdir()
    (first / FILM).symlink_to(FOOTAGE / FILM)
    _reencode(FOOTAGE / FILM, second / "a_copy.mp4", (640, 360))
    out = tmp_path / "out"

    def run(folder: Path) -> dict:
        config = PipelineConfig(input=str(folder), output=str(out), ray={"runner": "sequential"},
                                pack={"buckets": [{"name": "5s", "target_s": 5, "tolerance_s": 1}]},
                                render={"width": 320, "height": 192})
        return run_pipeline(config, progress=False)

    report1 = run(first)
    before = _shots(out)
    assert report1["samples"] > 0 and not any("duplicate" in s["reason"] for s in before)
    report2 = run(second)
    shots = _shots(out)
    original = [s for s in shots if Path(s["source"]).name == FILM]
    copy = [s for s in shots if Path(s["source"]).name == "a_copy.mp4"]
    assert [(s["shot_index"], s["kept"], s["reason"]) for s in original] == \
        [(s["shot_index"], s["kept"], s["reason"]) for s in before]
    analysed = [s for s in copy if s["brightness"] is not None and s["reason"] in ("", "duplicate")]
    assert len(analysed) == sum(s["kept"] for s in original) > 0  # the copy's shots pass the filter alike
    by_index = {s["shot_index"]: s for s in original}
    for s in analysed:
        assert s["reason"] == "duplicate" and not s["kept"], s
        twin = by_index[s["duplicate_of_shot"]]
        assert s["duplicate_of_source_id"] == twin["source_id"] and twin["kept"]
        assert abs(twin["start_s"] - s["start_s"]) < 0.2 and abs(twin["end_s"] - s["end_s"]) < 0.2
    assert report2["samples"] == report1["samples"]  # the copy added none


#: a small random CLIP. Average pooling of the patch tokens (open_clip's ``pool_type: avg``): with
#: a random class token the picture barely moves the embedding (every frame of the film excerpt
#: within cosine 0.976 of every other); pooled, frames of other shots fall far apart (real CLIP
#: weights separate pictures by what they show; these only by their pixels)
TINY_CLIP = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16, "pool_type": "avg"},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> dict:
    """``analyse`` settings of a random tiny CLIP and LAION head saved to disk; the model is
    named by its config file, which every Ray actor's loader registers
    (:func:`pipeline.aesthetic.load_clip`)."""
    import json

    import torch

    from multishot.pipeline.aesthetic import AestheticHead
    from multishot.torchvision_cpu import import_torchvision

    import_torchvision()
    import open_clip

    root = tmp_path_factory.mktemp("clip")
    config = root / "tiny-dedup-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    torch.save(open_clip.create_model("tiny-dedup-clip").state_dict(), root / "clip.pt")
    torch.save(AestheticHead(TINY_CLIP["embed_dim"]).state_dict(), root / "head.pth")
    return {"clip_model": str(config), "clip_weights": str(root / "clip.pt"),
            "aesthetic_head_weights": str(root / "head.pth")}


def test_clip_embeddings_find_copies_across_videos_and_runs_through_ray(tmp_path, tiny_clip):
    """CLIP weights given (small random ones). Run 1, through Ray (the scanning actors load the
    model by its config file): the film excerpt's first 8 s and a 480x272 CRF-32 copy of it
    sorting after it; run 2, into the same output (sequential): a 640x360 copy sorting first. Every shot of each copy that the filter keeps is a duplicate, by
    embedding (a cosine, no distance), of the film's kept shot at the same time; no shot of the
    film is marked; the report says which test ran; the result file keeps each shot's pick
    embeddings. A threshold of 0.98: with these weights the copies' shots reach 0.991-0.998 of
    the film's, its other shots at most 0.86 (measured), so the test does not sit on the
    default 0.99's edge."""
    from multishot.dataset.storage import resolve
    from multishot.pipeline.write import read_result, result_path

    first, second = tmp_path / "in1", tmp_path / "in2"
    first.mkdir(), second.mkdir()
    film = _reencode(FOOTAGE / FILM, first / "film.mp4", (848, 480), crf=18, frames=8 * 25)
    _reencode(film, first / "z_copy.mp4", (480, 272))
    _reencode(film, second / "a_copy.mp4", (640, 360))
    out = tmp_path / "out"

    def run(folder: Path, runner: str) -> dict:
        config = PipelineConfig.model_validate({
            "input": str(folder), "output": str(out), "ray": {"num_cpus": 2, "runner": runner},
            "analyse": {**tiny_clip, "ocr_backend": "none", "motion_backend": "none"},
            "filter": {"min_aesthetic": -1e9},  # a random head's scores
            "dedup": {"min_cosine": 0.98},
            "pack": {"buckets": [{"name": "5s", "target_s": 5, "tolerance_s": 1}]},
            "render": {"width": 160, "height": 96},
        })
        return run_pipeline(config, progress=False)

    report1 = run(first, "ray")
    analysed = sum(s["brightness"] is not None for s in _shots(out))
    assert report1["dedup"].startswith(f"{analysed} analysed shots by CLIP image embedding (cosine >= 0.98), "
                                       "0 by keyframe pHash")
    report2 = run(second, "sequential")  # Ray's part is run 1's; a second start adds only time
    shots = _shots(out)
    original = {s["shot_index"]: s for s in shots if Path(s["source"]).name == "film.mp4"}
    assert not any("duplicate" in s["reason"] for s in original.values())
    assert sum(s["kept"] for s in original.values()) >= 2
    for name in ("z_copy.mp4", "a_copy.mp4"):
        analysed = [s for s in shots if Path(s["source"]).name == name and s["brightness"] is not None
                    and s["reason"] in ("", "duplicate")]
        assert len(analysed) == sum(s["kept"] for s in original.values()), name
        for s in analysed:
            twin = original[s["duplicate_of_shot"]]
            assert s["reason"] == "duplicate" and s["duplicate_of_source_id"] == twin["source_id"] and twin["kept"]
            assert abs(twin["start_s"] - s["start_s"]) < 0.2 and abs(twin["end_s"] - s["end_s"]) < 0.2
            assert s["duplicate_cosine"] >= 0.98 and s["duplicate_distance"] is None
    assert report2["samples"] == report1["samples"]  # the copies added none
    fs, root = resolve(str(out))
    result = read_result(fs, result_path(ShardSetLayout(root), original[0]["source_id"]))
    scored = [r for r in result.shots if r.scores is not None]
    assert scored and all(1 <= len(r.keyframe_embeddings) <= 3 for r in scored)


def test_min_cosine_is_checked_on_load_and_a_missing_model_config_is_named(tmp_path, tiny_clip):
    """``dedup.min_cosine`` outside (0, 1] is a config error naming the key; a ``clip_model``
    config file that is not there is named by the loader."""
    from multishot.config import ConfigError, load_config
    from multishot.pipeline.aesthetic import load_clip

    bad = tmp_path / "bad.yaml"
    bad.write_text("dedup: {min_cosine: 1.5}\n")
    with pytest.raises(ConfigError, match="dedup.min_cosine"):
        load_config(bad, PipelineConfig)
    with pytest.raises(FileNotFoundError, match="CLIP model config not found"):
        load_clip(str(tmp_path / "nope.json"), Path(tiny_clip["clip_weights"]), "cpu")
