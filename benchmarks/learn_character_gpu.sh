#!/usr/bin/env bash
# Issue 30's character rerun on one GPU, the `full` variant on the committed VAE and text encoder:
# Wan's shift 5 against shift 1 (training and sampling) at the same steps, both trained at once on
# one prepared data set. Arms are "s<shift>_<steps>" (ARMS, default the two below). Why these two:
# the CPU test at dim 128 / 4 blocks (benchmarks/results/learn/character_shift_cpu.md) drew the
# character at chance in both shifts, so it could not test the mechanism, while shift 1 cost scene
# learning there (caption following and SCA lower); the committed ablation already holds shift 5 at
# 1,500 steps (learn.md: named_character 0.094), so the informative pair is the two shifts at more
# steps, at the size where the scenes are learned:
#   s5_4000  - shift 5, 4,000 steps (the baseline, longer: is it just too few steps?)
#   s1_4000  - shift 1, 4,000 steps (50% of the draws at σ < 0.5 instead of 17%: does the
#              character come, and what does it cost the scenes?)
# Budget ≤ 8 min wall on one H100: ~1.5 min prepare and start-up, ≤ TRAIN_SECONDS (300) of training
# per arm (a safety stop: the summary's `steps` shows it if it cut the arms short; at the 4-variant
# ablation's 86 ms a step 4,000 steps take 344 s, two arms at once should be faster), ~30 s
# sampling and scoring. Each arm writes $OUT/<arm>/full.json (python -m multishot.learn: SCA,
# caption following, named_character and its colour / shape / texture, character_consistency, ...
# on 64 fresh prompts) and its DiT; diagnose one on the CPU afterwards with
#   python benchmarks/learn_character.py --dit $OUT/<arm>/full/dit.safetensors --encoders $OUT/data \
#     --shift <5 or 1> --out benchmarks/results/learn/character_diagnosis_<arm>_cpu.json
# Needs: `python3 -m multishot.learn` importable from /tmp (on the device: `source .jcarry/model_env.sh`
# first); R = this checkout (default: the current folder); OUT = the output folder.
set -euo pipefail
R=${R:-$PWD}
DEVICE=${DEVICE:-cuda} FILMS=${FILMS:-6000} EVAL=${EVAL:-64}  # CPU check: FILMS=24 EVAL=2 DEVICE=cpu STEPS=3 BATCH=4
ARMS=${ARMS:-s5_4000 s1_4000}
: "${OUT:?set OUT}"
OUT=$(realpath -m "$OUT")
cd /tmp   # not the checkout: on the device its multishot/ folder alone is not the package (the shim is)
mkdir -p "$OUT/data"
# the committed VAE as it is (0 steps: its latent mean / std re-measured on the training films)
python3 -m multishot.learn prepare --out "$OUT/data" --device "$DEVICE" --train-films "$FILMS" \
  --vae-init "$R/checkpoints/learn/vae" --vae-steps 0 --probe-films 8 --eval-films 8 > "$OUT/prepare.log" 2>&1
status=0
n=0
for arm in $ARMS; do
  mkdir -p "$OUT/$arm"
  for f in train_data.pt prepare.json vae text_encoder; do ln -sfn "$OUT/data/$f" "$OUT/$arm/$f"; done
  sh=${arm%%_*}; steps=${arm#*_}
  python3 -m multishot.learn variant --out "$OUT/$arm" --variant full --device "$DEVICE" \
    --steps "${STEPS:-$steps}" --batch "${BATCH:-32}" --shift "${sh#s}" --eval-films "$EVAL" --sample-steps 20 \
    --train-seconds "${TRAIN_SECONDS:-300}" --concurrent "$(wc -w <<< "$ARMS")" > "$OUT/$arm.log" 2>&1 &
  n=$((n + 1))
done
for _ in $(seq "$n"); do wait -n || status=1; done
for arm in $ARMS; do
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], {k: r[k] for k in ('sca', 'caption_following', 'named_character', 'named_colour', 'named_shape', 'named_texture', 'character_consistency', 'final_loss', 'steps', 'train_s', 'generate_s', 'shift', 'device')})" \
    "$OUT/$arm/full.json" "$arm" || status=1
done | tee "$OUT/character_gpu_summary.txt"
exit $status
