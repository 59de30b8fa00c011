"""Stage 0, discovery: what ``--input`` names → the list of source videos.

``--input`` may be a folder (searched recursively for video extensions), a glob, a text file
with one path or URI per line (UTF-8, a byte-order mark allowed, ``#`` comments allowed), or a
Parquet manifest with a ``path`` (or ``source``) column. Relative entries of a text list or a
manifest are relative to the list's own folder. Paths may be local or any ``pyarrow.fs`` URI; a
list may mix them, each resolved on its own.

A source is returned as a local absolute path or as a percent-encoded URI
(``s3://bucket/my%20film.mp4``): object keys may hold spaces or any character, and an encoded
URI is the one form :func:`multishot.dataset.storage.resolve` parses for every key. Local folders
are walked by real path, each folder and file once, so a symbolic-link loop (``ln -s . loop``)
adds nothing. Files under ``exclude`` (the folders a run writes: ``shards/``, ``index/``,
``_work/``, when they lie inside the input, as when input folder = output folder) are left
out, and the log says so: what a run wrote must not come back as sources.
"""

from __future__ import annotations

import glob
import logging
import os
import stat
from urllib.parse import quote, unquote

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from multishot.dataset.storage import resolve, storage_error

log = logging.getLogger(__name__)


class InputError(ValueError):
    """``--input`` names nothing usable (missing, empty, unreadable, or of no known form)."""


def encode_uri(uri: str) -> str:
    """``uri`` with its path percent-encoded (an encoded one is returned unchanged), its query
    (``?endpoint_override=…``) kept as given. Local paths are returned as they are."""
    if "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    rest, sep, query = rest.partition("?")
    return f"{scheme}://{quote(unquote(rest), safe='/')}{sep}{query}"


def _is_uri(spec: str) -> bool:
    return "://" in spec


def _walk_local(top: str, exts: tuple[str, ...], exclude: list[str]) -> tuple[list[str], bool]:
    """Real paths of the video files under ``top``, each folder and file visited once (links
    followed, loops cut at the first folder seen twice); and whether anything under
    ``exclude`` was left out."""
    found, seen_dirs, skipped = set(), set(), False
    for folder, dirs, files in os.walk(top, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen_dirs or _under(real, exclude):
            skipped |= real not in seen_dirs
            dirs[:] = []  # a loop (or the output tree): do not descend
            continue
        seen_dirs.add(real)
        for name in files:
            if name.lower().endswith(exts):
                path = os.path.realpath(os.path.join(folder, name))
                if _under(path, exclude):
                    skipped = True
                elif os.path.isfile(path):
                    found.add(path)
    return sorted(found), skipped


def _under(path: str, roots: list[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _read_list(fs: pafs.FileSystem, path: str, spec: str, exts: tuple[str, ...]) -> list[str]:
    with fs.open_input_stream(path) as stream:
        data = stream.read()
    try:
        if b"\0" in data:
            raise UnicodeDecodeError("utf-8", data, data.index(b"\0"), data.index(b"\0") + 1, "NUL byte")
        text = data.decode("utf-8-sig")  # a byte-order mark is not part of the first path
    except UnicodeDecodeError as err:
        raise InputError(
            f"input {spec!r} is not a video ({', '.join(exts)}), a folder, a glob, a Parquet manifest "
            f"(.parquet) or a UTF-8 text list of paths (byte {err.start} is not UTF-8 text)"
        ) from None
    return [line for line in (raw.strip() for raw in text.splitlines()) if line and not line.startswith("#")]


def _anchor(entry: str, base: str) -> str:
    """A list entry as a source: URIs encoded, relative entries joined to the list's folder
    ``base`` (a local folder or a URI folder)."""
    if _is_uri(entry):
        return encode_uri(entry)
    if os.path.isabs(entry):
        return os.path.normpath(entry)
    if _is_uri(base):
        scheme, rest = base.split("://", 1)
        rest, sep, query = rest.partition("?")
        # a relative entry is a key name as stored: '?' and '%' are part of it, not URI syntax
        return f"{encode_uri(f'{scheme}://' + rest.rstrip('/'))}/{quote(entry, safe='/')}{sep}{query}"
    return os.path.normpath(os.path.join(base, entry))


def discover(spec: str, extensions: list[str], exclude: list[str] = ()) -> list[str]:
    """Sorted, de-duplicated sources named by ``spec`` (see the module docstring).

    ``exclude``: folders (local paths or URIs) whose files are never sources: what the run writes.

    Raises:
        InputError: nothing found, the spec does not exist, or it is of no known form.
    """
    exts = tuple(e.lower() for e in extensions)
    local_exclude = [os.path.realpath(e) for e in exclude if not _is_uri(e)]
    skipped = False
    if not _is_uri(spec) and any(c in spec for c in "*?["):
        matches = {os.path.realpath(p) for p in glob.glob(spec, recursive=True) if p.lower().endswith(exts)}
        found = [p for p in matches if not _under(p, local_exclude)]
        skipped = len(matches) > len(found)
    else:
        try:
            fs, path = resolve(encode_uri(spec))
            info = fs.get_file_info(path)
        except (OSError, ValueError) as err:
            raise InputError(f"input {spec!r} cannot be opened: {storage_error(err)}") from None
        if info.type == pafs.FileType.NotFound:
            bucket = path.split("/", 1)[0]
            if _is_uri(spec) and fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise InputError(f"input {spec!r} does not exist: bucket {bucket!r} not found")
            raise InputError(f"input {spec!r} does not exist")
        if info.type == pafs.FileType.Directory and not _is_uri(spec):
            found, skipped = _walk_local(path, exts, local_exclude)
        elif info.type == pafs.FileType.Directory:
            scheme, query = spec.split("://", 1)[0], spec.partition("?")[2]
            out_paths = [resolve(encode_uri(e))[1] for e in exclude if e.startswith(scheme + "://")]
            files = [f.path for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                     if f.type == pafs.FileType.File and f.path.lower().endswith(exts)]
            # listed keys are raw: '?' or a literal '%41' in a key is encoded, never parsed
            found = [f"{scheme}://{quote(p, safe='/')}" + (f"?{query}" if query else "")
                     for p in files if not _under(p, out_paths)]
            skipped = len(files) > len(found)
        else:
            if not _is_uri(spec) and not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block
                raise InputError(f"input {spec!r} is not a regular file (a FIFO or device is never read)")
            base = spec.rsplit("/", 1)[0] if _is_uri(spec) else os.path.dirname(path)
            if path.lower().endswith(".parquet"):
                try:
                    table = pq.read_table(path, filesystem=fs)
                except (OSError, ValueError) as err:
                    raise InputError(f"manifest {spec!r} cannot be read: {err}") from None
                column = next((c for c in ("path", "source") if c in table.column_names), None)
                if column is None:
                    raise InputError(f"manifest {spec!r} has no 'path' or 'source' column: {table.column_names}")
                found = [_anchor(str(p), base) for p in table.column(column).to_pylist() if p]
            elif path.lower().endswith(exts):
                found = [encode_uri(spec) if _is_uri(spec) else path]
            else:
                found = [_anchor(line, base) for line in _read_list(fs, path, spec, exts)]
    if skipped:
        log.warning("input %s holds this run's output (%s): files under it are not read as sources",
                    spec, ", ".join(exclude))
    if not found:
        raise InputError(f"no videos ({', '.join(extensions)}) found in {spec!r}")
    return sorted(set(found))
