"""The captioning prompt: a template file filled with the sample's known shot boundaries.

The pipeline knows where the cuts are, so the prompt lists each shot's start and end time
(seconds of the sample) and the model describes exactly those shots. Templates use
:class:`string.Template` placeholders (``$num_shots``, ``$duration_s``, ``$shot_list``,
``$language``), so JSON braces in a template need no escaping.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass
from pathlib import Path

from multishot.annotate.reply import CaptionReply
from multishot.dataset.record import SampleRecord

#: sent after an invalid reply; ``$problems`` lists what was wrong
CORRECTION = (
    "Your reply cannot be used: $problems. Reply again with the complete JSON object: "
    "global_caption, and exactly $num_shots shot_captions numbered 1 to $num_shots, "
    "following every rule of the first message."
)


def shot_list(record: SampleRecord) -> str:
    """One line per shot: ``Shot i: a.aa s to b.bb s (cut at a.aa s)``, times = frame / fps."""
    lines = []
    for shot in record.shots:
        start, end = shot.start_frame / record.fps, shot.end_frame / record.fps
        cut = f" (cut at {start:.2f} s)" if shot.index else ""
        lines.append(f"Shot {shot.index + 1}: {start:.2f} s to {end:.2f} s{cut}")
    return "\n".join(lines)


#: the placeholders every template uses, filled by :meth:`PromptTemplate.render`
PLACEHOLDERS = frozenset({"num_shots", "duration_s", "shot_list", "language"})
#: a prompt template is a short text; anything larger is a wrong file
MAX_TEMPLATE_BYTES = 64 * 1024


def template_path(name: str | Path, templates_dir: str | Path) -> Path:
    """The template file ``name`` inside ``templates_dir`` (a relative ``name`` is taken from
    it), resolved through symbolic links.

    A template is read and sent to the captioning service with every request, so it may come
    only from the folder the config names: ``/proc/self/environ`` or ``../../.aws/credentials``
    are refused before they are opened.

    Raises:
        ValueError: the resolved file is not inside ``templates_dir``, or not a regular file.
    """
    root = Path(templates_dir).resolve()
    path = (root / Path(name)).resolve()  # an absolute name replaces root in the join
    if not path.is_relative_to(root):
        raise ValueError(f"{name}: not inside the templates folder {root} (templates_dir); "
                         "a prompt template is read only from there")
    if not path.is_file():
        raise ValueError(f"{name}: no such template file in {root}")
    return path


@dataclass(frozen=True)
class PromptTemplate:
    """A loaded template plus the language; :attr:`version` names it in the response cache."""

    text: str
    language: str

    @classmethod
    def load(cls, path: str | Path, language: str, templates_dir: str | Path | None = None) -> PromptTemplate:
        """Read the template file (:func:`template_path` first when ``templates_dir`` is given).

        Raises:
            OSError: unreadable file.
            ValueError: outside ``templates_dir``, not a regular file, over
                :data:`MAX_TEMPLATE_BYTES`, a placeholder other than the four documented ones,
                or one of them missing.
        """
        if templates_dir is not None:
            path = template_path(path, templates_dir)
        data = Path(path).read_bytes()[: MAX_TEMPLATE_BYTES + 1]
        if len(data) > MAX_TEMPLATE_BYTES:
            raise ValueError(f"{path}: over {MAX_TEMPLATE_BYTES} bytes; a prompt template is a short text")
        text = data.decode("utf-8", errors="replace")
        found = {m.group("named") or m.group("braced") for m in string.Template.pattern.finditer(text)} - {None}
        if found - PLACEHOLDERS:
            raise ValueError(f"{path}: unknown placeholders {sorted(found - PLACEHOLDERS)}; known: {sorted(PLACEHOLDERS)}")
        if PLACEHOLDERS - found:
            raise ValueError(f"{path}: lacks placeholders {sorted('$' + p for p in PLACEHOLDERS - found)}; "
                             "a prompt template must use all four")
        return cls(text, language)

    @property
    def version(self) -> str:
        """16 hex digits over template, language, reply schema and correction text.

        Any change to what the model is asked gives a new version, so cached replies of an
        older prompt are not reused.
        """
        schema = json.dumps(CaptionReply.model_json_schema(), sort_keys=True)
        blob = "\0".join([self.text, self.language, schema, CORRECTION])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def render(self, record: SampleRecord) -> str:
        """The prompt for one sample."""
        return string.Template(self.text).substitute(
            num_shots=record.num_shots,
            duration_s=f"{record.duration_s:.2f}",
            shot_list=shot_list(record),
            language=self.language,
        )


def correction(problems: list[str], num_shots: int) -> str:
    """The corrective follow-up message after an invalid reply."""
    return string.Template(CORRECTION).substitute(problems="; ".join(problems), num_shots=num_shots)
