"""Make ``import torchvision`` work on a CPU-only torch (needed by open_clip's transforms).

Why: PyPI carries only CUDA builds of torchvision. Their C++ extension links against
``libtorch_cuda.so``, which the CPU torch wheel lacks, so it does not load; torchvision then
still registers fake kernels for ``torchvision::nms`` / ``qnms`` without checking that the
operators exist, and ``import torchvision`` dies with "operator torchvision::nms does not exist".
open_clip needs only torchvision's pure-Python transforms, never those operators.

What: if (and only if) that exact failure happens, declare the two operator schemas without any
kernel and import again. Calling ``torchvision.ops.nms`` then raises "no kernel registered"
instead of computing anything. With a working torchvision (a GPU machine) this does nothing.
See constraints/cpu.txt and the README's install notes.
"""

from __future__ import annotations

import sys

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # keeps the declared schemas alive for the process


def import_torchvision():
    """Import and return torchvision, declaring its missing operators if its C++ ops can't load.

    Raises:
        RuntimeError: torchvision fails to import for any other reason.
    """
    global _library
    try:
        import torchvision

        return torchvision
    except RuntimeError as err:
        if "torchvision::nms does not exist" not in str(err):
            raise
    import torch

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _library.define(schema)
    import torchvision

    return torchvision
