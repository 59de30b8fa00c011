"""What every benchmark script shares: where its results go, the device's name, timing, relative
error, a GPU utilisation monitor, the JSON + markdown report, and the tests' footage helpers.

The scripts run as ``python benchmarks/NAME.py`` (or under ``torchrun``), which puts this folder
first on ``sys.path``: they ``import harness`` with no path changes of their own. Nothing under
``tests/`` imports this module; tests run the scripts as programs.

- :func:`results_dir` – ``benchmarks/results/<benchmark>/``, each benchmark's default output folder;
- :func:`device_name` – the GPU's name, or the CPU's with its core count (every figure names it);
- :func:`cuda_ms` – median CUDA-event milliseconds; :func:`sync` – before and after a host timer;
- :func:`rel_err` – ``‖a − ref‖ / ‖ref‖`` in float32;
- :class:`GpuMonitor` – ``nvidia-smi`` sampling SM and NVDEC utilisation in the background;
- :func:`write_report` – the JSON and the markdown beside it, refusing a report without its device;
- :func:`test_helper` – a module of ``tests/helpers/`` (the footage fixtures), loaded by path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def results_dir(benchmark: str) -> Path:
    """``benchmarks/results/<benchmark>/``: the folder a benchmark's results go to by default
    (not created here; :func:`write_report` makes the folders it writes into)."""
    return RESULTS / benchmark


def device_name(device=None) -> str:
    """The device that measures: ``torch.cuda.get_device_name`` for a CUDA device (``device``: a
    ``torch.device``, an index or None for the current one), else ``CPU (<processor>), N cores``."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}), {os.cpu_count()} cores"


def cuda_ms(fn: Callable[[], object], warmup: int, iters: int) -> float:
    """Median milliseconds of ``fn()`` over ``iters`` runs after ``warmup`` runs, each timed with
    CUDA events (the GPU's time between the two records; the host waits after each run)."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def sync(device=None) -> None:
    """Wait for the CUDA device's queued work (a no-op on the CPU or without CUDA): put around a
    host timer, it makes the timer count the GPU's work."""
    import torch

    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize(device)


def rel_err(a, ref) -> float:
    """``‖a − ref‖₂ / ‖ref‖₂`` of two tensors of one shape, computed in float32."""
    return ((a.float() - ref.float()).norm() / ref.float().norm()).item()


class GpuMonitor:
    """``nvidia-smi`` sampling the GPU's SM and NVDEC utilization (%) every 0.5 s in the
    background; :meth:`mean` of the samples taken between two ``time.perf_counter()`` times.
    Without ``nvidia-smi`` it samples nothing and :meth:`mean` is ``{}``."""

    def __init__(self):
        self.samples: list[tuple[float, float, float]] = []
        try:
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,utilization.decoder",
                                          "--format=csv,noheader,nounits", "-lms", "500"],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            self.proc = None
            return
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                sm, dec = (float(x) for x in line.split(","))
            except ValueError:
                continue
            self.samples.append((time.perf_counter(), sm, dec))

    def mean(self, t0: float, t1: float) -> dict:
        """``{"sm_util_pct", "nvdec_util_pct", "samples"}`` over ``[t0, t1]``; ``{}`` if none."""
        inside = [(sm, dec) for t, sm, dec in self.samples if t0 <= t <= t1]
        if not inside:
            return {}
        return {"sm_util_pct": round(statistics.fmean(x[0] for x in inside), 1),
                "nvdec_util_pct": round(statistics.fmean(x[1] for x in inside), 1), "samples": len(inside)}

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()


def write_report(out: Path | str, report: dict, markdown: str | Callable[[dict], str] | None = None) -> Path:
    """Write ``report`` as JSON to ``out`` and, when given, ``markdown`` (text, or a function of
    the report) to ``out`` with ``.md``; makes the folder. Raises ``ValueError`` when the report
    names no device (every figure names the device that measured it): a ``device`` key at the
    top, or in its parts (dicts up to two levels down, for reports whose parts run on separate
    machines). Returns ``out``."""
    if not _names_device(report, 3):
        raise ValueError(f"a benchmark report names its device; {out} has no 'device' key")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    if markdown is not None:
        out.with_suffix(".md").write_text(markdown(report) if callable(markdown) else markdown)
    return out


def _names_device(report: dict, depth: int) -> bool:
    return bool(report.get("device")) or depth > 1 and any(
        _names_device(v, depth - 1) for v in report.values() if isinstance(v, dict))


def test_helper(name: str) -> ModuleType:
    """The module ``tests/helpers/<name>.py`` (footage fixtures such as ``synthetic_edit`` and
    ``footage_clips``, owned by the tests), loaded by its path: the benchmarks measure on the
    tests' fixtures without putting ``tests/`` on ``sys.path``. Raises ``FileNotFoundError``
    outside a checkout."""
    if name in sys.modules:
        return sys.modules[name]
    path = REPO / "tests" / "helpers" / f"{name}.py"
    if not path.exists():
        raise FileNotFoundError(f"{path}: the benchmarks read the tests' helpers from a checkout")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
