"""``multishot shards export``: write one sample out of its shard as plain files.

Writes ``{key}.mp4`` (the shard's bytes, unchanged), ``{key}.json`` (the record) and, when the
captions are ``ok``, ``{key}.txt`` (the HoloCine prompt; the cut frames are in the JSON's
``cut_frames``). File names come only from the validated key (``KEY_PATTERN``: letters,
digits, ``_`` and ``-``) and an existing symbolic link in the target is refused, so nothing
is written outside the target folder.
"""

from __future__ import annotations

import os

import pyarrow.fs as pafs

from multishot.dataset.record import KEY_PATTERN, SampleRecord
from multishot.dataset.shards import resolve


def export_sample(record: SampleRecord, mp4: bytes, out_dir: str) -> list[str]:
    """Write the sample's files into ``out_dir`` (local folder or ``pyarrow.fs`` URI); return their paths.

    Raises:
        ValueError: the key could name a path outside ``out_dir`` (never for a valid record), or
            a local target file is a symbolic link.
    """
    if not KEY_PATTERN.match(record.key):
        raise ValueError(f"refusing to export key {record.key!r}: not a plain name")
    fs, root = resolve(out_dir)
    fs.create_dir(root, recursive=True)
    files = {f"{record.key}.mp4": mp4, f"{record.key}.json": record.to_json()}
    if record.caption_status == "ok":
        files[f"{record.key}.txt"] = (record.prompt() + "\n").encode()
    written = []
    for name, data in files.items():
        path = f"{root.rstrip('/')}/{name}"
        if isinstance(fs, pafs.LocalFileSystem) and os.path.islink(path):
            raise ValueError(f"refusing to write through the symbolic link {path}")
        with fs.open_output_stream(path) as out:
            out.write(data)
        written.append(path)
    return written
