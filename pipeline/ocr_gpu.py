"""rapidocr's PP-OCR models on a GPU: its ONNX files converted to PyTorch modules.

rapidocr runs its detector and recogniser with onnxruntime on the CPU; onnxruntime's CUDA
build is a separate, CUDA-version-bound package. On a GPU node the OCR of a scan's picked
frames was the bulk of its CPU work (the text detector alone ~80 ms per 640x360 frame on one
core; ``benchmarks/results/pipeline_gpu/pipeline_gpu_h100.md``). Here the same ONNX files rapidocr loads are
converted by ``onnx2torch`` and run on the actor's GPU with the PyTorch already there, in place
of rapidocr's inference sessions: its pre- and post-processing (resizing, DB box extraction,
CTC decoding) stay as they are, so the boxes and texts are rapidocr's.

``onnx2torch`` does not convert ``auto_pad="SAME_UPPER"``, which the PP-OCR models use on
stride-1 convolutions and pooling (2x2 kernels); for stride 1 that padding does not depend on
the input's size (``kernel - 1`` in all, the extra one at the end), so it is rewritten as
explicit ``pads`` first. Other strides are refused.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

# onnx2torch's Slice indexes with a list; PyTorch warns about it on every process's first call
warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing",
                        module=r"onnx2torch\.")


def explicit_same_padding(model: Any) -> Any:
    """Rewrite, in place, ``auto_pad="SAME_UPPER"/"SAME_LOWER"`` of stride-1 Conv / pooling
    nodes of an ``onnx.ModelProto`` as explicit ``pads`` (ONNX's definition: total padding
    ``kernel - 1`` per axis, the odd one at the end for SAME_UPPER, at the start for
    SAME_LOWER). Returns the model.

    Raises:
        ValueError: a SAME-padded node with a stride other than 1 (its padding depends on the
            input's size) or dilated (onnxruntime, the reference, does not run those).
    """
    import onnx

    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        auto = attrs.get("auto_pad", b"NOTSET")
        if auto not in (b"SAME_UPPER", b"SAME_LOWER"):
            continue
        kernel = list(attrs["kernel_shape"])
        strides, dilations = (list(attrs.get(k, [1] * len(kernel))) for k in ("strides", "dilations"))
        if strides != [1] * len(kernel) or dilations != [1] * len(kernel):
            raise ValueError(f"node {node.name!r} ({node.op_type}): {auto.decode()} padding with strides "
                             f"{strides} and dilations {dilations}; only stride 1 without dilation is "
                             "converted (other strides' padding depends on the input size)")
        totals = [k - 1 for k in kernel]
        small = [t // 2 for t in totals]
        begins = small if auto == b"SAME_UPPER" else [t - s for t, s in zip(totals, small)]
        ends = [t - b for t, b in zip(totals, begins)]
        kept = [a for a in node.attribute if a.name not in ("auto_pad", "pads")]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.append(onnx.helper.make_attribute("pads", begins + ends))
    return model


def onnx_module(model: str | Path | Any) -> torch.nn.Module:
    """An ONNX model (a file's path, or an ``onnx.ModelProto``, rewritten in place) as a PyTorch
    module (``onnx2torch``, SAME padding made explicit first), in eval mode on the CPU.

    Raises:
        ImportError: ``onnx`` / ``onnx2torch`` missing (with the install command).
        ValueError: see :func:`explicit_same_padding`.
    """
    from multishot.torchvision_cpu import import_torchvision

    import_torchvision()  # onnx2torch imports it
    try:
        import onnx
        from onnx2torch import convert
    except ImportError as err:
        raise ImportError("OCR on the GPU needs: pip install 'multishot[gpu]' (onnx, onnx2torch)") from err
    if isinstance(model, (str, Path)):
        model = onnx.load(str(model))
    return convert(explicit_same_padding(model)).eval()


class TorchSession:
    """Stands in for a rapidocr ``OrtInferSession``: called with the same float32 NCHW array, it
    returns the same output array, computed by :func:`onnx_module` of the session's ONNX file on
    ``device``. For the PP-OCR detector: ``[1, 3, H, W]`` (normalised, sides multiples of 32) →
    text probability map ``[1, 1, H, W]``; for the recogniser: text line crops ``[N, 3, 48, W]``
    → per-column character probabilities ``[N, W / 8, characters]``. Everything else (the
    recogniser's character list read from the model's metadata) is the replaced session's.
    Safe to call from several threads."""

    def __init__(self, session: Any, device: str | torch.device):
        self.replaced = session
        self.device = torch.device(device)
        # onnxruntime's InferenceSession keeps the path it was opened with
        self.module = onnx_module(session.session._model_path).to(self.device)

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.module(torch.from_numpy(inputs).to(self.device)).float().cpu().numpy()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.replaced, name)


def run_on(engine: Any, device: str | torch.device) -> None:
    """Make a ``rapidocr.RapidOCR`` engine run its text detector and recogniser on ``device``
    (:class:`TorchSession` in place of each onnxruntime session).

    Raises:
        ImportError: ``onnx`` / ``onnx2torch`` missing.
    """
    for model in (engine._load_det_model(), engine._load_rec_model()):
        model.session = TorchSession(model.session, device)
