"""The pipeline's configuration: one typed model per stage, loaded from ``configs/pipeline/*.yaml``.

Every default lives here (not in argparse, not in the stages). Unknown keys are errors, and a
bad value is reported with its dotted key (``multishot.config.load_config``).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from multishot.annotate.caption_source import MIN_OVERLAP
from multishot.annotate.config import AnnotateConfig
from multishot.config import FrozenSection


class _Section(FrozenSection):
    """A pipeline section (frozen: hashed into the samples' identity), whose stage
    ``resources`` given in part keep that stage's defaults."""

    @model_validator(mode="before")
    @classmethod
    def _resources_over_default(cls, data):
        """A stage's ``resources`` given in part keep that stage's other defaults (not the
        generic ones): ``detect: {resources: {actors: 2}}`` keeps detect's memory reservation."""
        field = cls.model_fields.get("resources")
        if field is not None and isinstance(data, dict) and isinstance(data.get("resources"), dict):
            data = {**data, "resources": {**field.default.model_dump(), **data["resources"]}}
        return data


class Resources(_Section):
    """Where and how wide one stage runs (Cosmos-Curate's stage spec): placement only, so it is
    left out of the samples hash and a rerun with other resources still resumes."""

    actors: int = Field(1, ge=1, description="parallel workers: Ray actors (stages that hold a model) or tasks")
    cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves per worker (0: shares cores with the others)")
    gpus: float = Field(0.0, ge=0, description="GPUs per worker")
    memory_gib: float = Field(0.0, ge=0, description="memory Ray reserves per worker (GiB); 0: none")


class ProbeConfig(_Section):
    """Stage 1, container facts (headers only)."""

    resources: Resources = Resources(actors=2, cpus=0)


class DetectConfig(_Section):
    """Stage 2, shot detection."""

    #: where and how wide the scan runs, not what it finds: left out of the samples hash and of
    #: a segment result's settings (segments are stitched exactly; the decoder is recorded)
    PLACEMENT: ClassVar[tuple[str, ...]] = ("resources", "batch_windows", "segment_s", "decoder", "nvdec_scale",
                                            "sessions", "ocr_threads")

    backend: Literal["transnetv2", "content", "adaptive"] = "transnetv2"
    threshold: float = Field(0.4, gt=0, lt=1, description="TransNetV2 transition probability")
    content_threshold: float = Field(27.0, gt=0, description="PySceneDetect ContentDetector")
    adaptive_threshold: float = Field(3.0, gt=0, description="PySceneDetect AdaptiveDetector")
    min_shot_s: float = Field(
        1.0, ge=0, description="shots shorter than this are recorded as too_short, never analysed or packed (s)"
    )
    window: int = Field(
        200, ge=51, description="TransNetV2 frames per window, 25 of context each side (reference: 100); "
        "each frame goes through the network window / (window - 50) times"
    )
    batch_windows: int = Field(
        1, ge=1, description="TransNetV2 windows per forward (placement: not in the samples hash); on one "
        "CPU thread 1 costs 10% less than 4 (6.1 vs 6.7 ms a frame: the activations stay in cache), on a GPU "
        "batches of 16 fill it (configs/pipeline/gpu_node.yaml)"
    )
    bf16: bool = Field(True, description="TransNetV2 in bf16 where the hardware supports it (else fp32)")
    decoder: Literal["auto", "cpu"] = Field(
        "auto", description="auto: a scanning actor given a GPU decodes with its hardware decoder (NVDEC), "
        "falling back to the CPU when it cannot; cpu: always libavcodec (placement: not in the samples hash)"
    )
    nvdec_scale: bool = Field(
        False, description="GPU decoding: NVDEC scales pictures to the analysis scale while decoding (FFmpeg's "
        "cuvid decoders; ~9x less to convert at 1080p, frames slightly further from the CPU path's); "
        "placement: not in the samples hash"
    )
    sessions: int = Field(
        1, ge=1, description="segments a scanning actor scans at once, in threads sharing its models; on "
        "a GPU each thread is its own NVDEC session (benchmarks/results/pipeline_gpu/pipeline_gpu_h100.md); "
        "placement: not in the samples hash"
    )
    ocr_threads: int = Field(
        1, ge=1, description="threads of a scanning actor that OCR the candidates its segments pick, shared "
        "by its sessions (on a GPU actor the OCR models run on the GPU, the threads do its pre- and "
        "post-processing: ~45 CPU-ms a frame, against ~300 on the CPU of the H100 machine measured); "
        "placement: not in the samples hash"
    )
    segment_s: float = Field(
        300.0, gt=0, description="a video is scanned in segments of about this long (s), rounded to whole "
        "batches of windows, by several actors; each is a resume point (placement: not in the samples hash)"
    )
    gradual_threshold: float = Field(
        0.3, gt=0, lt=1, description="a run of TransNetV2's many-hot head above this with no single-frame "
        "detection is a gradual transition too (slow dissolves; pipeline/transitions.py)"
    )
    gradual_max_s: float = Field(
        2.0, ge=0, description="a gradual transition's span is fitted within this many seconds either side of "
        "its detected middle (dissolves and fades up to twice as long); 0: the heads' span as detected"
    )
    crop_samples: int = Field(
        12, ge=0, description="keyframes sampled over the video to find its active picture area (letterbox / "
        "pillarbox bars, as FFmpeg's cropdetect); 0: never crop (pipeline/picture.py)"
    )
    crop_limit: float = Field(
        24.0, ge=0, le=255, description="a row or column is bars while its mean luma (0-255) stays at or below "
        "this on every sampled frame (cropdetect's limit)"
    )
    crop_min_bar: float = Field(0.01, ge=0, lt=0.5, description="bars thinner than this fraction of the side are kept")
    black_pixel_threshold: float = Field(
        25.5, ge=0, le=255, description="a pixel is black at or below this luma (0-255; blackdetect's pixel_black_th 0.10)"
    )
    black_picture_ratio: float = Field(
        0.98, gt=0, le=1, description="a frame is black when this fraction of its active area's pixels is "
        "(blackdetect's picture_black_ratio_th)"
    )
    fade_level: float = Field(
        0.8, gt=0, le=1, description="a fade from (to) black at a shot's start (end) is trimmed up to the first "
        "(from the last) frame whose mean luma reaches this fraction of the shot's bright level"
    )
    # resources of the scanning actors (decode + TransNetV2 + candidate scoring of one segment at
    # a time). An actor holds TransNetV2, the OCR engine, a batch of windows' activations and one
    # segment's 48x27 frames and JPEG candidates: peak RSS 1.4-1.7 GiB measured, not growing
    # with the video's length (benchmarks/results/pipeline/pipeline.md); told to Ray so it does not
    # over-pack actors on small nodes
    resources: Resources = Resources(actors=1, cpus=1.0, memory_gib=2.0)


class OverlayConfig(_Section):
    """Burned-in overlays: text boxes at one place in most shots of a video (see
    :mod:`pipeline.overlay` for the rule and why ``reject`` is the default)."""

    min_shot_fraction: float = Field(
        0.5, gt=0, le=1, description="an overlay is seen in at least this fraction of the video's OCR'd shots"
    )
    min_shots: int = Field(3, ge=2, description="and in at least this many shots")
    min_iou: float = Field(0.5, gt=0, le=1, description="boxes at one place overlap at least this much (IoU)")
    action: Literal["record", "ignore_in_ocr", "reject"] = Field(
        "reject", description="record: videos table only; ignore_in_ocr: also leave its boxes out of the "
        "OCR text ratio; reject: also remove shots showing it (reason overlay)"
    )


class AnalyseConfig(_Section):
    """Stage 3, per-shot scores from candidate frames scored during the detection scan
    (``pipeline/analyse.py``)."""

    frames_per_shot: int = Field(3, ge=1, description="candidates picked per shot, nearest the centres of equal parts")
    candidates_per_s: float = Field(
        2.0, gt=0, description="candidate frames per second scored during the scan (brightness on all)"
    )
    analysis_short_side: int = Field(
        360, ge=32, description="frames are scored at this shorter side (px), whatever the source's resolution"
    )
    ocr_backend: Literal["rapidocr", "paddleocr", "none"] = "rapidocr"
    ocr_frames_per_shot: int = Field(1, ge=0, description="of the sampled frames, how many get OCR")
    ocr_every_candidate: bool = Field(
        True, description="OCR reads every candidate frame of a shot (candidates_per_s), and a shot showing "
        "a title anywhere is removed as text (pipeline/analyse.py); False: only its first ocr_frames_per_shot picks"
    )
    ocr_runtime: Literal["openvino", "onnxruntime"] = Field(
        "openvino", description="where rapidocr's text detector runs on the CPU: openvino (the same ONNX model "
        "in float32, the same boxes, 2-3x less CPU on the test machine: pipeline/ocr.py) or onnxruntime "
        "(rapidocr's own); an actor given a GPU runs it there (pipeline/ocr_gpu.py)"
    )
    ocr_max_side: int = Field(640, ge=64, description="longest side (px) of frames given to OCR")
    ocr_min_side: int = Field(240, ge=32, description="OCR upscales frames whose shorter side is below this (px)")
    ocr_min_confidence: float = Field(0.8, ge=0, le=1, description="recognition score a text box needs")
    title_min_height: float = Field(
        0.03, gt=0, le=1, description="a box read with ocr_min_confidence at least this tall (fraction of the "
        "picture's height) makes its shot a title or credit (reason text), whatever the text's total area"
    )
    dark_frame_luma: float = Field(
        40.0, ge=0, le=255, description="on a frame darker than this (mean luma 0-255) any box read with "
        "dark_text_min_confidence makes its shot text (titles and credits on black)"
    )
    dark_text_min_confidence: float = Field(0.5, ge=0, le=1, description="see dark_frame_luma")
    persistent_text_min_confidence: float = Field(
        0.5, ge=0, le=1, description="a box at least title_min_height tall read with this on two OCR'd candidates "
        "in a row at one place (IoU >= 0.5) makes its shot text, whatever its confidence otherwise"
    )
    clip_weights: Path | None = Field(
        None, description="open_clip ViT-L-14 (QuickGELU, OpenAI) weights file; None: aesthetic skipped"
    )
    aesthetic_head_weights: Path | None = Field(
        None, description="LAION improved aesthetic predictor, sac+logos+ava1-l14-linearMSE.pth"
    )
    clip_model: str = Field(
        "ViT-L-14-quickgelu", description="open_clip architecture name, or the path of an open_clip model "
        "config (.json) for an architecture open_clip does not ship"
    )
    motion_backend: Literal["dis", "none"] = Field(
        "dis", description="optical flow between consecutive candidate frames, for each shot's motion "
        "(pipeline/motion.py): dis, OpenCV's DIS on the CPU; none: not measured (no shot is static)"
    )
    overlay: OverlayConfig = OverlayConfig()
    # per-shot aggregation of the scan's scores and the overlay search: arithmetic, no core reserved
    resources: Resources = Resources(actors=1, cpus=0)

    @model_validator(mode="after")
    def _consistent(self) -> AnalyseConfig:
        if (self.clip_weights is None) != (self.aesthetic_head_weights is None):
            raise ValueError("clip_weights and aesthetic_head_weights are given together or not at all")
        if self.ocr_frames_per_shot > self.frames_per_shot:
            raise ValueError(f"ocr_frames_per_shot ({self.ocr_frames_per_shot}) exceeds frames_per_shot "
                             f"({self.frames_per_shot}): OCR runs on the sampled frames")
        if self.ocr_min_side > self.ocr_max_side:
            raise ValueError(f"ocr_min_side ({self.ocr_min_side}) exceeds ocr_max_side ({self.ocr_max_side})")
        return self

    @property
    def aesthetic_enabled(self) -> bool:
        return self.clip_weights is not None


class FilterConfig(_Section):
    """Stage 4, per-shot thresholds; a shot failing any of them is removed (with its reason)."""

    min_brightness: float = Field(20.0, ge=0, le=255, description="mean luma (0-255) below: too dark")
    max_brightness: float = Field(235.0, ge=0, le=255, description="mean luma above: too bright")
    max_ocr_text_ratio: float = Field(0.02, ge=0, le=1, description="text box area fraction above: text")
    max_black_fraction: float = Field(
        0.1, ge=0, le=1, description="a shot with more of its frames black (detect.black_*) than this: black"
    )
    min_aesthetic: float = Field(4.5, description="LAION aesthetic score below: ugly (when scored)")
    min_motion: float = Field(
        0.003, ge=0, description="a shot's motion (pipeline/motion.py: median optical flow, in fractions of "
        "the picture's shorter side a second) below this: static; 0 keeps every shot. 0.003 is 1.1 px a second "
        "at 360 px, under 6 px over a 5 s sample: a still to the eye. On the bundled footage the slowest moving "
        "shot (Big Buck Bunny's stream, 11.9-15.8 s) scores 0.0053, the stillest cards 0.0024 (Sintel's logo "
        "on black) and 0 (credits)"
    )

    @model_validator(mode="after")
    def _range(self) -> FilterConfig:
        if self.min_brightness > self.max_brightness:
            raise ValueError(f"min_brightness ({self.min_brightness}) exceeds max_brightness "
                             f"({self.max_brightness}): every shot would be removed")
        return self


class DedupConfig(_Section):
    """Near-duplicate removal across every video of the output (``pipeline/dedup.py``): a shot
    the filter keeps with a keyframe matching a keyframe of an earlier kept shot is removed as
    ``duplicate``. Keyframes match by CLIP image embedding (``min_cosine``) when both shots have
    one (``analyse.clip_weights`` given), else by perceptual hash (``max_distance``)."""

    enabled: bool = Field(True, description="look for near-duplicate shots (False: none is marked)")
    max_distance: int = Field(
        10, ge=0, le=31, description="Hamming distance (bits of the 64-bit pHash of a keyframe) at or below "
        "which two keyframes are the same picture (shots without CLIP embeddings)"
    )
    min_cosine: float = Field(
        0.99, gt=0, le=1, description="cosine similarity of two keyframes' CLIP image embeddings at or above "
        "which they are the same picture (when CLIP weights are given): 1 - eps of NeMo Curator's semantic "
        "dedup with Cosmos-Curate's default eps 0.01 (their clip-level video embeddings; not checked on "
        "the footage with real ViT-L/14 weights)"
    )


class Bucket(_Section):
    """A target duration: samples of ``target_s ± tolerance_s`` seconds of whole shots."""

    name: str = Field(pattern=r"^[A-Za-z0-9_]+$")
    target_s: float = Field(gt=0)
    tolerance_s: float = Field(ge=0)


class PackConfig(_Section):
    """Stage 5, packing consecutive kept shots into multi-shot samples (HoloCine §3.1)."""

    buckets: list[Bucket] = Field(
        min_length=1,
        default_factory=lambda: [
            Bucket(name="5s", target_s=5.0, tolerance_s=1.0),
            Bucket(name="15s", target_s=15.0, tolerance_s=3.0),
            Bucket(name="60s", target_s=60.0, tolerance_s=10.0),
        ]
    )
    max_shots: int = Field(13, ge=1, description="most shots in one sample (HoloCine: 13)")
    min_shots: int = Field(1, ge=1, description="fewest shots in one sample")
    min_last_shot_s: float = Field(
        1.0, ge=0, description="an overshooting last shot is cut short only if this much remains (s)"
    )
    resources: Resources = Resources(actors=2, cpus=0)

    @model_validator(mode="after")
    def _consistent(self) -> PackConfig:
        names = [b.name for b in self.buckets]
        if len(set(names)) != len(names):
            raise ValueError(f"buckets: names repeat: {names}")
        for i, b in enumerate(self.buckets):
            if b.tolerance_s >= b.target_s:
                raise ValueError(f"buckets.{i} ({b.name}): tolerance_s ({b.tolerance_s}) must be below target_s ({b.target_s})")
        if self.min_shots > self.max_shots:
            raise ValueError(f"min_shots ({self.min_shots}) exceeds max_shots ({self.max_shots})")
        return self


class RenderConfig(_Section):
    """Stage 6, encoding each sample at the training geometry."""

    width: int = Field(832, ge=16, multiple_of=16)
    height: int = Field(480, ge=16, multiple_of=16)
    fps: float = Field(16.0, gt=0)
    # superfast at crf 20 against veryfast at crf 18, on 480 frames of the bundled footage (one
    # thread, the 2-core machine): 4.6 against 7.9 ms a frame, PSNR-Y to the unencoded frames
    # 45.6 against 45.2 dB, 38% more bytes; and the same bytes on every run, which veryfast's
    # macroblock tree did not give (benchmarks/results/pipeline/pipeline.md)
    crf: int = Field(20, ge=0, le=51, description="x264 constant rate factor")
    preset: str = Field("superfast", description="x264 preset; presets with the macroblock tree "
                        "(veryfast and slower) encode the same frames to different bytes from run to run")
    min_crop_fraction: float = Field(
        0.5, gt=0, le=1, description="reject sources whose centre crop to width x height keeps less "
        "than this fraction of their width (or height): aspect ratio too far from the output's"
    )
    max_damaged_frames: int = Field(
        0, ge=0, description="drop samples with more output frames than this lost to decoding damage "
        "(shown from the last good frame); kept ones record it as damaged_frames"
    )
    # decoding + x264 per video: half a core each, two at a time
    resources: Resources = Resources(actors=2, cpus=0.5)


class CaptionConfig(_Section):
    """Stage 7, captions of rendered samples: from ``source`` (captions the archive already
    has, :mod:`annotate.caption_source`), then, for samples it does not cover, from Gemini (or
    the openai backend) when its credentials are set (what to ask is the ``annotate`` section,
    shared with ``multishot annotate``)."""

    source: Path | None = Field(
        None, description="caption-source file (JSON lines: per-shot captions keyed by source video and "
        "time span, optional global captions; annotate/caption_source.py), joined to each sample by its "
        "source video and its shots' source spans; None: none (`multishot pipeline run --caption-source`)"
    )
    min_overlap: float = Field(
        MIN_OVERLAP, gt=0, le=1, description="a shot takes the caption entry of its video that overlaps "
        "its source span the most, if it covers at least this share of it; a sample with a shot no entry "
        "covers stays caption_status pending, the reason in caption_error"
    )

    @field_validator("source")
    @classmethod
    def _readable(cls, source: Path | None) -> Path | None:
        """Read (and so checked) at load: a bad file is a config error naming the key."""
        if source is not None:
            from multishot.annotate.caption_source import CaptionSource

            try:
                CaptionSource.read(source)
            except OSError as err:
                raise ValueError(f"cannot read {source}: {err.strerror or err}") from None
        return source

    # waits on the network, not the CPU: reserves no core
    resources: Resources = Resources(actors=1, cpus=0)


class WriteConfig(_Section):
    """Stage 8, WebDataset shards and the per-video resume marker."""

    max_samples_per_shard: int = Field(500, ge=1)
    # each actor imports webdataset (and with it torch, 2 CPU-s) once; a video's shards take one
    # well under a second on local disk, so one keeps up with many renders
    resources: Resources = Resources(actors=1, cpus=0)


class RayConfig(_Section):
    """Where the pipeline runs. ``address: null`` starts a local Ray (or joins the job's cluster
    under ``ray job submit``)."""

    address: str | None = None
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray; None: all")
    runner: Literal["ray", "sequential"] = Field(
        "ray", description="sequential: every stage in this process, one video at a time, no Ray (tests, debugging)"
    )


class PipelineConfig(_Section):
    """A whole pipeline run: inputs, outputs and every stage's settings."""

    input: str | None = Field(None, description="folder, glob, text file of paths, or Parquet manifest")
    output: str | None = Field(None, description="output folder or URI")
    extensions: list[str] = Field(
        min_length=1, default_factory=lambda: [".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"]
    )
    probe: ProbeConfig = ProbeConfig()
    detect: DetectConfig = DetectConfig()
    analyse: AnalyseConfig = AnalyseConfig()
    filter: FilterConfig = FilterConfig()
    dedup: DedupConfig = DedupConfig()
    pack: PackConfig = PackConfig()
    render: RenderConfig = RenderConfig()
    caption: CaptionConfig = CaptionConfig()
    write: WriteConfig = WriteConfig()
    annotate: AnnotateConfig = Field(
        default_factory=AnnotateConfig,
        description="captions (Gemini, or backend openai: a VLM endpoint), used when the backend's "
        "credentials are set (GEMINI_API_KEY or Vertex AI settings; the variable api_key_env names)",
    )
    ray: RayConfig = RayConfig()

    @field_validator("extensions")
    @classmethod
    def _dotted(cls, extensions: list[str]) -> list[str]:
        bad = [e for e in extensions if not (e.startswith(".") and len(e) > 1)]
        if bad:
            raise ValueError(f"each starts with a dot, like '.mp4'; got {bad}")
        return extensions
