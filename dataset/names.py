"""Names read from files (manifests, index tables, result markers, tar members) stay inside
their root.

A shard set's ``manifest.json``, its Parquet index and the pipeline's result files name shards
by a path relative to ``shards/``, and a tar names its members relative to the sample: every
such name comes from a file someone else may have written. :func:`relative_name_problem` is
the one check they all go through (tarfile's ``data`` filter refuses the same tar-slip cases,
Python docs "Extraction filters"): a name that is empty, absolute (``/x``, ``C:\\x``, ``\\\\host``),
has a ``..`` component, a backslash or a NUL would reach outside its root once joined to it.
"""

from __future__ import annotations

import re

from multishot.errors import UsageError


class UnsafeNameError(UsageError, ValueError):
    """A name read from a file would leave its root (the message names it and why)."""


def relative_name_problem(name: str) -> str | None:
    """Why ``name`` is not a safe relative name (one line), or ``None`` when it is.

    Safe: a non-empty ``/``-separated path without a ``..`` component, a leading ``/``, a
    drive letter, a backslash or a NUL character.
    """
    if not isinstance(name, str) or not name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "absolute or empty name"
    if "\\" in name:
        return "backslash in name"
    if "\x00" in name:
        return "NUL in name"
    if ".." in name.split("/"):
        return "'..' component in name"
    return None


def check_relative_name(name: str, where: str = "") -> str:
    """``name`` unchanged when :func:`relative_name_problem` finds nothing.

    Raises:
        UnsafeNameError: ``"{where}: name {name!r}: {problem} (it would leave its folder)"``.
    """
    problem = relative_name_problem(name)
    if problem is not None:
        prefix = f"{where}: " if where else ""
        raise UnsafeNameError(f"{prefix}name {name!r}: {problem} (it would leave its folder)")
    return name
