"""Commands that used to fail late or never (issue 31) fail at once with one line and exit 2:
``train`` / ``distill`` with a missing checkpoint, encoder folder or prompts file (checked before
torchrun starts a rank), ``train --launcher ray`` and the pipeline against a Ray address nobody
answers (``ray.init`` alone retries forever), ``precompute`` asked to write into its own input."""

from __future__ import annotations

import socket

import pytest
import yaml

from multishot.errors import UsageError
from multishot.ray_connect import check_reachable, gcs_endpoint
from test_cli_errors import assert_one_line_error, multishot


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_config(tmp_path, **model) -> str:
    shards = tmp_path / "latents"
    shards.mkdir(exist_ok=True)
    config = {"model": {"name": "tiny", "window_cross_attention": False, **model},
              "data": {"shards": [str(shards)], "kind": "latents", "num_workers": 0},
              "run": {"output_dir": str(tmp_path / "run"), "max_steps": 1, "tensorboard": False}}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_train_checks_init_from_before_launching(tmp_path):
    config = _train_config(tmp_path, init_from=str(tmp_path / "weights"))
    line = assert_one_line_error(multishot("train", "--config", config), "multishot train: model.init_from:",
                                 "no safetensors checkpoint", str(tmp_path / "weights"))
    assert "rank" not in line  # no rank was started


def test_distill_checks_every_path_before_launching():
    line = assert_one_line_error(multishot("distill", "--config", "configs/distill/wan22_5b.yaml"),
                                 "multishot distill:", "student.init_from", "teacher.init_from",
                                 "encoders.text_encoder", "prompts: no such file")
    assert "rank" not in line


def test_unreachable_ray_address_is_an_error_not_a_hang(tmp_path, monkeypatch):
    port = _closed_port()
    with pytest.raises(UsageError, match=f"cannot reach the Ray cluster at .*:{port}"):
        check_reachable(f"127.0.0.1:{port}", timeout_s=30)
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")  # as under `ray job submit`
    with pytest.raises(UsageError, match="cannot reach"):
        check_reachable(None, timeout_s=30)
    # TEST-NET-1 (RFC 5737) is never routed: no answer (or no route) within the timeout
    with pytest.raises(UsageError, match="cannot reach the Ray cluster at 192.0.2.2:6379"):
        check_reachable("192.0.2.2:6379", timeout_s=1)
    assert gcs_endpoint("ray://head.example:10001") == ("head.example", 10001)
    assert gcs_endpoint("local") is None
    with pytest.raises(UsageError, match="expected ray://HOST:PORT"):
        gcs_endpoint("ray://nohost")


def test_reachable_address_passes():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_reachable(f"127.0.0.1:{server.getsockname()[1]}", timeout_s=30)


def test_train_on_ray_against_a_dead_address_ends_in_one_line(tmp_path):
    result = multishot("train", "--launcher", "ray", "--ray-address", f"127.0.0.1:{_closed_port()}",
                       "--config", _train_config(tmp_path))
    assert_one_line_error(result, "multishot train: cannot reach the Ray cluster at 127.0.0.1:")


def test_precompute_refuses_to_read_its_own_output(tmp_path):
    config = _train_config(tmp_path)
    result = multishot("precompute", "--config", config, "--output", str(tmp_path / "latents"))
    assert_one_line_error(result, "multishot precompute:", "overlaps data.shards")
    result = multishot("precompute", "--config", config, "--out", str(tmp_path / "latents" / "inner"))
    assert_one_line_error(result, "multishot precompute:", "overlaps data.shards")
