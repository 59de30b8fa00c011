"""``multishot shards report``: one HTML page to browse a run, with its images beside it.

The page (``OUT/report/index.html`` by default; images under ``OUT/report/img/``, linked by
relative paths, so the folder can be copied or served as it is) holds, in order:

* the totals of ``multishot shards stats`` and its figure (:func:`dataset.stats.plot_stats`);
* one row per input video (``index/videos.parquet``: status, duration, shots detected and
  kept, samples made, burned-in overlays; videos of ``index/rejects.parquet`` that never got
  a result are rows too, with their reason);
* every sample with its contact sheet (:func:`dataset.sheet.render_sheet`);
* every rejected shot (``index/shots.parquet`` rows with ``kept`` false) with its reasons and
  a thumbnail: the source's frame at the shot's middle, decoded with PyAV. A source that is
  not a readable local file (moved, deleted, on object storage) is said so in its place.

Nothing on the page needs JavaScript; one inline script only marks images that failed to load
(``data-broken-images`` on ``<body>`` and a red banner), e.g. after copying the page alone.
This is the run viewer PySceneDetect's ``export-html`` and Cosmos-Curate's clip viewer give
their users, for our shard layout (``dataset/shards.py``).
"""

from __future__ import annotations

import html
import io
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import av
import numpy as np
from PIL import Image

from multishot.dataset.record import SampleRecord
from multishot.dataset.shards import read_samples
from multishot.dataset.shardset import ShardSet
from multishot.dataset.storage import write_bytes

log = logging.getLogger(__name__)

#: JPEG quality of sheets and thumbnails
JPEG_QUALITY = 85

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; } td, th { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: left; }
td.num { text-align: right; } .bad { color: #b00; } pre { background: #f6f6f6; padding: .8em; }
img.stats { max-width: 100%; } .sample { margin: 1.5em 0; } .sample img { max-width: 100%; border: 1px solid #ccc; }
.shots { display: flex; flex-wrap: wrap; gap: 10px; } .shot { width: 260px; font-size: 12px; }
.shot img { width: 256px; border: 1px solid #ccc; } .missing { width: 256px; height: 60px; background: #fee;
  color: #b00; display: flex; align-items: center; justify-content: center; text-align: center; }
#broken { display: none; background: #b00; color: #fff; padding: .5em; }
"""
_SCRIPT = """
window.addEventListener('load', function () {
  var bad = Array.prototype.filter.call(document.images, function (i) { return !i.complete || i.naturalWidth === 0; });
  document.body.setAttribute('data-broken-images', String(bad.length));
  if (bad.length) { var b = document.getElementById('broken'); b.style.display = 'block';
    b.textContent = bad.length + ' image(s) failed to load: copy the whole report folder, not index.html alone'; }
});
"""


@dataclass
class ReportSummary:
    """What :func:`write_report` wrote: the page's path and how many of each item it shows."""

    index: str
    samples: int = 0
    sheets_failed: list[str] = field(default_factory=list)  # keys whose sheet could not be drawn
    videos: int = 0
    rejected_shots: int = 0
    thumbnails: int = 0  # rejected shots shown with a frame (the others' sources are unreadable)


def each_sample(shard_set: ShardSet) -> Iterator[tuple[str, SampleRecord, dict[str, bytes]]]:
    """Every ``(shard name, record, members)`` of the set, shard by shard (one sample's members
    in memory at a time; ``members`` maps extension → bytes, e.g. ``mp4``)."""
    from multishot.dataset.shards import parse_record

    for name in shard_set.progress_bar(shard_set.shard_names(), "reading samples"):
        for sample in read_samples(shard_set.fs, shard_set.layout.shard(name),
                                   max_member_bytes=shard_set.max_member_bytes):
            members = {k: v for k, v in sample.items() if not k.startswith("__")}
            if "json" in members:
                yield name, parse_record(members["json"], sample["__key__"]), members


def local_source(source: str) -> str | None:
    """The local path of a video ``source`` (a path or ``file://`` URI) when it is a readable
    file here, else None (missing, or on object storage)."""
    path = source[len("file://"):] if source.startswith("file://") else source
    if "://" in path or not os.path.isfile(path) or not os.access(path, os.R_OK):
        return None
    return path


def frames_at_seconds(path: str, seconds: list[float], height: int) -> dict[float, np.ndarray]:
    """RGB frames (``(height, W, 3)`` uint8, aspect kept) of the video at local ``path`` nearest
    after each time in ``seconds`` (source clock, s): one keyframe seek per time, then decoding
    up to it. A time the decoder cannot reach is left out of the result.

    Raises:
        av.error.FFmpegError: the file does not open as a video.
    """
    out: dict[float, np.ndarray] = {}
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        width = max(2, round(height * stream.codec_context.width / max(1, stream.codec_context.height)))
        for t in sorted(set(seconds)):
            try:
                container.seek(max(0, int(t / stream.time_base)), stream=stream, backward=True)
                for frame in container.decode(stream):
                    if frame.time is None or frame.time + 1e-6 >= t:
                        out[t] = frame.to_ndarray(format="rgb24", width=width, height=height)
                        break
            except (av.error.FFmpegError, OSError) as err:  # damage past this point: report as missing
                log.debug("no frame of %s at %.2f s: %s", path, t, err)
    return out


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _e(value) -> str:
    return html.escape("—" if value is None else str(value))


def _num(value, fmt: str = ".2f") -> str:
    return "—" if value is None else format(value, fmt)


def write_report(shard_set: ShardSet, output: str, *, frames_per_shot: int = 4, thumb_height: int = 135,
                 max_rejected: int | None = None) -> ReportSummary:
    """Write the report page of ``shard_set`` to ``output/index.html`` and its images under
    ``output/img/`` (``output``: folder path or ``pyarrow.fs`` URI, made when missing).

    ``max_rejected`` caps how many rejected shots get a row (None: every one); the page says
    how many were left out.

    Raises:
        ValueError: ``frames_per_shot`` or ``thumb_height`` below 1.
        dataset.shards.ShardError: a damaged shard (see ``multishot shards verify``).
    """
    from multishot.dataset.sheet import render_sheet
    from multishot.dataset.stats import compute_stats, format_stats, plot_stats
    from multishot.dataset.storage import resolve

    if frames_per_shot < 1 or thumb_height < 1:
        raise ValueError("frames_per_shot and thumb_height must be >= 1")
    fs, root = resolve(output)
    fs.create_dir(f"{root}/img", recursive=True)
    summary = ReportSummary(index=f"{output.partition('?')[0].rstrip('/')}/index.html")
    body: list[str] = []

    def put(name: str, data: bytes) -> str:
        write_bytes(fs, f"{root}/img/{name}", data)
        return f"img/{name}"

    # ---- totals and figure
    stats = compute_stats(shard_set)
    figure = io.BytesIO()
    plot_stats(stats, figure)
    body.append("<h2 id='stats'>Totals</h2>")
    body.append(f"<pre>{_e(format_stats(stats.summary()))}</pre>")
    body.append(f"<img class='stats' alt='distributions' src='{put('stats.png', figure.getvalue())}'>")

    # ---- videos
    samples_per_source: Counter = Counter(row["source"] for row in shard_set.rows())
    videos = shard_set.table(shard_set.layout.videos_table)
    rejects = shard_set.table(shard_set.layout.rejects_table)
    reject_reason = {r["source"]: f"{r.get('stage') or ''}: {r.get('reason') or ''}".strip(": ")
                     for r in (rejects.to_pylist() if rejects is not None else [])}
    video_rows = videos.to_pylist() if videos is not None else []
    seen = {v["source"] for v in video_rows}
    video_rows += [{"source": s, "status": "rejected"} for s in reject_reason if s not in seen]
    summary.videos = len(video_rows)
    body.append(f"<h2 id='videos'>Videos ({len(video_rows)})</h2>")
    if video_rows:
        body.append("<table class='videos'><tr><th>source</th><th>status</th><th>duration s</th><th>fps</th>"
                    "<th>shots</th><th>kept</th><th>samples</th><th>overlays</th><th>reason</th></tr>")
        for v in video_rows:
            overlays = "; ".join(o.get("text") or "(box)" for o in v.get("overlays") or [])
            status = v.get("status")
            body.append(
                f"<tr class='video'><td title='{_e(v['source'])}'>{_e(v['source'].rsplit('/', 1)[-1])}</td>"
                f"<td class='{'' if status == 'ok' else 'bad'}'>{_e(status)}</td>"
                f"<td class='num'>{_num(v.get('duration_s'))}</td><td class='num'>{_num(v.get('fps'), 'g')}</td>"
                f"<td class='num'>{_e(v.get('shots'))}</td><td class='num'>{_e(v.get('shots_kept'))}</td>"
                f"<td class='num'>{samples_per_source.get(v['source'], 0)}</td><td>{_e(overlays or '')}</td>"
                f"<td>{_e(reject_reason.get(v['source'], ''))}</td></tr>")
        body.append("</table>")
    else:
        body.append("<p>no <code>index/videos.parquet</code> (a set not written by <code>multishot pipeline</code>)</p>")

    # ---- samples
    sample_parts: list[str] = []
    for shard, record, members in each_sample(shard_set):
        summary.samples += 1
        head = (f"<h3>{_e(record.key)}</h3><p>{_e(record.source.rsplit('/', 1)[-1])} · shard {_e(shard)} · "
                f"bucket {_e(record.bucket)} · {record.duration_s:.2f} s · {record.num_shots} shots · "
                f"captions {_e(record.caption_status)}</p>")
        try:
            if "mp4" not in members:
                raise ValueError("no .mp4 member (a latent shard set?)")
            image, _ = render_sheet(record, members["mp4"], frames_per_shot=frames_per_shot,
                                    thumb_height=thumb_height)
            src = put(f"sheet-{record.key}.jpg", _jpeg(image))
            picture = f"<img class='sheet' data-key='{_e(record.key)}' alt='sheet of {_e(record.key)}' src='{src}'>"
        except (ValueError, av.error.FFmpegError) as err:
            summary.sheets_failed.append(record.key)
            picture = f"<p class='bad sheet-missing'>no contact sheet: {_e(err)}</p>"
        sample_parts.append(f"<div class='sample' id='{_e(record.key)}'>{head}{picture}</div>")
    body.append(f"<h2 id='samples'>Samples ({summary.samples})</h2>")
    body += sample_parts or ["<p>no samples</p>"]

    # ---- rejected shots
    shots = shard_set.table(shard_set.layout.shots_table)
    rejected = [s for s in (shots.to_pylist() if shots is not None else []) if s.get("kept") is False]
    total_rejected = len(rejected)
    if max_rejected is not None:
        rejected = rejected[:max_rejected]
    summary.rejected_shots = len(rejected)
    body.append(f"<h2 id='rejected'>Rejected shots ({total_rejected})</h2>")
    if len(rejected) < total_rejected:
        body.append(f"<p>showing the first {len(rejected)} (--max-rejected)</p>")
    by_source: dict[str, list[dict]] = {}
    for s in rejected:
        by_source.setdefault(s["source"], []).append(s)
    body.append("<div class='shots'>")
    for source, rows in by_source.items():
        path = local_source(source)
        frames: dict[float, np.ndarray] = {}
        problem = f"source not readable here: {source}"
        if path is not None:
            try:
                frames = frames_at_seconds(path, [_middle(r) for r in rows], thumb_height)
                problem = f"no frame decoded at this time in {source}"
            except (av.error.FFmpegError, OSError, IndexError) as err:
                problem = f"source does not decode: {err}"
        for r in rows:
            t = _middle(r)
            caption = (f"{_e(source.rsplit('/', 1)[-1])} shot {_e(r.get('shot_index'))}<br>"
                       f"{_num(r.get('start_s'))}–{_num(r.get('end_s'))} s<br>"
                       f"<b class='reason'>{_e((r.get('reason') or '(no reason recorded)').replace(',', ', '))}</b>")
            if t in frames:
                name = f"shot-{summary.thumbnails:05d}.jpg"
                summary.thumbnails += 1
                picture = f"<img class='thumb' alt='frame at {t:.2f} s' src='{put(name, _jpeg(Image.fromarray(frames[t])))}'>"
            else:
                picture = f"<div class='missing'>{_e(problem)}</div>"
            body.append(f"<div class='shot rejected-shot'>{picture}<div>{caption}</div></div>")
    body.append("</div>")
    if not rejected:
        body.append("<p>no rejected shots recorded</p>")

    title = f"multishot run {shard_set.layout.root}"
    page = (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<style>{_CSS}</style><script>{_SCRIPT}</script></head><body>"
            f"<div id='broken'></div><h1>{_e(title)}</h1>"
            "<p><a href='#stats'>totals</a> · <a href='#videos'>videos</a> · <a href='#samples'>samples</a> · "
            "<a href='#rejected'>rejected shots</a></p>" + "\n".join(body) + "</body></html>\n")
    write_bytes(fs, f"{root}/index.html", page.encode())
    return summary


def _middle(shot_row: dict) -> float:
    """The middle of a ``shots.parquet`` row's source span, in seconds."""
    return (float(shot_row["start_s"]) + float(shot_row["end_s"])) / 2
