"""A real S3-compatible server for tests: moto's standalone server on 127.0.0.1."""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def moto_s3(env: pytest.MonkeyPatch) -> Iterator[tuple[object, str]]:
    """Start moto's server, holding no buckets, on a free loopback port; yield
    ``(boto3 S3 client, 'host:port')``.

    While it runs, ``env`` points the AWS SDK chain (pyarrow, boto3, and child processes) at it:
    ``AWS_ENDPOINT_URL``, test credentials, region ``us-east-1``, no instance-metadata lookups.
    The server is stopped on exit; ``env`` is the caller's to undo.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server._server.server_address
        # moto keeps its buckets in this process, not per server: start from none, as a fresh server
        urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST")).close()
        for key, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                           ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", f"http://{host}:{port}"),
                           ("AWS_EC2_METADATA_DISABLED", "true")):
            env.setenv(key, value)
        yield boto3.client("s3", endpoint_url=f"http://{host}:{port}"), f"{host}:{port}"
    finally:
        server.stop()
