"""The OpenAI-compatible captioner backend (issue 34) against a stand-in chat endpoint on loopback.

The real ``openai`` client talks HTTP to :mod:`openai_server` (``/v1/chat/completions`` with
image parts, as vLLM serves Qwen2.5-VL); samples are the real H.264 clips of ``test_annotate``
(cut from the Sintel trailer) in real WebDataset shards. The same captioner as the Gemini path:
schema, checks, corrective re-asks, retries, rate limit and cache are shared.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

import openai_server as osrv
from multishot.annotate.backend_openai import frame_indices, json_text
from multishot.annotate.captioner import Captioner
from multishot.annotate.config import CONFIG_DIR, AnnotateConfig
from multishot.cli import main as multishot_main
from multishot.config import ConfigError, load_config
from multishot.dataset.shards import ShardSetLayout, read_shard
from multishot.dataset.storage import resolve
from test_annotate import FAST, SAMPLES, SHARDS, samples, shard_set  # noqa: F401 (fixtures)

API_KEY = "sk-standin-vllm-4e1a9c7b2d"
KEY_ENV = "MULTISHOT_TEST_VLLM_KEY"
MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"


@pytest.fixture
def server(monkeypatch):
    """The stand-in endpoint, requiring ``API_KEY``; stopped afterwards."""
    monkeypatch.setenv(KEY_ENV, API_KEY)
    with osrv.OpenAIServer(API_KEY, MODEL) as srv:
        yield srv


def _config(server, **overrides) -> AnnotateConfig:
    settings = {**FAST, "backend": "openai", "base_url": server.base_url, "model": MODEL, "api_key_env": KEY_ENV,
                "frames": 4, "frame_size": 160, **overrides}
    return AnnotateConfig(**settings)


def _captioner(server, tmp_path, **overrides) -> Captioner:
    captioner = Captioner.from_env(_config(server, **overrides), cache_dir=str(tmp_path / "cache"))
    assert captioner is not None
    return captioner


def _parts(request: dict) -> list[dict]:
    return request["json"]["messages"][0]["content"]


def _prompt_of(request: dict) -> str:
    return _parts(request)[-1]["text"]


def test_frames_as_image_parts(server, samples, tmp_path):
    record, mp4 = samples["sintel-b"]  # 33 frames: shots [0, 12), [12, 24), [24, 33)
    captioner = _captioner(server, tmp_path)
    out = captioner.annotate(record, mp4)

    assert out.caption_status == "ok" and out.caption_error is None and out.caption_model == MODEL
    assert out.global_caption.endswith("This scene contains 3 shots.")
    assert [s.caption for s in out.shots] == [
        f"Medium shot {i + 1}, static camera: [character{1 + i % 2}] moves forward." for i in range(3)
    ]
    (request,) = server.chat_requests()
    assert request["headers"]["authorization"] == f"Bearer {API_KEY}"
    body = request["json"]
    assert body["model"] == MODEL and body["temperature"] == 0.2 and body["max_tokens"] == 1024
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["properties"].keys() >= {"global_caption", "shot_captions"}
    parts = _parts(request)
    # 4 evenly spaced frames of 33 (centres of 4 spans): 4, 12, 20, 28, each after its time label
    labels = [p["text"] for p in parts[:-1] if p["type"] == "text"]
    assert labels == [f"Frame at {f / 16:.2f} s:" for f in (4, 12, 20, 28)]
    assert [p["type"] for p in parts[:-1]] == ["text", "image_url"] * 4
    assert len(server.images) == 4
    assert all(im.format == "JPEG" and max(im.size) == 160 and im.size == (160, 92) for im in server.images)
    prompt = _prompt_of(request)
    assert "exactly 3 shots" in prompt and "Shot 2: 0.75 s to 1.50 s (cut at 0.75 s)" in prompt
    words = sum(len(p["text"].split()) for p in parts if p["type"] == "text")  # the stand-in's count
    assert captioner.usage == {"requests": 1, "input_tokens": 4000 + words,
                               "output_tokens": len(osrv.caption_json(3).split())}


def test_every_shot_gets_a_frame():
    assert frame_indices(33, 4, [(0, 12), (12, 24), (24, 33)]) == [4, 12, 20, 28]
    # a 3-frame shot between two samples gets its middle frame
    assert frame_indices(40, 2, [(0, 12), (12, 15), (15, 40)]) == [10, 13, 30]
    assert frame_indices(5, 8, [(0, 5)]) == [0, 1, 2, 3, 4]


def test_video_url_part(server, samples, tmp_path):
    record, mp4 = samples["sintel-a"]
    out = _captioner(server, tmp_path, media="video").annotate(record, mp4)
    assert out.caption_status == "ok"
    assert server.videos == [mp4] and server.images == []
    assert [p["type"] for p in _parts(server.chat_requests()[0])] == ["video_url", "text"]


def test_429_then_success_honours_retry_after(server, samples, tmp_path):
    record, mp4 = samples["sintel-a"]
    server.queue(osrv.error(429, retry_after="1", message="rate limited"))
    started = time.monotonic()
    out = _captioner(server, tmp_path).annotate(record, mp4)
    assert out.caption_status == "ok" and len(server.chat_requests()) == 2
    assert time.monotonic() - started >= 1.0  # backoff alone is <= 0.05 s: Retry-After was waited


def test_timeout_is_retried(server, samples, tmp_path):
    record, mp4 = samples["sintel-a"]
    server.queue(osrv.stall(1.5))
    out = _captioner(server, tmp_path, request_timeout_s=0.5).annotate(record, mp4)
    assert out.caption_status == "ok" and len(server.chat_requests()) == 2


def test_5xx_until_retries_run_out_fails_with_reason(server, samples, tmp_path):
    record, mp4 = samples["sintel-c"]
    server.queue(*[osrv.error(503, message="engine overloaded")] * 3)
    out = _captioner(server, tmp_path).annotate(record, mp4)
    assert out.caption_status == "failed" and out.global_caption == ""
    assert out.caption_error.startswith("chat.completions sintel-c: HTTP 503: engine overloaded")
    assert "gave up after 3 tries" in out.caption_error
    assert len(server.chat_requests()) == 3


def test_client_error_is_not_retried(server, samples, tmp_path):
    record, mp4 = samples["sintel-c"]
    out = _captioner(server, tmp_path, model="Qwen/not-served").annotate(record, mp4)
    assert out.caption_status == "failed" and "HTTP 404" in out.caption_error and "not-served" in out.caption_error
    assert len(server.chat_requests()) == 1


def test_wrong_key_fails_without_leaking_it(server, samples, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_ENV, "sk-wrong-key-0000")
    out = _captioner(server, tmp_path).annotate(*samples["sintel-c"])
    assert out.caption_status == "failed" and "HTTP 401" in out.caption_error
    assert "sk-wrong-key-0000" not in out.caption_error + caplog.text


def test_malformed_json_gets_corrective_retry(server, samples, tmp_path):
    record, mp4 = samples["sintel-a"]
    server.queue(osrv.reply_text('{"global_caption": "[character1] runs", "shot_captions": [ {"shot": 1,'))
    out = _captioner(server, tmp_path).annotate(record, mp4)
    assert out.caption_status == "ok"
    first, second = server.chat_requests()
    turns = second["json"]["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"].startswith('{"global_caption": "[character1] runs"')
    assert "not the requested JSON object" in turns[2]["content"]
    assert turns[0] == first["json"]["messages"][0]  # the frames are sent again, unchanged


def test_no_choices_and_garbage_bodies(server, samples, tmp_path):
    record, mp4 = samples["sintel-a"]
    server.queue(osrv.no_choices(), osrv.no_choices())
    out = _captioner(server, tmp_path).annotate(record, mp4)
    assert out.caption_status == "failed" and "the reply was empty" in out.caption_error

    server.queue(osrv.garbage(), osrv.garbage())
    out = _captioner(server, tmp_path / "b").annotate(record, mp4)
    assert out.caption_status == "failed"
    assert out.caption_error.startswith("the endpoint's answer is not a chat completion (JSONDecodeError")


def test_fenced_json_is_accepted(server, samples, tmp_path):
    record, mp4 = samples["sintel-a"]
    server.queue(osrv.reply_text("Here are the captions:\n```json\n" + osrv.caption_json(2) + "\n```\n"))
    out = _captioner(server, tmp_path).annotate(record, mp4)
    assert out.caption_status == "ok" and len(server.chat_requests()) == 1
    assert json_text('x {"a": 1} y') == '{"a": 1}' and json_text("no json") == "no json"


def test_server_without_json_schema_is_asked_for_plain_json(monkeypatch, samples, tmp_path):
    monkeypatch.setenv(KEY_ENV, API_KEY)
    with osrv.OpenAIServer(API_KEY, MODEL, json_schema=False) as server:
        captioner = _captioner(server, tmp_path)
        assert captioner.annotate(*samples["sintel-a"]).caption_status == "ok"
        assert captioner.annotate(*samples["sintel-c"]).caption_status == "ok"
    first, second, third = server.chat_requests()
    assert "response_format" in first["json"]
    assert "response_format" not in second["json"] and "response_format" not in third["json"]


def test_concurrency_and_rate_limit(server, samples, tmp_path):
    work = [samples[k] for k in SAMPLES] * 2
    server.queue(*[osrv.stall(0.2)] * len(work))
    captioner = _captioner(server, tmp_path / "a", concurrency=2)
    with ThreadPoolExecutor(6) as pool:
        assert {r.caption_status for r in pool.map(lambda s: captioner.annotate(*s), work)} == {"ok"}
    assert server.max_in_flight == 2

    server.requests.clear()
    captioner = _captioner(server, tmp_path / "b", concurrency=3, requests_per_minute=600)  # one start per 0.1 s
    began = time.monotonic()  # the server stamps arrivals with the same clock (same process)
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda s: captioner.annotate(*s), work[:3]))
    arrivals = sorted(r["t"] for r in server.chat_requests())
    # the k-th start's slot is >= began + 0.1·k and a request arrives after its slot (gaps between
    # arrivals are not asserted: a busy machine may deliver a delayed first one late)
    assert len(arrivals) == 3
    assert all(t - began >= 0.1 * k - 0.005 for k, t in enumerate(arrivals)), [t - began for t in arrivals]


def test_config_checks(tmp_path):
    config = load_config(CONFIG_DIR / "openai_vllm.yaml", AnnotateConfig)
    assert config.backend == "openai" and config.model == MODEL and config.api_key_env == "VLLM_API_KEY"
    for settings, key in [({"backend": "openai", "model": MODEL}, "base_url"),
                          ({"backend": "openai", "base_url": "http://x/v1"}, "model"),
                          ({"api_key_env": "sk-abc=1"}, "api_key_env")]:
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(settings))
        with pytest.raises(ConfigError, match=key):
            load_config(path, AnnotateConfig)


def _tree_bytes(*roots: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for root in roots for p in root.rglob("*") if p.is_file()}


def test_cli_end_to_end_cache_and_no_key_leak(server, shard_set, samples, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    out1, out2, cache = tmp_path / "out1", tmp_path / "out2", tmp_path / "cache"

    def annotate(out: Path) -> list[dict]:
        before = len(server.chat_requests())
        args = ["annotate", "--shards", shard_set, "--output", str(out), "--config",
                str(CONFIG_DIR / "openai_vllm.yaml"), "--cache-dir", str(cache),
                "--set", f"base_url={server.base_url}", "--set", f"api_key_env={KEY_ENV}",
                "--set", "backoff_initial_s=0.01", "--set", "backoff_max_s=0.05", "--set", "max_attempts=2",
                "--set", "frame_size=160", "--set", "concurrency=1"]
        assert multishot_main(args) == 0
        return server.chat_requests()[before:]

    server.queue(osrv.error(500), osrv.error(500))  # sintel-a fails for good (2 tries)
    assert len(annotate(out1)) == 2 + 2
    fs, _ = resolve(str(out1))
    layout = ShardSetLayout(str(out1))
    records = {r.key: r for name in SHARDS for r, _ in read_shard(fs, layout.shard(name))}
    assert records["sintel-a"].caption_status == "failed" and "HTTP 500" in records["sintel-a"].caption_error
    assert {records[k].caption_status for k in ("sintel-b", "sintel-c")} == {"ok"}
    assert records["sintel-b"].caption_model == MODEL
    resolved = yaml.safe_load((out1 / "annotate.resolved.yaml").read_text())
    assert resolved["backend"] == "openai" and resolved["api_key_env"] == KEY_ENV

    assert len(annotate(out2)) == 1  # a fresh OUT: b and c from the cache, only a asked again
    assert annotate(tmp_path / "out3") == []  # every reply now cached: no request at all
    assert len(list(cache.rglob("*.json"))) == 3

    written = _tree_bytes(out1, out2, tmp_path / "out3", cache)
    assert written and not [path for path, data in written.items() if API_KEY.encode() in data]
    assert base64.b64encode(API_KEY.encode()) not in b"".join(written.values())
    assert API_KEY not in caplog.text and API_KEY not in "".join(capsys.readouterr())
    assert all(r["headers"]["authorization"] == f"Bearer {API_KEY}" for r in server.requests)  # sent, only there


def test_cli_backend_via_set_and_missing_key(server, shard_set, tmp_path, monkeypatch, capsys):
    args = ["annotate", "--shards", shard_set, "--output", str(tmp_path / "out"),
            "--set", "backend=openai", "--set", f"base_url={server.base_url}", "--set", f"model={MODEL}",
            "--set", f"api_key_env={KEY_ENV}", "--set", "frames=2", "--set", "frame_size=96"]
    assert multishot_main(args) == 0
    assert len(server.chat_requests()) == 3 and len(server.images) == 3 * 2 + 1  # sintel-b: a shot gets its own
    report = json.loads((tmp_path / "out" / "report.json").read_text())["annotate"]
    assert report["ok"] == 3 and report["model"] == MODEL
    capsys.readouterr()

    monkeypatch.delenv(KEY_ENV)
    assert multishot_main([*args[:4], str(tmp_path / "out2"), *args[5:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("multishot annotate: no API key") and KEY_ENV in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out2").exists()


def test_pipeline_caption_stage_uses_the_openai_backend(server, samples, tmp_path):
    """The pipeline's caption stage (``pipeline.stages._caption``, the function its Ray actor
    runs) captions rendered samples through the backend its ``annotate`` section names."""
    from types import SimpleNamespace

    from multishot.pipeline.config import PipelineConfig
    from multishot.pipeline.stages import _caption
    from multishot.pipeline.task import RenderedSample

    config = PipelineConfig(output=str(tmp_path / "out"), annotate=_config(server).model_dump())
    task = SimpleNamespace(rendered=[RenderedSample(record=r, mp4=m) for r, m in samples.values()])
    _caption(config, "hash")(task)
    assert [r.record.caption_status for r in task.rendered] == ["ok"] * 3
    assert {r.record.caption_model for r in task.rendered} == {MODEL}
    assert len(server.chat_requests()) == 3
    assert len(list((tmp_path / "out" / "_work" / "captions").rglob("*.json"))) == 3
