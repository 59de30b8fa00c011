#!/usr/bin/env bash
# Wait up to $1 seconds (default 240) for bg.sh's command, print the end of its output and copy
# /tmp/bg into $OUT (what the call brings back). Exit 0 once it has finished, 3 while it runs.
for _ in $(seq 1 ${1:-240}); do [ -f /tmp/bg/done ] && break; sleep 1; done
grep -v '^W[0-9]\{4\} \|pow_by_natural' /tmp/bg/console.txt | tail -${LINES_SHOWN:-8}
cp -r /tmp/bg/. "${OUT:-/tmp/out}"/ 2>/dev/null
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader 2>/dev/null
[ -f /tmp/bg/done ] && { cat /tmp/bg/done; exit 0; }
exit 3
