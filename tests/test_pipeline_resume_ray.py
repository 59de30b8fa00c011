"""The pipeline as a user runs it: killed and resumed, and submitted to a Ray cluster as a job.

Both run the real ``multishot pipeline run`` command in a subprocess on short clips cut from the
real footage, rendered small (320×192) to keep the suite's time sane.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from footage_clips import FOOTAGE, cut_clip
from multishot.cli import main
from multishot.dataset.shards import ShardSetLayout, read_shard
from multishot.dataset.storage import resolve
from multishot.pipeline.reaper import descendants

CLIPS = [  # (film, first second, seconds): several shots each
    ("sintel_film_excerpt_26s.mp4", 2.0, 14.0),
    ("tos_excerpt_64s_512x120_fmp4.mp4", 30.0, 14.0),
]


@pytest.fixture(scope="module")
def small_job(tmp_path_factory):
    """(clips folder, config path): two real clips and a config rendering 5 s samples at 320×192."""
    root = tmp_path_factory.mktemp("small")
    clips = root / "clips"
    clips.mkdir()
    for name, start, seconds in CLIPS:
        cut_clip(FOOTAGE / "archive" / name, start, seconds, clips / name)
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs/pipeline/demo.yaml").read_text())
    config.update(input=None, output=None)
    config["pack"]["buckets"] = [{"name": "5s", "target_s": 5, "tolerance_s": 1}]
    # both clips must give shards (the kill waits for the first video's): keep the shots that show
    # Tears of Steel's bitrate stamp, which the default overlay action removes
    config["analyse"]["overlay"] = {"action": "record"}
    config["render"].update(width=320, height=192)
    config["ray"] = {"num_cpus": 2}
    path = root / "small.yaml"
    path.write_text(yaml.safe_dump(config))
    return clips, path


def _command(config: Path, clips: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "multishot", "pipeline", "run", "--config", str(config),
            "--input", str(clips), "--output", str(out), "--no-progress"]


def _state(out: Path) -> tuple[list[tuple[str, tuple[str, ...]]], list[str], dict[str, tuple[str, str]]]:
    """(manifest (shard, keys) pairs, sorted sample keys of the index, each sample's JSON and
    the sha256 of its mp4): renders are reproducible byte for byte (x264 without the
    macroblock tree, pipeline/render.py), so a resumed run's samples equal the reference's."""
    manifest = json.loads((out / "manifest.json").read_text())
    keys = pq.read_table(ShardSetLayout(str(out)).samples_index).column("key").to_pylist()
    assert len(keys) == len(set(keys)), "duplicate sample keys"
    fs, _ = resolve(str(out))
    records = {
        record.key: (record.model_dump_json(), hashlib.sha256(mp4).hexdigest())
        for shard in manifest["shards"]
        for record, mp4 in read_shard(fs, str(out / "shards" / shard["name"]))
    }
    return [(s["name"], tuple(s["keys"])) for s in manifest["shards"]], sorted(keys), records


def test_sigkill_then_rerun_gives_the_same_shards(small_job, tmp_path):
    clips, config = small_job
    reference = tmp_path / "reference"
    subprocess.run(_command(config, clips, reference), check=True, timeout=600, capture_output=True)
    expected = _state(reference)
    assert expected[1], "the clips gave no samples"

    out = tmp_path / "killed"
    proc = subprocess.Popen(_command(config, clips, out), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # kill as soon as the first video's shards exist: mid-run, the other video unfinished
    while time.time() < deadline and proc.poll() is None:
        if list((out / "shards").glob("*.tar")) if (out / "shards").exists() else []:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    ray_processes = descendants(proc.pid)  # Ray's GCS, raylet, agents and workers of this run
    assert len(ray_processes) >= 3, ray_processes
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    (out / "shards" / "00000000deadbeef-00000.tar.0123.tmp").write_bytes(b"half a tar")  # as a kill mid-write leaves

    subprocess.run(_command(config, clips, out), check=True, timeout=600, capture_output=True)
    # the killed run's Ray processes (its dashboard and runtime-env agents included) are gone
    assert not [p for p in ray_processes if _alive(p)], [_cmdline(p[0]) for p in ray_processes if _alive(p)]
    assert _state(out) == expected  # the same shards holding the same samples, and nothing else
    assert sorted(p.name for p in (out / "shards").iterdir()) == sorted(name for name, _ in expected[0])
    assert main(["shards", "verify", str(out), "-q"]) == 0


def _alive(process: tuple[int, int]) -> bool:
    """Whether (pid, start time) is still the same live process. A zombie (killed, not yet
    reaped by a parent that is itself gone; it holds nothing but its table entry) is not, nor
    is a process still exiting from the kill: its memory, and with it its command line, is
    already released (seen on the loaded 2-core machine)."""
    from multishot.pipeline.reaper import start_time

    if start_time(process[0]) != process[1]:
        return False
    try:
        stat = Path(f"/proc/{process[0]}/stat").read_text()
        cmdline = Path(f"/proc/{process[0]}/cmdline").read_bytes()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X") and bool(cmdline)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "?"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_job_submit_on_a_loopback_head(small_job, tmp_path):
    clips, config = small_job
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           # the cluster and the job client share a token, as on a real token-auth cluster
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    dashboard = _free_port()
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    head = [*ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(_free_port()),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--num-cpus", "2",
            "--include-dashboard", "true"]
    subprocess.run(head, check=True, env=env, timeout=180, capture_output=True)
    try:
        out = tmp_path / "out"
        address = ["--address", f"http://127.0.0.1:{dashboard}"]
        submission = f"multishot-test-{secrets.token_hex(4)}"
        for _ in range(5):
            # Right after `ray start` the head's job agent may not answer yet: the submit dies
            # with a dropped connection. Retry then, unless the job was created after all.
            job = subprocess.run(
                [*ray, "job", "submit", *address, "--submission-id", submission, "--", *_command(config, clips, out)],
                env=env, timeout=900, capture_output=True, text=True,
            )
            dropped = "Connection aborted" in job.stderr or "Connection refused" in job.stderr
            exists = subprocess.run([*ray, "job", "status", *address, submission], env=env, timeout=60,
                                    capture_output=True).returncode == 0
            if not dropped or exists:
                break
            time.sleep(3)
        if dropped and exists:  # created before the connection dropped: follow it to its end
            job = subprocess.run([*ray, "job", "logs", *address, "--follow", submission], env=env,
                                 timeout=900, capture_output=True, text=True)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "multishot pipeline" in job.stdout  # the run's summary came back through the job logs
        shards, keys, _ = _state(out)
        assert shards and keys
    finally:
        subprocess.run([*ray, "stop", "--force"], env=env, timeout=120, capture_output=True)


def test_pipeline_captions_samples_when_a_key_is_set(small_job, tmp_path, monkeypatch):
    """The annotate stage inside the pipeline: real google-genai client, stand-in service."""
    from gemini_server import GeminiServer

    from multishot.config import load_config
    from multishot.pipeline.config import PipelineConfig
    from multishot.pipeline.run import run_pipeline

    clips, config_path = small_job
    key = "AIzaTEST-pipeline-stage-0c1d2e3f"
    out = tmp_path / "captioned"
    with GeminiServer(api_key=key) as server:
        monkeypatch.setenv("GEMINI_API_KEY", key)
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        config = load_config(config_path, PipelineConfig, {"input": str(clips), "output": str(out)})
        report = run_pipeline(config, progress=False)
        assert len(server.generate_requests()) == report["samples"] > 0
    assert report["captions"] == f"ok {report['samples']}"
    fs, _ = resolve(str(out))
    for shard in (out / "shards").glob("*.tar"):
        for record, _ in read_shard(fs, str(shard)):
            assert record.caption_status == "ok"
            assert record.prompt().startswith("[global caption]") and record.prompt().count("[shot cut]") == record.num_shots - 1
    for path in out.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
