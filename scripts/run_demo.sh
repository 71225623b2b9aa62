#!/usr/bin/env bash
# The main job on the built-in demo data (the README's first quickstart command): set up the environment,
# write the synthetic dataset, plan, train briefly, infer, evaluate and export TorchScript; print the test Dice.
# Budget and folders can be changed: EPOCHS, ITERATIONS, VAL_INTERVAL, WORK (default runs/demo).
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
EPOCHS="${EPOCHS:-10}"
ITERATIONS="${ITERATIONS:-40}"
VAL_INTERVAL="${VAL_INTERVAL:-5}"
WORK="${WORK:-runs/demo}"
D="$WORK/data"; W="$WORK/nnunet_3d_fullres"; O="$WORK/predictions"
start=$(date +%s)
step() { echo; echo "== $1 ($(( $(date +%s) - start )) s)"; }
# hide MONAI's INFO log lines: show progress lines, results and errors
quiet() { grep --line-buffered -v " - INFO - \|nvImageCodec\|NvImgCodec" || true; }

step "demo data"
"$PY" -m scripts.make_demo_data --output_dir "$D"
step "plan"
"$PY" -m scripts.plan --dataset_dir "$D" --template bundles/nnunet_3d_fullres --output_dir "$W"
step "train ($EPOCHS epochs x $ITERATIONS iterations)"
"$PY" -m monai.bundle run training --config_file "$W/configs/train.yaml" --bundle_root "$W" --dataset_dir "$D" \
  --train#trainer#max_epochs "$EPOCHS" --iterations_per_epoch "$ITERATIONS" --val_interval "$VAL_INTERVAL" 2>&1 | quiet
step "inference on imagesTs"
"$PY" -m monai.bundle run inference --config_file "$W/configs/inference.yaml" --bundle_root "$W" --dataset_dir "$D" \
  --output_dir "$O" 2>&1 | quiet
step "evaluate against labelsTs"
"$PY" -m monai.bundle run evaluate --config_file "$W/configs/evaluate.yaml" --bundle_root "$W" --dataset_dir "$D" \
  --output_dir "$O" 2>&1 | quiet
step "TorchScript export"
"$PY" -m scripts.export --bundle_root "$W"
echo
"$PY" -c "import json,sys; m=json.load(open(sys.argv[1])); print(f\"mean test Dice: {m['mean_dice']:.4f}  per class: {({k: v['dice'] for k, v in m['per_class'].items()})}\")" "$O/metrics.json"
echo "done in $(( $(date +%s) - start )) s; bundle: $W, predictions and metrics: $O"
