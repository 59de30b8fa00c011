"""Credentials written into a URI never appear in an error line or a log line.

Runs the real commands against a real S3-compatible server (moto on loopback) with the secret
in the URI's user-info (``s3://AKIA…:SECRET@bucket/x``, which pyarrow quotes back, also
percent-encoded and without its scheme) and in its query (``?secret_key=…``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from multishot.cli import main
from multishot.errors import redact
from s3_server import moto_s3

KEY_ID, SECRET = "AKIAEXAMPLEKEYID7Q2", "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def s3(monkeypatch):
    with moto_s3(monkeypatch) as server:
        yield server


def test_no_command_prints_a_secret_of_its_uris(s3, tmp_path, capsys):
    client, endpoint = s3
    client.create_bucket(Bucket="films")
    config = str(REPO / "configs/pipeline/demo.yaml")
    query = f"endpoint_override={endpoint}&scheme=http"
    commands = [
        ["pipeline", "run", "--config", config, "--input", str(tmp_path),
         "--output", f"s3://{KEY_ID}:{SECRET}@films/out?{query}"],
        ["pipeline", "run", "--config", config, "--output", str(tmp_path / "o"),
         "--input", f"s3://films/in?{query}&access_key={KEY_ID}&secret_key={SECRET}"],
        ["shards", "verify", f"s3://{KEY_ID}:{SECRET}@films/set?{query}"],
        ["shards", "ls", f"s3://films/set?{query}&session_token={SECRET}"],
    ]
    # the first three quote their URI back (masked); the last one's error names no URI
    for argv, quoted in zip(commands, (True, True, True, False)):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"multishot {argv[0]}") and len(err.strip().splitlines()) == 1, err
        assert SECRET not in err and KEY_ID not in err, err
        assert ("***" in err) == quoted, err  # a URI it names keeps its place, masked
        # -v: every log line and the debug traceback of the bad input, in a fresh process
        verbose = subprocess.run([sys.executable, "-m", "multishot", "-v", *argv], cwd=tmp_path,
                                 capture_output=True, text=True, timeout=300,
                                 env={**os.environ, "PYTHONPATH": str(REPO)})
        assert verbose.returncode == 2 and "Traceback" in verbose.stderr, verbose.stderr[-2000:]
        output = verbose.stdout + verbose.stderr
        assert SECRET not in output and KEY_ID not in output, output[-3000:]


@pytest.mark.parametrize("text, kept", [
    (f"s3://{KEY_ID}:{SECRET}@bucket/x", "s3://***@bucket/x"),
    (f"output 's3://{KEY_ID}%3A{SECRET}%40bucket/x?scheme=http'", "output 's3://***@bucket/x?scheme=http'"),
    (f"got a URI: '{KEY_ID}:{SECRET}@bucket/x/_work'", "got a URI: '***@bucket/x/_work'"),
    (f"https://h/k?X-Amz-Credential={KEY_ID}%2F1&X-Amz-Signature={SECRET}&x=1",
     "https://h/k?X-Amz-Credential=***&X-Amz-Signature=***&x=1"),
    ("s3://bucket/a:b/c?region=us-east-1 at 12:30:01", "s3://bucket/a:b/c?region=us-east-1 at 12:30:01"),
])
def test_redact(text, kept):
    assert redact(text) == kept
