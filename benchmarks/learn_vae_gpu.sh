#!/usr/bin/env bash
# Issue 30's world VAE on one GPU (~6 min wall): three recipes trained at once for the same wall
# time (SECS), each measured where it ran (`python -m multishot.learn vae`: PSNR, read-back,
# multishot.learn.vae_ceiling and second_half on the 64 evaluation prompts' ground truth):
#   whole  - the committed VAE continued on whole 33-frame films (the recipe change)
#   clip17 - the committed VAE continued on 17-frame clips, batch 32 (same pixels a step: the control)
#   fresh24 - a new VAE of base width 24 (7.5 MB) on whole films (capacity / init)
# The one whose decoded held-out films read back the most characters right
# (`reconstruction_character_accuracy` on the probe films, not the evaluation prompts; PSNR breaks
# a tie) is copied to $OUT/vae. Chosen before any GPU recipe ran, after the CPU diagnosis
# (benchmarks/results/learn/consistency_diagnosis_cpu.md): PSNR is dominated by the backgrounds,
# while every character score of the issue is capped by what the decoder keeps of the character;
# the report of all three is $OUT/vae_ceiling_gpu.{json,md}.
# Needs: `python3 -m multishot.learn` importable from /tmp (torch, diffusers, pydantic, pyyaml,
# scipy, numpy); R = this checkout (default: the current folder); OUT = the output folder.
set -euo pipefail
R=${R:-$PWD}
SECS=${SECS:-220} DEVICE=${DEVICE:-cuda} FILMS=${FILMS:-3000} PROBE=${PROBE:-64}  # CPU check: small ones
: "${OUT:?set OUT}"
mkdir -p "$OUT"
cd /tmp
rm -rf /tmp/vae_whole /tmp/vae_clip17 /tmp/vae_fresh24
common=(--device "$DEVICE" --train-films "$FILMS" --vae-steps 100000 --vae-seconds "$SECS"
        --probe-films "$PROBE" --eval-films "$PROBE" --workers 5)
init=(--vae-init "$R/checkpoints/learn/vae" --vae-lr 5e-4)
python3 -m multishot.learn vae --out /tmp/vae_whole "${common[@]}" "${init[@]}" --vae-batch 16 \
  > /tmp/vae_whole.log 2>&1 &
python3 -m multishot.learn vae --out /tmp/vae_clip17 "${common[@]}" "${init[@]}" --vae-batch 32 \
  --vae-clip 17 > /tmp/vae_clip17.log 2>&1 &
python3 -m multishot.learn vae --out /tmp/vae_fresh24 "${common[@]}" --vae-base-dim 24 --vae-lr 1e-3 \
  --vae-batch 16 > /tmp/vae_fresh24.log 2>&1 &
status=0
wait -n || status=1; wait -n || status=1; wait -n || status=1
for arm in whole clip17 fresh24; do
  echo "== $arm"; grep -v -i warn "/tmp/vae_$arm.log" | tail -8 || true
done > "$OUT/vae_gpu_log.txt"
cat "$OUT/vae_gpu_log.txt"
records=$(ls /tmp/vae_*/vae.json)
python3 "$R/benchmarks/learn_vae.py" --records $records --out "$OUT/vae_ceiling_gpu.json" > /dev/null
best=$(python3 -c "import json,sys; r={p: json.load(open(p)) for p in sys.argv[1:]}; print(max(r, key=lambda p: (r[p]['reconstruction_character_accuracy'], r[p]['psnr_db'])))" $records)
mkdir -p "$OUT/vae" && cp "$(dirname "$best")"/vae/* "$OUT/vae/"
echo "kept $(dirname "$best")/vae" | tee -a "$OUT/vae_gpu_log.txt"
exit $status
