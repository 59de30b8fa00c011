"""Gemini captioning (issue 4) against a stand-in Gemini service on loopback.

The real google-genai client talks HTTP to :mod:`gemini_server` (routes ``/v1`` and ``/v1beta``,
the resumable Files API upload); samples are real H.264 clips cut from the Sintel trailer
(../shared/footage, CC-BY Blender Foundation) and written as real WebDataset shards.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import logging
import shutil
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from multishot.annotate.captioner import Captioner
from multishot.annotate.config import CONFIG_DIR, AnnotateConfig
from multishot.annotate.prompt import PromptTemplate
from multishot.annotate.reply import CaptionReply, check_reply, final_captions
from multishot.annotate.retry import backoff_s, retry_after_s
from multishot.dataset.record import SampleRecord, Shot, latent_cut_frame, num_latent_frames
from multishot.dataset.shards import ShardSetLayout, read_shard, write_shard
from multishot.dataset.storage import read_json, resolve, write_json
from multishot.cli import main as multishot_main
from multishot.config import load_config

FOOTAGE = Path(__file__).resolve().parents[2] / "shared" / "footage" / "archive" / "sintel_trailer_480p.mp4"
API_KEY = "AIzaTEST-standin-key-7f3c9e1d5b"
FPS = 16
WIDTH, HEIGHT = 416, 240


def _load_server_module():
    path = Path(__file__).parent / "helpers" / "gemini_server.py"
    spec = importlib.util.spec_from_file_location("gemini_server", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gemini_server"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


gs = _load_server_module()


# --- real footage → rendered multi-shot samples → shards ------------------------------------


def _decode(start_s: float, count: int) -> list[av.VideoFrame]:
    """``count`` consecutive frames of the trailer from ``start_s``, scaled to the sample size."""
    with av.open(str(FOOTAGE)) as container:
        stream = container.streams.video[0]
        container.seek(int(start_s / stream.time_base), stream=stream)
        frames = []
        for frame in container.decode(stream):
            if frame.time < start_s:
                continue
            frames.append(frame.reformat(width=WIDTH, height=HEIGHT, format="yuv420p"))
            if len(frames) == count:
                return frames
    raise AssertionError("footage too short")


def _render(segments: list[tuple[float, int]]) -> bytes:
    """An H.264 mp4 at 16 fps joining ``(source start s, frames)`` segments: one shot each."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=FPS, options={"preset": "ultrafast", "crf": "30"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        index = 0
        for start_s, count in segments:
            for frame in _decode(start_s, count):
                frame.pts, frame.time_base = index, Fraction(1, FPS)  # the sample's own 16 fps clock
                index += 1
                out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return buf.getvalue()


def _record(key: str, segments: list[tuple[float, int]]) -> SampleRecord:
    shots, start = [], 0
    for i, (source_s, count) in enumerate(segments):
        src0 = round(source_s * 24)
        shots.append(Shot(
            index=i, source_start_frame=src0, source_end_frame=src0 + count, source_start_s=source_s,
            source_end_s=source_s + count / 24, start_frame=start, end_frame=start + count,
            latent_start_frame=0 if start == 0 else latent_cut_frame(start), brightness=80.0,
            ocr_text_ratio=0.0, aesthetic=None,
        ))
        start += count
    cuts = [s.start_frame for s in shots[1:]]
    return SampleRecord(
        key=key, source=str(FOOTAGE), source_id="sintel", bucket="2s", target_duration_s=2.0, fps=FPS,
        width=WIDTH, height=HEIGHT, num_frames=start, num_latent_frames=num_latent_frames(start),
        duration_s=start / FPS, cut_frames=cuts, latent_cut_frames=[latent_cut_frame(c) for c in cuts],
        shots=shots, aesthetic_status="skipped", samples_hash="test",
    )


#: sample key → shots as (trailer start s, frames); 33 frames = 4k+1 at 16 fps
SAMPLES = {
    "sintel-a": [(4.0, 20), (12.5, 13)],
    "sintel-b": [(20.0, 12), (27.0, 12), (33.0, 9)],
    "sintel-c": [(40.0, 16), (45.5, 17)],
}
SHARDS = {"sintel-00000.tar": ["sintel-a", "sintel-b"], "sintel-00001.tar": ["sintel-c"]}


@pytest.fixture(scope="module")
def samples() -> dict[str, tuple[SampleRecord, bytes]]:
    return {key: (_record(key, segs), _render(segs)) for key, segs in SAMPLES.items()}


@pytest.fixture(scope="module")
def shard_set(samples, tmp_path_factory) -> str:
    """A shard set in the pipeline's layout: 2 shards, samples index, shots/rejects tables, report."""
    root = str(tmp_path_factory.mktemp("shards"))
    fs, _ = resolve(root)
    layout = ShardSetLayout(root)
    infos = [write_shard(fs, layout.shard(name), [samples[k] for k in keys]) for name, keys in SHARDS.items()]
    write_json(fs, layout.manifest, {"shards": [i.to_dict() for i in infos]})
    Path(root, "index").mkdir()
    shard_of = {k: name for name, keys in SHARDS.items() for k in keys}
    pq.write_table(pa.table({
        "key": list(SAMPLES), "shard": [shard_of[k] for k in SAMPLES],
        "num_shots": [len(SAMPLES[k]) for k in SAMPLES], "caption_status": ["pending"] * len(SAMPLES),
    }), layout.samples_index)
    pq.write_table(pa.table({"source_id": ["sintel"], "shot": [0]}), layout.shots_table)
    pq.write_table(pa.table({"source": ["bad.mp4"], "reason": ["cannot open"]}), layout.rejects_table)
    write_json(fs, layout.report, {"pipeline": {"samples": 3}})
    return root


# --- the stand-in service and a captioner pointed at it --------------------------------------


@pytest.fixture
def server(monkeypatch):
    """The stand-in, reached through the SDK's own GOOGLE_GEMINI_BASE_URL; stopped afterwards."""
    with gs.GeminiServer(API_KEY) as srv:
        for var in ("GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_API_VERSION", "GOOGLE_CLOUD_PROJECT"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("GEMINI_API_KEY", API_KEY)
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", srv.base_url)
        yield srv


#: short backoffs so retries cost milliseconds
FAST = dict(
    max_attempts=3, backoff_initial_s=0.01, backoff_max_s=0.05, requests_per_minute=60000,
    file_poll_interval_s=0.01, request_timeout_s=5, concurrency=2,
)


def _captioner(tmp_path, **overrides) -> Captioner:
    captioner = Captioner.from_env(AnnotateConfig(**{**FAST, **overrides}), cache_dir=str(tmp_path / "cache"))
    assert captioner is not None
    return captioner


def _prompt_of(request: dict) -> str:
    return "\n".join(p.get("text", "") for p in request["json"]["contents"][0]["parts"])


# --- tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v1beta"])
def test_happy_path_inline(server, samples, tmp_path, version):
    record, mp4 = samples["sintel-b"]
    out = _captioner(tmp_path, api_version=version).annotate(record, mp4)

    assert out.caption_status == "ok" and out.caption_error is None
    assert out.caption_model == "gemini-2.5-flash"
    assert out.global_caption.startswith("[character1], a girl") and out.global_caption.endswith(
        "This scene contains 3 shots."
    )
    assert [s.caption for s in out.shots] == [
        f"Medium shot {i + 1}, static camera: [character{1 + i % 2}] moves forward." for i in range(3)
    ]
    assert out.prompt().count("[shot cut]") == 2
    assert out.model_dump(exclude={"shots", "global_caption", "caption_status", "caption_model"}) == record.model_dump(
        exclude={"shots", "global_caption", "caption_status", "caption_model"}
    )
    (request,) = server.generate_requests()
    assert request["path"] == f"/{version}/models/gemini-2.5-flash:generateContent"
    assert server.videos == [mp4]  # inline base64 of the exact rendered bytes
    prompt = _prompt_of(request)
    assert "exactly 3 shots" in prompt and "Write all captions in English" in prompt
    # cut times in the sample's seconds: frames 12 and 24 at 16 fps
    assert "Shot 2: 0.75 s to 1.50 s (cut at 0.75 s)" in prompt and "Shot 3: 1.50 s to 2.06 s (cut at 1.50 s)" in prompt
    assert request["json"]["generationConfig"]["responseSchema"]["properties"].keys() >= {"global_caption", "shot_captions"}


def test_large_video_goes_through_files_api(server, samples, tmp_path):
    record, mp4 = samples["sintel-a"]
    out = _captioner(tmp_path, inline_max_bytes=1024).annotate(record, mp4)

    assert out.caption_status == "ok"
    steps = [(r["method"], r["path"]) for r in server.requests]
    assert steps[0] == ("POST", "/upload/v1beta/files")  # resumable start
    chunk = server.requests[1]
    assert chunk["query"].startswith("upload_id=") and chunk["headers"]["x-goog-upload-command"] == "upload, finalize"
    polls = [s for s in steps if s[0] == "GET"]
    assert len(polls) == 2  # PROCESSING once, then ACTIVE
    (request,) = server.generate_requests()
    part = request["json"]["contents"][0]["parts"][0]
    assert part["fileData"]["file_uri"].endswith("/v1beta/files/standin-1") and "inlineData" not in part
    assert server.videos == [mp4]
    assert steps[-1] == ("DELETE", "/v1beta/files/standin-1") and server.files == {}


def test_429_then_success_honours_retry_after(server, samples, tmp_path):
    record, mp4 = samples["sintel-a"]
    server.queue(gs.error(429, retry_after="1", message="quota"))
    started = time.monotonic()
    out = _captioner(tmp_path).annotate(record, mp4)

    assert out.caption_status == "ok"
    assert len(server.generate_requests()) == 2
    assert time.monotonic() - started >= 1.0  # backoff alone is <= 0.05 s: Retry-After was waited


def test_timeout_is_retried(server, samples, tmp_path):
    record, mp4 = samples["sintel-a"]
    server.queue(gs.stall(1.5))
    out = _captioner(tmp_path, request_timeout_s=0.5).annotate(record, mp4)
    assert out.caption_status == "ok" and len(server.generate_requests()) == 2


def test_concurrency_and_rate_limit(server, samples, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    work = [samples[k] for k in SAMPLES] * 2
    server.queue(*[gs.stall(0.2)] * len(work))
    captioner = _captioner(tmp_path / "a", concurrency=2)
    with ThreadPoolExecutor(6) as pool:
        assert {r.caption_status for r in pool.map(lambda s: captioner.annotate(*s), work)} == {"ok"}
    assert server.max_in_flight == 2  # six threads, two samples in flight

    server.requests.clear()
    captioner = _captioner(tmp_path / "b", concurrency=3, requests_per_minute=600)  # one start per 0.1 s
    began = time.monotonic()  # the server stamps arrivals with the same clock (same process)
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda s: captioner.annotate(*s), work[:3]))
    arrivals = sorted(r["t"] for r in server.generate_requests())
    # the limiter gives the k-th start a slot >= began + 0.1·k and a request arrives after its
    # slot, so the k-th arrival is no earlier, however late a busy machine delivers them (their
    # gaps are not asserted: a delayed first request can arrive right before the second)
    assert len(arrivals) == 3
    assert all(t - began >= 0.1 * k - 0.005 for k, t in enumerate(arrivals)), \
        [t - began for t in arrivals]


def test_5xx_until_retries_run_out_fails_and_keeps_sample(server, samples, tmp_path):
    record, mp4 = samples["sintel-c"]
    old = record.model_dump()  # captioned earlier by another model: a failed redo clears that
    old.update(caption_status="ok", global_caption="Old.", caption_model="old-model")
    for shot in old["shots"]:
        shot["caption"] = "Old shot."
    server.queue(*[gs.error(503, message="overloaded")] * 3)
    out = _captioner(tmp_path).annotate(SampleRecord.model_validate(old), mp4)

    assert out.caption_status == "failed" and out.key == record.key and out.cut_frames == record.cut_frames
    assert "HTTP 503" in out.caption_error and "gave up after 3 tries" in out.caption_error
    assert len(server.generate_requests()) == 3
    assert out.global_caption == "" and all(s.caption == "" for s in out.shots)
    assert out.caption_model == "gemini-2.5-flash"
    assert SampleRecord.from_json(out.to_json()) == out


def test_client_error_is_not_retried(server, samples, tmp_path):
    record, mp4 = samples["sintel-c"]
    server.queue(gs.error(400, message="bad video"))
    out = _captioner(tmp_path).annotate(record, mp4)
    assert out.caption_status == "failed" and "HTTP 400" in out.caption_error and "bad video" in out.caption_error
    assert len(server.generate_requests()) == 1


def test_malformed_json_gets_corrective_retry(server, samples, tmp_path):
    record, mp4 = samples["sintel-a"]
    server.queue(gs.reply_text('{"global_caption": "[character1] runs", "shot_captions": [ {"shot": 1,'))
    out = _captioner(tmp_path).annotate(record, mp4)

    assert out.caption_status == "ok"
    first, second = server.generate_requests()
    turns = second["json"]["contents"]
    assert [t["role"] for t in turns] == ["user", "model", "user"]
    assert turns[1]["parts"][0]["text"].startswith('{"global_caption": "[character1] runs"')
    assert "not the requested JSON object" in turns[2]["parts"][0]["text"]


def test_malformed_twice_fails_with_reason(server, samples, tmp_path):
    record, mp4 = samples["sintel-a"]
    server.queue(gs.reply_text("not json"), gs.reply_text("still not json"))
    out = _captioner(tmp_path).annotate(record, mp4)
    assert out.caption_status == "failed"
    assert out.caption_error.startswith("invalid reply after 2 tries: the reply is not the requested JSON")


def test_wrong_shot_count_gets_corrective_retry(server, samples, tmp_path):
    record, mp4 = samples["sintel-b"]
    server.queue(gs.reply(num_shots=2))
    out = _captioner(tmp_path).annotate(record, mp4)

    assert out.caption_status == "ok" and len([s for s in out.shots if s.caption]) == 3
    correction = server.generate_requests()[1]["json"]["contents"][2]["parts"][0]["text"]
    assert "expected exactly 3 shot_captions, got 2" in correction


def _reply(global_caption: str, *captions: str) -> CaptionReply:
    return CaptionReply.model_validate(
        {"global_caption": global_caption, "shot_captions": [{"shot": i + 1, "caption": c} for i, c in enumerate(captions)]}
    )


def test_reply_checks():
    good = _reply("[character1], a knight, meets [character2].", "Close-up: [character1] smiles.", "Wide shot of [character2].")
    assert check_reply(good, 2) == []
    assert final_captions(good, 2)[0].endswith("meets [character2]. This scene contains 2 shots.")
    cases = {
        "uses [character3], which global_caption does not introduce": _reply("[character1] waits.", "[character3] runs."),
        "write tags exactly as [character1]": _reply("[Character 1] waits.", "[character1] runs."),
        "must introduce [character1], [character2], … in order": _reply("[character2] waits.", "[character2] runs."),
        "contains the reserved tag [shot cut]": _reply("[character1] waits.", "[character1] runs [shot cut]"),
        "the caption of shot 1 is empty": _reply("[character1] waits.", "  "),
        "global_caption says 4 shots, the clip has 1": _reply("A room. This scene contains 4 shots.", "A wall."),
        "shot numbers must be 1..1 in order, got [2]": CaptionReply.model_validate(
            {"global_caption": "A room.", "shot_captions": [{"shot": 2, "caption": "A wall."}]}
        ),
    }
    for expected, reply in cases.items():
        problems = check_reply(reply, 1 if len(reply.shot_captions) == 1 else 2)
        assert any(expected in p for p in problems), (expected, problems)
        with pytest.raises(ValueError):
            final_captions(reply, len(reply.shot_captions))


def test_retry_after_and_backoff():
    from google.genai import errors

    class Response:
        def __init__(self, headers):
            self.headers = headers

    plain = errors.APIError(429, {"error": {"code": 429}}, Response({"retry-after": "7"}))
    assert retry_after_s(plain) == 7.0
    dated = errors.APIError(429, {}, Response({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}))
    assert retry_after_s(dated) == 0.0  # a date in the past: no wait
    info = {"error": {"code": 429, "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "13s"}]}}
    assert retry_after_s(errors.APIError(429, info, Response({}))) == 13.0
    assert retry_after_s(errors.APIError(503, {}, Response({}))) is None
    delays = [backoff_s(a, 1.0, 10.0) for a in range(1, 8)]
    assert all(0.5 * min(10, 2 ** (a - 1)) <= d <= min(10, 2 ** (a - 1)) for a, d in zip(range(1, 8), delays))


def test_default_config_file_and_template(tmp_path):
    assert load_config(CONFIG_DIR / "default.yaml", AnnotateConfig) == AnnotateConfig()
    template = PromptTemplate.load(AnnotateConfig().prompt_template, "English")
    assert template.version != PromptTemplate(template.text, "German").version
    bad = tmp_path / "bad.txt"
    bad.write_text("Describe $num_shots shots of $movie.")
    with pytest.raises(ValueError, match="movie"):
        PromptTemplate.load(bad, "English")


def test_no_credentials(monkeypatch, shard_set, tmp_path, capsys):
    for var in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    assert Captioner.from_env(AnnotateConfig()) is None
    assert multishot_main(["annotate", "--shards", shard_set, "--output", str(tmp_path / "out")]) == 2
    assert "set GEMINI_API_KEY" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _tree_bytes(*roots: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for root in roots for p in root.rglob("*") if p.is_file()}


def test_cli_shard_set_cache_resume_and_no_key_leak(server, shard_set, samples, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    config = tmp_path / "annotate.yaml"
    config.write_text(json.dumps({**FAST, "concurrency": 1}))  # one at a time: the 503s hit sintel-a
    out1, out2, cache = tmp_path / "out1", tmp_path / "out2", tmp_path / "cache"

    def annotate(out: Path, *extra: str) -> list[dict]:
        before = len(server.generate_requests())
        args = ["annotate", "--shards", shard_set, "--output", str(out), "--config", str(config), "--cache-dir", str(cache)]
        assert multishot_main([*args, *extra]) == 0
        return server.generate_requests()[before:]

    server.queue(*[gs.error(503)] * 3)
    assert len(annotate(out1)) == 3 + 2  # sintel-a: 3 failed tries; b and c: one each

    layout, src = ShardSetLayout(str(out1)), ShardSetLayout(shard_set)
    manifest = read_json(resolve(str(out1))[0], layout.manifest)["shards"]
    assert [s["name"] for s in manifest] == list(SHARDS)
    for entry in manifest:
        data = Path(layout.shard(entry["name"])).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    fs, _ = resolve(str(out1))
    records = {}
    for name, keys in SHARDS.items():
        pairs = list(read_shard(fs, layout.shard(name)))
        assert [r.key for r, _ in pairs] == keys
        for record, mp4 in pairs:
            assert mp4 == samples[record.key][1]
            records[record.key] = record
    assert records["sintel-a"].caption_status == "failed" and "HTTP 503" in records["sintel-a"].caption_error
    assert records["sintel-b"].caption_status == records["sintel-c"].caption_status == "ok"
    index = pq.read_table(layout.samples_index).to_pydict()
    assert index["key"] == list(SAMPLES) and index["num_shots"] == [2, 3, 2]
    assert index["caption_status"] == ["failed", "ok", "ok"]
    assert index["caption_error"][1:] == [None, None] and "503" in index["caption_error"][0]
    for table in ("shots_table", "rejects_table"):
        assert Path(getattr(layout, table)).read_bytes() == Path(getattr(src, table)).read_bytes()
    report = read_json(fs, layout.report)
    assert report["pipeline"] == {"samples": 3} and report["annotate"]["failed"] == 1 and report["annotate"]["ok"] == 2

    assert annotate(out1) == []  # resumed: both shards complete in OUT
    redo = annotate(out1, "--retry-failed")
    assert len(redo) == 1 and "Shot 2: 1.25 s to 2.06 s" in _prompt_of(redo[0])  # only sintel-a; b from cache
    assert pq.read_table(layout.samples_index)["caption_status"].to_pylist() == ["ok", "ok", "ok"]
    assert annotate(out2) == []  # a fresh OUT: every reply comes from the cache

    bare = tmp_path / "bare"  # a shard set without its samples index: the index is rebuilt from records
    shutil.copytree(shard_set, bare)
    (bare / "index" / "samples.parquet").unlink()
    shard_set = str(bare)
    assert annotate(tmp_path / "out3") == []
    rebuilt = pq.read_table(tmp_path / "out3" / "index" / "samples.parquet").to_pydict()
    assert sorted(rebuilt["key"]) == list(SAMPLES) and set(rebuilt["caption_status"]) == {"ok"}
    assert rebuilt["num_shots"] == [len(SAMPLES[k]) for k in rebuilt["key"]]

    assert len(list(cache.rglob("*.json"))) == 3
    written = _tree_bytes(out1, out2, tmp_path / "out3", cache)
    assert written and not [path for path, data in written.items() if API_KEY.encode() in data]
    assert API_KEY not in caplog.text and API_KEY not in "".join(capsys.readouterr())
    assert all(r["headers"]["x-goog-api-key"] == API_KEY for r in server.requests)  # it was sent, only there
    assert base64.b64encode(API_KEY.encode()) not in b"".join(written.values())
