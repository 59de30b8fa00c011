"""Reject reasons are one short line: no remote traceback, no ANSI codes, no other processes'
command lines (Ray's out-of-memory text lists the top memory consumers).

The errors are real: a ``RayTaskError`` from a task that failed in a real local Ray, and Ray's
``OutOfMemoryError`` with the text its memory monitor writes. A stage inserted into the real
stage list raises them on two 8 s clips cut from the real footage (sequential runner).
"""

from __future__ import annotations

import pyarrow.parquet as pq
import yaml

from footage_clips import FOOTAGE, cut_clip
from multishot.cli import main
from multishot.dataset.shards import ShardSetLayout
from multishot.pipeline import stages as pipeline_stages
from multishot.pipeline.stages import Stage

OOM_TEXT = (
    "Task was killed due to the node running low on memory.\n"
    "Memory on the node (IP: 127.0.0.1, ID: 6f2a) where the task (task ID: 3c1e, name=scan, pid=4242, "
    "memory used=3.10GB) was running was 7.51GB / 7.77GB (0.966), which exceeds the memory usage threshold "
    "of 0.95. Ray killed this worker (ID: 9b0d) because it was the most recently scheduled task.\n"
    "The top 10 memory consumers are:\n\nPID\tMEM(GB)\tCOMMAND\n"
    "4242\t3.10\tray::SegmentScanner.scan\n5151\t2.02\t/usr/bin/python other_users_tool --api-token=tok-9f8e7d\n"
)


def _ray_task_error() -> Exception:
    import ray

    from multishot.ray_connect import init_ray

    init_ray(num_cpus=1, include_dashboard=False)
    try:
        @ray.remote
        def decode():
            raise ValueError("\x1b[31mframe 212 undecodable\x1b[0m")

        try:
            ray.get(decode.remote())
        except ray.exceptions.RayTaskError as err:
            return err
        raise AssertionError("the task did not fail")
    finally:
        ray.shutdown()


def test_reject_reasons_are_one_short_line(tmp_path, capsys):
    import ray.exceptions

    task_error = _ray_task_error()
    assert "\n" in str(task_error) and "File \"" in str(task_error)  # what used to be stored
    errors = {"a.mp4": task_error, "b.mp4": ray.exceptions.OutOfMemoryError(OOM_TEXT)}
    films = tmp_path / "films"
    cut_clip(FOOTAGE / "archive" / "sintel_film_excerpt_26s.mp4", 2.0, 8.0, films / "a.mp4")
    cut_clip(FOOTAGE / "archive" / "bbb_first60s_360p.mp4", 20.0, 8.0, films / "b.mp4")
    config = tmp_path / "quick.yaml"
    config.write_text(yaml.safe_dump({
        "detect": {"backend": "content"}, "analyse": {"ocr_backend": "none"},
        "pack": {"buckets": [{"name": "2s", "target_s": 2, "tolerance_s": 1}]},
        "render": {"width": 160, "height": 96}, "ray": {"runner": "sequential"}}))

    def raise_its_error(task):
        raise errors[task.source.rsplit("/", 1)[-1]]

    pipeline_stages.STAGES.insert(1, Stage("scan", lambda c, h: raise_its_error, "probe"))
    try:
        main(["pipeline", "run", "--config", str(config), "--input", str(films), "--output", str(tmp_path / "out"),
              "--no-progress"])
    finally:
        pipeline_stages.STAGES.pop(1)
    capsys.readouterr()
    rejects = pq.read_table(ShardSetLayout(str(tmp_path / "out")).rejects_table).to_pylist()
    reasons = {r["source"].rsplit("/", 1)[-1]: r["reason"] for r in rejects}
    assert set(reasons) == {"a.mp4", "b.mp4"}
    for reason in reasons.values():
        assert "\n" not in reason and "\x1b" not in reason and len(reason) <= 300, reason
        assert 'File "' not in reason and "COMMAND" not in reason and "tok-9f8e7d" not in reason, reason
    assert "ValueError: frame 212 undecodable" in reasons["a.mp4"]
    assert "running low on memory" in reasons["b.mp4"]
