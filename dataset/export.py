"""``multishot shards export``: write one sample out of its shard as plain files.

Writes each member as ``{key}.{ext}`` (the shard's bytes, unchanged: ``.json`` + ``.mp4``, or
``.json`` + ``.safetensors`` from a latent set) and, when the captions are ``ok``,
``{key}.txt`` (the HoloCine prompt; the cut frames are in the JSON's ``cut_frames``). File
names come only from the validated key (``KEY_PATTERN``: letters, digits, ``_`` and ``-``) and
the kind's extensions; an existing symbolic link in the target is refused, so nothing is
written outside the target folder. Files of the sample already there are kept unless
``force``.
"""

from __future__ import annotations

import os

import pyarrow.fs as pafs

from multishot.dataset.record import KEY_PATTERN, SampleRecord
from multishot.dataset.storage import resolve


class ExportError(ValueError):
    """The target cannot take the sample's files; the message names the path and why."""


def export_sample(record: SampleRecord, members: dict[str, bytes], out_dir: str, *, force: bool = False) -> list[str]:
    """Write the sample's members (``{ext: bytes}``) and prompt into the folder ``out_dir``
    (local path or ``pyarrow.fs`` URI; made when missing); return the paths written.

    Raises:
        ExportError: ``out_dir`` is an existing file; a target file exists (without ``force``),
            is a folder, or is a symbolic link; the key or an extension could name a path
            outside ``out_dir`` (never for a valid shard).
    """
    if not KEY_PATTERN.match(record.key):
        raise ExportError(f"refusing to export key {record.key!r}: not a plain name")
    files = {f"{record.key}.{ext}": data for ext, data in sorted(members.items())}
    if record.caption_status == "ok":
        files[f"{record.key}.txt"] = (record.prompt() + "\n").encode()
    if any(not KEY_PATTERN.match(name.replace(".", "")) for name in files):
        raise ExportError(f"refusing to export members {sorted(members)}: not plain extensions")
    fs, root = resolve(out_dir)
    local = isinstance(fs, pafs.LocalFileSystem)
    if fs.get_file_info(root).type == pafs.FileType.File:
        raise ExportError(f"-o {out_dir} is a file; export writes into a folder")
    paths = {name: f"{root.rstrip('/')}/{name}" for name in files}
    for path in paths.values():
        if local and os.path.islink(path):
            raise ExportError(f"refusing to write through the symbolic link {path}")
        kind = fs.get_file_info(path).type
        if kind == pafs.FileType.Directory:
            raise ExportError(f"{path} is a folder; remove it or export elsewhere")
        if kind == pafs.FileType.File and not force:
            raise ExportError(f"{path} exists; pass --force to overwrite it")
    fs.create_dir(root, recursive=True)
    for name, data in files.items():
        with fs.open_output_stream(paths[name]) as out:
            out.write(data)
    return list(paths.values())
