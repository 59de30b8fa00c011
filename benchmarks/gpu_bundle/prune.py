"""On the GPU machine, after the bundle is unpacked (stage.sh): drop from the carried folder each
distribution the machine already has at a version that every carried distribution accepts (its
own build then runs, as the rest of its image expects), then say what is still unsatisfied.

Run with the machine's own ``python3`` and without the folder on ``PYTHONPATH``:
``python3 prune.py SITE PYPROJECT``. Prints the dropped distributions, every requirement that
neither the folder nor the machine meets (``UNSATISFIED ...``), and the machine's versions of
the packages the pipeline takes from its image (``requirements-device.txt``)."""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

#: taken from the machine's image, never carried (requirements-device.txt), and what they rest on
FROM_IMAGE = ("numpy", "scipy", "torch", "torchvision", "onnx", "onnxruntime", "pyarrow", "pandas",
              "opencv-python-headless", "pillow", "timm", "huggingface-hub", "safetensors")
#: project requirements not needed on a GPU node's pipeline run (openvino: OCR's CPU runtime; a
#: GPU actor runs OCR on the GPU; matplotlib: reports; ray's extras beyond a local Ray)
NOT_NEEDED = {"openvino", "matplotlib", "paddleocr"}
#: the same import under another distribution's name (cv2: the image has the headless build)
SAME_AS = {"opencv-python": "opencv-python-headless"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def applies(req: Requirement) -> bool:
    return req.marker is None or req.marker.evaluate({"extra": ""})


def main(site: Path, pyproject: Path) -> int:
    ours = {norm(d.metadata["Name"]): d for d in md.distributions(path=[str(site)])}
    project = [Requirement(r) for r in tomllib.loads(pyproject.read_text())["project"]["dependencies"]]
    project += [Requirement(r) for r in tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]["gpu"]]
    wanted: dict[str, list[Requirement]] = {}
    for req in [Requirement(q) for d in ours.values() for q in (d.requires or [])] + project:
        if applies(req):
            wanted.setdefault(norm(req.name), []).append(req)

    def machine(name: str) -> str | None:
        try:
            return md.version(name)  # sys.path without the folder: the machine's own
        except md.PackageNotFoundError:
            return None

    dropped = []
    for name, dist in sorted(ours.items()):
        have = machine(name)
        if have is None or not all(r.specifier.contains(have, prereleases=True) for r in wanted.get(name, [])):
            continue
        for f in dist.files or []:
            path = (site / f).resolve()
            if site.resolve() in path.parents and path.is_file():
                path.unlink()
        dropped.append(f"{name}=={have}")
    for folder in sorted(site.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    print(f"carried, the machine has it (dropped): {', '.join(dropped) or 'none'}")
    kept = {norm(d.metadata["Name"]): d.version for d in md.distributions(path=[str(site)])}
    print(f"carried, installed: {', '.join(f'{k}=={v}' for k, v in sorted(kept.items()))}")
    print("from the machine: " + ", ".join(f"{n}=={machine(n)}" for n in FROM_IMAGE))
    bad = 0
    for name, reqs in sorted(wanted.items()):
        have = kept.get(name) or machine(name) or machine(SAME_AS.get(name, name))
        for req in reqs:
            if name in NOT_NEEDED:
                continue
            if have is None or not req.specifier.contains(have, prereleases=True):
                print(f"UNSATISFIED {req} (have {have})")
                bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
