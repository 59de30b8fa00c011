"""``multishot shards report`` and ``shards sheet --all`` on the small real-footage shard set of
``test_shards_cli`` (3 samples in 2 shards, index with 2 rejected shots and 2 rejected videos),
the page opened in a real headless Chromium (Debian's ``chromium`` package, ``make install``)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from multishot.cli import main
from multishot.dataset.shards import ShardSetLayout
from test_shards_cli import SAMPLES, good_set  # noqa: F401  (the fixture, shared)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run_dir(good_set, tmp_path_factory) -> Path:  # noqa: F811
    """The good set plus a rejected shot whose source file is gone."""
    root = Path(shutil.copytree(good_set, tmp_path_factory.mktemp("report") / "run"))
    layout = ShardSetLayout(str(root))
    shots = pq.read_table(layout.shots_table).to_pylist()
    gone = {**shots[0], "source": str(root / "moved_away.mp4"), "shot_index": 7, "kept": False,
            "reason": "too_dark"}
    pq.write_table(pq.read_table(layout.shots_table).from_pylist([*shots, gone]), layout.shots_table)
    return root


def _chromium(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage",
         "--enable-logging=stderr", "--v=0", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def test_report_writes_every_sample_and_rejected_shot(run_dir, capsys):
    assert main(["shards", "report", str(run_dir), "-q"]) == 0
    out, err = capsys.readouterr()
    index = run_dir / "report" / "index.html"
    assert out.strip() == str(index)
    assert "3 samples" in err and "3 rejected shots (2 with a thumbnail)" in err
    page = index.read_text()
    assert len(re.findall(r"<img class='sheet'", page)) == len(SAMPLES)
    assert page.count("class='shot rejected-shot'") == 3
    assert "source not readable here" in page and "moved_away.mp4" in page
    assert "too_dark, text" in page  # a shot's several reasons, each named
    # the video rows: the films of the samples, plus the two corrupt files rejected at probe
    assert "corrupt_zero_bytes.mp4" in page and "probe: cannot open" in page
    for src in re.findall(r"src='([^']+)'", page):  # every image beside the page decodes
        with Image.open(index.parent / src) as image:
            assert image.width > 0 and image.height > 0


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (make install adds Debian's chromium package)")
def test_report_loads_in_headless_chromium(run_dir, tmp_path):
    if not (run_dir / "report" / "index.html").exists():
        assert main(["shards", "report", str(run_dir), "-q"]) == 0
    url = (run_dir / "report" / "index.html").as_uri()
    dom = _chromium("--dump-dom", "--virtual-time-budget=5000", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # every sample shows its sheet, every image loaded (the page's own check), no script error
    assert len(re.findall(r'<img class="sheet"', dom.stdout)) == len(SAMPLES)
    assert set(re.findall(r'data-key="([^"]+)"', dom.stdout)) == {key for key, *_ in SAMPLES}
    assert 'data-broken-images="0"' in dom.stdout
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []
    shot = tmp_path / "page.png"
    grab = _chromium(f"--screenshot={shot}", "--window-size=1200,1600", url)
    assert grab.returncode == 0 and shot.exists(), grab.stderr[-2000:]
    with Image.open(shot) as image:  # something drawn, not a blank page
        assert len(image.convert("L").getcolors(1 << 16) or []) > 50


def test_report_marks_missing_images_in_chromium(run_dir, tmp_path):
    """The page's own broken-image check (what the test above relies on) fires when it must."""
    if CHROMIUM is None:
        pytest.skip("no chromium binary (make install adds Debian's chromium package)")
    alone = tmp_path / "index.html"
    if not (run_dir / "report" / "index.html").exists():
        assert main(["shards", "report", str(run_dir), "-q"]) == 0
    shutil.copy(run_dir / "report" / "index.html", alone)  # the page without its img/ folder
    dom = _chromium("--dump-dom", "--virtual-time-budget=5000", alone.as_uri())
    broken = re.search(r'data-broken-images="(\d+)"', dom.stdout)
    assert broken and int(broken.group(1)) == len(SAMPLES) + 2 + 1  # sheets, thumbnails, figure


def test_sheet_all_writes_one_png_per_sample(run_dir, tmp_path, capsys):
    assert main(["shards", "sheet", str(run_dir), "--all", "-o", str(tmp_path / "sheets"), "-q"]) == 0
    out, err = capsys.readouterr()
    assert sorted(Path(p).name for p in out.split()) == sorted(f"{key}.png" for key, *_ in SAMPLES)
    assert f"wrote {len(SAMPLES)} sheets" in err
    with Image.open(tmp_path / "sheets" / "sintel-a.png") as image:
        assert image.height > 3 * 135  # three shot rows


def test_sheet_needs_key_or_all(run_dir, capsys):
    assert main(["shards", "sheet", str(run_dir), "-o", "x.png", "-q"]) == 2
    assert "give either KEY or --all" in capsys.readouterr().err
