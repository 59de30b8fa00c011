"""A local pipeline run starts its own Ray on 127.0.0.1 and joins nothing else.

``ray.init()`` without an address joins the cluster named in ``$TMPDIR/ray/ray_current_cluster``
(and waits forever when that cluster is gone). The run here is the real CLI, with Ray, on a 4 s
clip cut from the real footage, under a TMPDIR whose ``ray_current_cluster`` names a dead
cluster. While it runs, the test records the listening sockets of every process descending
from it (the run's GCS, raylet, workers, agents): all must be on loopback.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

from footage_clips import FOOTAGE, cut_clip

REPO = Path(__file__).resolve().parents[1]


def _listening(proc: psutil.Process) -> set[tuple[str, str, int]]:
    found = set()
    try:
        family = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return found
    for p in family:
        try:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    found.add((p.name(), c.laddr.ip, c.laddr.port))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def test_local_run_starts_its_own_loopback_ray_despite_a_stale_cluster_file(tmp_path):
    clip = tmp_path / "in" / "sintel.mp4"
    cut_clip(FOOTAGE / "archive" / "sintel_film_excerpt_26s.mp4", 2.0, 4.0, clip)
    config = tmp_path / "quick.yaml"
    config.write_text(yaml.safe_dump({
        "detect": {"backend": "content"}, "analyse": {"ocr_backend": "none"},
        "pack": {"buckets": [{"name": "2s", "target_s": 2, "tolerance_s": 1}]},
        "render": {"width": 160, "height": 96}, "ray": {"num_cpus": 2}}))
    # a short TMPDIR: Ray's socket paths under it must fit AF_UNIX's 107 bytes
    tmp = Path(tempfile.mkdtemp(prefix="rp", dir="/tmp"))
    (tmp / "ray").mkdir(parents=True)
    # a cluster that is gone (nothing listens on port 9 of loopback): ray.init() would wait on it
    (tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # the run must not rely on the caller's setting
    log = (tmp_path / "run.log").open("w+")
    run = subprocess.Popen([sys.executable, "-m", "multishot", "pipeline", "run", "--config", str(config),
                            "--input", str(clip.parent), "--output", str(tmp_path / "out"), "--no-progress"],
                           cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    listening: set[tuple[str, str, int]] = set()
    deadline = time.monotonic() + 600  # generous: a busy 2-core machine
    try:
        while run.poll() is None and time.monotonic() < deadline:
            listening |= _listening(psutil.Process(run.pid))
            time.sleep(0.2)  # a sampling interval, not a synchronisation
    finally:
        if run.poll() is None:
            run.kill()
        run.wait()
        stale = (tmp / "ray" / "ray_current_cluster").read_text()
        shutil.rmtree(tmp, ignore_errors=True)
    log.seek(0)
    text = log.read()
    assert run.returncode == 0, text[-4000:]
    assert "started a private local Ray on 127.0.0.1" in text, text[-4000:]
    assert any(name == "gcs_server" for name, _, _ in listening), listening  # we did see Ray's sockets
    assert all(_loopback(ip) for _, ip, _ in listening), sorted(listening)
    assert stale == "127.0.0.1:9"  # left as it was
