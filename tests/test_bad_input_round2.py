"""Bad input that must be one clear line or a recorded reject, never a hang or a traceback
(issue [P] item 10): non-regular files in an input list, non-finite config values, a deeply
nested manifest, S3 keys with ``?`` or a literal ``%41``. Runs use the sequential runner on an
8 s clip cut from the real footage.
"""

from __future__ import annotations

import os
import threading

import pyarrow.parquet as pq
import pytest
import yaml

from footage_clips import FOOTAGE, cut_clip
from multishot.cli import main
from multishot.config import ConfigError, load_config
from multishot.dataset.shards import ShardSetLayout
from multishot.pipeline.config import PipelineConfig
from multishot.trainer.config import TrainConfig
from s3_server import moto_s3

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = {"detect": {"backend": "content"}, "analyse": {"ocr_backend": "none"},
         "pack": {"buckets": [{"name": "2s", "target_s": 2, "tolerance_s": 1}]},
         "render": {"width": 160, "height": 96}, "ray": {"runner": "sequential"}}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad2")
    cut_clip(FOOTAGE / "archive" / "bbb_first60s_360p.mp4", 20.0, 8.0, root / "bbb.mp4")
    return cut_clip(FOOTAGE / "archive" / "sintel_film_excerpt_26s.mp4", 2.0, 8.0, root / "sintel.mp4")


def _config(tmp_path, **extra):
    path = tmp_path / "quick.yaml"
    path.write_text(yaml.safe_dump({**QUICK, **extra}))
    return path


def _run(config, inp, out):
    return main(["pipeline", "run", "--config", str(config), "--input", str(inp), "--output", str(out), "--no-progress"])


def test_fifo_and_dev_zero_in_a_list_are_rejected_unopened(clip, tmp_path, capsys):
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    listing = tmp_path / "list.txt"
    listing.write_text(f"/dev/zero\n{fifo}\n{clip}\n")
    result = {}
    # a FIFO opened for reading blocks until a writer comes: run in a thread, and fail (not hang)
    worker = threading.Thread(target=lambda: result.setdefault("code", _run(_config(tmp_path), listing, tmp_path / "out")),
                              daemon=True)
    worker.start()
    worker.join(timeout=600)
    if worker.is_alive():
        with open(fifo, "wb"):  # unblock the reader so the thread can end, then fail
            pass
        worker.join(timeout=60)
        pytest.fail("the run blocked on the FIFO")
    assert result["code"] == 0, capsys.readouterr().err[-2000:]
    rejects = pq.read_table(ShardSetLayout(str(tmp_path / "out")).rejects_table).to_pylist()
    reasons = {r["source"]: r["reason"] for r in rejects}
    assert set(reasons) == {"/dev/zero", str(fifo)}
    assert "not a regular file (a character device)" in reasons["/dev/zero"]
    assert "not a regular file (a FIFO)" in reasons[str(fifo)]
    code = main(["pipeline", "run", "--config", str(_config(tmp_path)), "--input", str(fifo), "--output",
                 str(tmp_path / "out2"), "--no-progress"])  # the FIFO as the input list itself
    assert code == 2 and "not a regular file" in capsys.readouterr().err


@pytest.mark.parametrize("model, path, key, value", [
    (PipelineConfig, "configs/pipeline/demo.yaml", "detect", {"segment_s": ".inf"}),
    (PipelineConfig, "configs/pipeline/demo.yaml", "filter", {"min_aesthetic": ".nan"}),
    (TrainConfig, "configs/train/tiny_cpu.yaml", "optim", {"lr": ".nan"}),
])
def test_non_finite_config_values_are_refused_at_load(tmp_path, model, path, key, value):
    text = (tmp_path / "c.yaml")
    data = yaml.safe_load(open(os.path.join(REPO, path)))
    name, raw = next(iter(value.items()))
    data[key][name] = "__X__"
    text.write_text(yaml.safe_dump(data).replace("__X__", raw))
    with pytest.raises(ConfigError, match=f"{key}.{name}") as err:
        load_config(text, model)
    assert "finite" in str(err.value)


def test_deeply_nested_manifest_is_one_line(clip, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(_config(tmp_path), clip, out) == 0
    (out / "manifest.json").write_text("[" * 100000 + "]" * 100000)
    capsys.readouterr()
    code = main(["shards", "verify", str(out)])
    captured = capsys.readouterr()
    assert code == 1 and "manifest.json: not valid JSON: nested too deeply" in captured.out, captured
    assert _run(_config(tmp_path), clip, out) == 0  # the rerun ignores it (logged) and rewrites it
    assert main(["shards", "verify", str(out)]) == 0


def test_s3_keys_with_question_mark_and_literal_percent(clip, tmp_path, monkeypatch, capsys):
    keys = {"in/what?.mp4": clip, "in/a%41b.mp4": clip.with_name("bbb.mp4")}
    with moto_s3(monkeypatch) as (client, endpoint):
        client.create_bucket(Bucket="films")
        for key, path in keys.items():
            client.upload_file(str(path), "films", key)
        code = _run(_config(tmp_path), f"s3://films/in?endpoint_override={endpoint}&scheme=http", tmp_path / "out")
        assert code == 0, capsys.readouterr().err[-2000:]
    videos = pq.read_table(ShardSetLayout(str(tmp_path / "out")).videos_table).to_pylist()
    assert sorted(v["status"] for v in videos) == ["ok", "ok"], videos
    assert sorted(v["source"].split(".mp4")[0] + ".mp4" for v in videos) == sorted(f"s3://films/{k}" for k in keys)
