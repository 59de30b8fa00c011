"""Decoding on the GPU: NVDEC through PyAV, colour conversion and resizing with PyTorch on CUDA.

A worker that Ray gave a GPU decodes with the GPU's hardware decoder (NVDEC) through PyAV's own
hardware decoding (``av.open(..., hwaccel=HWAccel("cuda", is_hw_owned=True))``, PyAV ≥ 17): the
FFmpeg in PyAV's wheels carries NVDEC (``h264_cuvid``, ``hevc_cuvid``, the ``cuda`` device), so no
other wheel is needed, and decoded pictures stay in GPU memory (NV12 planes read through DLPack,
no copy). The frames come from the same demuxer and the same grid code as on the CPU
(:func:`pipeline.video.iter_grid`): **frame ``i`` is the picture shown at time ``i / fps``**,
holes filled by repeating the previous picture, on the GPU exactly as on the CPU.

Each picture is scaled with an area filter in YUV (as libswscale does: scale first, then
convert) and turned into RGB uint8 with the matrix the frame is tagged with (BT.709, BT.2020,
else BT.601, limited range unless tagged full range: libswscale's choice for
:func:`pipeline.video._image`), then turned upright (display matrix).

When there is no CUDA device, PyAV's FFmpeg has no CUDA, or the device cannot be opened, the CPU
path runs instead (:func:`gpu_decoder_status` says why); a stream NVDEC cannot decode
(an unsupported codec or profile) is decoded by libavcodec and its frames are uploaded.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Iterator
from functools import lru_cache

import av
import av.codec.hwaccel
import numpy as np
import pyarrow.fs as pafs
import torch
import torch.nn.functional as F

from multishot.pipeline.video import DecodeStats, _image, _quarter_turns, iter_grid

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


def _hwaccel() -> av.codec.hwaccel.HWAccel:
    """NVDEC on the current CUDA device, pictures kept in GPU memory, libavcodec where NVDEC
    cannot decode the stream."""
    return av.codec.hwaccel.HWAccel("cuda", device=str(torch.cuda.current_device()),
                                    allow_software_fallback=True, is_hw_owned=True)


class FrameSource:
    """Source frames on the grid, for detection (48×27 for TransNetV2) and analysis (a fixed
    analysis scale), as tensors on ``device``; decoded by NVDEC when ``device`` is CUDA and the
    decoder opens, else by libavcodec on the CPU (the reason in :attr:`note`, logged once).

    Args:
        device: ``"cuda"`` (or ``"cuda:N"``) or ``"cpu"``.
        use_gpu_decoder: False keeps decoding on the CPU even with a GPU (frames still uploaded).
    """

    _warned: set[str] = set()

    def __init__(self, device: str | torch.device, use_gpu_decoder: bool = True):
        self.device = torch.device(device)
        if self.device.type != "cuda":
            self.note = "no GPU given to this worker"
        elif not use_gpu_decoder:
            self.note = "the GPU's decoder is turned off in the config (decoder: cpu)"
        else:
            self.note = gpu_decoder_status()
        self.decoder = "nvdec" if not self.note else "cpu"
        if self.note and self.device.type == "cuda" and self.note not in FrameSource._warned:
            FrameSource._warned.add(self.note)
            log.warning("decoding on the CPU, not the GPU's decoder: %s", self.note)

    def frames(
        self,
        source: str,
        fs: pafs.FileSystem | None,
        *,
        fps: float,
        small: tuple[int, int] | None = (48, 27),
        analysis: tuple[int, int] | None = None,
        analysis_wanted: np.ndarray | None = None,
        wanted: np.ndarray | None = None,
        stats: DecodeStats | None = None,
    ) -> Iterator[tuple[int, torch.Tensor | None, torch.Tensor | None]]:
        """Yield ``(source_frame_index, small, analysed)`` for every grid slot (or every slot in
        ``wanted``), as :func:`pipeline.video.iter_grid` places them.

        Args:
            small: ``(width, height)`` of the frame given for every slot, RGB uint8
                ``[height, width, 3]`` on the device; None: not made (yielded as None).
            analysis: ``(width, height)`` of the analysis frame (None: the source's size, upright),
                made only for the slots in ``analysis_wanted`` (sorted source frame indices);
                None is yielded for the others.
            wanted: sorted source frame indices to yield (the others are decoded, not converted).
            stats: filled as :func:`iter_grid` fills it, and with the decoder that ran
                (``decoder``: ``nvdec`` or ``cpu``; ``note``: why not ``nvdec``).
        """
        stats = stats if stats is not None else DecodeStats()
        stats.decoder, stats.note = self.decoder, self.note
        hwaccel = _hwaccel() if self.decoder == "nvdec" else None
        analysis_set = set(int(i) for i in analysis_wanted) if analysis_wanted is not None else set()
        software = [0]

        def convert(frame: av.VideoFrame) -> _Picture:
            if hwaccel is not None and frame.format.name != "cuda":
                software[0] += 1
            return _Picture(frame, self.device)

        for index, picture, _ in iter_grid(source, fs, fps=fps, wanted=wanted, stats=stats,
                                           hwaccel=hwaccel, convert=convert):
            yield (index, picture.rgb(small) if small else None,
                   picture.rgb(analysis or (None, None)) if index in analysis_set else None)
        if software[0]:
            stats.decoder = "cpu"
            stats.note = f"NVDEC cannot decode this stream's codec or profile ({software[0]} frames decoded by libavcodec)"


class _Picture:
    """A decoded frame and its RGB versions made so far (a frame repeated on the grid is
    converted once per size)."""

    def __init__(self, frame: av.VideoFrame, device: torch.device):
        self.frame, self.device, self.made = frame, device, {}

    def rgb(self, size: tuple[int | None, int | None]) -> torch.Tensor:
        if size not in self.made:
            self.made[size] = frame_to_rgb(self.frame, size[0], size[1], self.device)
        return self.made[size]
