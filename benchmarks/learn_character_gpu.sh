#!/usr/bin/env bash
# Issue 30's character rerun on one GPU (~12 min wall, see benchmarks/results/learn/
# character_diagnosis_cpu.md): the `full` variant on the committed VAE and text encoder, four arms
# trained at once on one prepared data set:
#   s5_1500  - Wan's shift 5, 1,500 steps (the ablation's setting: the baseline)
#   s5_6000  - shift 5, 6,000 steps (too few steps?)
#   s1_1500  - shift 1 (training and sampling), 1,500 steps (too few draws at σ < 0.5?)
#   s1_6000  - shift 1, 6,000 steps
# Each arm writes $OUT/<arm>/full.json (python -m multishot.learn: SCA, caption following,
# named_character, character_consistency, ... on 64 fresh prompts) and its DiT; diagnose each on
# the CPU afterwards with
#   python benchmarks/learn_character.py --dit $OUT/<arm>/full/dit.safetensors --encoders $OUT/data \
#     --shift <5 or 1> --out benchmarks/results/learn/character_diagnosis_<arm>_cpu.json
# Needs: `python3 -m multishot.learn` importable; R = this checkout (default: the current folder).
set -euo pipefail
R=${R:-$PWD}
DEVICE=${DEVICE:-cuda} FILMS=${FILMS:-6000} EVAL=${EVAL:-64}  # CPU check: FILMS=24 EVAL=2 DEVICE=cpu STEPS=3 BATCH=4
: "${OUT:?set OUT}"
mkdir -p "$OUT/data"
# the committed VAE as it is (0 steps: its latent mean / std re-measured on the training films)
python3 -m multishot.learn prepare --out "$OUT/data" --device "$DEVICE" --train-films "$FILMS" \
  --vae-init "$R/checkpoints/learn/vae" --vae-steps 0 --probe-films 8 --eval-films 8 > "$OUT/prepare.log" 2>&1
status=0
for arm in s5_1500 s5_6000 s1_1500 s1_6000; do
  mkdir -p "$OUT/$arm"
  for f in train_data.pt prepare.json vae text_encoder; do ln -sfn "$OUT/data/$f" "$OUT/$arm/$f"; done
  sh=${arm%%_*}; steps=${arm#*_}
  python3 -m multishot.learn variant --out "$OUT/$arm" --variant full --device "$DEVICE" \
    --steps "${STEPS:-$steps}" --batch "${BATCH:-32}" --shift "${sh#s}" --eval-films "$EVAL" --sample-steps 20 \
    --concurrent 4 > "$OUT/$arm.log" 2>&1 &
done
for _ in 1 2 3 4; do wait -n || status=1; done
for arm in s5_1500 s5_6000 s1_1500 s1_6000; do
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], {k: r[k] for k in ('sca', 'caption_following', 'named_character', 'character_consistency', 'final_loss', 'steps', 'train_s', 'shift', 'device')})" \
    "$OUT/$arm/full.json" "$arm" || status=1
done | tee "$OUT/character_gpu_summary.txt"
exit $status
