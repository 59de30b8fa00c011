"""Plain storage I/O on local paths and ``pyarrow.fs`` URIs (S3, GCS, …): resolving a URI,
writing a file so that no reader sees it in part, reading and writing JSON, and a storage
error in the user's terms. Every part of the project that reads or writes files outside the
shard format's own tars uses these (the shard format itself, :mod:`dataset.shards`, too)."""

from __future__ import annotations

import json
import os
import re
import uuid

import pyarrow as pa
import pyarrow.fs as pafs

from multishot.errors import redact

#: suffix of a file being written, renamed away when complete (a leftover is a killed write)
TMP_SUFFIX = ".tmp"


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """A ``pyarrow.fs`` filesystem and path for a local path or URI (``s3://``, ``gs://``, …).

    An ``s3://`` URI reaches the endpoint, region and credentials of the AWS SDK's usual chain
    (``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``
    or ``AWS_PROFILE``, instance roles) unless its query sets them (``?endpoint_override=host:port
    &scheme=http&region=…``: pyarrow's ``S3FileSystem`` options). It is opened with
    ``allow_delayed_open``, so an object smaller than pyarrow's upload part (10 MiB) goes up in
    one PutObject instead of a multipart upload that a killed run would leave unfinished.

    Raises:
        pyarrow.ArrowInvalid: the URI's scheme is not supported by pyarrow.
        OSError: the URI's bucket cannot be reached (pyarrow resolves its region).
    """
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    if uri.startswith("s3://") and "allow_delayed_open=" not in uri.partition("?")[2]:
        try:
            return pafs.FileSystem.from_uri(uri + ("&" if "?" in uri else "?") + "allow_delayed_open=true")
        except pa.ArrowInvalid as err:
            if "allow_delayed_open" not in str(err):
                raise
            # a pyarrow that takes no such URI option: multipart uploads, still published whole
    return pafs.FileSystem.from_uri(uri)


def is_object_store(fs: pafs.FileSystem) -> bool:
    """Whether ``fs`` is an object store (S3, GCS): no rename, and an object becomes visible
    whole when its upload completes."""
    return fs.type_name in ("s3", "gcs")


def storage_error(err: Exception) -> str:
    """The first line of a filesystem error, in the user's terms: pyarrow's advice to enable
    ``allow_bucket_creation`` (a filesystem option no command exposes) becomes "create it"."""
    text = redact(str(err).splitlines()[0]) if str(err) else type(err).__name__
    return re.sub(r"Bucket '([^']*)' not found\. To create buckets, enable the allow_bucket_creation option\.",
                  r"bucket '\1' does not exist (create it first)", text)


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that no reader ever sees it in part.

    On a filesystem: under a temporary name beside ``path``, then renamed into place. On an
    object store (:func:`is_object_store`), which has no rename (pyarrow's ``move`` would copy
    and delete, and a kill between leaves the temporary object): one upload straight to
    ``path``, since S3 and GCS publish an object only when its upload completes (one
    PutObject below 10 MiB: see :func:`resolve`; above, pyarrow's multipart upload, published by
    its final CompleteMultipartUpload).
    """
    if is_object_store(fs):
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    tmp = f"{path}.{uuid.uuid4().hex}{TMP_SUFFIX}"
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    try:
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)
    except BaseException:
        try:  # a full disk (or any failed write) leaves no temporary file behind
            fs.delete_file(tmp)
        except OSError:
            pass
        raise


def write_json(fs: pafs.FileSystem, path: str, obj: object) -> None:
    """Write JSON atomically (:func:`write_bytes`)."""
    write_bytes(fs, path, json.dumps(obj, indent=1, sort_keys=True).encode())


def read_json(fs: pafs.FileSystem, path: str) -> object:
    """Parse the JSON file at ``path``.

    Raises:
        ValueError: not valid JSON (``json.JSONDecodeError``), or nested deeper than Python's
            parser recurses (a crafted ``[[[[…]]]]``: RecursionError becomes a ValueError).
    """
    with fs.open_input_stream(path) as stream:
        data = stream.read()
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("nested too deeply to be a file this tool writes") from None
