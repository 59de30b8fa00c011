#!/bin/sh
# `make demo-train`: the whole loop once, on CPU, on the shards `make demo` wrote (README, step 3):
#   1. random tiny DiT, Wan VAE and UMT5 into out/random_models (skipped with RANDOM_MODELS=)
#   2. multishot train     tiny fine-tune → checkpoint + model.safetensors
#   3. multishot generate  a HoloCine prompt with the fine-tuned DiT → mp4 + JSON
#   4. multishot shards export  two real samples of the shard set
#   5. multishot eval      the generated video and the two real ones, one table + JSON
# Run from the repository root (the configs' paths are relative to it). With real weights: point
# the configs at the downloaded folders and set RANDOM_MODELS= (empty); see the README.
set -eu

MULTISHOT=${MULTISHOT:-multishot}
PYTHON=${PYTHON:-python}
TRAIN_CONFIG=${TRAIN_CONFIG:-configs/train/demo_cpu.yaml}
GENERATE_CONFIG=${GENERATE_CONFIG:-configs/generate/demo_cpu.yaml}
EVAL_CONFIG=${EVAL_CONFIG:-configs/eval/default.yaml}
SHARDS=${SHARDS:-out/demo}                 # the shard set the real samples come from
OUT=${OUT:-out/demo_train}                 # generated video, exported samples, eval report
RANDOM_MODELS=${RANDOM_MODELS-out/random_models}
# HoloCine's format; the tiny DiT reads 16 text tokens, so the captions are short (a longer prompt
# would lose its shot windows). Real Wan reads 512: "[global caption] ... This scene contains 3
# shots. [per shot caption] ... [shot cut] ... [shot cut] ..."
PROMPT=${PROMPT:-"[global caption] A rabbit. [per shot caption] Trees. [shot cut] The rabbit. [shot cut] It hops."}

if [ ! -d "$SHARDS" ]; then
    echo "demo-train: $SHARDS does not exist: run \`make demo\` first" >&2
    exit 2
fi

if [ -n "$RANDOM_MODELS" ]; then
    echo "== 1/5 random weights (nothing to download; the videos will be noise-like)"
    "$PYTHON" -m multishot.generate.random_models "$RANDOM_MODELS"
fi

echo "== 2/5 fine-tune: $MULTISHOT train --config $TRAIN_CONFIG"
"$MULTISHOT" train --config "$TRAIN_CONFIG"

echo "== 3/5 generate from the fine-tuned checkpoint"
"$MULTISHOT" generate --config "$GENERATE_CONFIG" --prompt "$PROMPT" -o "$OUT/generated/scene.mp4"

echo "== 4/5 export two real multi-shot samples (5 s bucket) to compare with"
rm -rf "$OUT/real"  # export refuses to overwrite a previous run's files
KEYS=$("$MULTISHOT" shards ls "$SHARDS" -q --where bucket=5s --where "num_shots>=2" --json |
       "$PYTHON" -c 'import json, sys; print(" ".join(json.loads(l)["key"] for l in sys.stdin.readlines()[:2]))')
if [ -z "$KEYS" ]; then
    echo "demo-train: $SHARDS has no 5 s sample with two or more shots to compare with" >&2
    exit 2
fi
for key in $KEYS; do
    "$MULTISHOT" shards export "$SHARDS" "$key" -q -o "$OUT/real"
done

echo "== 5/5 evaluate: the generated video and the real samples"
"$MULTISHOT" eval "$OUT/generated/scene.mp4" "$OUT/real" --config "$EVAL_CONFIG" --json "$OUT/eval.json"
echo "done: checkpoint in the train config's run.output_dir, video $OUT/generated/scene.mp4, report $OUT/eval.json"
