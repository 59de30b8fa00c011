"""Motion: how much a shot's picture moves, from dense optical flow between its candidate frames.

Static shots (a held frame, a title card, a slideshow's still) teach a video model nothing about
motion; Open-Sora and Cosmos-Curate score clips by optical flow and drop the static ones. Here
the flow runs on frames the scan already has (:mod:`pipeline.scan`): the **candidate frames**
(``analyse.candidates_per_s``, 2 a second, at the fixed analysis scale, inside the active area),
consecutive candidates forming a pair. Nothing is decoded or scaled for it.

**Definition** (fixed before anything was measured):

* a **pair's motion** (:class:`FlowMeter`): the mean magnitude of the dense optical flow from
  one candidate to the next, over every pixel of the active picture, divided by the picture's
  shorter side (px) and by the time between the two frames (s): the fraction of the picture's
  shorter side an average pixel travels in a second (``1/s``). Dividing by the shorter side
  makes it a property of the film, not of the copy or of ``analysis_short_side`` (a 360 px
  shorter side turns 0.003 into 1.08 px a second); dividing by the time makes it independent of
  ``candidates_per_s`` and of the frame rate (the candidate grid is 11 or 12 frames apart at
  23.976 fps).
* a **shot's motion** (:func:`shot_motion`): the median of the pair motions of the candidates
  inside the shot, each but the shot's first (whose pair starts in the shot before); ``None``
  for a shot holding fewer than two candidates (under ``1 / candidates_per_s`` seconds after
  trimming: it gets no scores either) or with motion off. The median, not the mean: a shot is
  static when most of its time is still, and a flash, a missed cut or a last-moment movement
  (one pair) must not lift a held frame above the threshold.

The filter removes shots under ``filter.min_motion`` with reason ``static``.

The flow is OpenCV's DIS (Kroeger et al., "Fast Optical Flow using Dense Inverse Search",
ECCV 2016; ``cv2.DISOpticalFlow``, preset ``FAST``) on BT.601 grey. Candidates half a second
apart move far in a fast shot: DIS's coarse-to-fine pyramid follows tens of pixels, and beyond
that the score is an underestimate, which changes nothing for the low end the threshold sits
at. The preset: ``FAST`` costs a quarter of ``MEDIUM`` (5.5 against 22.8 CPU-ms a pair on the
bundled footage, 0.011 CPU-s per realtime second at 2 candidates a second) and decides every
shot of it alike at ``filter.min_motion`` (``benchmarks/results/motion/motion.md``).
"""

from __future__ import annotations

import cv2
import numpy as np

#: DIS's speed/accuracy preset (see the module docstring for why FAST)
DIS_PRESET = cv2.DISOPTICAL_FLOW_PRESET_FAST


class FlowMeter:
    """The pair motions of one scan's candidates, fed in frame order (one per scan: it keeps the
    previous frame, so it is not shared between threads).

    Args:
        fps: the source's frame rate (the candidates' times are ``index / fps``).
        preset: DIS's preset (``cv2.DISOPTICAL_FLOW_PRESET_*``); other than :data:`DIS_PRESET`
            only to compare (``benchmarks/motion.py``).
    """

    def __init__(self, fps: float, preset: int = DIS_PRESET):
        self.fps = fps
        self.flow = cv2.DISOpticalFlow_create(preset)
        self.previous: tuple[int, np.ndarray] | None = None

    def measure(self, index: int, frame: np.ndarray) -> float | None:
        """The motion (``1/s``, module docstring) from the frame given before to ``frame``, an RGB
        uint8 active picture ``[H, W, 3]`` of source frame ``index``; None for the first frame
        given (and for a frame of another size than the one before, which cannot happen within
        one video)."""
        grey = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
        before, self.previous = self.previous, (index, grey)
        if before is None or before[1].shape != grey.shape or index <= before[0]:
            return None
        flow = self.flow.calc(before[1], grey, None)  # [H, W, 2] px
        magnitude = float(np.sqrt(flow[..., 0] ** 2 + flow[..., 1] ** 2).mean())
        return magnitude / min(grey.shape) * self.fps / (index - before[0])


def shot_motion(pairs: list[float | None]) -> float | None:
    """A shot's motion (``1/s``): the median of the pair motions of its candidates but the first
    (``pairs``, in frame order: the ``motion`` of each candidate inside the shot after its first);
    None when none was measured (module docstring)."""
    measured = [m for m in pairs if m is not None]
    return float(np.median(measured)) if measured else None
