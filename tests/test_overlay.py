"""Burned-in overlays on real footage: found per video from the OCR boxes of its shots, recorded,
left out of the OCR text ratio, or rejecting the shots that show them (pipeline/overlay.py).

The stages run as the pipeline runs them (probe → detect → analyse, sequential runner, rapidocr);
detection uses PySceneDetect's ContentDetector to keep the tests quick.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw, ImageFont

from multishot.pipeline.config import OverlayConfig, PipelineConfig
from multishot.pipeline.ocr import TextBox
from multishot.pipeline.overlay import find_overlays, iou
from multishot.pipeline.stages import STAGES, run_sequential
from multishot.pipeline.task import VideoTask
from multishot.pipeline.decode import iter_frames, probe

FOOTAGE = Path(__file__).resolve().parents[2] / "shared" / "footage"
TOS = FOOTAGE / "archive" / "tos_excerpt_64s_512x120_fmp4.mp4"
#: where Tears of Steel's "450Kbps" stamp sits (x0, y0, x1, y1 in fractions of the frame), by eye
STAMP = (0.44, 0.85, 0.56, 0.96)
SUBTITLE = "Where are you going now?"


def _analyse(video: Path, action: str, tmp_path: Path) -> VideoTask:
    config = PipelineConfig.model_validate({
        "output": str(tmp_path / "out"),
        "detect": {"backend": "content"},
        "analyse": {"frames_per_shot": 1, "overlay": {"action": action}},
    })
    stages = [s for s in STAGES if s.name in ("probe", "detect", "analyse")]
    (task,) = run_sequential(config, "test", [VideoTask(source=str(video), source_id="0")], stages)
    assert task.status == "ok", task.reason
    return task


def _subtitled_tos(path: Path) -> tuple[Path, tuple[int, int]]:
    """Tears of Steel from 35 s to its end with a subtitle drawn (PIL) on every frame of one shot,
    re-encoded with PyAV; returns the clip and the subtitled frame range."""
    info = probe(str(TOS))
    first = int(35 * info.fps)
    subtitled = (890 - first, 975 - first)  # a shot of the excerpt (TransNetV2 and ContentDetector agree)
    font = ImageFont.load_default(size=16)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = info.width, info.height, "yuv420p"
        stream.codec_context.sample_aspect_ratio = Fraction(info.sample_aspect).limit_denominator(100)  # 9:16
        stream.options = {"crf": "18", "preset": "veryfast"}
        for index, frame in iter_frames(str(TOS), fps=info.fps, wanted=np.arange(first, info.num_frames)):
            if subtitled[0] <= index - first < subtitled[1]:
                image = Image.fromarray(frame)
                ImageDraw.Draw(image).text((info.width // 2, 62), SUBTITLE, font=font, fill=(255, 255, 255),
                                           anchor="mm", stroke_width=2, stroke_fill=(0, 0, 0))
                frame = np.asarray(image)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return path, subtitled


def test_tears_of_steel_bitrate_stamp_is_an_overlay(tmp_path):
    task = _analyse(TOS, "reject", tmp_path)
    assert len(task.overlays) == 1, task.overlays
    (overlay,) = task.overlays
    assert overlay.text == "450Kbps"
    assert iou(overlay.rect, STAMP) > 0.7, overlay.rect
    analysed = [r for r in task.shots if r.scores is not None]
    assert overlay.shots >= 0.8 * len(analysed) and overlay.shot_fraction >= 0.8
    # default action: the shots showing the stamp are removed as overlay, and the stamp no longer
    # counts as text; a shot with the opening credits still reads as text
    reasons = [r.reason.split(",") for r in analysed]
    assert sum("overlay" in r for r in reasons) == overlay.shots
    assert any("text" in r for r in reasons)
    assert all(r.scores.ocr_text_ratio < 0.02 for r in analysed if "text" not in r.reason)
    row = task.video_row()
    assert row["overlays"][0]["text"] == "450Kbps" and row["overlays"][0]["shots"] == overlay.shots


def test_footage_without_burned_in_text_has_no_overlay(tmp_path):
    task = _analyse(FOOTAGE / "archive" / "sintel_film_excerpt_26s.mp4", "reject", tmp_path)
    assert len([r for r in task.shots if r.scores is not None]) >= 5
    assert task.overlays == []
    assert not any("overlay" in r.reason for r in task.shots)


def test_subtitles_are_still_text_when_the_overlay_is_left_out(tmp_path):
    clip, (a, b) = _subtitled_tos(tmp_path / "subtitled.mp4")
    runs = {action: _analyse(clip, action, tmp_path / action) for action in ("record", "ignore_in_ocr")}
    for action, task in runs.items():
        assert [o.text for o in task.overlays] == ["450Kbps"], (action, task.overlays)
        subtitled = [r for r in task.shots if a <= r.shot.start_frame < b]
        assert len(subtitled) == 1 and len(task.shots) >= 5
        (shot,) = subtitled
        texts = [box.text.replace(" ", "") for frame in shot.scores.text_boxes for box in frame]
        assert SUBTITLE.replace(" ", "") in texts, texts
        assert "text" in shot.reason.split(","), (action, shot.reason)  # the subtitle is text either way
        assert "overlay" not in shot.reason
    # left out of the ratio, the stamp (about 0.012 of the frame) no longer counts as text in any shot
    (overlay,) = runs["ignore_in_ocr"].overlays
    stamp_area = (overlay.rect[2] - overlay.rect[0]) * (overlay.rect[3] - overlay.rect[1])
    for recorded, ignored in zip(runs["record"].shots, runs["ignore_in_ocr"].shots):
        assert recorded.shot == ignored.shot
        drop = recorded.scores.ocr_text_ratio - ignored.scores.ocr_text_ratio
        assert drop == pytest.approx(stamp_area, rel=0.25), (recorded.shot, drop, stamp_area)
    # so a shot whose only text is the stamp would pass at any threshold above zero
    ratios = [r.scores.ocr_text_ratio for r in runs["ignore_in_ocr"].shots]
    assert ratios.count(0.0) >= 5, ratios


def test_overlay_rule_on_hand_made_boxes():
    """A stamp in 3 of 4 shots is an overlay; subtitles of changing length at the bottom are not;
    a box in too few shots is not."""
    def box(x0, y0, x1, y1, text):
        return TextBox(((x0, y0), (x1, y0), (x1, y1), (x0, y1)), text, 0.99)

    stamp = [box(0.80 + d, 0.05, 0.95 + d, 0.10, "LOGO") for d in (0.0, 0.005, -0.004)]
    lines = [box(0.45, 0.85, 0.55, 0.9, "Yes."), box(0.2, 0.85, 0.8, 0.9, "I never said that to you, Mum"),
             box(0.35, 0.85, 0.65, 0.9, "Where were you?"), box(0.3, 0.85, 0.7, 0.9, "Come on, then, now")]
    shots = [[[stamp[0], lines[0]]], [[lines[1]], [stamp[1]]], [[stamp[2], lines[2]]], [[lines[3]]], ()]
    config = OverlayConfig()
    (overlay,) = find_overlays(shots, config)
    assert overlay.text == "LOGO" and overlay.shots == 3 and overlay.shot_fraction == 0.75  # the 5th: no OCR
    assert iou(overlay.rect, (0.8, 0.05, 0.95, 0.1)) > 0.9
    assert find_overlays(shots, config.model_copy(update={"min_shot_fraction": 0.8})) == []
    assert find_overlays(shots[:2], config) == []  # seen in 2 shots: under min_shots


@pytest.mark.parametrize("bad", [{"min_shot_fraction": 0}, {"min_iou": 1.5}, {"action": "crop"}, {"min_shots": 1}])
def test_overlay_config_is_validated(bad, tmp_path):
    from multishot.config import ConfigError, load_config

    (tmp_path / "c.yaml").write_text("analyse:\n  overlay:\n    " + yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=f"analyse.overlay.{next(iter(bad))}"):
        load_config(tmp_path / "c.yaml", PipelineConfig)
