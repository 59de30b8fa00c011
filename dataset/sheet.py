"""``multishot shards sheet``: a contact sheet of one sample, one row per shot.

Each row shows ``frames_per_shot`` frames spread evenly over the shot (first to last), each
labelled with its frame number, and under them the shot's frame and time range (sample and
source clock), its filter scores and its caption. A header gives the sample's key, source,
size, caption status and global caption. Rows are separated by a full-width grey rule.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from multishot.dataset.describe import caption_state, shot_summary
from multishot.dataset.frames import frames_at
from multishot.dataset.record import SampleRecord, Shot

MARGIN = 12  # pixels around the sheet
GAP = 6  # pixels between thumbnails
MIN_WIDTH = 900  # pixels: room for a shot's time-range-and-scores line
FONT_SIZE = 14
LINE_HEIGHT = 18  # pixels per text line
HEADER_LINES = 4
ROW_TEXT_LINES = 4  # shot line + up to 3 caption lines
RULE_COLOUR = (170, 170, 170)
BACKGROUND = (255, 255, 255)


@dataclass(frozen=True)
class SheetLayout:
    """Geometry of a sheet in pixels: canvas size, thumbnail size, and each row's top ``y``."""

    width: int
    height: int
    thumb_width: int
    thumb_height: int
    row_tops: list[int]
    frames: list[list[int]]  # sample frame indices shown in each row

    @property
    def row_height(self) -> int:
        return self.thumb_height + ROW_TEXT_LINES * LINE_HEIGHT + GAP


def shot_frames(shot: Shot, count: int) -> list[int]:
    """``count`` frame indices spread evenly over ``[start_frame, end_frame)``, first and last included."""
    last = shot.end_frame - 1
    if count <= 1 or last == shot.start_frame:
        return [shot.start_frame + (last - shot.start_frame) // 2]
    return sorted({round(shot.start_frame + (last - shot.start_frame) * j / (count - 1)) for j in range(count)})


def plan_sheet(record: SampleRecord, *, frames_per_shot: int = 4, thumb_height: int = 135) -> SheetLayout:
    """The layout of ``record``'s sheet, in pixels.

    Width ``max(MIN_WIDTH, 2·MARGIN + k·thumb_w + (k−1)·GAP)`` with ``k = frames_per_shot`` and
    ``thumb_w`` keeping the video's aspect; height ``2·MARGIN + HEADER_LINES·LINE_HEIGHT +
    shots·row_height`` with ``row_height = thumb_height + ROW_TEXT_LINES·LINE_HEIGHT + GAP``.

    Raises:
        ValueError: ``frames_per_shot`` or ``thumb_height`` below 1.
    """
    if frames_per_shot < 1 or thumb_height < 1:
        raise ValueError("frames_per_shot and thumb_height must be >= 1")
    thumb_width = max(1, round(thumb_height * record.width / record.height))
    width = max(MIN_WIDTH, 2 * MARGIN + frames_per_shot * thumb_width + (frames_per_shot - 1) * GAP)
    header = MARGIN + HEADER_LINES * LINE_HEIGHT
    row_height = thumb_height + ROW_TEXT_LINES * LINE_HEIGHT + GAP
    tops = [header + i * row_height for i in range(record.num_shots)]
    return SheetLayout(
        width=width,
        height=header + record.num_shots * row_height + MARGIN,
        thumb_width=thumb_width,
        thumb_height=thumb_height,
        row_tops=tops,
        frames=[shot_frames(s, frames_per_shot) for s in record.shots],
    )


def _font(size: int) -> ImageFont.FreeTypeFont:
    from matplotlib import font_manager  # ships DejaVu Sans, which covers every script we print

    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


def _wrap(text: str, width_px: int, lines: int) -> list[str]:
    """``text`` wrapped to ``lines`` lines of about ``width_px`` pixels, ellipsised if longer."""
    chars = max(10, width_px // (FONT_SIZE * 55 // 100))
    wrapped = textwrap.wrap(text, chars) or [""]
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = wrapped[-1][: chars - 1] + "…"
    return wrapped


def render_sheet(
    record: SampleRecord, mp4: bytes, *, frames_per_shot: int = 4, thumb_height: int = 135
) -> tuple[Image.Image, SheetLayout]:
    """The contact sheet of ``record`` (its mp4 bytes decoded once, up to the last frame shown).

    Raises:
        av.error.FFmpegError: the mp4 does not decode.
        ValueError: see :func:`plan_sheet`.
    """
    layout = plan_sheet(record, frames_per_shot=frames_per_shot, thumb_height=thumb_height)
    frames = frames_at(mp4, [i for row in layout.frames for i in row], height=thumb_height)
    sheet = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font, small = _font(FONT_SIZE), _font(FONT_SIZE - 3)
    text_width = layout.width - 2 * MARGIN

    header = [
        f"{record.key}  —  {record.source.rsplit('/', 1)[-1]}  (source_id {record.source_id})",
        f"bucket {record.bucket}  {record.duration_s:.2f} s  {record.num_frames} frames @ {record.fps:g} fps  "
        f"{record.width}x{record.height}  cut frames {record.cut_frames}",
        f"captions: {caption_state(record)}",
        *_wrap(f"global: {record.global_caption}" if record.global_caption else "global caption: —", text_width, 1),
    ]
    for i, line in enumerate(header):
        draw.text((MARGIN, MARGIN + i * LINE_HEIGHT), line, fill=(0, 0, 0), font=font)

    for shot, top, indices in zip(record.shots, layout.row_tops, layout.frames):
        draw.line([(0, top), (layout.width - 1, top)], fill=RULE_COLOUR, width=1)
        y = top + GAP // 2 + 1
        for j, index in enumerate(indices):
            x = MARGIN + j * (layout.thumb_width + GAP)
            if index in frames:
                thumb = Image.fromarray(frames[index]).resize((layout.thumb_width, layout.thumb_height))
                sheet.paste(thumb, (x, y))
            else:
                draw.rectangle([x, y, x + layout.thumb_width - 1, y + layout.thumb_height - 1], outline=(200, 0, 0))
                draw.text((x + 4, y + 4), "frame missing", fill=(200, 0, 0), font=small)
            label = f"f {index}"
            box = draw.textbbox((x + 3, y + 3), label, font=small)
            draw.rectangle([box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1], fill=(0, 0, 0))
            draw.text((x + 3, y + 3), label, fill=(255, 255, 255), font=small)
        y += layout.thumb_height + 2
        draw.text((MARGIN, y), shot_summary(record, shot), fill=(0, 0, 0), font=font)
        caption = shot.caption or f"(caption {record.caption_status})"
        for k, line in enumerate(_wrap(caption, text_width, ROW_TEXT_LINES - 1), start=1):
            draw.text(
                (MARGIN, y + k * LINE_HEIGHT), line, fill=(60, 60, 60) if shot.caption else (150, 0, 0), font=font
            )
    return sheet, layout
