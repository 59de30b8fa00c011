"""The real pipeline (CLI, local Ray, TransNetV2, x264) over a folder of odd inputs made from the
real footage: other codecs and containers, odd and tiny sizes, a cover stream first, rotation,
variable frame rate, a far aspect ratio, damage, a text file, names with spaces and non-ASCII.

Every file must end ``ok``, ``partial`` or ``rejected`` with a reason, the run must exit 0 (no
video ``error``; see ``multishot pipeline run``), and ``multishot shards verify`` must pass.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml
from odd_inputs import two_shots, write_video, zero_middle

from multishot.dataset.shards import ShardSetLayout, read_shard
from multishot.dataset.storage import resolve

REPO = Path(__file__).resolve().parents[1]


def _odd_folder(folder: Path) -> dict[str, str]:
    """Write the odd inputs; returns ``{file name: expected status}``."""
    folder.mkdir()
    clip = two_shots((96, 54))  # 3 s at 24 fps, a hard cut at 1.5 s
    write_video(folder / "clip one.mp4", clip)
    write_video(folder / "fête ü 65x37.mkv", two_shots((65, 37)), codec="ffv1")
    write_video(folder / "vp9.webm", clip, codec="libvpx-vp9")
    write_video(folder / "mpeg4 97x55.avi", two_shots((97, 55)), codec="mpeg4")
    write_video(folder / "tiny 16x16.mov", two_shots((16, 16)), codec="mjpeg", pix_fmt="yuvj420p")
    write_video(folder / "phone.mp4", [np.rot90(f, 1) for f in clip], rotation=-90)
    write_video(folder / "cover first.mkv", clip, cover=np.full((32, 32, 3), 200, np.uint8))
    fast_slow = [0.5 * k / 24 if k < 36 else 0.75 + (k - 36) / 12 for k in range(72)]  # 48 fps, then 12
    write_video(folder / "vfr.mp4", clip, times_s=fast_slow)
    write_video(folder / "strip 2000x96.mp4", two_shots((2000, 96), seconds=1.0))
    zero_middle(folder / "clip one.mp4", folder / "damaged.mp4", fraction=0.5, length=2048)
    (folder / "notes.mp4").write_text("not a video\n")
    return {
        "clip one.mp4": "ok", "fête ü 65x37.mkv": "ok", "vp9.webm": "ok", "mpeg4 97x55.avi": "ok",
        "tiny 16x16.mov": "ok", "phone.mp4": "ok", "cover first.mkv": "ok", "vfr.mp4": "ok",
        "strip 2000x96.mp4": "rejected", "damaged.mp4": "partial", "notes.mp4": "rejected",
    }


def test_odd_inputs_end_ok_partial_or_rejected(tmp_path):
    expected = _odd_folder(tmp_path / "in")
    out = tmp_path / "out"
    config = {
        "input": str(tmp_path / "in"), "output": str(out),
        "detect": {"min_shot_s": 0.5, "resources": {"actors": 1}},
        "analyse": {"frames_per_shot": 1, "ocr_backend": "none"},
        "pack": {"buckets": [{"name": "1s", "target_s": 1.0, "tolerance_s": 0.3}]},
        "render": {"width": 64, "height": 48},
        "ray": {"num_cpus": 2},
        # the odd files are re-encodings of one clip (rotated, cover art first, variable rate):
        # near-duplicate removal would rightly keep only the first; this test is about decoding them
        "dedup": {"enabled": False},
    }
    (tmp_path / "odd.yaml").write_text(yaml.safe_dump(config))
    run = subprocess.run(
        [sys.executable, "-m", "multishot.cli", "pipeline", "run", "--config", str(tmp_path / "odd.yaml"), "--no-progress"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert run.returncode == 0, run.stderr[-3000:]

    layout = ShardSetLayout(str(out))
    report = json.loads(Path(layout.report).read_text())
    assert report["videos_in"] == len(expected)
    not_ok = {Path(r["source"]).name: r for r in pq.read_table(layout.rejects_table).to_pylist()}
    for name, r in not_ok.items():
        assert r["status"] in ("partial", "rejected") and r["reason"], r
    status = {name: not_ok[name]["status"] if name in not_ok else "ok" for name in expected}
    for name, want in expected.items():
        assert status[name] == want, (name, not_ok.get(name))
    assert "aspect ratio 20.83:1" in not_ok["strip 2000x96.mp4"]["reason"]
    assert not_ok["notes.mp4"]["stage"] == "probe"

    # rotated, cover-first and variable-rate footage gave samples, none lost to a false "source ended"
    index = pq.read_table(layout.samples_index).to_pylist()
    sampled = {Path(r["source"]).name for r in index}
    assert {"phone.mp4", "cover first.mkv", "vfr.mp4", "clip one.mp4"} <= sampled, sampled
    results = [json.loads(p.read_text()) for p in Path(layout.work_dir).glob("*.json")]
    by_name = {Path(r["source"]).name: r for r in results}
    assert by_name["cover first.mkv"]["info"]["stream_index"] == 1
    assert by_name["phone.mp4"]["info"]["rotation"] == -90
    assert not any("source ended" in d["reason"] for r in results for d in r["dropped_samples"])
    # the damaged file's samples that show frames lost to damage are dropped, saying so
    damaged = by_name["damaged.mp4"]
    assert "undecodable packets" in damaged["reason"]
    assert damaged["dropped_samples"], damaged
    assert all("lost to damage" in d["reason"] for d in damaged["dropped_samples"]), damaged["dropped_samples"]
    fs, _ = resolve(str(out))
    for shard in Path(layout.shards_dir).glob("*.tar"):
        for record, _ in read_shard(fs, str(shard)):
            assert record.damaged_frames == 0  # render.max_damaged_frames defaults to 0

    verify = subprocess.run([sys.executable, "-m", "multishot.cli", "shards", "verify", str(out), "-q"],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr[-2000:]
