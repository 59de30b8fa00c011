"""The installed package lives under ``multishot``: a user's own ``model.py`` or ``dataset/``
in the working directory never shadows ours (issue [G])."""

import subprocess
import sys


def test_user_modules_named_like_ours_do_not_shadow_the_package(tmp_path):
    (tmp_path / "model.py").write_text("raise RuntimeError('the user model.py was imported')\n")
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "__init__.py").write_text("raise RuntimeError('the user dataset/ was imported')\n")
    (tmp_path / "pipeline.py").write_text("raise RuntimeError('the user pipeline.py was imported')\n")
    code = ("import multishot.model.dit, multishot.dataset.record, multishot.pipeline.run, "
            "multishot.trainer.trainer, multishot.annotate.captioner, multishot.cli\n"
            "import multishot.model.dit as d; print(d.__file__)\n"
            "multishot.cli.build_parser()\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "model" in result.stdout and str(tmp_path) not in result.stdout
    # and the user's own modules are still theirs to import
    user = subprocess.run([sys.executable, "-c", "import model"], cwd=tmp_path, capture_output=True, text=True)
    assert "the user model.py was imported" in user.stderr
