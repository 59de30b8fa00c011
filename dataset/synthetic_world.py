"""A synthetic multi-shot world with known ground truth, small enough for a small DiT to learn.

Issue 30: evidence that a fine-tune with this code learns to cut where the prompt says, to
follow each shot's caption and to keep a character across shots, without real Wan weights. A
**film** is a sequence of **shots**; each shot shows a **scene** (a two-tone background: sky
above the horizon, ground below), named by its shot caption; each film has one **character**
(shape × colour × texture) that persists across its shots and moves inside each shot (a
straight line at constant speed, at most :data:`MAX_SPEED` pixels a frame; a cut
re-frames it). Two caption modes: ``named`` (the global
caption names the character: caption following) and ``anonymous`` (no caption names it: only
attention across shots can keep it, the job of HoloCine's summary tokens). Some films of three
or more shots return to their first scene (A-B-A). For memory tests (CausalCine's recall) the
character can be **away** in chosen shots (``sample_film(character_away=...)``: an empty scene),
and the shots' lengths can be fixed (``shot_latent_frames``).

Everything is deterministic from a seed (:func:`sample_film`, :func:`sample_films`), rendered
as ``[F, H, W, 3]`` uint8 frames (:func:`render_film`) or as an mp4 through PyAV
(:func:`write_film`), with its ground truth (:class:`Film`: cut frames, per-shot attributes)
and a hierarchical caption in the project's format (:func:`dataset.record.build_prompt`).

:func:`classify_frame` / :func:`classify_video` read the attributes back from decoded frames,
exact by construction: the scene from the mean colours of the top and bottom border strips
(the character never enters them), the character from the largest blob of pixels that differ from that
scene's background, holes filled: colour = nearest palette colour of their median, shape =
the template (square, circle, triangle of the blob's area at its centroid) it overlaps best,
texture = the share of dark pixels inside the blob eroded by two pixels (the dot). :func:`describe_vocabulary` is the world's vocabulary (the committed
``configs/learn/world.json``).

Cut frames follow the sample record (first frame of the new shot, pixel frames) and always
fall on ``4t + 1``, where Wan's VAE starts a latent frame, so the latent cuts are exact.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from multishot.dataset.record import build_prompt, num_latent_frames, with_shot_count

#: scene name → (sky RGB, ground RGB); the shot caption names the scene
SCENES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "forest": ((150, 200, 235), (40, 110, 40)),
    "desert": ((250, 235, 190), (200, 150, 80)),
    "ocean": ((120, 170, 230), (20, 60, 150)),
    "night": ((15, 15, 50), (55, 45, 80)),
    "snow": ((205, 210, 225), (250, 250, 250)),
    "city": ((170, 170, 170), (90, 90, 90)),
}
#: character colours (far from every scene colour)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30), "yellow": (245, 215, 0), "magenta": (230, 40, 230),
    "cyan": (0, 230, 230),
}
SHAPES = ("square", "circle", "triangle")
TEXTURES = ("plain", "dotted")
#: colour of the dotted texture's dot
DOT = (0, 0, 0)
CAPTION_MODES = ("named", "anonymous")

#: frame size and length of the world's films (2 s at 16 fps, 9 latent frames of 8×8 with the
#: Wan VAE's stride 4×8×8)
HEIGHT, WIDTH, NUM_FRAMES, FPS = 64, 64, 33, 16.0
#: pixel rows of the border strips the scene is read from (the character stays inside)
BORDER = 4
#: the character's largest speed inside a shot, pixels per frame
MAX_SPEED = 0.75


@dataclass(frozen=True)
class Character:
    shape: str
    colour: str
    texture: str

    def words(self) -> str:
        """``"red dotted circle"``: how a named caption calls it."""
        return f"{self.colour} {self.texture} {self.shape}"


@dataclass(frozen=True)
class ShotTruth:
    """One shot's ground truth: the half-open frame range, its scene and the character's path
    (centre ``(x0, y)`` → ``(x1, y)`` in pixels over the shot); ``character_visible`` False:
    the character is away (the shot shows its scene alone)."""

    start_frame: int
    end_frame: int
    scene: str
    x0: float
    x1: float
    y: float
    character_visible: bool = True


@dataclass(frozen=True)
class Film:
    """A film of the world and its ground truth.

    ``cut_frames``: first frame of every shot after the first (pixel frames, ``4t + 1``);
    ``prompt``: the hierarchical caption; ``aba``: the third shot returns to the first's scene.
    """

    name: str
    seed: int
    num_frames: int
    height: int
    width: int
    fps: float
    character: Character
    shots: tuple[ShotTruth, ...]
    caption_mode: str
    aba: bool
    prompt: str = field(default="")

    @property
    def cut_frames(self) -> list[int]:
        return [s.start_frame for s in self.shots[1:]]

    @property
    def scenes(self) -> list[str]:
        return [s.scene for s in self.shots]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cut_frames"] = self.cut_frames
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Film:
        d = {k: v for k, v in d.items() if k != "cut_frames"}
        return cls(**{**d, "character": Character(**d["character"]),
                      "shots": tuple(ShotTruth(**s) for s in d["shots"])})


def caption(character: Character, scenes: list[str], mode: str) -> str:
    """The film's hierarchical prompt: the global caption names the character (``named``) or
    not (``anonymous``) and says the shot count; each shot caption names its scene."""
    if mode not in CAPTION_MODES:
        raise ValueError(f"caption mode {mode!r} is not one of {CAPTION_MODES}")
    who = f"A {character.words()}" if mode == "named" else "A character"
    return build_prompt(with_shot_count(f"{who}.", len(scenes)), [f"{s}." for s in scenes])


def sample_film(seed: int, *, num_shots: int | None = None, caption_mode: str | None = None,
                aba_probability: float = 0.3, num_frames: int = NUM_FRAMES,
                height: int = HEIGHT, width: int = WIDTH, max_shots: int = 4,
                name: str | None = None, shot_latent_frames: tuple[int, ...] | None = None,
                character_away: tuple[int, ...] = ()) -> Film:
    """One film drawn from ``seed`` alone (``numpy.random.default_rng(seed)``).

    1–``max_shots`` shots (or ``num_shots``), every shot at least 2 latent frames long, cuts at
    ``4t + 1``; consecutive shots differ in scene; a film of three or more shots returns to its
    first scene in its third shot with ``aba_probability``. ``shot_latent_frames``: the shots'
    lengths in latent frames instead of random cuts (they sum to the film's latent frames;
    the shot count is their count); ``character_away``: indices of shots the character is away
    from (rendered as the empty scene; the captions do not change).

    Raises:
        ValueError: ``num_frames`` not ``4k + 1`` or too short for the shots; shot lengths that
            do not sum to the film's latent frames; an away shot that does not exist.
    """
    rng = np.random.default_rng(seed)
    f_lat = num_latent_frames(num_frames)
    if shot_latent_frames is not None:
        if sum(shot_latent_frames) != f_lat or min(shot_latent_frames) < 1:
            raise ValueError(f"shot lengths {shot_latent_frames} do not split {f_lat} latent "
                             "frames")
        num_shots = len(shot_latent_frames)
    shots = int(num_shots or rng.integers(1, max_shots + 1))
    if any(not 0 <= i < shots for i in character_away):
        raise ValueError(f"away shots {character_away} of a film of {shots} shots")
    if shot_latent_frames is not None:
        starts = [int(s) for s in np.cumsum([0, *shot_latent_frames[:-1]])]
    else:
        if 2 * shots > f_lat:
            raise ValueError(f"{shots} shots of >= 2 latent frames do not fit {f_lat} latent "
                             "frames")
        # latent shot starts: 0 then shots-1 distinct starts with gaps >= 2 (stars and bars)
        slack = f_lat - 2 * shots
        extra = np.sort(rng.integers(0, slack + 1, shots - 1)) if shots > 1 else np.array([], int)
        starts = [0] + [2 * (i + 1) + int(e) for i, e in enumerate(extra)]
    cuts = [4 * s - 3 for s in starts[1:]]          # latent frame s starts at pixel 4s - 3
    names = list(SCENES)
    scenes = [str(rng.choice(names))]
    aba = shots >= 3 and rng.random() < aba_probability
    for i in range(1, shots):
        if i == 2 and aba:
            scenes.append(scenes[0])
        else:
            scenes.append(str(rng.choice([s for s in names if s != scenes[-1]
                                          and not (i == 2 and s == scenes[0])])))
    character = Character(str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS))),
                          str(rng.choice(TEXTURES)))
    mode = caption_mode or str(rng.choice(CAPTION_MODES))
    edges = [0, *cuts, num_frames]
    size = _size(height, width)
    margin = BORDER + size / 2 + 2
    truths = []
    for i, ((a, b), scene) in enumerate(zip(zip(edges, edges[1:]), scenes)):
        # at most MAX_SPEED pixels a frame: a latent frame (4 frames) holds a nearly still pose
        x0 = rng.uniform(margin, width - margin)
        reach = MAX_SPEED * (b - a - 1)
        x1 = rng.uniform(max(margin, x0 - reach), min(width - margin, x0 + reach))
        y = rng.uniform(margin, height - margin)
        truths.append(ShotTruth(a, b, scene, round(float(x0), 2), round(float(x1), 2),
                                round(float(y), 2), i not in character_away))
    return Film(name or f"film{seed:06d}", int(seed), num_frames, height, width, FPS, character,
                tuple(truths), mode, bool(aba), caption(character, scenes, mode))


def sample_films(seed: int, count: int, **kwargs) -> list[Film]:
    """``count`` films, the i-th from seed ``seed * 1_000_003 + i`` (:func:`sample_film`)."""
    return [sample_film(seed * 1_000_003 + i, name=f"w{seed}_{i:06d}", **kwargs)
            for i in range(count)]


def _size(height: int, width: int) -> float:
    """Character size in pixels (a square's side, a circle's diameter, a triangle's base)."""
    return round(min(height, width) * 0.3125)


def character_mask(shape: str, cx: float, cy: float, size: float, height: int,
                   width: int) -> np.ndarray:
    """``[H, W]`` bool mask of a character centred at ``(cx, cy)``."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    r = size / 2
    if shape == "square":
        return (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
    if shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    if shape == "triangle":  # apex up, base at cy + r
        t = (yy - (cy - r)) / (2 * r)
        return (t >= 0) & (t <= 1) & (np.abs(xx - cx) <= t * r)
    raise ValueError(f"unknown shape {shape!r}")


def background(scene: str, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """``[H, W, 3]`` uint8 background of ``scene``: sky over the top half, ground below."""
    sky, ground = SCENES[scene]
    img = np.empty((height, width, 3), np.uint8)
    img[: height // 2] = sky
    img[height // 2:] = ground
    return img


def render_frame(scene: str, character: Character, cx: float, cy: float,
                 height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """One frame ``[H, W, 3]`` uint8: the scene with the character centred at ``(cx, cy)``."""
    img = background(scene, height, width)
    size = _size(height, width)
    img[character_mask(character.shape, cx, cy, size, height, width)] = COLOURS[character.colour]
    if character.texture == "dotted":
        # a square dot at the centre (a triangle's smaller, in the wide part, a quarter low)
        triangle = character.shape == "triangle"
        img[character_mask("square", cx, cy + (size / 4 if triangle else 0.0),
                           size * (0.3 if triangle else 0.4), height, width)] = DOT
    return img


def render_film(film: Film) -> np.ndarray:
    """The film's frames ``[F, H, W, 3]`` uint8 (RGB)."""
    frames = np.empty((film.num_frames, film.height, film.width, 3), np.uint8)
    for shot in film.shots:
        n = shot.end_frame - shot.start_frame
        for i in range(n):
            u = i / max(1, n - 1)
            cx = shot.x0 + (shot.x1 - shot.x0) * u
            frames[shot.start_frame + i] = render_frame(
                shot.scene, film.character, cx, shot.y, film.height, film.width) \
                if shot.character_visible else background(shot.scene, film.height, film.width)
    return frames


def write_film(film: Film, folder: str | Path, crf: int = 10) -> tuple[Path, Path]:
    """Write ``<name>.mp4`` (H.264 yuv420p through PyAV at ``crf``) and ``<name>.json`` (the
    ground truth, :meth:`Film.to_dict`) into ``folder``; returns both paths."""
    import av

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mp4, meta = folder / f"{film.name}.mp4", folder / f"{film.name}.json"
    rate = Fraction(film.fps).limit_denominator(1001)
    with av.open(str(mp4), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate,
                                      options={"crf": str(crf), "x264-params": "mbtree=0"})
        stream.width, stream.height, stream.pix_fmt = film.width, film.height, "yuv420p"
        for i, rgb in enumerate(render_film(film)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    meta.write_text(json.dumps(film.to_dict(), indent=1))
    return mp4, meta


def caption_source_entries(film: Film, source: str) -> list[dict]:
    """The film's captions as caption-source entries (:mod:`annotate.caption_source`): its
    global caption and one entry per shot, keyed by ``source`` (its mp4's path or name) and the
    shot's time span in seconds."""
    from multishot.dataset.record import split_prompt

    global_caption, shot_captions = split_prompt(film.prompt)
    entries = [{"source": source, "global_caption": global_caption}]
    for shot, caption in zip(film.shots, shot_captions):
        entries.append({"source": source, "start_s": shot.start_frame / film.fps,
                        "end_s": shot.end_frame / film.fps, "caption": caption})
    return entries


def read_video(path: str | Path) -> np.ndarray:
    """Decode an mp4 to ``[F, H, W, 3]`` uint8 RGB (PyAV)."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


# ---- the classifier --------------------------------------------------------------------------

#: minimum per-pixel colour distance (sum of |ΔRGB|) from the background of a character pixel
_DIFF = 90
#: pixels a character needs to be seen
_MIN_PIXELS = 12


def classify_scene(frame: np.ndarray) -> str:
    """The scene of a frame ``[H, W, 3]`` uint8: nearest ``(sky, ground)`` pair to the mean
    colours of the top and bottom :data:`BORDER` rows."""
    top = frame[:BORDER].reshape(-1, 3).astype(np.float64).mean(0)
    bottom = frame[-BORDER:].reshape(-1, 3).astype(np.float64).mean(0)
    return min(SCENES, key=lambda s: np.abs(top - SCENES[s][0]).sum()
               + np.abs(bottom - SCENES[s][1]).sum())


def classify_character(frame: np.ndarray, scene: str | None = None) -> Character | None:
    """The character in a frame ``[H, W, 3]`` uint8, or None when fewer than a dozen pixels
    differ from the scene's background. ``scene``: the frame's (else :func:`classify_scene`)."""
    from scipy import ndimage

    scene = scene or classify_scene(frame)
    h, w = frame.shape[:2]
    diff = np.abs(frame.astype(np.int32) - background(scene, h, w).astype(np.int32)).sum(-1)
    mask = diff > _DIFF
    mask[:BORDER] = mask[-BORDER:] = False
    # the largest blob, holes filled (a dot as dark as the night sky differs from no background)
    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = ndimage.sum(mask, labels, range(1, n + 1))
    mask = ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))
    if mask.sum() < _MIN_PIXELS:
        return None
    pix = frame[mask].astype(np.float64)
    bright = pix[pix.sum(1) >= 200]
    body = bright if len(bright) >= _MIN_PIXELS else pix
    colour = min(COLOURS, key=lambda c: np.abs(np.median(body, 0) - COLOURS[c]).sum())
    shape = _best_shape(mask)
    # the dot: dark pixels inside the shape, away from its (blurred) edge
    inner = ndimage.binary_erosion(mask, iterations=2)
    dark = frame[inner].astype(np.int32).sum(1) < 200 if inner.any() else np.zeros(1, bool)
    texture = "dotted" if dark.mean() > 0.1 else "plain"
    return Character(shape, colour, texture)


def _best_shape(mask: np.ndarray) -> str:
    """The shape whose template, of the blob's area and centred on its centroid (a triangle's
    centroid lies a sixth of its height below its box centre), overlaps the blob best (IoU):
    exact on renders, and it tolerates the blurred edges of a decoded frame."""
    h, w = mask.shape
    area = float(mask.sum())
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean() + 0.5, xs.mean() + 0.5
    sizes = {"square": math.sqrt(area), "circle": math.sqrt(4 * area / math.pi),
             "triangle": math.sqrt(2 * area)}
    best, best_iou = "square", -1.0
    for shape, size in sizes.items():
        dy = size / 6 if shape == "triangle" else 0.0
        template = character_mask(shape, cx, cy - dy, size, h, w)
        iou = (template & mask).sum() / max(1, (template | mask).sum())
        if iou > best_iou:
            best, best_iou = shape, iou
    return best


@dataclass
class VideoReading:
    """What :func:`classify_video` reads from a film's frames.

    ``scenes``: scene per frame; ``cut_frames``: frames where the scene changes;
    ``shots``: ``(start, end)`` frame ranges between those cuts; ``shot_scenes``: majority
    scene per shot; ``shot_characters``: majority character per shot (None: none seen).
    """

    scenes: list[str]
    cut_frames: list[int]
    shots: list[tuple[int, int]]
    shot_scenes: list[str]
    shot_characters: list[Character | None]


def _majority(values: list):
    counts: dict = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return max(counts, key=counts.get) if counts else None


def characters_in(frames: np.ndarray, ranges: list[tuple[int, int]],
                  scenes: list[str]) -> list[Character | None]:
    """Majority character (seen frames only) of each frame range ``[a, b)``."""
    out = []
    for a, b in ranges:
        seen = [c for c in (classify_character(frames[i], scenes[i]) for i in range(a, b)) if c]
        out.append(_majority(seen))
    return out


def classify_video(frames: np.ndarray) -> VideoReading:
    """Read scenes, cuts and per-shot characters from frames ``[F, H, W, 3]`` uint8."""
    scenes = [classify_scene(f) for f in frames]
    cuts = [i for i in range(1, len(scenes)) if scenes[i] != scenes[i - 1]]
    edges = [0, *cuts, len(scenes)]
    shots = list(zip(edges, edges[1:]))
    return VideoReading(scenes, cuts, shots, [scenes[a] for a, _ in shots],
                        characters_in(frames, shots, scenes))


def describe_vocabulary() -> dict:
    """The world's vocabulary and geometry: scenes (colours), character attributes, caption
    modes and templates, frame size, length, fps (written as ``configs/learn/world.json``)."""
    example = sample_film(0, num_shots=3, caption_mode="named")
    return {
        "scenes": {k: {"sky": v[0], "ground": v[1]} for k, v in SCENES.items()},
        "character": {"shapes": list(SHAPES), "colours": COLOURS, "textures": list(TEXTURES),
                      "dot": DOT},
        "caption_modes": {
            "named": "[global caption] A <colour> <texture> <shape>. This scene contains N "
                     "shots. [per shot caption] <scene>. [shot cut] <scene>. ...",
            "anonymous": "[global caption] A character. This scene contains N shots. "
                         "[per shot caption] <scene>. [shot cut] <scene>. ..."},
        "example_prompt": example.prompt,
        "cut_frames": "first frame of each new shot, always 4t + 1; shots >= 2 latent frames",
        "height": HEIGHT, "width": WIDTH, "num_frames": NUM_FRAMES, "fps": FPS,
        "character_size_px": _size(HEIGHT, WIDTH), "border_rows": BORDER,
        "words": vocabulary_words(),
    }


def vocabulary_words() -> list[str]:
    """Every word the world's captions use (the word-level tokenizer's vocabulary)."""
    words = ["A", "character", ".", "This", "scene", "contains", "shot", "shots"]
    words += [str(i) for i in range(1, 10)]
    words += list(SCENES) + list(COLOURS) + list(SHAPES) + list(TEXTURES)
    return words


def frame_accuracy(reading: VideoReading, film: Film) -> float:
    """Fraction of frames whose read scene equals the film's (ground truth) scene."""
    truth = [s.scene for s in film.shots for _ in range(s.start_frame, s.end_frame)]
    return float(np.mean([a == b for a, b in zip(reading.scenes, truth)]))

