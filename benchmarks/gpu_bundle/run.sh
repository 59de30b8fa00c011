#!/usr/bin/env bash
# The measurements on one H100 once the bundle is staged (README.md); results under $OUT.
#   bash .gcarry/run.sh checks  # issue 28/34 checks on vs off: 6 scanning processes x 4 sessions, ROUNDS rounds (default 6, ~5 min)
#   bash .gcarry/run.sh ray     # the pipeline through Ray, configs/pipeline/gpu_node.yaml, 24 videos (~6-9 min)
set -uo pipefail
R=$PWD
[ -f ${BUNDLE_DIR:-/tmp}/site/.ok ] || { echo "run.sh: the bundle is not staged (bash .gcarry/stage.sh pN for every part)" >&2; exit 2; }
source benchmarks/gpu_bundle/env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
cd /tmp
B="python3 $R/benchmarks/pipeline_gpu.py --cpu-frames 0 --work /tmp/pgw"
case ${1:-} in
  checks) $B --parts processes --workers 6 --worker-sessions 4 --worker-ocr-threads 4 --worker-rounds ${ROUNDS:-6} --checks on,off \
             --out "$OUT/pipeline_gpu_h100_checks.json" > "$OUT/checks.log" 2>&1; rc=$?
          tail -c 6000 "$OUT/checks.log";;
  ray)    $B --parts ray --ray-videos ${RAY_VIDEOS:-24} --ray-timeout-s ${RAY_TIMEOUT_S:-450} \
             --out "$OUT/pipeline_gpu_h100_ray.json" > "$OUT/ray.log" 2>&1; rc=$?
          tail -c 8000000 /tmp/pgw/ray_run.log > "$OUT/ray_run.log" 2>/dev/null
          tail -c 6000 "$OUT/ray.log";;
  *) echo "run.sh checks|ray" >&2; exit 2;;
esac
exit $rc
