"""Causal fine-tuning and streaming generation (CausalCine part 1, trainer and generation side).

A tiny causal fine-tune (parallel teacher forcing, CAMR on) starts from a bidirectional
checkpoint and trains on shards cut from the real footage on CPU (one process, gloo, FSDP2);
a copy killed (SIGKILL) after its step-2 checkpoint resumes with bit-identical losses; its
exported checkpoint streams a multi-shot video through ``multishot generate --causal`` with a
prompt change, frames written as they are decoded. The streaming API takes a shot appended
while it runs, and no model call ever sees an earlier chunk again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
STEPS, CHECKPOINT, KILL_AT = 4, 2, 3


def run_python(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "MASTER_PORT": str(29900 + os.getpid() % 90)}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300, input=stdin)


def losses(output_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def train_config(tmp: Path, shards: dict, encoders: dict, base: Path, name: str) -> Path:
    config = yaml.safe_load((REPO / "configs/train/tiny_cpu_causal.yaml").read_text())
    config["model"]["init_from"] = str(base)
    config["data"]["shards"] = [shards["clean"]]
    config["encoders"].update(encoders)
    config["run"].update(output_dir=str(tmp / name), max_steps=STEPS, checkpoint_every=CHECKPOINT)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """The bidirectional "pretrained" tiny DiT (non-zero head) in Wan names."""
    from multishot.model.checkpoint import save_safetensors
    from multishot.model.config import get_config
    from multishot.model.dit import WanModel

    torch.manual_seed(0)
    model = WanModel(get_config("tiny"))
    torch.nn.init.normal_(model.head.head.weight, std=0.1)
    return save_safetensors(model.state_dict(), tmp_path_factory.mktemp("base") / "base.safetensors")[0]


@pytest.fixture(scope="module")
def causal_run(tmp_path_factory, train_footage_shards, tiny_encoders, base) -> Path:
    tmp = tmp_path_factory.mktemp("causal")
    result = run_python("-m", "multishot.cli.train", "--config",
                        str(train_config(tmp, train_footage_shards, tiny_encoders, base, "full")))
    assert result.returncode == 0, result.stderr[-4000:]
    return tmp / "full"


def test_causal_fine_tune_logs_teacher_forcing_steps(causal_run):
    rows = [json.loads(line) for line in (causal_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(r["loss"] > 0 and r["mfu"] > 0 for r in rows)
    # 25 frames at 64×64: 7 latent frames of 16 tokens, clean and noisy copies
    assert rows[-1]["tokens_per_s_per_gpu"] == pytest.approx(2 * 7 * 16 / rows[-1]["step_time_s"], rel=1e-6)
    assert (causal_run / "model.safetensors").exists()
    resolved = yaml.safe_load((causal_run / "config.resolved.yaml").read_text())
    assert resolved["model"]["causal"]["chunk_latent_frames"] == 2


def test_killed_causal_run_resumes_with_the_same_losses(causal_run, tmp_path, train_footage_shards,
                                                       tiny_encoders, base):
    config = train_config(tmp_path, train_footage_shards, tiny_encoders, base, "killed")
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(f"""
        import os, signal
        from multishot.config import load_config
        from multishot.trainer.config import TrainConfig
        from multishot.trainer.trainer import Trainer

        def kill(step, metrics):
            if step == {KILL_AT}:
                os.kill(os.getpid(), signal.SIGKILL)  # a preemption: no clean-up at all

        Trainer(load_config({str(config)!r}, TrainConfig)).train(on_step=kill)
    """))
    assert run_python(str(driver)).returncode != 0
    resumed = run_python("-m", "multishot.cli.train", "--config", str(config))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stderr
    expected, got = losses(causal_run), losses(tmp_path / "killed")
    for step in range(CHECKPOINT + 1, STEPS + 1):
        assert got[step] == expected[step], step  # bit-identical


def stream_config(tmp: Path, checkpoint: Path | None, encoders: dict | None, **sampling) -> Path:
    config = yaml.safe_load((REPO / "configs/generate/tiny_cpu_causal.yaml").read_text())
    if checkpoint is None:
        config["model"]["random_weights"] = str(tmp / "random_models")
    else:
        del config["model"]["random_weights"]
        config["model"]["checkpoint"] = str(checkpoint)
        config["encoders"].update(encoders)
    config["sampling"].update(sampling)
    path = tmp / "stream.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_checkpoint_streams_a_multi_shot_video_with_a_prompt_change(causal_run, tmp_path,
                                                                   tiny_encoders):
    schedule = tmp_path / "shots.txt"
    schedule.write_text('{"global_caption": "Blender films. This scene contains 2 shots."}\n'
                        "# shot 1: two chunks of 2 latent frames\n"
                        "a rabbit hops\n"
                        '{"caption": "Trees of the scene", "chunks": 1}\n')
    out = tmp_path / "video" / "stream.mp4"
    result = run_python("-m", "multishot", "generate", "--causal", "--config",
                        str(stream_config(tmp_path, causal_run / "model.safetensors", tiny_encoders)),
                        "--schedule", str(schedule), "--chunks-per-shot", "2", "-o", str(out))
    assert result.returncode == 0, result.stderr[-4000:]
    info = json.loads(out.with_suffix(".json").read_text())
    # chunk 0 = the first frame, then 3 chunks of 2 latent frames (8 video frames each)
    assert info["chunk_frames"] == [1, 8, 8, 8] and info["num_frames"] == 25
    assert info["chunk_shots"] == [0, 0, 0, 1] and info["cut_frames"] == [17]
    assert info["model_calls"] == 4 * (3 + 1)  # 3 steps and the clean pass per chunk, no more
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 25 and frames[0].shape == (64, 64, 3)


def test_schedule_errors_are_one_line_and_exit_2(tmp_path):
    schedule = tmp_path / "bad.txt"
    schedule.write_text('{"global_caption": "a scene."}\n{"caption": "x", "chunks": 0}\n')
    config = stream_config(tmp_path, None, None)
    for args, words in (
            (["--schedule", str(schedule)], "bad.txt:2: a shot lasts at least one chunk"),
            (["--prompt", "[global caption] a [per shot caption] b"], None)):
        if words is None:  # --causal with a bidirectional source
            words = "--schedule and --causal go together"
        result = run_python("-m", "multishot", "generate", "--causal", "--config", str(config),
                            *args, "-o", str(tmp_path / "x.mp4"))
        assert result.returncode == 2 and words in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def streamer(tmp_path_factory):
    from multishot.config import load_config
    from multishot.generate.config import GenerateConfig
    from multishot.generate.stream import StreamingGenerator

    tmp = tmp_path_factory.mktemp("streamer")
    return StreamingGenerator(load_config(stream_config(tmp, None, None, steps=2), GenerateConfig))


def test_stream_takes_a_shot_appended_while_it_runs(streamer):
    from multishot.generate.schedule import PromptSchedule, Shot

    seen = []  # (chunk frames of every model call, cache frames before it)
    forward_chunk = streamer.model.forward_chunk

    def recording(x, timestep, context, cache, *args, **kwargs):
        seen.append((x.shape[2], cache.num_frames))
        return forward_chunk(x, timestep, context, cache, *args, **kwargs)

    streamer.model.forward_chunk = recording
    try:
        schedule = PromptSchedule("Blender films.", [Shot("a rabbit hops", 1)], live=True)
        stream = streamer.stream(schedule, seed=3)
        chunks = [next(stream), next(stream)]             # chunk 0 and the rabbit's chunk
        contexts = [streamer.shot_text(schedule, 0).context]
        chunks.append(stream.send(Shot("Trees", 2)))       # appended while running
        schedule.close()
        chunks += list(stream)
    finally:
        streamer.model.forward_chunk = forward_chunk
    assert [c.shot for c in chunks] == [0, 0, 1, 1] and schedule.total_chunks() == 3
    assert [len(c.frames) for c in chunks] == [1, 8, 8, 8]
    contexts.append(streamer.shot_text(schedule, 1).context)
    assert not torch.equal(contexts[0], contexts[1][:, :contexts[0].shape[1]])
    # never recomputed: every call sees one chunk; the cache grows by exactly that chunk
    # after its clean pass (2 denoising calls read it, the third writes)
    expected = []
    for frames, cached in ((1, 0), (2, 1), (2, 3), (2, 5)):
        expected += [(frames, cached)] * 3
    assert seen == expected


def test_streams_are_deterministic_per_seed_and_follow_the_schedule(streamer):
    from multishot.generate.schedule import PromptSchedule, Shot

    def run(seed, shots):
        return torch.cat([c.latents for c in streamer.stream(PromptSchedule("Blender films.", shots), seed)], 2)

    a = run(0, [Shot("a rabbit hops", 1), Shot("Trees", 1)])
    other_shot = run(0, [Shot("a rabbit hops", 1), Shot("the sintel video", 1)])
    assert a.shape == (1, 16, 5, 8, 8)
    # the same seed and first shot give the same first chunks (bit for bit: the stream is
    # deterministic and causal); the changed second shot changes only its own chunk
    assert torch.equal(a[:, :, :3], other_shot[:, :, :3])
    assert not torch.allclose(a[:, :, 3:], other_shot[:, :, 3:])


def test_overlapped_decode_gives_the_sequential_frames_and_runs_ahead(streamer):
    """The decode of chunk k in a worker thread while chunk k + 1 is denoised: the same frames
    and latents as decoding inline, bit for bit; chunk k + 1 is denoised before chunk k is
    yielded when its shot is known (chunk 0 is yielded at once)."""
    from multishot.generate.schedule import PromptSchedule, Shot

    inner = streamer.streamer
    shots = [Shot("a rabbit hops", 2), Shot("Trees", 1)]
    runs = {}
    try:
        for overlap in (False, True):
            inner.overlap_decode = overlap
            calls = [inner.model_calls]
            chunks = []
            for chunk in inner.stream(PromptSchedule("Blender films.", shots), seed=5):
                chunks.append(chunk)
                calls.append(inner.model_calls)
            runs[overlap] = chunks, [n - calls[0] for n in calls[1:]]
    finally:
        inner.overlap_decode = False
    (seq, seq_calls), (ovl, ovl_calls) = runs[False], runs[True]
    assert [c.index for c in ovl] == [0, 1, 2, 3] and [c.shot for c in ovl] == [0, 0, 0, 1]
    for a, b in zip(seq, ovl):
        assert np.array_equal(a.frames, b.frames) and torch.equal(a.latents, b.latents)
        assert set(b.seconds) == {"denoise_s", "decode_s", "total_s", "wall_s"}
    # 3 model calls a chunk (2 steps + the clean pass); chunks 1 and 2 leave with the next
    # chunk already denoised
    assert seq_calls == [3, 6, 9, 12] and ovl_calls == [3, 9, 12, 12]


def decoding_threads(streamer, shots, **stream) -> tuple[list, list[str], list[int]]:
    """Chunks of an overlapped stream of ``shots``, the thread that decoded each (the VAE's
    post_quant_conv runs once a chunk) and the model calls made when each was yielded."""
    from multishot.generate.schedule import PromptSchedule

    threads = []
    hook = streamer.vae.post_quant_conv.register_forward_pre_hook(
        lambda module, args: threads.append(threading.current_thread().name))
    streamer.overlap_decode = True
    try:
        calls, chunks = [streamer.model_calls], []
        for chunk in streamer.stream(PromptSchedule("Blender films.", shots), **stream):
            chunks.append(chunk)
            calls.append(streamer.model_calls)
    finally:
        streamer.overlap_decode = False
        hook.remove()
    return chunks, threads, [n - calls[0] for n in calls[1:]]


def test_compiling_streams_decode_inline_until_settled(streamer):
    """With a compiled decoder (or compiled blocks, or CUDA graphs) a decode overlaps only
    once nothing can compile or capture (ChunkStreamer.stream): chunks 0-2 of the tiny stream
    are decoded in the main thread (chunk 2 is the first whose denoising passes' shapes and
    plan repeat, chunk 3 the second, chunk 4 the first to replay them: chunk 3's decode may
    run beside it), chunks 3-5 in the worker, the last one inline; the frames are the
    sequential run's. Without compiling, every chunk is decoded in the worker, as before."""
    from multishot.generate.schedule import PromptSchedule, Shot

    inner = streamer.streamer
    shots = [Shot("a rabbit hops", 4), Shot("Trees", 2)]
    sequential = list(inner.stream(PromptSchedule("Blender films.", shots), seed=5))
    assert not inner.compiles
    plain, plain_threads, plain_calls = decoding_threads(inner, shots, seed=5)
    assert plain_threads == ["vae-decode_0"] * 7
    assert plain_calls == [3, 9, 12, 15, 18, 21, 21]
    # what compile_decoder=True holds, left eager here: the rule reads that it is set
    inner.vae_decoder = inner.vae.decoder
    try:
        assert inner.compiles
        chunks, threads, calls = decoding_threads(inner, shots, seed=5)
    finally:
        inner.vae_decoder = None
    assert threads == ["MainThread"] * 3 + ["vae-decode_0"] * 3 + ["MainThread"]
    # settling chunks leave before the next is denoised, settled ones with it denoised
    assert calls == [3, 6, 9, 15, 18, 21, 21]
    assert [c.index for c in chunks] == list(range(7)) and [c.shot for c in chunks][-1] == 1
    for a, b, c in zip(sequential, plain, chunks):
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.frames, c.frames)
        assert torch.equal(a.latents, c.latents)


def test_really_compiled_stream_overlaps_to_the_end(tmp_path):
    """Compiled blocks and decoder (aot_eager: AOTAutograd's tracing, the part that patched
    nn.Module.__call__ process-wide in the H100 crash, without generating kernels) stream
    overlapped without error, the sequential frames bit for bit, and nothing is compiled
    once the first chunk is decoded in the worker."""
    from torch._dynamo.utils import counters

    from multishot.config import load_config
    from multishot.generate.config import GenerateConfig
    from multishot.generate.schedule import PromptSchedule, Shot
    from multishot.generate.stream import StreamingGenerator
    from multishot.model.compile import apply_compile

    inner = StreamingGenerator(load_config(stream_config(tmp_path, None, None, steps=2),
                                           GenerateConfig)).streamer
    shots = [Shot("a rabbit hops", 4), Shot("Trees", 2)]
    sequential = list(inner.stream(PromptSchedule("Blender films.", shots), seed=5))
    graphs = []  # dynamo's compiled graphs so far, when the worker starts a decode
    hook = inner.vae.post_quant_conv.register_forward_pre_hook(
        lambda module, args: graphs.append(counters["stats"]["unique_graphs"])
        if threading.current_thread().name.startswith("vae-decode") else None)
    limit = torch._dynamo.config.recompile_limit
    try:
        apply_compile(inner.model, backend="aot_eager")
        torch._dynamo.config.recompile_limit = 64  # as compile_decoder sets it
        inner.vae_decoder = torch.compile(inner.vae.decoder, backend="aot_eager")
        assert inner.compiles
        chunks, threads, _ = decoding_threads(inner, shots, seed=5)
        compiled = counters["stats"]["unique_graphs"]
    finally:
        hook.remove()
        torch._dynamo.config.recompile_limit = limit
        torch._dynamo.reset()
    assert threads == ["MainThread"] * 3 + ["vae-decode_0"] * 3 + ["MainThread"]
    assert len(graphs) == 3 and graphs[0] > 0 and graphs[0] == compiled
    for a, b in zip(sequential, chunks):
        assert np.array_equal(a.frames, b.frames) and torch.equal(a.latents, b.latents)


def test_schedule_reads_lines_and_waits_for_appended_shots():
    import io
    import threading

    from multishot.generate.schedule import PromptSchedule, Shot, feed_lines, read_schedule

    schedule = read_schedule(['{"global_caption": "g"}', "", "# note", "one",
                              '{"caption": "two", "chunks": 3}'], default_chunks=2)
    assert schedule.global_caption == "g"
    assert schedule.shots == [Shot("one", 2), Shot("two", 3)]
    assert [schedule.shot_of_chunk(i) for i in range(6)] == [0, 0, 1, 1, 1, None]
    with pytest.raises(ValueError, match="schedule:2: not a JSON object"):
        read_schedule(['{"global_caption": "g"}', "{oops"], 1)
    with pytest.raises(ValueError, match="no global caption"):
        read_schedule(["a shot"], 1)
    live = PromptSchedule("g", live=True)
    errors = []
    reader, writer = os.pipe()
    with os.fdopen(reader) as r, os.fdopen(writer, "w") as w:
        thread = feed_lines(live, r, 1, errors.append)
        found = []
        waiter = threading.Thread(target=lambda: found.append(live.shot_of_chunk(1)))
        waiter.start()
        w.write("first\n{bad\nsecond\n")
        w.flush()
        waiter.join(timeout=10)
        assert found == [1] and live.shots == [Shot("first"), Shot("second")]
    thread.join(timeout=10)
    assert live.closed and live.shot_of_chunk(2) is None
    assert errors and errors[0].startswith("stdin:2:")
    with pytest.raises(ValueError, match="closed"):
        live.append("late")
    assert read_schedule(io.StringIO('{"global_caption": "g"}\nx\n'), 1).shots == [Shot("x")]


def test_benchmark_script_runs_tiny_on_cpu(tmp_path):
    """benchmarks/causal.py at the tiny size on CPU (the GPU numbers come from the same code):
    a LoRA teacher-forcing step and a short stream, both parts in one JSON and a table."""
    out = tmp_path / "causal.json"
    result = run_python(str(REPO / "benchmarks/causal.py"), "--tiny", "--lora-rank", "4",
                        "--warmup", "0", "--train-steps", "1", "--steps", "2", "--chunks", "2",
                        "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    train, stream = report["train"], report["stream"]
    assert train["tokens_per_step"] == 2 * 7 * 16 and train["lora_rank"] == 4 and train["mfu"] > 0
    assert stream["chunks"] == 2 and stream["model_calls"] == 2 * (2 + 1)
    assert stream["video_frames"] == 1 + 8 and stream["video_frames_per_s"] > 0
    assert report["causalcine_reference"]["video_frames_per_s"] == 16.0
    table = out.with_suffix(".md").read_text()
    assert "Teacher-forcing training step" in table and "CausalCine, reported" in table


def test_teacher_forcing_step_flops_count_both_copies_and_the_masks_pairs():
    """The MFU numerator: 3 × the forward of clean + noisy tokens, self-attention over the
    pairs the teacher-forcing mask admits (the dense reference mask's frame pairs × hw²)."""
    from multishot.model.causal import CausalConfig, ChunkLayout, teacher_forcing_frame_mask
    from multishot.model.config import get_config
    from multishot.model.flops import forward_flops
    from multishot.model.layout import ShotLayout
    from multishot.trainer.metrics import teacher_forcing_step_flops

    config = CausalConfig(chunk_latent_frames=2, local_window_chunks=1, routed_frames=1)
    tiny = get_config("tiny")
    mask = teacher_forcing_frame_mask(ChunkLayout.build(7, 2), config, 1,
                                      torch.randn(1, 8, 4, 8), torch.randn(1, 7, 4, 8))
    layout = ShotLayout.stack([ShotLayout.from_cut_frames(25, [13], 16)] * 2)
    flops = teacher_forcing_step_flops(tiny, layout, config)
    assert flops == 2 * 3 * forward_flops(tiny, 14, 16, attention_pairs=int(mask.sum()) * 16 * 16)
    assert flops < 2 * 3 * forward_flops(tiny, 14, 16)  # fewer pairs than dense attention


def test_causal_train_config_refuses_context_parallelism_and_bidirectional_validation(tmp_path):
    from pydantic import ValidationError

    from multishot.evaluate.validation import ValidatedTrainConfig as TrainConfig

    config = yaml.safe_load((REPO / "configs/train/tiny_cpu_causal.yaml").read_text())
    config["encoders"].update(vae=str(tmp_path), text_encoder=str(tmp_path))
    TrainConfig.model_validate(config)
    for key, value, words in (("parallel", {"context": 2}, "set parallel.context: 1"),
                              ("validation", {"every": 5}, "set validation.every: 0")):
        with pytest.raises(ValidationError, match=words):
            TrainConfig.model_validate({**config, key: value})


def test_cli_streams_shots_read_from_stdin(tmp_path):
    out = tmp_path / "live.mp4"
    result = run_python("-m", "multishot", "generate", "--causal", "--config",
                        str(stream_config(tmp_path, None, None, steps=1)), "--schedule", "-",
                        "--global-caption", "Blender films.", "--chunks-per-shot", "1",
                        "-o", str(out), stdin='a rabbit hops\n{"caption": 3}\nTrees\n')
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stdin:2: expected" in result.stderr  # a bad line is reported and skipped
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["chunk_shots"] == [0, 0, 1] and info["num_frames"] == 17
    assert [s["caption"] for s in info["shots"]] == ["a rabbit hops", "Trees"]
