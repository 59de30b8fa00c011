"""Stage 1a, discovery: what ``--input`` names → the list of source video paths.

``--input`` may be a folder (searched recursively for video extensions), a glob, a text file
with one path or URI per line (``#`` comments allowed), or a Parquet manifest with a ``path``
(or ``source``) column. Paths may be local or any ``pyarrow.fs`` URI; a text file or manifest
may mix them, each resolved on its own.
"""

from __future__ import annotations

import glob
import os

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from multishot.dataset.shards import resolve


class InputError(ValueError):
    """``--input`` names nothing usable (missing, empty, or a manifest without a path column)."""


def discover(spec: str, extensions: list[str]) -> list[str]:
    """Sorted, de-duplicated source paths/URIs named by ``spec`` (see the module docstring).

    Raises:
        InputError: nothing found, or the spec cannot be read.
    """
    exts = tuple(e.lower() for e in extensions)
    if "://" not in spec and any(c in spec for c in "*?["):
        found = [os.path.abspath(p) for p in glob.glob(spec, recursive=True) if p.lower().endswith(exts)]
    else:
        fs, path = resolve(spec)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise InputError(f"input {spec!r} does not exist")
        prefix = spec.split("://", 1)[0] + "://" if "://" in spec else ""
        if info.type == pafs.FileType.Directory:
            selector = pafs.FileSelector(path, recursive=True)
            found = [
                prefix + f.path for f in fs.get_file_info(selector)
                if f.type == pafs.FileType.File and f.path.lower().endswith(exts)
            ]
        elif path.endswith(".parquet"):
            table = pq.read_table(path, filesystem=fs)
            column = next((c for c in ("path", "source") if c in table.column_names), None)
            if column is None:
                raise InputError(f"manifest {spec!r} has no 'path' or 'source' column: {table.column_names}")
            found = [str(p) for p in table.column(column).to_pylist() if p]
        elif path.lower().endswith(exts):
            found = [spec if prefix else path]
        else:
            with fs.open_input_stream(path) as stream:
                lines = stream.read().decode().splitlines()
            base = os.path.dirname(path)
            found = [
                line if "://" in line or os.path.isabs(line) or prefix else os.path.join(base, line)
                for line in (raw.strip() for raw in lines)
                if line and not line.startswith("#")
            ]
    if not found:
        raise InputError(f"no videos ({', '.join(extensions)}) found in {spec!r}")
    return sorted(set(found))
