"""What one generated sample is asked to be: its prompt, length, cuts and seed.

The shot count comes from the prompt (``[shot cut]`` tags + 1); the cuts either come with the
request or are spread evenly as HoloCine's inference does (``prepare_multishot_inputs`` in
``HoloCine_inference_full_attention.py``): cut i at ``enforce_4t_plus_1(round(i · F / S))``
for ``i = 1 … S−1``, duplicates and cuts outside ``(0, F)`` dropped.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from multishot.dataset.record import CUT_TAG, SampleRecord, num_latent_frames
from multishot.model.layout import enforce_4t_plus_1, latent_shot_starts


def prompt_num_shots(prompt: str) -> int:
    """Shots a HoloCine prompt asks for: ``[shot cut]`` tags + 1."""
    return prompt.count(CUT_TAG) + 1


def even_cut_frames(num_frames: int, num_shots: int) -> list[int]:
    """HoloCine's default cuts (module docstring): pixel frames where shots 2… start.

    E.g. 241 frames, 5 shots → ``[49, 97, 145, 193]``.
    """
    step = num_frames / num_shots
    cuts = sorted({enforce_4t_plus_1(round(i * step)) for i in range(1, num_shots)})
    return [c for c in cuts if 0 < c < num_frames]


@dataclass
class Request:
    """One sample to generate.

    Attributes:
        prompt: the HoloCine prompt (``[global caption] … [per shot caption] … [shot cut] …``).
        num_frames: pixel frames, ``4k + 1``.
        cut_frames: pixel frames where shots 2… start, each ``4t + 1`` (resolved, see
            :func:`resolve_request`).
        seed: initial-noise seed.
        name: output file stem (a held-out sample's key).
        extra: fields copied into the JSON beside the mp4 (e.g. ``source_cut_frames`` of a
            re-created sample, ``unmasked_cross_attention`` when the prompt lost captions).
    """

    prompt: str
    num_frames: int
    cut_frames: list[int]
    seed: int = 0
    name: str = "sample"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_request(prompt: str, num_frames: int, cut_frames: list[int] | None = None,
                    seed: int = 0, name: str = "sample", extra: dict | None = None) -> Request:
    """A :class:`Request` with its cuts checked or spread evenly.

    Raises:
        ValueError: ``num_frames`` is not ``4k + 1``; a cut is not ``4t + 1``, not inside
            ``(0, num_frames)`` or not increasing; the prompt's shot count disagrees with the
            cuts (the message gives both counts).
    """
    num_latent_frames(num_frames)
    shots = prompt_num_shots(prompt)
    if cut_frames is None:
        cuts = even_cut_frames(num_frames, shots)
        if len(cuts) + 1 != shots:  # more shots than the latent frames can start
            raise ValueError(f"the prompt has {shots} shots but {num_frames} frames "
                             f"({num_latent_frames(num_frames)} latent frames, one shot start each at "
                             f"most) give {len(cuts) + 1} evenly cut shots: use more frames or fewer shots")
    else:
        cuts = list(cut_frames)
        bad = [c for c in cuts if enforce_4t_plus_1(c) != c]
        if bad:
            raise ValueError(f"cut frames {bad} are not of the form 4t+1 (e.g. "
                             f"{[enforce_4t_plus_1(c) for c in bad]})")
        if any(not 0 < c < num_frames for c in cuts) or cuts != sorted(set(cuts)):
            raise ValueError(f"cut frames {cuts} must increase strictly inside (0, {num_frames})")
        if len(cuts) + 1 != shots:
            raise ValueError(f"the prompt has {shots} shots ({shots - 1} [shot cut] tags) but "
                             f"{len(cuts)} cut frames give {len(cuts) + 1}")
    if len(latent_shot_starts(num_frames, cuts)) != shots:
        raise ValueError(f"cut frames {cuts} fall into the same latent frame; "
                         f"{num_frames} frames are too few for {shots} shots")
    return Request(prompt, num_frames, cuts, seed, name, extra or {})


def read_prompts_file(path: str | Path, num_frames: int, seed: int) -> list[Request]:
    """Requests from a prompts file: JSON lines, or one JSON list (or object) of items. An item is
    ``{"prompt": ...}`` (HoloCine's raw string) or ``{"global_caption": ..., "shot_captions":
    [...]}`` (HoloCine's structured input, :func:`generate.holocine.structured_inputs`), with
    optional ``num_frames``, ``cut_frames``, ``seed`` and ``name`` (default ``prompt_0003``).
    Frames and cuts that are not 4t+1 are rounded as HoloCine rounds them (a warning names the
    new values; the JSON beside the mp4 records them under ``rounded``).

    Raises:
        ValueError: an item is not an object with a ``prompt`` string or a ``global_caption``
            string and a ``shot_captions`` list of strings, or its cuts are bad (the message names
            the line, or the item's index in a JSON list).
    """
    from multishot.generate.holocine import raw_inputs, structured_inputs

    text = Path(path).read_text()
    try:
        whole = json.loads(text)
        items = [(f"item {i}", x) for i, x in enumerate(whole)] if isinstance(whole, list) else [("1", whole)]
    except json.JSONDecodeError:
        items = [(f"{i}", line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    requests = []
    for where, item in items:
        try:
            if isinstance(item, str):
                item = json.loads(item)
            if not isinstance(item, dict):
                raise ValueError("expected a JSON object")
            frames = int(item.get("num_frames", num_frames))
            if isinstance(item.get("prompt"), str):
                inputs = raw_inputs(item["prompt"], frames, item.get("cut_frames"))
            elif isinstance(item.get("global_caption"), str) and isinstance(item.get("shot_captions"), list) \
                    and all(isinstance(c, str) for c in item["shot_captions"]):
                inputs = structured_inputs(item["global_caption"], item["shot_captions"], frames,
                                           item.get("cut_frames"))
            else:
                raise ValueError("expected a 'prompt' string, or a 'global_caption' string and a "
                                 "'shot_captions' list of strings")
            requests.append(resolve_request(
                inputs.prompt, inputs.num_frames, inputs.cut_frames, int(item.get("seed", seed)),
                str(item.get("name", f"prompt_{len(requests):04d}")),
                {"rounded": inputs.corrections} if inputs.corrections else None))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}:{where}: {err}") from None
    return requests


def request_from_record(record: SampleRecord, seed: int, num_frames: int | None = None) -> Request:
    """Re-create a captioned sample: its prompt and cut frames (moved to the nearest ``4t + 1``,
    which is where the latent layout puts them anyway), named by its key.

    ``num_frames`` (4k+1) cuts the sample to its first frames as the training loader does
    (:func:`dataset.loader.clip_shots`); None keeps the record's length floored to ``4k + 1``.

    Raises:
        ValueError: the record is not captioned, is shorter than ``num_frames``, or two of its
            cuts fall on the same ``4t + 1`` frame.
    """
    from multishot.dataset.loader import clip_shots

    if record.caption_status != "ok":
        raise ValueError(f"sample {record.key} is not captioned ({record.caption_status!r})")
    frames = num_frames or (record.num_frames - 1) // 4 * 4 + 1
    if record.num_frames < frames:
        raise ValueError(f"sample {record.key} has {record.num_frames} frames < {frames}")
    cuts, prompt = clip_shots(record, frames, "skip")
    return resolve_request(prompt, frames, [enforce_4t_plus_1(c) for c in cuts], seed,
                           record.key, {"source_cut_frames": record.cut_frames})
