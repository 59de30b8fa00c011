"""``torchrun --nproc-per-node 2 -m multishot generate``: both ranks split every sample
(Ulysses context parallelism) and sample the latents a single process samples; rank 0 alone
writes the mp4 and JSON. The tiny random models of ``configs/generate/tiny_cpu.yaml`` (two
experts, CFG), on CPU with gloo on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPT = "[global caption] a scene [per shot caption] a shot [shot cut] the shot [shot cut] a video"
#: float32; the context-parallel sums run in another order
RTOL = 1e-5


def torchrun(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
           "--master-addr=127.0.0.1", f"--master-port={28600 + os.getpid() % 300}", *args]
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_two_ranks_sample_the_single_process_latents(tmp_path):
    config = REPO / "configs" / "generate" / "tiny_cpu.yaml"
    # 48×80 pixels: 3×5 tokens a frame, 5 latent frames: 75 tokens, padded to 76 on 2 ranks
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(f"""
        import json, torch, torch.distributed as dist
        from multishot.config import load_config
        from multishot.generate.config import GenerateConfig
        from multishot.generate.generator import Generator
        from multishot.generate.shots import resolve_request

        config = load_config({str(config)!r}, GenerateConfig,
                             {{"video": {{"height": 48, "width": 80}}}})
        generator = Generator(config)
        request = resolve_request({PROMPT!r}, 17, [5, 13], 3, "scene")
        degrees = [e.model.context_parallel.degree for e in generator.experts]
        split, _ = generator.denoise(request)
        for expert in generator.experts:   # the same models on this process alone
            expert.model.context_parallel = None
        alone, _ = generator.denoise(request)
        error = float((split - alone).abs().max() / alone.abs().max())
        with open(f"rank{{dist.get_rank()}}.json", "w") as fh:
            json.dump({{"degrees": degrees, "error": error,
                       "split": split.flatten()[:8].tolist()}}, fh)
    """))
    torchrun(tmp_path, str(driver))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["degrees"] == [2, 2] and r["error"] < RTOL for r in ranks), ranks
    assert ranks[0]["split"] == ranks[1]["split"]   # every rank holds the whole sample

    # the command itself: rank 0 writes the mp4 and its JSON
    out = tmp_path / "gen" / "scene.mp4"
    torchrun(tmp_path, "-m", "multishot", "generate", "--config", str(config), "--prompt", PROMPT,
             "--cut-frames", "5,13", "-o", str(out))
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["context_parallel"] == 2 and info["num_shots"] == 3
    assert sorted(p.name for p in out.parent.iterdir()) == ["scene.json", "scene.mp4"]
