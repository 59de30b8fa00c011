"""The pipeline as a user runs it: killed and resumed, and submitted to a Ray cluster as a job.

Both run the real ``multishot pipeline run`` command in a subprocess on short clips cut from the
real footage, rendered small (320×192) to keep the suite's time sane.

The tests disturb nothing else on the machine: the job test's head has its own temp folder and
ports, and only the processes it started (marked by a token in their environment, which every
Ray process inherits) are ended; no ``ray stop`` (which stops every Ray on the machine). Under
load they wait on conditions with generous limits, never on fixed sleeps.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from footage_clips import FOOTAGE, cut_clip
from multishot.cli import main
from multishot.dataset.shards import ShardSetLayout, read_shard
from multishot.dataset.storage import resolve
from multishot.pipeline.reaper import TOKEN_ENV, descendants, marked, start_time

#: poll interval while waiting on a condition (not a synchronisation: each wait has its condition)
POLL_S = 0.05

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


@pytest.mark.timeout(3600)
def test_sigkill_then_rerun_gives_the_same_shards(small_job, tmp_path):
    clips, config = small_job
    reference = tmp_path / "reference"
    subprocess.run(_command(config, clips, reference), check=True, timeout=1500, capture_output=True)
    expected = _state(reference)
    assert expected[1], "the clips gave no samples"

    # kill as soon as the first video's shards exist: mid-run, the other video unfinished. On a
    # loaded machine the run may end before the kill lands; then it is tried again afresh.
    for attempt in range(3):
        out = tmp_path / f"killed{attempt}"
        proc = subprocess.Popen(_command(config, clips, out), start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 1200
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "shards").exists() and list((out / "shards").glob("*.tar")):
                break
            time.sleep(POLL_S)
        ray_processes = descendants(proc.pid)  # Ray's GCS, raylet, agents and workers of this run
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.wait() == -signal.SIGKILL:
            break
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed, three times"
    assert len(ray_processes) >= 3, ray_processes
    assert not (out / "manifest.json").exists()
    (out / "shards" / "00000000deadbeef-00000.tar.0123.tmp").write_bytes(b"half a tar")  # as a kill mid-write leaves

    subprocess.run(_command(config, clips, out), check=True, timeout=1500, capture_output=True)
    # the killed run's Ray processes (its dashboard and runtime-env agents included) are gone;
    # the reaper polls once a second, so give it time on a loaded machine
    deadline = time.monotonic() + 120
    while [p for p in ray_processes if _alive(p)] and time.monotonic() < deadline:
        time.sleep(POLL_S)
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


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1: every socket stays bound until all are picked
    (one picked and released at a time, the kernel handed the same port out twice in a CI run:
    Ray's head then failed to start with two of its services on one port)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def _end(processes: set[tuple[int, int]], grace_s: float = 60) -> None:
    """SIGTERM to each (pid, start time) still the same process, SIGKILL to those left after
    ``grace_s``; returns once all are gone (or after a second grace period)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, start in processes:
            if start_time(pid) == start:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        deadline = time.monotonic() + grace_s
        while any(start_time(p) == s for p, s in processes) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        if not any(start_time(p) == s for p, s in processes):
            return


@contextmanager
def _private_head(env: dict[str, str]):
    """A Ray head on 127.0.0.1 with its own temp folder and free ports; yields ``(env, dashboard
    port)``. Its processes carry a token in their environment (Ray passes the environment on to
    every process it starts, the job's included): exactly those are ended afterwards."""
    token = secrets.token_hex(8)
    env = {**env, TOKEN_ENV: token}
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    # every fixed default port (client server 10001, agent 52365, ...) taken free instead, so
    # that a Ray another user runs on this machine neither collides nor is reached
    flags = ("--ray-client-server-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
             "--metrics-export-port", "--runtime-env-agent-port", "--node-manager-port", "--object-manager-port")
    gcs, dashboard, *others = _free_ports(2 + len(flags))
    head = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--node-ip-address", "127.0.0.1",
            "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
            "--num-cpus", "2", "--include-dashboard", "true", "--temp-dir", temp_dir,
            *[arg for flag, port in zip(flags, others) for arg in (flag, str(port))]]
    try:
        subprocess.run(head, check=True, env=env, timeout=600, capture_output=True)
        yield env, dashboard
    finally:
        _end(marked(token))
        shutil.rmtree(temp_dir, ignore_errors=True)


def _job_api_ready(ray: list[str], address: list[str], env: dict[str, str], timeout_s: float = 600) -> None:
    """Wait until the head's job API answers (right after `ray start` its job agent may not yet)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if subprocess.run([*ray, "job", "list", *address], env=env, timeout=300, capture_output=True).returncode == 0:
            return
        time.sleep(1.0)  # each try starts a Python process: poll once a second
    raise AssertionError(f"the head's job API did not answer within {timeout_s} s")


@pytest.mark.timeout(3600)
def test_ray_job_submit_on_a_loopback_head(small_job, tmp_path):
    clips, config = small_job
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           # the cluster and the job client share a token, as on a real token-auth cluster
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    with _private_head(env) as (env, dashboard):
        out = tmp_path / "out"
        address = ["--address", f"http://127.0.0.1:{dashboard}"]
        submission = f"multishot-test-{secrets.token_hex(4)}"
        _job_api_ready(ray, address, env)
        for _ in range(5):
            job = subprocess.run(
                [*ray, "job", "submit", *address, "--submission-id", submission, "--", *_command(config, clips, out)],
                env=env, timeout=1500, capture_output=True, text=True,
            )
            dropped = "Connection aborted" in job.stderr or "Connection refused" in job.stderr
            exists = subprocess.run([*ray, "job", "status", *address, submission], env=env, timeout=300,
                                    capture_output=True).returncode == 0
            if not dropped or exists:
                break
            _job_api_ready(ray, address, env)  # a dropped connection: wait for the API, then retry
        if dropped and exists:  # created before the connection dropped: follow it to its end
            job = subprocess.run([*ray, "job", "logs", *address, "--follow", submission], env=env,
                                 timeout=1500, capture_output=True, text=True)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "multishot pipeline" in job.stdout  # the run's summary came back through the job logs
        assert "joined the Ray cluster" in job.stdout  # the job's cluster, not a private one
        shards, keys, _ = _state(out)
        assert shards and keys


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
