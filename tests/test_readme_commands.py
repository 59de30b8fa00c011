"""Every ```-fenced block of README.md and of the pages in docs/ is either run here, as written,
or marked exempt with a reason on the line before it: ``<!-- docs-test: skip: REASON -->`` (GPU,
real weights, long runs, credentials, diagrams). The runnable blocks of each page run in page
order in one bash session per page, as a reader pasting them would, in a folder that looks like the repository after ``make demo``:
``configs/``, ``demo/``, ``checkpoints/`` and ``.venv`` of this checkout, and ``out/demo`` a small shard set of
real footage (``test_shards_cli``'s, in place of the pipeline's 200 s run)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_shards_cli import good_set  # noqa: F401  (the fixture, shared)

REPO = Path(__file__).resolve().parents[1]
#: the pages whose blocks are tested: the README, then docs/ in name order
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SKIP = re.compile(r"<!-- docs-test: skip: (.+) -->")


def readme_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """``(line number, block text, skip reason or None)`` of every fenced block."""
    lines = text.splitlines()
    blocks, start = [], None
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            if start is None:
                start = number
            else:
                before = lines[start - 2] if start >= 2 else ""
                marker = SKIP.fullmatch(before.strip())
                blocks.append((start, "\n".join(lines[start:number - 1]), marker and marker.group(1)))
                start = None
    assert start is None, f"README.md: the block opened at line {start} is never closed"
    return blocks


def test_every_block_is_run_or_marked():
    blocks = [b for page in PAGES for b in readme_blocks(page.read_text())]
    runnable = [b for b in readme_blocks((REPO / "README.md").read_text()) if b[2] is None]
    assert len(blocks) >= 10 and runnable, "the README's quickstart commands must be tested"
    assert all(reason.strip() for _, _, reason in blocks if reason is not None)


@pytest.fixture
def after_make_demo(good_set, tmp_path) -> Path:  # noqa: F811
    for name in ("configs", "demo", ".venv", "checkpoints"):
        (tmp_path / name).symlink_to(REPO / name)
    shutil.copytree(good_set, tmp_path / "out" / "demo")
    return tmp_path


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_runnable_blocks_run_as_written(after_make_demo, page):
    if not (REPO / ".venv" / "bin" / "activate").exists():
        pytest.skip("no .venv (run `make install`): the README's commands use it")
    blocks = [(n, text) for n, text, reason in readme_blocks(page.read_text()) if reason is None]
    if not blocks:
        return  # every block of this page is marked (and the reasons are checked above)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "RAY_ADDRESS")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if Path(sys.executable).parent.as_posix() not in p)  # as on a fresh shell
    # the docs pages assume the README's set-up: the venv active
    activate = "" if page.name == "README.md" else ". .venv/bin/activate\n"
    script = "set -euo pipefail\n" + activate + "\n".join(f"echo '## {page.name} line {n}' >&2\n{text}" for n, text in blocks)
    result = subprocess.run(["bash", "-c", script], cwd=after_make_demo, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    # what they made: the README's listing and report page, the pipeline page's dry-run plan
    if page.name == "README.md":
        assert "sintel-a" in result.stdout and (after_make_demo / "out/demo/report/index.html").is_file()
    if page.name == "pipeline.md":
        assert "to process" in result.stdout
