#!/usr/bin/env bash
# nnU-Net 3D full-res and the four papers' U-Nets on the demo data, one budget for all (scripts.compare): plan,
# train on all training cases, evaluate on imagesTs; writes WORK/compare/comparison.{md,json,png}.
#   bash scripts/run_compare_demo.sh       (EPOCHS, ITERATIONS, WORK and OVERRIDES override the defaults)
# Each paper network trains with its paper's recipe. The widths are scaled (feature_scale) so that each training
# fits 10 minutes on a 2-core CPU; OVERRIDES="{}" trains the papers' full widths.
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
EPOCHS="${EPOCHS:-10}"
ITERATIONS="${ITERATIONS:-40}"
WORK="${WORK:-runs/compare_demo}"
SCALED='{multires_unet: {feature_scale: 0.5}, nonlocal_unet: {feature_scale: 0.5}, residual_unet: {feature_scale: 0.25}}'
OVERRIDES="${OVERRIDES:-$SCALED}"
start=$(date +%s)
"$PY" -m scripts.make_demo_data --output_dir "$WORK/data"
"$PY" -m scripts.compare --dataset_dir "$WORK/data" --output_dir "$WORK/compare" \
  --templates nnunet_3d_fullres,attention_unet,multires_unet,nonlocal_unet,residual_unet \
  --epochs "$EPOCHS" --iterations_per_epoch "$ITERATIONS" --overrides "$OVERRIDES"
echo "done in $(( $(date +%s) - start )) s"
