"""Decoding on the GPU: NVDEC through PyAV, colour conversion and resizing with PyTorch on CUDA.

A worker that Ray gave a GPU decodes with the GPU's hardware decoder (NVDEC) through PyAV's own
hardware decoding (``av.open(..., hwaccel=HWAccel("cuda", is_hw_owned=True))``, PyAV ≥ 17): the
FFmpeg in PyAV's wheels carries NVDEC (``h264_cuvid``, ``hevc_cuvid``, the ``cuda`` device), so no
other wheel is needed, and decoded pictures stay in GPU memory (NV12 planes read through DLPack,
no copy). The frames come from the same demuxer and the same grid code as on the CPU
(:func:`pipeline.video.iter_slots`): **frame ``i`` is the picture shown at time ``i / fps``**,
holes filled by repeating the previous picture, on the GPU exactly as on the CPU.

Each picture is scaled with an area filter in YUV (as libswscale does: scale first, then
convert) and turned into RGB uint8 with the matrix the frame is tagged with (BT.709, BT.2020,
else BT.601, limited range unless tagged full range: libswscale's choice for
:func:`pipeline.video._image`), then turned upright (display matrix).

When there is no CUDA device, PyAV's FFmpeg has no CUDA, the driver has no NVDEC library, or the
device cannot be opened, the CPU frame source runs instead (:func:`choose_frame_source`; the
reason from :func:`gpu_decoder_status`); a stream NVDEC cannot decode (an unsupported codec or
profile) is decoded by libavcodec and its frames are uploaded.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Iterator
from functools import lru_cache

import av
import av.codec.hwaccel
import numpy as np
import pyarrow.fs as pafs
import torch
import torch.nn.functional as F

from multishot.pipeline.config import DetectConfig
from multishot.pipeline.video import DecodeStats, _image, _quarter_turns, iter_scan_frames, iter_slots

log = logging.getLogger(__name__)

#: (Kr, Kb) luma coefficients of the Y'CbCr matrices, by FFmpeg's AVColorSpace value; any other
#: value (unspecified, BT.470BG, SMPTE 170M) is BT.601, as libswscale treats it
_KR_KB = {1: (0.2126, 0.0722), 9: (0.2627, 0.0593), 10: (0.2627, 0.0593)}
_BT601 = (0.299, 0.114)
_FULL_RANGE = 2  # AVCOL_RANGE_JPEG


def yuv_matrix(colorspace: int, full_range: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M [3, 3], offset [3])`` turning Y'CbCr code values (0-255) into R'G'B' (0-255):
    ``rgb = M @ yuv + offset``. ``colorspace`` is FFmpeg's AVColorSpace of the frame (ITU-R
    BT.601 / BT.709 / BT.2020 coefficients; limited range: Y' 16-235, Cb/Cr 16-240)."""
    kr, kb = _KR_KB.get(int(colorspace), _BT601)
    kg = 1.0 - kr - kb
    y_scale, c_scale = (1.0, 1.0) if full_range else (255.0 / 219.0, 255.0 / 224.0)
    y_off = 0.0 if full_range else 16.0
    m = torch.tensor([
        [y_scale, 0.0, 2 * (1 - kr) * c_scale],
        [y_scale, -2 * kb * (1 - kb) / kg * c_scale, -2 * kr * (1 - kr) / kg * c_scale],
        [y_scale, 2 * (1 - kb) * c_scale, 0.0],
    ], dtype=torch.float64)
    offset = -(m @ torch.tensor([y_off, 128.0, 128.0], dtype=torch.float64))
    return m.float(), offset.float()


def _resize(planes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Float planes ``[N, C, H, W]`` scaled to ``[N, C, height, width]``: an area filter when
    shrinking both sides (libswscale's ``AREA``), antialiased bilinear otherwise."""
    if planes.shape[-2:] == (height, width):
        return planes
    if height <= planes.shape[-2] and width <= planes.shape[-1]:
        return F.interpolate(planes, size=(height, width), mode="area")
    return F.interpolate(planes, size=(height, width), mode="bilinear", antialias=True, align_corners=False)


def nv12_to_rgb(y: torch.Tensor, uv: torch.Tensor, width: int, height: int,
                colorspace: int = 2, full_range: bool = False) -> torch.Tensor:
    """An NV12 (or P010/P016) picture as RGB uint8 ``[height, width, 3]``, on the planes' device.

    Args:
        y: the luma plane ``[H, W]`` (uint8, or uint16 for 10/16-bit formats: the high byte
            counts), as PyAV's ``VideoPlane.__dlpack__`` exports it (row pitch in the strides).
        uv: the interleaved chroma plane ``[H/2, W/2, 2]`` (Cb, Cr).
        width, height: output size (px); each plane is scaled to it before the conversion.
        colorspace: FFmpeg's AVColorSpace of the frame (:func:`yuv_matrix`).
        full_range: the frame is tagged full (JPEG) range.
    """
    scale = 1.0 / 256.0 if y.dtype != torch.uint8 else 1.0  # P010: 10 bits in the high bits
    luma = _resize(y.float()[None, None] * scale, height, width)
    chroma = _resize(uv.float().permute(2, 0, 1)[None] * scale, height, width)
    yuv = torch.cat([luma, chroma], dim=1)[0]  # [3, h, w]
    m, offset = yuv_matrix(colorspace, full_range)
    rgb = torch.einsum("ij,jhw->hwi", m.to(yuv.device), yuv) + offset.to(yuv.device)
    return rgb.round_().clamp_(0, 255).to(torch.uint8)


def frame_to_rgb(frame: av.VideoFrame, width: int | None, height: int | None, device: torch.device) -> torch.Tensor:
    """A decoded frame as upright RGB uint8 ``[H, W, 3]`` on ``device``, scaled to
    ``width × height`` (after rotation) if given.

    A CUDA frame (NVDEC, ``is_hw_owned``) is read in place through DLPack; a software frame (a
    stream NVDEC could not take) is converted by libswscale as on the CPU path and uploaded.
    """
    if frame.format.name != "cuda":
        return torch.from_numpy(_image(frame, width, height)).to(device, non_blocking=True)
    turns = _quarter_turns(frame)
    w, h = (width or frame.width, height or frame.height)
    if turns % 2 and width is not None:
        w, h = h, w  # scale before turning, as on the CPU path
    # zero-copy views of the decoder's surface; FFmpeg's CUDA device and PyTorch both use the
    # primary context's legacy default stream, so the kernels reading a surface are ordered
    # before the decoder's next copy into it
    # the capsule, not the plane: torch.from_dlpack(plane) passes the current stream, which
    # PyAV (18) refuses for CUDA planes
    y = torch.from_dlpack(frame.planes[0].__dlpack__())
    uv = torch.from_dlpack(frame.planes[1].__dlpack__())
    rgb = nv12_to_rgb(y, uv, w, h, frame.colorspace, frame.color_range == _FULL_RANGE)
    return torch.rot90(rgb, turns, dims=(0, 1)) if turns else rgb


@lru_cache(maxsize=None)
def gpu_decoder_status() -> str:
    """``""`` when this process can decode on the GPU (a CUDA device PyTorch sees, PyAV's FFmpeg
    built with CUDA, the driver's NVDEC library, the device opens), else the reason it cannot.
    Checked once per process."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    if "cuda" not in av.codec.hwaccel.hwdevices_available():
        return "PyAV's FFmpeg has no CUDA device support"
    try:  # FFmpeg loads the driver's NVDEC library only when a decoder opens: check it here
        ctypes.CDLL("libnvcuvid.so.1")
    except OSError:
        return "the driver's NVDEC library (libnvcuvid.so.1) is not installed"
    try:
        torch.cuda.init()  # the primary context FFmpeg shares (primary_ctx=1)
        _hwaccel().create(av.Codec("h264", "r"))
    except (av.error.FFmpegError, NotImplementedError, RuntimeError, OSError) as err:
        return f"cannot open the CUDA decoder device: {err}"
    return ""


def _hwaccel(device: torch.device | None = None) -> av.codec.hwaccel.HWAccel:
    """NVDEC on ``device`` (default: the current CUDA device), pictures kept in GPU memory,
    libavcodec where NVDEC cannot decode the stream."""
    index = device.index if device is not None and device.index is not None else torch.cuda.current_device()
    return av.codec.hwaccel.HWAccel("cuda", device=str(index), allow_software_fallback=True, is_hw_owned=True)


class GpuFrameSource:
    """The segment scan's frame source (:class:`pipeline.scan.FrameSource`) on the GPU: NVDEC
    through PyAV, scaling and colour conversion on the GPU.

    Yields ``(index, detector_frame, analysis_frame)`` as the CPU source does, on the same grid
    (:func:`pipeline.video.iter_slots`, the same seek), except that the detector frame is a CUDA
    tensor RGB uint8 ``[h, w, 3]`` (it stays on the GPU for TransNetV2); the analysis frame of a
    candidate is copied to the host as a NumPy array (a few a second, for OCR and JPEG). Sets
    ``stats.decoder`` to ``nvdec``; to ``cpu`` with a note when NVDEC could not take the stream
    (its frames then come from libavcodec and are uploaded).
    """

    def __init__(self, device: str | torch.device = "cuda"):
        # "cpu": the same code without NVDEC (libavcodec frames, CPU tensors), to test it anywhere
        self.device = torch.device(device)

    def __call__(self, source: str, fs: pafs.FileSystem | None, *, fps: float, start_frame: int,
                 end_frame: int | None, detect_size: tuple[int, int], analysis_size: tuple[int, int],
                 is_candidate: Callable[[int], bool], stats: DecodeStats
                 ) -> Iterator[tuple[int, torch.Tensor, np.ndarray | None]]:
        gpu = self.device.type == "cuda"
        stats.decoder = "nvdec" if gpu else "cpu"
        software, shown, small = 0, None, None
        for slot, frame, _ in iter_slots(source, fs, fps=fps, stats=stats, start_frame=start_frame,
                                         end_frame=end_frame, hwaccel=_hwaccel(self.device) if gpu else None):
            if frame is not shown:  # a picture repeated on the grid is converted once
                shown, small = frame, frame_to_rgb(frame, *detect_size, self.device)
                software += gpu and frame.format.name != "cuda"
            big = frame_to_rgb(frame, *analysis_size, self.device).cpu().numpy() if is_candidate(slot) else None
            yield slot, small, big
        if software:
            stats.decoder = "cpu"
            stats.note = f"NVDEC cannot decode this stream's codec or profile ({software} frames decoded by libavcodec)"


_warned: set[str] = set()


def choose_frame_source(config: DetectConfig) -> tuple[Callable, str]:
    """The frame source a scanning actor uses, and the note on why it is not the GPU's where a
    GPU was asked for: :class:`GpuFrameSource` on a worker with a CUDA device whose decoder
    opens (``detect.decoder: auto``, TransNetV2), else :func:`pipeline.video.iter_scan_frames`.
    A fallback is logged once per process."""
    if config.decoder == "cpu" or config.backend != "transnetv2":
        return iter_scan_frames, ""
    if torch.cuda.is_available():
        note = gpu_decoder_status()
        if not note:
            return GpuFrameSource("cuda"), ""
    elif config.resources.gpus > 0:
        note = "a GPU was asked for (detect.resources.gpus) but this worker sees no CUDA device"
    else:
        return iter_scan_frames, ""  # a CPU worker: nothing fell back
    if note not in _warned:
        _warned.add(note)
        log.warning("decoding on the CPU, not the GPU's decoder: %s", note)
    return iter_scan_frames, note
