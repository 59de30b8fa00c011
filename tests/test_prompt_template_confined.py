"""A prompt template is read only from the templates folder and must use its placeholders.

The template is sent with every request: a config naming ``/proc/self/environ`` would send the
environment (API keys included) to the endpoint. Runs against the stand-in Gemini service with
the real-footage shard set of ``test_annotate``.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from multishot.annotate.config import CONFIG_DIR, AnnotateConfig
from multishot.annotate.prompt import PromptTemplate
from multishot.cli import main as multishot_main
from multishot.config import ConfigError, load_config
from test_annotate import FAST, samples, server, shard_set  # noqa: F401 (fixtures)


def _annotate(config: dict, shard_set: str, tmp_path, capsys) -> tuple[int, str]:
    path = tmp_path / "annotate.yaml"
    path.write_text(json.dumps({**FAST, **config}))
    code = multishot_main(["annotate", "--shards", shard_set, "--output", str(tmp_path / "out"),
                           "--config", str(path), "--cache-dir", str(tmp_path / "cache")])
    return code, capsys.readouterr().err


def test_environ_as_template_is_refused_before_any_request(server, shard_set, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-standin-3b9f")
    code, err = _annotate({"prompt_template": "/proc/self/environ"}, shard_set, tmp_path, capsys)
    assert code == 2 and err.startswith("multishot annotate: ") and len(err.strip().splitlines()) == 1, err
    assert "prompt_template" in err and "templates" in err
    assert server.generate_requests() == []
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and b"aws-secret-standin" in p.read_bytes()]


def test_template_must_stay_in_its_folder_and_use_its_placeholders(tmp_path):
    folder = tmp_path / "templates"
    folder.mkdir()
    shutil.copy(CONFIG_DIR / "prompt.txt", folder / "mine.txt")
    (folder / "plain.txt").write_text("Describe the video.")  # no placeholder at all
    (tmp_path / "outside.txt").write_text((CONFIG_DIR / "prompt.txt").read_text())
    os.symlink(tmp_path / "outside.txt", folder / "link.txt")
    config = tmp_path / "c.yaml"

    def load(**keys) -> AnnotateConfig:
        config.write_text(json.dumps({"templates_dir": str(folder), **keys}))
        return load_config(config, AnnotateConfig)

    good = load(prompt_template="mine.txt")
    assert PromptTemplate.load(good.prompt_template, "English", good.templates_dir).text.startswith(
        (CONFIG_DIR / "prompt.txt").read_text()[:40])
    for name, words in (("../outside.txt", "not inside"), (str(tmp_path / "outside.txt"), "not inside"),
                        ("link.txt", "not inside"), ("plain.txt", "lacks placeholders"),
                        ("/proc/self/environ", "not inside"), ("missing.txt", "no such template")):
        with pytest.raises(ConfigError, match=words) as err:
            load(prompt_template=name)
        assert "prompt_template" in str(err.value)
    assert load_config(CONFIG_DIR / "default.yaml", AnnotateConfig) == AnnotateConfig()
