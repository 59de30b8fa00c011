"""The main job on object storage (issue [D], object storage): input videos, shards, index,
manifest and resume markers in S3, against a real S3-compatible server (moto's standalone
server) that this module starts on 127.0.0.1 and stops. The endpoint reaches pyarrow and the
CLI the way it reaches a user's run: ``AWS_ENDPOINT_URL`` and the credential variables.

Clips are 8 s cut from the real footage at test time and uploaded to the bucket; samples are
2 s at 160×96; the runner is sequential (the same stages without Ray).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import yaml

from footage_clips import FOOTAGE, cut_clip
from multishot.cli import main
from multishot.dataset.shards import read_shard
from multishot.dataset.storage import resolve, write_bytes
from s3_server import moto_s3

BUCKET = "archive"
CLIPS = [("sintel_film_excerpt_26s.mp4", 2.0, 8.0), ("bbb_first60s_360p.mp4", 20.0, 8.0)]


@pytest.fixture(scope="module")
def s3():
    """``(boto3 client, 'host:port')`` of a moto server on 127.0.0.1 holding bucket ``archive``;
    the AWS variables point this process and its children at it while the module runs, and no
    Gemini key is set."""
    with pytest.MonkeyPatch.context() as env, moto_s3(env) as (client, endpoint):
        for key in ("GOOGLE_API_KEY", "GEMINI_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI"):
            env.delenv(key, raising=False)  # samples stay uncaptioned: no call leaves the machine
        client.create_bucket(Bucket=BUCKET)
        yield client, endpoint


@pytest.fixture(scope="module")
def job(s3, tmp_path_factory):
    """``(config path, reference output URI)``: the clips uploaded under ``s3://archive/films/``
    and an uninterrupted run of them into ``s3://archive/reference``."""
    client, _ = s3
    root = tmp_path_factory.mktemp("s3job")
    for name, start, seconds in CLIPS:
        client.upload_file(str(cut_clip(FOOTAGE / "archive" / name, start, seconds, root / name)), BUCKET, f"films/{name}")
    config = {"detect": {"backend": "transnetv2"}, "analyse": {"ocr_backend": "none"},
              "pack": {"buckets": [{"name": "2s", "target_s": 2, "tolerance_s": 1}]},
              "render": {"width": 160, "height": 96}, "ray": {"runner": "sequential"}}
    (root / "s3.yaml").write_text(yaml.safe_dump(config))
    assert main(_args(root / "s3.yaml", f"s3://{BUCKET}/reference")) == 0
    return root / "s3.yaml", f"s3://{BUCKET}/reference"


def _args(config, output: str, inp: str = f"s3://{BUCKET}/films") -> list[str]:
    return ["pipeline", "run", "--config", str(config), "--input", inp, "--output", output, "--no-progress"]


def _objects(client, prefix: str) -> dict[str, int]:
    """Key → size of every object under ``prefix`` (directory markers left out)."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/")}


def _state(client, prefix: str) -> tuple[list[tuple[str, tuple[str, ...]]], list[str], dict[str, str]]:
    """(manifest (shard, keys) pairs, sorted index keys, each sample's record JSON) of the
    shard set at ``s3://archive/{prefix}``; mp4 bytes are left out (x264 may encode equal
    frames to other bytes: see test_pipeline_resume_ray)."""
    manifest = json.loads(client.get_object(Bucket=BUCKET, Key=f"{prefix}/manifest.json")["Body"].read())
    index = client.get_object(Bucket=BUCKET, Key=f"{prefix}/index/samples.parquet")["Body"].read()
    keys = pq.read_table(io.BytesIO(index)).column("key").to_pylist()
    assert len(keys) == len(set(keys)), "duplicate sample keys"
    fs, root = resolve(f"s3://{BUCKET}/{prefix}")
    records = {r.key: r.model_dump_json() for s in manifest["shards"] for r, _ in read_shard(fs, f"{root}/shards/{s['name']}")}
    return [(s["name"], tuple(s["keys"])) for s in manifest["shards"]], sorted(keys), records


def _markers(keys, prefix: str) -> list[str]:
    """The per-video resume markers among ``keys``: ``{prefix}/_work/{source_id}.json`` (segment
    results lie deeper, under ``_work/segments/``)."""
    work = f"{prefix}/_work/"
    return [k for k in keys if k.startswith(work) and k.endswith(".json") and "/" not in k[len(work):]]


def test_sigkill_then_rerun_on_s3_gives_the_reference_samples(s3, job):
    client, _ = s3
    config, _ = job
    expected = _state(client, "reference")
    assert expected[1], "the clips gave no samples"

    command = [sys.executable, "-m", "multishot", *_args(config, f"s3://{BUCKET}/killed")]
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        # kill once the first video's resume marker is in the bucket: the second one is mid-way
        while time.time() < deadline and proc.poll() is None:
            if _markers(_objects(client, "killed/_work/"), "killed"):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    left = _objects(client, "killed/")
    assert "killed/manifest.json" not in left
    markers = _markers(left, "killed")
    assert len(markers) == 1, left
    assert [k for k in left if k.startswith("killed/_work/segments/")]  # the scan's resume points
    # no partial objects: nothing but whole tars and the marker, every tar the marker lists
    # present with its size, and no upload left unfinished
    assert not [k for k in left if k.endswith(".tmp")], left
    listed = {s["name"]: s["bytes"] for s in json.loads(client.get_object(Bucket=BUCKET, Key=markers[0])["Body"].read())["shards"]}
    tars = {k.rsplit("/", 1)[-1]: size for k, size in left.items() if k.endswith(".tar")}
    assert tars == listed and tars, (tars, listed)
    fs, root = resolve(f"s3://{BUCKET}/killed")
    for name in tars:
        assert list(read_shard(fs, f"{root}/shards/{name}"))  # opens and reads to its end
    assert not client.list_multipart_uploads(Bucket=BUCKET).get("Uploads")

    assert main(_args(config, f"s3://{BUCKET}/killed")) == 0
    assert _state(client, "killed") == expected  # the same shards holding the same samples
    shards = {k.rsplit("/", 1)[-1] for k in _objects(client, "killed/shards/")}
    assert shards == {name for name, _ in expected[0]}  # every manifest entry exists, nothing else
    assert main(["shards", "verify", f"s3://{BUCKET}/killed", "-q"]) == 0


def test_shards_cli_and_training_loader_read_s3(s3, job, capsys, monkeypatch, tmp_path):
    from multishot.dataset.loader import DataConfig, TrainLoader

    client, endpoint = s3
    _, reference = job
    keys = _state(client, "reference")[1]
    capsys.readouterr()
    assert main(["shards", "ls", reference]) == 0
    listing = capsys.readouterr().out
    assert all(k in listing for k in keys)
    assert main(["shards", "export", reference, keys[0], "-o", str(tmp_path)]) == 0
    assert json.loads((tmp_path / f"{keys[0]}.json").read_text())["key"] == keys[0]
    assert (tmp_path / f"{keys[0]}.mp4").stat().st_size > 0
    # the endpoint given in the URI alone (as pyarrow's S3FileSystem options) reaches every tar
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    uri = f"{reference}?endpoint_override={endpoint}&scheme=http"
    loader = TrainLoader(DataConfig(shards=[uri], num_frames=17, height=64, width=64, batch_size=2,
                                    shuffle_buffer=1, num_workers=0, uncaptioned="placeholder"))
    batch = next(iter(loader))
    assert batch.video.shape == (2, 3, 17, 64, 64) and set(batch.keys) <= set(keys)


def test_a_missing_bucket_is_one_line_and_exit_2(s3, job, capsys):
    config, _ = job
    capsys.readouterr()
    for inp, out, said in (
        (f"s3://{BUCKET}/films", "s3://no-such-bucket/run", "bucket 'no-such-bucket' does not exist"),
        ("s3://no-such-bucket/films", f"s3://{BUCKET}/unused", "bucket 'no-such-bucket' not found"),
    ):
        assert main(_args(config, out, inp)) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and said in err, err


def test_objects_are_uploaded_whole_in_one_request(s3):
    """Below pyarrow's 10 MiB part: one PutObject (S3's ETag of a single-part upload is the
    MD5 of the bytes; a multipart upload's is ``md5-of-md5s-N``). Above: a multipart upload,
    published by its completion. Either way no temporary object and no upload left open."""
    client, _ = s3
    fs, root = resolve(f"s3://{BUCKET}/whole")
    small, large = os.urandom(1 << 20), os.urandom(12 << 20)
    write_bytes(fs, f"{root}/small.bin", small)
    write_bytes(fs, f"{root}/large.bin", large)
    assert _objects(client, "whole/") == {"whole/small.bin": len(small), "whole/large.bin": len(large)}
    etag = client.head_object(Bucket=BUCKET, Key="whole/small.bin")["ETag"].strip('"')
    assert etag == hashlib.md5(small).hexdigest()
    assert client.head_object(Bucket=BUCKET, Key="whole/large.bin")["ETag"].strip('"').endswith("-2")
    assert client.get_object(Bucket=BUCKET, Key="whole/large.bin")["Body"].read() == large
    assert not client.list_multipart_uploads(Bucket=BUCKET).get("Uploads")


def test_pyscenedetect_reads_s3_as_it_reads_a_local_file(job):
    from multishot.pipeline.config import DetectConfig
    from multishot.pipeline.detect import SceneDetectDetector
    from multishot.pipeline.decode import DecodeStats, probe

    config, _ = job
    name = CLIPS[0][0]
    fps = probe(str(config.parent / name)).fps
    detector = SceneDetectDetector(DetectConfig(backend="content"))
    local = detector.detect(str(config.parent / name), resolve(str(config.parent / name))[0], fps, DecodeStats())
    fs, path = resolve(f"s3://{BUCKET}/films/{name}")
    stats = DecodeStats()
    assert detector.detect(path, fs, fps, stats) == local and len(local) > 1
    assert stats.frames == round(CLIPS[0][2] * fps)
