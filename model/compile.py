"""Regional ``torch.compile`` of the DiT's blocks, used alike by training (inside activation
checkpointing and FSDP2, :mod:`trainer.parallelize`) and generation."""

from __future__ import annotations

from torch import nn


def apply_compile(model: nn.Module, backend: str = "inductor") -> None:
    """Compile every block of ``model.blocks`` in place (regional compilation,
    ``nn.Module.compile``: parameter names and state-dict keys unchanged).

    The blocks share one code object and dynamo lifts their parameters to graph inputs, so the
    graphs are compiled once and reused by all blocks. Inductor fuses the float32 element-wise
    work around the matmuls (modulation, LayerNorm / RMSNorm, RoPE, gated residuals: bf16 in,
    float32 math, bf16 out, one kernel) — the numerics stay Wan's. The self-attention call
    (:func:`model.dit.self_attention_kernel`) is an eager island, so a new shot layout
    recompiles nothing. Compiled inside the activation checkpoint and the FSDP2 unit: the
    recompute re-runs the compiled forward, and FSDP's all-gather hooks stay eager.

    Args:
        backend: the ``torch.compile`` backend (``"aot_eager"`` checks the graphs without
            generating kernels).
    """
    for block in model.blocks:
        block.compile(backend=backend)


def is_compiled(model: nn.Module) -> bool:
    """Whether any module of ``model`` runs through ``torch.compile`` (:func:`apply_compile`'s
    blocks, ``nn.Module.compile`` anywhere, or a ``torch.compile``'d module inside): a call
    of it may compile (dynamo traces a new shape), which must not happen while another
    thread runs modules (:meth:`generate.stream.ChunkStreamer.stream`)."""
    from torch._dynamo.eval_frame import OptimizedModule

    return any(getattr(m, "_compiled_call_impl", None) is not None or isinstance(m, OptimizedModule)
               for m in model.modules())
