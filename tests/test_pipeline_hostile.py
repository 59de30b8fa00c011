"""The main job under hostile and unlucky input (issue [H]): reruns into a used folder, symlink
loops, the output inside the input, object keys with spaces, unusable outputs, odd input lists,
contradictory configs. Runs use the sequential runner (the same stage list without Ray) on
8-second clips cut from the real footage, rendered at 160×96.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from footage_clips import FOOTAGE, cut_clip
from s3_server import moto_s3
from multishot.cli import main
from multishot.config import ConfigError, load_config
from multishot.dataset.shards import ShardSetLayout
from multishot.pipeline.config import PipelineConfig
from multishot.pipeline.discover import InputError, discover
from multishot.pipeline.stages import STAGES, run_sequential
from multishot.pipeline.task import VideoTask

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """(root, config path): ``root/A/sintel.mp4`` and ``root/B/bbb.mp4`` (8 s each, several
    shots) and a quick config: PySceneDetect, no OCR, 2 s samples at 160×96, no Ray."""
    root = tmp_path_factory.mktemp("hostile")
    cut_clip(FOOTAGE / "archive" / "sintel_film_excerpt_26s.mp4", 2.0, 8.0, root / "A" / "sintel.mp4")
    cut_clip(FOOTAGE / "archive" / "bbb_first60s_360p.mp4", 20.0, 8.0, root / "B" / "bbb.mp4")
    config = {"detect": {"backend": "content"}, "analyse": {"ocr_backend": "none"},
              "pack": {"buckets": [{"name": "2s", "target_s": 2, "tolerance_s": 1}]},
              "render": {"width": 160, "height": 96}, "ray": {"runner": "sequential"}}
    (root / "quick.yaml").write_text(yaml.safe_dump(config))
    return root, root / "quick.yaml"


def _run(config: Path, inp, out, capsys) -> tuple[int, str]:
    code = main(["pipeline", "run", "--config", str(config), "--input", str(inp), "--output", str(out), "--no-progress"])
    return code, capsys.readouterr().err


def _keys(out: Path) -> set[str]:
    return set(pq.read_table(ShardSetLayout(str(out)).samples_index).column("key").to_pylist())


def _verify(out: Path, capsys) -> int:
    code = main(["shards", "verify", str(out), "-q"])
    capsys.readouterr()
    return code


# ---- item 1: a rerun with other inputs never deletes finished work -----------------------------


def test_rerun_with_other_input_keeps_finished_work(job, tmp_path, capsys, caplog):
    root, config = job
    out = tmp_path / "O"
    assert _run(config, root / "A", out, capsys)[0] == 0
    assert _verify(out, capsys) == 0
    keys_a = _keys(out)
    assert keys_a and all("sintel" in k for k in keys_a)
    tars_a = sorted(p.name for p in (out / "shards").glob("*.tar"))

    assert _run(config, root / "B", out, capsys)[0] == 0  # another batch of films into the same folder
    assert _verify(out, capsys) == 0
    keys_b = _keys(out) - keys_a
    assert keys_b and all("bbb" in k for k in keys_b) and keys_a <= _keys(out)
    assert set(tars_a) <= {p.name for p in (out / "shards").glob("*.tar")}

    caplog.set_level(logging.INFO)
    assert _run(config, root / "A", out, capsys)[0] == 0
    assert "0 to process, 1 already done" in caplog.text
    assert _verify(out, capsys) == 0
    assert _keys(out) == keys_a | keys_b

    # a marker whose shard is gone is not trusted: the video is redone, the index stays whole
    (out / "shards" / tars_a[0]).unlink()
    caplog.clear()
    assert _run(config, root / "A", out, capsys)[0] == 0
    assert "1 to process" in caplog.text and f"shard {tars_a[0]} is missing" in caplog.text
    assert _verify(out, capsys) == 0
    assert _keys(out) == keys_a | keys_b

    # one source briefly unreadable (moved away): rejected, its finished samples kept
    listing = tmp_path / "both.txt"
    listing.write_text(f"{root / 'A' / 'sintel.mp4'}\n{tmp_path / 'gone' / 'bbb.mp4'}\n")
    assert _run(config, listing, out, capsys)[0] == 0
    assert _verify(out, capsys) == 0
    assert _keys(out) == keys_a | keys_b
    rejects = pq.read_table(ShardSetLayout(str(out)).rejects_table).to_pylist()
    assert [r["stage"] for r in rejects] == ["discover"] and "cannot read" in rejects[0]["reason"]


def test_a_video_that_ended_in_error_is_retried(job, tmp_path, capsys, caplog):
    import json

    root, config = job
    out = tmp_path / "O"
    assert _run(config, root / "A", out, capsys)[0] == 0
    (marker,) = (out / "_work").glob("*.json")
    result = json.loads(marker.read_text())
    marker.write_text(json.dumps({**result, "status": "error", "stage": "render", "reason": "OSError: disk full"}))
    caplog.set_level(logging.INFO)
    assert _run(config, root / "A", out, capsys)[0] == 0
    assert "1 to process" in caplog.text and json.loads(marker.read_text())["status"] == "ok"
    assert _verify(out, capsys) == 0


def test_shards_of_a_result_with_other_settings_are_set_aside_not_deleted(job, tmp_path, capsys):
    root, config = job
    out = tmp_path / "O"
    assert _run(config, root / "A", out, capsys)[0] == 0
    tars_a = sorted(p.name for p in (out / "shards").glob("*.tar"))
    other = tmp_path / "other.yaml"
    other.write_text(config.read_text().replace("width: 160", "width: 192"))
    assert _run(other, root / "B", out, capsys)[0] == 0
    assert _verify(out, capsys) == 0
    assert all("bbb" in k for k in _keys(out))
    assert sorted(p.name for p in (out / "_work" / "set_aside").glob("*.tar")) == tars_a


# ---- items 6 and 7: symlink loops, the output inside the input ---------------------------------


def test_symlink_loops_are_walked_once(job, tmp_path):
    root, _ = job
    films = tmp_path / "films"
    (films / "sub").mkdir(parents=True)
    shutil.copy(root / "A" / "sintel.mp4", films / "sintel.mp4")
    (films / "sub" / "bbb.mp4").symlink_to(root / "B" / "bbb.mp4")
    (films / "loop").symlink_to(".")
    (films / "sub" / "up").symlink_to("..")
    found = discover(str(films), [".mp4"])
    assert found == sorted([str((films / "sintel.mp4").resolve()), str((root / "B" / "bbb.mp4").resolve())])


def test_output_inside_input_is_not_read_back(job, tmp_path, capsys, caplog):
    root, config = job
    films = tmp_path / "films"
    films.mkdir()
    shutil.copy(root / "A" / "sintel.mp4", films / "sintel.mp4")
    assert _run(config, films, films, capsys)[0] == 0  # input folder = output folder
    # an mp4 under the output tree (an exported sample, say) is no source either
    shutil.copy(root / "B" / "bbb.mp4", films / "_work" / "exported.mp4")
    caplog.set_level(logging.INFO)
    assert _run(config, films, films, capsys)[0] == 0
    assert "holds this run's output" in caplog.text and "1 videos: 0 to process" in caplog.text
    assert discover(str(tmp_path), [".mp4"], exclude=[str(films / "_work")]) == [str(films / "sintel.mp4")]


# ---- item 9: object keys with spaces and non-ASCII characters -----------------------------------


@pytest.fixture
def s3(monkeypatch):
    """A real S3-compatible server (moto) on 127.0.0.1: ``(boto3 client, endpoint 'host:port')``."""
    with moto_s3(monkeypatch) as server:
        yield server


def test_s3_keys_with_spaces_and_non_ascii(job, tmp_path, s3, capsys):
    root, config = job
    client, endpoint = s3
    client.create_bucket(Bucket="archive")
    client.upload_file(str(root / "A" / "sintel.mp4"), "archive", "films/my film été.mp4")
    client.put_object(Bucket="archive", Key="films/broken #1 100%.mp4", Body=b"not a video")
    # the default detector, TransNetV2, decoding through pyarrow's S3 filesystem
    config = tmp_path / "transnet.yaml"
    config.write_text(job[1].read_text().replace("backend: content", "backend: transnetv2"))
    out = tmp_path / "out"
    code, err = _run(config, "s3://archive/films", out, capsys)
    assert code == 0, err
    assert _verify(out, capsys) == 0
    keys = _keys(out)
    assert keys and all(k.startswith("my_film_t_") for k in keys)
    rejects = pq.read_table(ShardSetLayout(str(out)).rejects_table).to_pylist()
    assert [(r["source"], r["stage"]) for r in rejects] == [("s3://archive/films/broken #1 100%.mp4", "probe")]
    # a text list naming the keys as people write them (unencoded), with the endpoint in the URI
    listing = tmp_path / "keys.txt"
    listing.write_text(f"s3://archive/films/my film été.mp4?endpoint_override={endpoint}&scheme=http\n")
    (uri,) = discover(str(listing), [".mp4"])
    assert uri.startswith("s3://archive/films/my%20film%20%C3%A9t%C3%A9.mp4?endpoint_override=")
    from multishot.dataset.storage import resolve
    from multishot.pipeline.task import fingerprint

    assert fingerprint(*resolve(uri)) == fingerprint(*resolve(str(root / "A" / "sintel.mp4")))


# ---- item 10: unusable outputs, all inputs rejected, odd input lists ---------------------------


def test_unusable_output_is_one_line_and_exit_2(job, tmp_path, capsys):
    root, config = job
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out in (a_file, a_file / "under"):
        code, err = _run(config, root / "A", out, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot hold a shard set" in err, err


def test_every_input_rejected_has_its_own_exit_status(tmp_path, job, capsys):
    _, config = job
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("corrupt_zero_bytes.mp4", "corrupt_random_bytes.mp4"):
        shutil.copy(FOOTAGE / "bad" / name, bad / name)
    code, _ = _run(config, bad, tmp_path / "out", capsys)
    assert code == 3
    from multishot.cli.pipeline import EPILOG

    assert "3  no input video could be used" in EPILOG


def test_input_lists_bom_binary_and_relative_manifest(job, tmp_path, capsys, monkeypatch):
    root, config = job
    lists = tmp_path / "lists"
    (lists / "clips").mkdir(parents=True)
    shutil.copy(root / "A" / "sintel.mp4", lists / "clips" / "sintel.mp4")
    clip = str(lists / "clips" / "sintel.mp4")
    (lists / "bom.txt").write_bytes("\ufeffclips/sintel.mp4\n".encode())
    assert discover(str(lists / "bom.txt"), [".mp4"]) == [clip]
    pq.write_table(pa.table({"path": ["clips/sintel.mp4"]}), lists / "films.parquet")
    monkeypatch.chdir(tmp_path)  # relative to the manifest's folder, not the working directory
    assert discover(str(lists / "films.parquet"), [".mp4"]) == [clip]
    binary = tmp_path / "model.bin"
    binary.write_bytes((FOOTAGE / "bad" / "corrupt_random_bytes.mp4").read_bytes()[:4096])
    code, err = _run(config, binary, tmp_path / "out", capsys)
    assert code == 2 and "UTF-8 text list of paths" in err and "codec" not in err, err
    with pytest.raises(InputError, match="Parquet manifest"):
        discover(str(binary), [".mp4"])


# ---- item 11: contradictory settings and duplicate keys ----------------------------------------


@pytest.mark.parametrize("text, keys", [
    ("filter:\n  min_brightness: 200\n  max_brightness: 50\n", ["filter", "min_brightness", "max_brightness"]),
    ("pack:\n  buckets: []\n", ["pack.buckets"]),
    ("pack:\n  min_shots: 5\n  max_shots: 2\n", ["pack", "min_shots", "max_shots"]),
    ("analyse:\n  frames_per_shot: 1\n  ocr_frames_per_shot: 2\n", ["analyse", "ocr_frames_per_shot"]),
    ("extensions: [mp4]\n", ["extensions"]),
    ("render:\n  width: 320\n  width: 640\n", ["'width' given twice", "lines 2 and 3"]),
])
def test_contradictory_pipeline_configs_are_refused(tmp_path, text, keys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, PipelineConfig)
    assert all(k in str(err.value) for k in keys), str(err.value)


def test_duplicate_keys_are_refused_for_every_config_kind(tmp_path):
    from multishot.annotate.config import AnnotateConfig
    from multishot.trainer.config import TrainConfig

    path = tmp_path / "dup.yaml"
    path.write_text("a: 1\nb: 2\na: 3\n")
    for model in (PipelineConfig, AnnotateConfig, TrainConfig):
        with pytest.raises(ConfigError, match="'a' given twice"):
            load_config(path, model)


# ---- issue [G]: one stage list, with or without Ray ----------------------------------------------


def test_stage_list_runs_without_ray_and_tasks_round_trip(job, tmp_path):
    root, config_path = job
    config = load_config(config_path, PipelineConfig, {"input": str(root / "A"), "output": str(tmp_path / "o")})
    assert [s.name for s in STAGES] == ["probe", "detect", "analyse", "dedup", "pack", "render", "caption", "write"]
    for stage in (s for s in STAGES if not s.barrier):  # each stage is placed by its own config section
        assert stage.resources(config) is getattr(config, stage.section).resources
    task = VideoTask(source=str(root / "A" / "sintel.mp4"), source_id="0123456789abcdef")
    (done,) = run_sequential(config, "hash", [task], stages=STAGES[:-1])  # stop before the writer
    assert done.status == "ok" and done.rendered and done.shots and done.info
    assert VideoTask.from_row(done.to_row()) == done  # typed, through the JSON row Ray carries
    assert done.rendered[0].mp4[4:8] == b"ftyp"


# ---- item 13: processes of a killed run -------------------------------------------------------


def test_reaper_ends_what_a_killed_parent_leaves(tmp_path):
    """A stand-in for Ray's agents: a grandchild in its own session outlives its SIGKILLed
    parent unless the watcher ends it. (The Ray run itself: tests/test_pipeline_resume_ray.py.)"""
    import signal
    import subprocess
    import sys
    import time

    from multishot.pipeline.reaper import start_time, watch

    pidfile = tmp_path / "daemon.pid"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "d = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True)\n"
        f"open({str(pidfile)!r}, 'w').write(str(d.pid))\n"
        "time.sleep(120)\n")])
    watcher = watch(parent.pid)
    deadline = time.time() + 30
    while not pidfile.exists() or not pidfile.read_text():
        assert time.time() < deadline
        time.sleep(0.1)
    daemon = int(pidfile.read_text())
    born = start_time(daemon)
    time.sleep(2.5)  # the watcher polls once a second
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    watcher.wait(timeout=30)
    assert start_time(daemon) != born  # gone (or a zombie awaiting its reaper)


def test_reaper_ends_a_process_it_never_saw_by_its_token():
    """A process the polls never saw below the watched one (a Ray worker started in the last
    second before the kill, orphaned when its raylet dies with the run) is found by the run's
    token in its environment. Here it is started outside the watched tree with the token, so no
    poll can see it: the watcher with the token ends it, one without it does not."""
    import os
    import signal
    import subprocess
    import sys

    from multishot.pipeline.reaper import TOKEN_ENV, start_time, watch

    def outlives_the_run(token: str | None) -> bool:
        env = {**os.environ, TOKEN_ENV: "run-token-1"}
        parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], env=env)
        unseen = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], env=env,
                                  start_new_session=True)
        born = start_time(unseen.pid)
        watcher = watch(parent.pid, token)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        watcher.wait(timeout=30)
        alive = unseen.poll() is None and start_time(unseen.pid) == born
        unseen.kill()
        unseen.wait()
        return alive

    assert not outlives_the_run("run-token-1")
    assert outlives_the_run(None)  # descendants only
    assert outlives_the_run("another-run")
