#!/usr/bin/env bash
# Start a command on the GPU machine that may outlive one device call (the per-call limit is
# 600 s; a process in its own session runs on while the machine stays warm, device README):
#   bash .jcarry/bg.sh 'source .jcarry/model_env.sh && cd /tmp && python3 $R/benchmarks/causal.py --part long --minutes 10 --overlap --out $OUT/causal_long_h100.json'
# It runs from a copy of the repository in /tmp/repo (R), with OUT=/tmp/bg; its output goes to
# /tmp/bg/console.txt and its exit status to /tmp/bg/done. Follow it with poll.sh, call after
# call, back to back (the machine goes back 30 s after a call returns).
set -uo pipefail
[ -f /tmp/bg/console.txt ] && [ ! -f /tmp/bg/done ] && { echo "bg.sh: a command is still running" >&2; exit 2; }
rm -rf /tmp/repo /tmp/bg && mkdir -p /tmp/bg && cp -a . /tmp/repo && cd /tmp/repo
R=/tmp/repo OUT=/tmp/bg setsid nohup bash -c 'bash -c "$0"; echo "rc=$?" > /tmp/bg/done' "$1" \
  > /tmp/bg/console.txt 2>&1 < /dev/null &
sleep ${2:-10}; tail -5 /tmp/bg/console.txt
