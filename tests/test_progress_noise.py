"""What a pipeline run prints while it works (issue 31): the bar's frames per second and
realtime factor, and Ray's own log lines hidden unless ``-v`` (a real local Ray, started the
way the pipeline starts it, in a fresh process)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from multishot.pipeline.decode import probe
from multishot.pipeline.progress import Throughput
from multishot.pipeline.task import VideoTask

REPO = Path(__file__).resolve().parents[1]


def test_bar_postfix_gives_frames_per_second_and_slowest_stage():
    film = str(REPO / "demo" / "footage" / "sintel_film_excerpt_26s.mp4")
    info = probe(film)
    speed = Throughput()
    speed.start -= 10.0  # as if the run began 10 s ago
    done = VideoTask(source=film, source_id="a", info=info, seconds={"detect": 6.0, "render": 2.0})
    speed.add(done)
    speed.add(VideoTask(source="/films/broken.mp4", source_id="b", status="rejected"))  # no info: adds nothing
    parts = speed.postfix(done).split(" · ")
    assert parts[0] == "ok: sintel_film_excerpt_26s.mp4" and parts[3] == "slowest detect 6 s"
    wall = info.num_frames / float(parts[1].split()[0])  # the wall time the frame rate implies: ≥ 10 s
    assert 9.0 <= wall <= 60 and parts[1].endswith("frames/s")
    assert parts[2].endswith("× realtime")
    assert float(parts[2].split("×")[0]) == pytest.approx(info.duration_s / wall, rel=0.05)


SCRIPT = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.DEBUG if sys.argv[1] == "verbose" else logging.INFO)
    from multishot.config import load_config
    from multishot.pipeline.config import PipelineConfig
    from multishot.pipeline.run import _init_ray
    config = load_config("configs/pipeline/demo.yaml", PipelineConfig, {"ray": {"num_cpus": 1}})
    assert _init_ray(config)
    import ray, ray.data
    from multishot.pipeline.ray_quiet import quiet_ray
    quiet_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False
    print(sum(1 for _ in ray.data.from_items([{"a": 1}, {"a": 2}]).map(lambda r: r).iter_rows()))
    ray.shutdown()
""")


def _run(mode: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("mode", ["quiet", "verbose"])
def test_ray_log_lines_only_with_verbose(mode):
    result = _run(mode)
    assert result.returncode == 0 and result.stdout.strip() == "2", result.stderr[-3000:]
    ray_lines = [line for line in result.stderr.splitlines()
                 if "Started a local Ray instance" in line or "Progress bars disabled" in line
                 or "Execution plan of Dataset" in line]
    if mode == "quiet":
        assert ray_lines == [], result.stderr[-3000:]
        assert "Token authentication" not in result.stderr
    else:
        assert any("Started a local Ray instance" in line for line in ray_lines), result.stderr[-3000:]


# ---- per-stage bars --------------------------------------------------------------------------

def test_stage_bars_follow_the_board_in_frames():
    import io

    from multishot.pipeline.stage_progress import StageBars, report, start_board

    film = str(REPO / "demo" / "footage" / "sintel_film_excerpt_26s.mp4")
    task = VideoTask(source=film, source_id="a", info=probe(film))
    start_board()  # no Ray in this process: the local board
    out = io.StringIO()
    with StageBars(["probe", "detect", "render"], videos=2, enabled=True, file=out) as bars:
        report("probe", task)
        report("probe", VideoTask(source="/films/broken.mp4", source_id="b", status="rejected"))
        report("detect", task)
        bars.refresh()
        probe_bar, detect_bar, render_bar = bars.bars
        assert (probe_bar.n, probe_bar.total) == (task.info.num_frames, task.info.num_frames)
        assert (detect_bar.n, render_bar.n) == (task.info.num_frames, 0)
        assert render_bar.total == task.info.num_frames
    text = out.getvalue()
    assert "frame/s" in text and "2/2 videos" in text and "1/2 videos" in text


def test_stage_bars_off_without_a_terminal():
    import io

    from multishot.pipeline.stage_progress import StageBars

    out = io.StringIO()  # a log file, not a terminal
    with StageBars(["probe"], videos=1, file=out) as bars:
        assert not bars.enabled
    assert out.getvalue() == ""


REPORT_FROM_WORKER = textwrap.dedent("""
    import os
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    ray.init(num_cpus=1, include_dashboard=False)
    from multishot.pipeline.decode import probe
    from multishot.pipeline.stage_progress import read_board, report, start_board
    from multishot.pipeline.task import VideoTask

    start_board()

    @ray.remote
    def stage(film):
        task = VideoTask(source=film, source_id="a", info=probe(film))
        report("detect", task)  # in a Ray worker, as the pipeline's stages report
        return task.info.num_frames

    frames = ray.get(stage.remote("demo/footage/sintel_film_excerpt_26s.mp4"))
    import time
    deadline = time.monotonic() + 120  # the worker's report is fire-and-forget: wait for it to land
    while not read_board()[0].get("detect") and time.monotonic() < deadline:
        time.sleep(0.1)
    counts = read_board()
    print(frames, counts[0].get("detect"), counts[1].get("detect"))
    ray.shutdown()
""")


def test_workers_report_to_the_jobs_board():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run([sys.executable, "-c", REPORT_FROM_WORKER], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    frames, counted, videos = result.stdout.split()
    assert counted == frames and int(frames) > 0 and videos == "1"
