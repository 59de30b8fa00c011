"""What one captioner backend costs per sample: Gemini and an OpenAI-compatible VLM endpoint.

Each backend captions the same real samples (2–3-shot H.264 clips cut from the Sintel trailer,
416×240, 16 fps, about 2 s) through the real client (google-genai / openai) against its
loopback stand-in (``tests/helpers/gemini_server.py``, ``openai_server.py``) with the project's
captioner (concurrency 4, no cache, no rate limit in the way). Measured per backend, median of
``--runs``:

- **samples per second**: samples captioned ÷ wall seconds of the run;
- **output tokens per second**: the ``usage`` output tokens the service reported (Gemini's
  ``candidatesTokenCount``, OpenAI's ``completion_tokens``) ÷ the same seconds; Cosmos-Curate
  names output tokens/s the captioning metric to optimise;
- **cost per 1,000 samples** where the backend bills: Gemini's from the reported token counts
  at a stated per-token price; a self-hosted vLLM endpoint sends no bill (its cost is the GPU's
  time, which the stand-in cannot measure).

The stand-ins answer at once with canned replies and their own token counts, so these numbers
measure **our client overhead** (frame extraction, JPEG/base64 encoding, HTTP, JSON, checks),
not a vision-language model. Writes ``annotate.json`` and ``annotate.md`` into ``--out``
(default benchmarks/results/annotate). Usage: ``python benchmarks/annotate.py [--samples 24] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import av

from harness import device_name, results_dir, test_helper, write_report
from multishot.annotate.captioner import Captioner
from multishot.annotate.config import AnnotateConfig
from multishot.dataset.record import SampleRecord, Shot, latent_cut_frame, num_latent_frames

FOOTAGE = Path(__file__).resolve().parents[2] / "shared" / "footage" / "archive" / "sintel_trailer_480p.mp4"
FPS, WIDTH, HEIGHT = 16, 416, 240
KEY = "bench-standin-key"
QWEN = "Qwen/Qwen2.5-VL-7B-Instruct"

#: Gemini 2.5 Flash, Standard tier, USD per 1M tokens: input (text/image/video) and output
#: (thinking included). Source: ai.google.dev/gemini-api/docs/pricing, as quoted by
#: computeprices.com/models/gemini-2-5-flash on 2026-04-14 and deploybase.ai (March 2026);
#: not re-read from Google from this machine (no internet here).
GEMINI_PRICE = {"model": "gemini-2.5-flash", "input_usd_per_mtok": 0.30, "output_usd_per_mtok": 2.50,
                "source": "ai.google.dev/gemini-api/docs/pricing via computeprices.com, 2026-04-14"}


def _frames(start_s: float, count: int) -> list[av.VideoFrame]:
    with av.open(str(FOOTAGE)) as container:
        stream = container.streams.video[0]
        container.seek(int(start_s / stream.time_base), stream=stream)
        out = []
        for frame in container.decode(stream):
            if frame.time >= start_s:
                out.append(frame.reformat(width=WIDTH, height=HEIGHT, format="yuv420p"))
                if len(out) == count:
                    return out
    raise ValueError("footage too short")


def render_sample(key: str, segments: list[tuple[float, int]]) -> tuple[SampleRecord, bytes]:
    """A rendered sample (one shot per ``(trailer start s, frames)``) and its record."""
    buf = io.BytesIO()
    shots, start = [], 0
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=FPS, options={"preset": "ultrafast", "crf": "30"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for i, (source_s, count) in enumerate(segments):
            for frame in _frames(source_s, count):
                frame.pts, frame.time_base = start, Fraction(1, FPS)
                start += 1
                out.mux(stream.encode(frame))
            src0 = round(source_s * 24)
            shots.append(Shot(
                index=i, source_start_frame=src0, source_end_frame=src0 + count, source_start_s=source_s,
                source_end_s=source_s + count / 24, start_frame=start - count, end_frame=start,
                latent_start_frame=0 if i == 0 else latent_cut_frame(start - count), brightness=80.0,
                ocr_text_ratio=0.0, aesthetic=None,
            ))
        out.mux(stream.encode())
    cuts = [s.start_frame for s in shots[1:]]
    record = SampleRecord(
        key=key, source=str(FOOTAGE), source_id="sintel", bucket="2s", target_duration_s=2.0, fps=FPS,
        width=WIDTH, height=HEIGHT, num_frames=start, num_latent_frames=num_latent_frames(start),
        duration_s=start / FPS, cut_frames=cuts, latent_cut_frames=[latent_cut_frame(c) for c in cuts],
        shots=shots, aesthetic_status="skipped", samples_hash="bench",
    )
    return record, buf.getvalue()


def samples(n: int) -> list[tuple[SampleRecord, bytes]]:
    layouts = [[(0.0, 20), (0.0, 13)], [(0.0, 12), (0.0, 12), (0.0, 9)], [(0.0, 16), (0.0, 17)]]
    out = []
    for i in range(n):
        base = 2.0 + 1.5 * i
        layout = [(base + 3.0 * j, count) for j, (_, count) in enumerate(layouts[i % 3])]
        out.append(render_sample(f"sintel-{i:03d}", layout))
    return out


def run_backend(name: str, work: list[tuple[SampleRecord, bytes]], runs: int) -> dict:
    test_helper("scripted_server")  # the stand-ins import their base by name
    gs = test_helper("gemini_server")
    osrv = test_helper("openai_server")
    common = dict(concurrency=4, requests_per_minute=1e6, max_attempts=3, backoff_initial_s=0.01, backoff_max_s=0.05)
    walls, usage, ok = [], None, None
    for _ in range(runs):
        if name == "gemini":
            server = gs.GeminiServer(KEY)
            os.environ.update(GEMINI_API_KEY=KEY, GOOGLE_GEMINI_BASE_URL=server.base_url)
            config = AnnotateConfig(**common)
        else:
            server = osrv.OpenAIServer(KEY, QWEN)
            os.environ["BENCH_VLLM_KEY"] = KEY
            config = AnnotateConfig(backend="openai", base_url=server.base_url, model=QWEN,
                                    api_key_env="BENCH_VLLM_KEY", **common)
        with server:
            captioner = Captioner.from_env(config)  # no cache: every sample is asked
            started = time.perf_counter()
            with ThreadPoolExecutor(config.concurrency) as pool:
                out = list(pool.map(lambda s: captioner.annotate(*s), work))
            walls.append(time.perf_counter() - started)
        ok = sum(r.caption_status == "ok" for r in out)
        usage = dict(captioner.usage)
    wall = statistics.median(walls)
    result = {
        "model": config.model, "samples": len(work), "captioned": ok, "requests": usage["requests"],
        "wall_s_runs": [round(w, 3) for w in walls], "wall_s": round(wall, 3),
        "samples_per_s": round(len(work) / wall, 2),
        "input_tokens": usage["input_tokens"], "output_tokens": usage["output_tokens"],
        "output_tokens_per_s": round(usage["output_tokens"] / wall, 1),
    }
    if name == "gemini":
        per_sample = (usage["input_tokens"] * GEMINI_PRICE["input_usd_per_mtok"]
                      + usage["output_tokens"] * GEMINI_PRICE["output_usd_per_mtok"]) / 1e6 / len(work)
        result["usd_per_1000_samples"] = round(1000 * per_sample, 4)
        result["price"] = GEMINI_PRICE
    else:
        result["usd_per_1000_samples"] = None
        result["price"] = "self-hosted endpoint: no bill (the cost is the GPU's time, not measured here)"
        result["frames_per_sample"] = f"{config.frames} (+1 per shot none falls in), longest side {config.frame_size} px"
    return result


def markdown(report: dict) -> str:
    lines = [
        "# Captioner backends: client overhead against loopback stand-ins",
        "",
        f"Device: {report['device']} (client and stand-in in one process, cores shared with other work). The stand-ins answer at once "
        "with canned replies and their own token counts: **these numbers measure our client overhead "
        "(frames, JPEG/base64, HTTP, JSON, checks), not a vision-language model**. A real Gemini or "
        "vLLM server's latency and throughput are not in them.",
        "",
        "| backend | model | samples | captioned | samples/s | output tokens/s | USD per 1,000 samples |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in report["backends"].items():
        cost = "no bill (self-hosted)" if r["usd_per_1000_samples"] is None else f"{r['usd_per_1000_samples']:.4f}"
        lines.append(f"| {name} | {r['model']} | {r['samples']} | {r['captioned']} | {r['samples_per_s']} | "
                     f"{r['output_tokens_per_s']} | {cost} |")
    g = report["backends"]["gemini"]
    lines += [
        "",
        f"Runs: {report['runs']} (median wall time); concurrency 4; no cache. Token counts are the stand-ins' "
        f"(Gemini stand-in: 1000 input and 100 output tokens per request; OpenAI stand-in: 1000 per image "
        f"plus one per prompt word, output = reply words), so the Gemini cost above is that of "
        f"{g['input_tokens'] // g['samples']} input and {g['output_tokens'] // g['samples']} output tokens "
        f"per sample at ${g['price']['input_usd_per_mtok']} / ${g['price']['output_usd_per_mtok']} per 1M "
        f"({g['price']['source']}). A real 2 s sample at Gemini's default 1 fps and 258 tokens per frame "
        "(Gemini API video docs; not re-read from this machine) is about 520 video tokens plus the prompt's "
        "few hundred; 2.5 Flash also bills its thinking tokens as output, so a real bill per sample differs "
        "from this stand-in figure.",
        "",
        f"OpenAI-compatible backend: {report['backends']['openai']['frames_per_sample']}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=results_dir("annotate"))
    args = parser.parse_args()
    work = samples(args.samples)
    report = {"device": device_name(), "runs": args.runs,
              "note": "loopback stand-ins: client overhead, not a VLM",
              "backends": {name: run_backend(name, work, args.runs) for name in ("gemini", "openai")}}
    write_report(args.out / "annotate.json", report, markdown)
    print(markdown(report))


if __name__ == "__main__":
    main()
