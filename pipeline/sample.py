"""From a packed sample to its sample record and its render job.

The record (:class:`dataset.record.SampleRecord`) carries each shot's source range (frames and
seconds), its output frames ``[start, end)``, its first latent frame, and its filter scores; the
sample's cut frames in output-frame and latent-frame units; the caption fields empty with
``caption_status: pending``; and the config hash. The key is deterministic and dot-free:
``{file stem}_{source_id}_{bucket}_{first source frame:07d}_{end source frame:07d}``.
"""

from __future__ import annotations

from multishot.dataset.record import SampleRecord, Shot, latent_cut_frame, num_latent_frames
from multishot.dataset.shardset import sample_row
from multishot.pipeline.config import PipelineConfig
from multishot.pipeline.pack import PackedSample
from multishot.pipeline.render import RenderJob, source_frames_for_shot
from multishot.pipeline.task import VideoTask, slug


def plan_sample(task: VideoTask, sample: PackedSample, config: PipelineConfig, samples_hash: str) -> tuple[SampleRecord, RenderJob]:
    """The record and render job of ``sample`` (a packed sample of ``task``'s video).

    Raises:
        pydantic.ValidationError: the sample breaks a record invariant (a packing bug).
    """
    info, fps = task.info, config.render.fps
    by_index = [task.shots[p.index] for p in sample.shots]
    shots, frames, at = [], [], 0
    for k, (packed, row) in enumerate(zip(sample.shots, by_index)):
        picks = source_frames_for_shot(row.shot.start_frame, packed.frames, info.fps, fps)
        frames += picks
        end_source = picks[-1] + 1
        shots.append(
            Shot(
                index=k,
                source_start_frame=row.shot.start_frame,
                source_end_frame=end_source,
                source_start_s=row.shot.start_frame / info.fps,
                source_end_s=end_source / info.fps,
                start_frame=at,
                end_frame=at + packed.frames,
                latent_start_frame=0 if at == 0 else latent_cut_frame(at),
                brightness=row.scores.brightness,
                ocr_text_ratio=row.scores.ocr_text_ratio,
                aesthetic=row.scores.aesthetic,
            )
        )
        at += packed.frames
    key = f"{slug(task.source)}_{task.source_id}_{sample.bucket}_{shots[0].source_start_frame:07d}_{shots[-1].source_end_frame:07d}"
    bucket = next(b for b in config.pack.buckets if b.name == sample.bucket)
    record = SampleRecord(
        key=key,
        source=task.source,
        source_id=task.source_id,
        bucket=sample.bucket,
        target_duration_s=bucket.target_s,
        fps=fps,
        width=config.render.width,
        height=config.render.height,
        num_frames=sample.num_frames,
        num_latent_frames=num_latent_frames(sample.num_frames),
        duration_s=sample.num_frames / fps,
        cut_frames=sample.cut_frames,
        latent_cut_frames=[latent_cut_frame(c) for c in sample.cut_frames],
        shots=shots,
        aesthetic_status="scored" if config.analyse.aesthetic_enabled else "skipped",
        samples_hash=samples_hash,
    )
    return record, RenderJob(key, frames)


def index_row(record: SampleRecord, shard: str) -> dict:
    """The sample's row in ``index/samples.parquet``: the listing row plus provenance columns."""
    return {
        **sample_row(record, shard),
        "source_id": record.source_id,
        "source_start_s": record.shots[0].source_start_s,
        "source_end_s": record.shots[-1].source_end_s,
        "aesthetic_status": record.aesthetic_status,
        "damaged_frames": record.damaged_frames,
        "samples_hash": record.samples_hash,
    }
