"""Decoding on the GPU: NVDEC through PyAV, colour conversion and resizing with PyTorch on CUDA.

A worker that Ray gave a GPU decodes with the GPU's hardware decoder (NVDEC) through the FFmpeg
in PyAV's wheels (PyAV ≥ 17: ``h264_cuvid``, ``hevc_cuvid``, ... and the ``cuda`` device), so no
other wheel is needed, and decoded pictures stay in GPU memory (NV12 or P010 planes read through
DLPack). Two ways in:

* **hwaccel** (default): libavcodec's own decoder with NVDEC as its hardware accelerator
  (``av.open(..., hwaccel=HWAccel("cuda", is_hw_owned=True))``); pictures at the coded size.
* **NVDEC's scaler** (``detect.nvdec_scale``, :func:`open_cuvid`): FFmpeg's ``*_cuvid``
  decoders (NVIDIA's own parser, several pictures in flight) with their ``resize`` option, so
  the hardware scales each picture while decoding: a 1080p picture leaves the decoder at the
  analysis scale (short side 360), ~9× less to copy and convert; the 48×27 detector frames are
  made from that. The trade: NVDEC's scaling filter is not libswscale's area filter, so the
  frames differ slightly more from the CPU path's (``benchmarks/pipeline_gpu.py`` measures the
  difference). When the cuvid decoder cannot open (no decoder for the codec, the driver
  refuses it), or fails before its first picture (a profile NVDEC does not decode, found in
  the sequence header: :class:`UntilFirstFrame`), the hwaccel path runs and the reason is
  logged once per process.

The frames come from the same demuxer and the same grid code as on the CPU
(:func:`pipeline.decode.iter_slots`): **frame ``i`` is the picture shown at time ``i / fps``**,
holes filled by repeating the previous picture, on the GPU exactly as on the CPU.

**Batched conversion** (:class:`PictureBatch`): each decoded picture is copied once into a
preallocated batch (the decoder reuses its surfaces, so one device copy per picture is needed
anyway) and a batch of up to :data:`BATCH` pictures is scaled and converted by one set of
kernels: the 48×27 frames of every picture, the analysis frames of the candidates' pictures
only. Scaling is an area filter in Y'CbCr (as libswscale does: scale first, then convert), then
the matrix the frame is tagged with (BT.709, BT.2020, else BT.601; limited range unless tagged
full range: libswscale's choice for :func:`pipeline.decode.frame_image`), then the display matrix's
rotation.

When there is no CUDA device, PyAV's FFmpeg has no CUDA, the driver has no NVDEC library, or the
device cannot be opened, the CPU frame source runs instead (:func:`choose_frame_source`; the
reason from :func:`gpu_decoder_status`); a stream NVDEC cannot decode (an unsupported codec or
profile) is decoded by libavcodec, and its pictures are uploaded as NV12 and converted the same way.
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
from av.video.reformatter import VideoReformatter

from multishot.pipeline.config import DetectConfig
from multishot.pipeline.decode import DecodeStats, quarter_turns, iter_scan_frames, iter_slots, probe

log = logging.getLogger(__name__)

#: (Kr, Kb) luma coefficients of the Y'CbCr matrices, by FFmpeg's AVColorSpace value; any other
#: value (unspecified, BT.470BG, SMPTE 170M) is BT.601, as libswscale treats it
_KR_KB = {1: (0.2126, 0.0722), 9: (0.2627, 0.0593), 10: (0.2627, 0.0593)}
_BT601 = (0.299, 0.114)
_FULL_RANGE = 2  # AVCOL_RANGE_JPEG
_UNSPECIFIED = 2  # AVCOL_SPC_UNSPECIFIED

#: pictures converted together (:class:`PictureBatch`): 64 NV12 1080p pictures are 200 MB of GPU
#: memory, and a batch's kernels cost about what one picture's did
BATCH = 64

#: FFmpeg's NVDEC decoders by codec (FFmpeg's canonical codec name)
_CUVID = {"h264": "h264_cuvid", "hevc": "hevc_cuvid", "av1": "av1_cuvid", "vp9": "vp9_cuvid", "vp8": "vp8_cuvid",
          "mpeg1video": "mpeg1_cuvid", "mpeg2video": "mpeg2_cuvid", "mpeg4": "mpeg4_cuvid", "vc1": "vc1_cuvid",
          "mjpeg": "mjpeg_cuvid"}


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


def _to_float(planes: torch.Tensor) -> torch.Tensor:
    """uint8 or uint16 sample values as float32. uint16 goes through an int16 view (PyTorch's
    uint16 is a storage type with few kernels): values from 2^15 up wrap, and are put back."""
    if planes.dtype != torch.uint16:
        return planes.float()
    return planes.view(torch.int16).float().remainder_(65536.0)


def yuv_to_rgb(luma: torch.Tensor, chroma: torch.Tensor, width: int, height: int,
               colorspace: int = 2, full_range: bool = False) -> torch.Tensor:
    """A batch of NV12 (or P010/P016) pictures as RGB uint8 ``[N, height, width, 3]``, on the
    planes' device, with one set of kernels for the whole batch.

    Args:
        luma: the luma planes ``[N, H, W]`` (uint8, or uint16 for 10/16-bit formats: the high
            byte counts); any strides (a DLPack view of a decoder surface, or a batch buffer).
        chroma: the interleaved chroma planes ``[N, H/2, W/2, 2]`` (Cb, Cr).
        width, height: output size (px); each plane is scaled to it before the conversion.
        colorspace: FFmpeg's AVColorSpace of the pictures (:func:`yuv_matrix`).
        full_range: the pictures are tagged full (JPEG) range.
    """
    y = _resize(_to_float(luma)[:, None], height, width)
    uv = _resize(_to_float(chroma).permute(0, 3, 1, 2), height, width)
    yuv = torch.cat([y, uv], dim=1)  # [N, 3, h, w]
    if luma.dtype != torch.uint8:
        yuv /= 256.0  # P010 / P016: the high byte holds the 8-bit code value
    m, offset = yuv_matrix(colorspace, full_range)
    rgb = torch.einsum("ij,njhw->nhwi", m.to(yuv.device), yuv) + offset.to(yuv.device)
    return rgb.round_().clamp_(0, 255).to(torch.uint8)


def nv12_to_rgb(y: torch.Tensor, uv: torch.Tensor, width: int, height: int,
                colorspace: int = 2, full_range: bool = False) -> torch.Tensor:
    """One NV12 (or P010/P016) picture as RGB uint8 ``[height, width, 3]``: :func:`yuv_to_rgb`
    of a batch of one. ``y``: ``[H, W]``, ``uv``: ``[H/2, W/2, 2]``, as PyAV's
    ``VideoPlane.__dlpack__`` exports them (row pitch in the strides)."""
    return yuv_to_rgb(y[None], uv[None], width, height, colorspace, full_range)[0]


class PictureBatch:
    """Up to ``capacity`` decoded pictures of one layout, copied into preallocated buffers on
    ``device`` (luma ``[capacity, H, W]``, chroma ``[capacity, H/2, W/2, 2]``) and converted
    together (:meth:`convert`).

    A picture's layout is its plane shapes and sample type, its colour matrix and range and
    its rotation (quarter turns); a batch holds pictures of one layout (:meth:`accepts`), and the
    buffers are reallocated only when the layout changes.
    """

    def __init__(self, capacity: int, device: torch.device):
        if capacity < 1:
            raise ValueError(f"a batch holds at least one picture, got {capacity}")
        self.capacity, self.device = capacity, device
        self.count = 0
        self.layout: tuple | None = None
        self.luma = self.chroma = None

    @staticmethod
    def _layout(y: torch.Tensor, uv: torch.Tensor, colorspace: int, full_range: bool, turns: int) -> tuple:
        return tuple(y.shape), tuple(uv.shape), y.dtype, int(colorspace), bool(full_range), turns % 4

    def accepts(self, y: torch.Tensor, uv: torch.Tensor, colorspace: int, full_range: bool, turns: int) -> bool:
        """Whether the picture can join: the batch is empty, or not full and of its layout."""
        return self.count == 0 or (self.count < self.capacity
                                   and self._layout(y, uv, colorspace, full_range, turns) == self.layout)

    def add(self, y: torch.Tensor, uv: torch.Tensor, colorspace: int, full_range: bool, turns: int) -> int:
        """Copy a picture (planes as :func:`yuv_to_rgb` takes them, one picture: ``[H, W]`` and
        ``[H/2, W/2, 2]``, on any device) into the batch; returns its row.

        Raises:
            ValueError: the picture does not fit (:meth:`accepts` is False).
        """
        if not self.accepts(y, uv, colorspace, full_range, turns):
            raise ValueError("the picture does not fit this batch (full, or another layout)")
        layout = self._layout(y, uv, colorspace, full_range, turns)
        if layout[:3] != (self.layout or (None,) * 3)[:3]:
            self.luma = torch.empty((self.capacity, *y.shape), dtype=y.dtype, device=self.device)
            self.chroma = torch.empty((self.capacity, *uv.shape), dtype=uv.dtype, device=self.device)
        self.layout = layout
        # the copy is queued on the stream the decoder writes its surfaces on (the legacy default
        # stream of the primary context): ordered after the decoder's write, before its reuse
        self.luma[self.count].copy_(y)
        self.chroma[self.count].copy_(uv)
        self.count += 1
        return self.count - 1

    def convert(self, width: int, height: int, rows: list[int] | None = None) -> torch.Tensor:
        """RGB uint8 ``[n, height, width, 3]`` of the batch's pictures (all, or ``rows``),
        upright: ``width × height`` is the size after rotation (each picture is scaled before
        it is turned, as on the CPU path)."""
        _, _, _, colorspace, full_range, turns = self.layout
        luma, chroma = self.luma[: self.count], self.chroma[: self.count]
        if rows is not None:
            index = torch.tensor(rows, device=self.device)
            # through int16 views: PyTorch's uint16 is a storage type with few kernels (P010)
            luma, chroma = (x.view(torch.int16).index_select(0, index).view(x.dtype) if x.dtype == torch.uint16
                            else x.index_select(0, index) for x in (luma, chroma))
        w, h = (height, width) if turns % 2 else (width, height)
        rgb = yuv_to_rgb(luma, chroma, w, h, colorspace, full_range)
        return torch.rot90(rgb, turns, dims=(1, 2)) if turns else rgb

    def clear(self) -> None:
        """Empty the batch (the buffers are kept)."""
        self.count = 0


def _planes(frame: av.VideoFrame) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y [H, W], uv [H/2, W/2, 2])`` of a decoded picture: zero-copy DLPack views of an
    NVDEC surface (NV12, P010), or a software frame (a stream NVDEC could not take, or a test
    on the CPU) repacked by libswscale as NV12 (P010 above 8 bits) in host memory, its range
    kept (the values are then those of the source, :func:`_full_range` still applies)."""
    if frame.format.name != "cuda":
        deep = frame.format.components[0].bits > 8
        code = 2 if _full_range(frame) else 1  # AVCOL_RANGE_JPEG / MPEG: repack, never rescale
        frame = VideoReformatter().reformat(frame, format="p010le" if deep else "nv12",
                                            src_color_range=code, dst_color_range=code)
    # the capsule, not the plane: torch.from_dlpack(plane) passes the current stream, which
    # PyAV (18) refuses for CUDA planes
    return torch.from_dlpack(frame.planes[0].__dlpack__()), torch.from_dlpack(frame.planes[1].__dlpack__())


def _full_range(frame: av.VideoFrame) -> bool:
    """Full (JPEG) range: tagged so, or a ``yuvj*`` format (which libswscale reads as full range)."""
    return frame.color_range == _FULL_RANGE or frame.format.name.startswith("yuvj")


def _colour(frame: av.VideoFrame, stream: dict) -> tuple[int, bool]:
    """``(colorspace, full_range)`` of a decoded picture. A cuvid decoder tags frames with the
    bitstream's colour description only: the container's tags in ``stream`` (which libavcodec's
    decoder falls back to) fill what it leaves unspecified."""
    colorspace, full = frame.colorspace, _full_range(frame)
    if stream:
        if colorspace == _UNSPECIFIED:
            colorspace = stream["colorspace"]
        full = full or (frame.color_range == 0 and stream["color_range"] == _FULL_RANGE)
    return colorspace, full


class CuvidUnavailable(RuntimeError):
    """FFmpeg's NVDEC decoder (``*_cuvid``) cannot decode this stream here; the message says why."""


def open_by_name(stream: av.video.stream.VideoStream, name: str, hwaccel: av.codec.hwaccel.HWAccel | None,
                 options: dict[str, str]) -> av.video.codeccontext.VideoCodecContext:
    """The decoder called ``name`` (not the one libavcodec picks for the codec) opened for
    ``stream``'s packets as its demuxer gives them: the stream's parameter sets (extradata:
    avcC / hvcC in MP4 and Matroska) passed on, ``options`` its private options; one thread,
    as :func:`pipeline.decode.iter_slots` decodes (reproducible pixels on damaged input).

    Raises:
        av.error.FFmpegError, ValueError: the decoder does not exist or does not open.
    """
    ctx = av.CodecContext.create(name, "r", hwaccel=hwaccel)
    ctx.extradata = stream.codec_context.extradata
    ctx.thread_count = 1
    ctx.options = dict(options)
    ctx.open()
    return ctx


def open_cuvid(stream: av.video.stream.VideoStream, device: torch.device,
               size: tuple[int, int] | None) -> av.video.codeccontext.VideoCodecContext:
    """An opened FFmpeg ``*_cuvid`` decoder for ``stream``'s packets (:func:`open_by_name`),
    pictures kept in GPU memory on ``device``; ``size = (W, H)`` (px, before rotation, even)
    makes NVDEC scale every picture to it (the decoder's ``resize`` option), ``None`` keeps the
    coded size. Its frames carry the stream's timestamps (no ``pkt_timebase`` is set, so cuvid
    passes them through as they are).

    Raises:
        CuvidUnavailable: no NVDEC decoder for the codec in PyAV's FFmpeg, or it does not open
            (no CUDA, no driver library, a codec or size the GPU does not decode).
    """
    codec = stream.codec_context.codec.canonical_name  # "av1", whichever decoder libavcodec would pick
    name = _CUVID.get(codec)
    if name is None or name not in av.codecs_available:
        raise CuvidUnavailable(f"PyAV's FFmpeg has no NVDEC decoder for {codec}")
    options = {} if size is None else {"resize": f"{size[0]}x{size[1]}"}
    try:
        ctx = open_by_name(stream, name, cuda_hwaccel(device), options)
    except (av.error.FFmpegError, NotImplementedError, OSError, ValueError) as err:
        raise CuvidUnavailable(f"{name} does not open: {err}") from err
    if not ctx.is_hwaccel:
        raise CuvidUnavailable(f"{name} opened without its CUDA device")
    return ctx


class UntilFirstFrame:
    """Decode packets with ``decode`` (a cuvid decoder) and hand over to ``fallback`` (the
    stream's own decoder) if it fails before its first picture: an error, or
    :data:`MAX_HELD_PACKETS` packets without a picture. NVDEC refuses some streams only once it
    parses their sequence header (H.264 at 10 bits or 4:2:2, sizes beyond the engine's): the
    packets it was given are replayed into ``fallback``, so no picture is lost (a replayed
    packet that ``fallback`` cannot decode either is skipped). Errors after the first picture
    are the stream's damage and are raised as usual. Logs the hand-over once per process.
    """

    #: packets held for a replay until the first picture (cuvid shows its first picture a few
    #: packets in: its display delay is 4)
    MAX_HELD_PACKETS = 64

    def __init__(self, decode: Callable[[av.Packet], list], fallback: Callable[[av.Packet], list], name: str):
        self.decode, self.fallback, self.name = decode, fallback, name
        self.held: list[av.Packet] | None = []  # None once the first picture came out

    def __call__(self, packet: av.Packet) -> list[av.VideoFrame]:
        if self.decode is self.fallback or self.held is None:
            return self.decode(packet)
        self.held.append(packet)
        try:
            frames = self.decode(packet)
        except av.error.FFmpegError as err:
            return self._hand_over(f"it failed before its first picture: {err}")
        if frames:
            self.held = None
        elif len(self.held) >= self.MAX_HELD_PACKETS:
            return self._hand_over(f"no picture after {len(self.held)} packets")
        return frames

    def _hand_over(self, why: str) -> list[av.VideoFrame]:
        _warn_once(f"{self.name} does not decode this stream ({why}): libavcodec's NVDEC hwaccel decodes it")
        held, self.held, self.decode = self.held, None, self.fallback
        frames = []
        for packet in held:
            try:
                frames += self.fallback(packet)
            except av.error.FFmpegError:
                continue  # damage at the very start, in a stream NVDEC's parser refused too
        return frames


def nvdec_size(coded: tuple[int, int], analysis_size: tuple[int, int], turns: int) -> tuple[int, int] | None:
    """The size ``(W, H)`` (px, before rotation) NVDEC scales pictures to: the analysis scale
    when it is smaller than the coded picture ``coded = (W, H)``, else None (decode at the coded
    size: NVDEC does not upscale for us). ``analysis_size`` is upright (after ``turns``)."""
    w, h = (analysis_size[1], analysis_size[0]) if turns % 2 else analysis_size
    if (w, h) == tuple(coded) or w > coded[0] or h > coded[1]:
        return None
    return w, h


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
        torch.cuda.init()
        cuda_hwaccel().create(av.Codec("h264", "r"))
    except (av.error.FFmpegError, NotImplementedError, RuntimeError, OSError) as err:
        return f"cannot open the CUDA decoder device: {err}"
    return ""


#: the only flags with which FFmpeg shares a device's primary CUDA context (``desired_flags`` of
#: ``cuda_context_init`` in FFmpeg's libavutil/hwcontext_cuda.c): it refuses an active primary
#: context with other flags (ENOTSUP, ``[Errno 95] Operation not supported``)
CU_CTX_SCHED_BLOCKING_SYNC = 0x04


@lru_cache(maxsize=None)
def _libcuda() -> ctypes.CDLL:
    return ctypes.CDLL("libcuda.so.1")


def share_primary_context(index: int) -> None:
    """Give CUDA device ``index``'s primary context (the one PyTorch computes in) the flags FFmpeg
    requires to decode into it, whether or not PyTorch has made it active yet.

    PyAV decodes into the primary context when frames stay on the GPU (``primary_ctx=1``), so
    PyTorch can read them. PyTorch activates that context with the default flags (0) at its
    first CUDA call; afterwards every NVDEC open failed with ``[Errno 95]`` (measured on the
    H100: a scanning actor loads TransNetV2 on the GPU before it decodes, so it fell back to
    the CPU). Setting the scheduling flag on an active primary context is allowed since CUDA 11
    (``cuDevicePrimaryCtxSetFlags_v2``); with it, waits on the GPU block instead of spinning.
    Checked before every open: the CUDA runtime sets its own flags (0) when it activates the
    context, so flags set earlier do not last.

    Raises:
        RuntimeError: the driver refused (its ``CUresult``).
    """
    cuda = _libcuda()
    device, flags, active = ctypes.c_int(), ctypes.c_uint(), ctypes.c_int()

    def check(call: str, result: int) -> None:
        if result:
            raise RuntimeError(f"{call} returned CUresult {result}")

    check("cuInit", cuda.cuInit(0))
    check("cuDeviceGet", cuda.cuDeviceGet(ctypes.byref(device), index))
    check("cuDevicePrimaryCtxGetState", cuda.cuDevicePrimaryCtxGetState(device, ctypes.byref(flags), ctypes.byref(active)))
    if flags.value != CU_CTX_SCHED_BLOCKING_SYNC:
        check("cuDevicePrimaryCtxSetFlags", cuda.cuDevicePrimaryCtxSetFlags_v2(device, CU_CTX_SCHED_BLOCKING_SYNC))


def cuda_hwaccel(device: torch.device | None = None) -> av.codec.hwaccel.HWAccel:
    """NVDEC on ``device`` (default: the current CUDA device), pictures kept in GPU memory (in
    the primary context, PyAV's default for them: :func:`share_primary_context`), libavcodec
    where NVDEC cannot decode the stream."""
    index = device.index if device is not None and device.index is not None else torch.cuda.current_device()
    share_primary_context(index)
    return av.codec.hwaccel.HWAccel("cuda", device=str(index), allow_software_fallback=True, is_hw_owned=True)


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


class GpuFrameSource:
    """The segment scan's frame source (:class:`pipeline.scan.FrameSource`) on the GPU: NVDEC
    through PyAV, scaling and colour conversion on the GPU in batches of ``batch`` pictures.

    Yields ``(index, detector_frame, analysis_frame)`` as the CPU source does, on the same grid
    (:func:`pipeline.decode.iter_slots`, the same seek), except that the detector frame is a
    tensor RGB uint8 ``[h, w, 3]`` on ``device`` (it stays on the GPU for TransNetV2); the
    analysis frame of a candidate is copied to the host as a NumPy array (a few a second, for
    OCR and JPEG). Frames come out a batch at a time (``batch`` pictures, in order). Sets
    ``stats.decoder`` to ``nvdec``; to ``cpu`` with a note when NVDEC could not take the stream
    (its frames then come from libavcodec and are uploaded).

    Args:
        device: ``cuda`` (or ``cuda:N``); ``cpu`` runs the same code without NVDEC (libavcodec
            frames repacked as NV12, CPU tensors), to test it anywhere.
        batch: pictures converted together (:class:`PictureBatch`); 1 converts each alone.
        nvdec_scale: decode with FFmpeg's cuvid decoder, NVDEC scaling pictures to the analysis
            scale where that is smaller (:func:`open_cuvid`, :func:`nvdec_size`); the hwaccel
            path where it cannot open (logged once).
    """

    def __init__(self, device: str | torch.device = "cuda", batch: int = BATCH, nvdec_scale: bool = False):
        self.device = torch.device(device)
        self.batch = batch
        self.nvdec_scale = nvdec_scale and self.device.type == "cuda"

    def __call__(self, source: str, fs: pafs.FileSystem | None, *, fps: float, start_frame: int,
                 end_frame: int | None, detect_size: tuple[int, int], analysis_size: tuple[int, int],
                 is_candidate: Callable[[int], bool], stats: DecodeStats
                 ) -> Iterator[tuple[int, torch.Tensor, np.ndarray | None]]:
        gpu = self.device.type == "cuda"
        stats.decoder = "nvdec" if gpu else "cpu"
        batch = PictureBatch(self.batch, self.device)
        pending: list[tuple[int, int, bool]] = []  # (slot, row in the batch, candidate) not yet yielded
        software, shown, turns = 0, None, None
        decoder, stream_colour = None, {}
        if self.nvdec_scale:
            # cuvid's frames carry no display matrix (it is stream side data the standalone
            # decoder never sees): the rotation comes from the probe
            turns = (probe(source, fs).rotation // 90) % 4
            decoder = self._cuvid_decoder(analysis_size, turns, stream_colour)
        for slot, frame, _ in iter_slots(source, fs, fps=fps, stats=stats, start_frame=start_frame,
                                         end_frame=end_frame, hwaccel=cuda_hwaccel(self.device) if gpu else None,
                                         decoder=decoder):
            if frame is not shown:  # a picture repeated on the grid is copied and converted once
                shown = frame
                software += gpu and frame.format.name != "cuda"
                y, uv = _planes(frame)
                layout = (y, uv, *_colour(frame, stream_colour), quarter_turns(frame) if turns is None else turns)
                if not batch.accepts(*layout):
                    yield from self._flush(batch, pending, detect_size, analysis_size)
                    pending = []
                row = batch.add(*layout)
            pending.append((slot, row, is_candidate(slot)))
        yield from self._flush(batch, pending, detect_size, analysis_size)
        if software:
            stats.decoder = "cpu"
            stats.note = f"NVDEC cannot decode this stream's codec or profile ({software} frames decoded by libavcodec)"

    def _cuvid_decoder(self, analysis_size: tuple[int, int], turns: int, stream_colour: dict):
        """:func:`pipeline.decode.iter_slots`'s ``decoder``: a stream's packets decoded by its
        cuvid decoder, scaled by NVDEC to the analysis scale; the stream's own (hwaccel) decoder
        where that cannot open. Fills ``stream_colour`` with the stream's colour tags when the
        cuvid decoder runs (:func:`_colour`)."""

        def decoder(stream: av.video.stream.VideoStream) -> Callable[[av.Packet], list[av.VideoFrame]]:
            coded = (stream.codec_context.width, stream.codec_context.height)
            try:
                ctx = open_cuvid(stream, self.device, nvdec_size(coded, analysis_size, turns))
            except CuvidUnavailable as err:
                _warn_once(f"NVDEC's scaler is not used, decoding through libavcodec's NVDEC hwaccel: {err}")
                return stream.codec_context.decode
            stream_colour.update(colorspace=stream.codec_context.colorspace,
                                 color_range=stream.codec_context.color_range)
            return UntilFirstFrame(ctx.decode, stream.codec_context.decode, ctx.name)

        return decoder

    @staticmethod
    def _flush(batch: PictureBatch, pending: list[tuple[int, int, bool]], detect_size: tuple[int, int],
               analysis_size: tuple[int, int]) -> Iterator[tuple[int, torch.Tensor, np.ndarray | None]]:
        """Convert the batch (48×27 for every picture, the analysis scale for candidates'
        pictures, copied to the host in one transfer), yield its pending slots, empty it."""
        if not pending:
            return
        small = batch.convert(*detect_size)
        rows = sorted({row for _, row, candidate in pending if candidate})
        big = dict(zip(rows, batch.convert(*analysis_size, rows).cpu().numpy())) if rows else {}
        batch.clear()
        for slot, row, candidate in pending:
            yield slot, small[row], big[row] if candidate else None


def choose_frame_source(config: DetectConfig) -> tuple[Callable, str]:
    """The frame source a scanning actor uses, and the note on why it is not the GPU's where a
    GPU was asked for: :class:`GpuFrameSource` (``detect.nvdec_scale`` passed on) on a worker
    with a CUDA device whose decoder opens (``detect.decoder: auto``, TransNetV2), else
    :func:`pipeline.decode.iter_scan_frames`. A fallback is logged once per process."""
    if config.decoder == "cpu" or config.backend != "transnetv2":
        return iter_scan_frames, ""
    if torch.cuda.is_available():
        note = gpu_decoder_status()
        if not note:
            return GpuFrameSource("cuda", nvdec_scale=config.nvdec_scale), ""
    elif config.resources.gpus > 0:
        note = "a GPU was asked for (detect.resources.gpus) but this worker sees no CUDA device"
    else:
        return iter_scan_frames, ""  # a CPU worker: nothing fell back
    _warn_once(f"decoding on the CPU, not the GPU's decoder: {note}")
    return iter_scan_frames, note
