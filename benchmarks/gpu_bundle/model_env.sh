# Source me on the GPU machine in the repository root (carry [".jcarry"]): unpacks the wheels of
# .jcarry/whl into /tmp/j/site once per warm machine and gives the package layout of an install
# (env.sh's shim, BUNDLE_DIR=/tmp/j), so `python3 -m multishot.learn` and benchmarks/causal.py
# import from /tmp. Inductor's cache goes to /tmp/inductor (kept while the machine stays warm).
if [ ! -f /tmp/j/site/.ok ]; then
  mkdir -p /tmp/j/site
  for w in .jcarry/whl/*.whl; do python3 -m zipfile -e "$w" /tmp/j/site; done
  touch /tmp/j/site/.ok
fi
BUNDLE_DIR=/tmp/j source benchmarks/gpu_bundle/env.sh
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor PYTHONUNBUFFERED=1
