#!/usr/bin/env bash
# The whole nnU-Net method on the demo data: plan the 2D, 3D full-res and 3D cascade bundles, cross-validate
# each on all 5 folds (short schedule), choose the best configuration or pair and its post-processing
# (scripts.find_best), then score on imagesTs, with the evaluate workflow, the chosen ensemble and every single
# fold model of every configuration.
#   bash scripts/run_cv_demo.sh            (EPOCHS, ITERATIONS, MIRRORING and WORK override the defaults)
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
EPOCHS="${EPOCHS:-2}"
ITERATIONS="${ITERATIONS:-40}"
MIRRORING="${MIRRORING:-False}"
WORK="${WORK:-runs/cv_demo}"
D="$WORK/data"; E="$WORK/ensemble"
start=$(date +%s)
step() { echo; echo "== $1 ($(( $(date +%s) - start )) s)"; }
quiet() { grep --line-buffered -v " - INFO - \|nvImageCodec\|NvImgCodec\|parsing config_file" || true; }

step "demo data"
"$PY" -m scripts.make_demo_data --output_dir "$D"
for name in nnunet_2d nnunet_3d_fullres nnunet_3d_cascade; do
  step "plan $name"
  # the demo images are small enough for the full-res patch to cover them: force the cascade's low-res stage
  "$PY" -m scripts.plan --dataset_dir "$D" --template "bundles/$name" --output_dir "$WORK/$name" \
    $([ "$name" = nnunet_3d_cascade ] && echo --force_lowres) | grep "configuration\|lowres"
done
for name in nnunet_2d nnunet_3d_fullres nnunet_3d_cascade; do
  step "cross-validate $name (5 folds x $EPOCHS epochs x $ITERATIONS iterations)"
  "$PY" -m scripts.cross_validate --bundle_root "$WORK/$name" --dataset_dir "$D" --folds 0,1,2,3,4 \
    --train#trainer#max_epochs "$EPOCHS" --iterations_per_epoch "$ITERATIONS" --val_interval 0 \
    --use_mirroring "$MIRRORING" 2>&1 | quiet | grep -v "^epoch\|^saved\|resuming"
done
step "find_best"
"$PY" -m scripts.find_best --bundles "$WORK/nnunet_2d,$WORK/nnunet_3d_fullres,$WORK/nnunet_3d_cascade" \
  --dataset_dir "$D" --output_dir "$E"
step "evaluate the chosen ensemble on imagesTs"
"$PY" -m monai.bundle run evaluate --config_file "$E/configs/evaluate.yaml" --dataset_dir "$D" \
  --output_dir "$WORK/eval/ensemble" --member_overrides "{'use_mirroring': $MIRRORING}" 2>&1 | quiet
for name in nnunet_2d nnunet_3d_fullres nnunet_3d_cascade; do
  for fold in 0 1 2 3 4; do
    step "evaluate $name fold $fold alone"
    "$PY" -m monai.bundle run evaluate --config_file "$WORK/$name/configs/evaluate.yaml" --bundle_root "$WORK/$name" \
      --dataset_dir "$D" --folds "$fold" --use_mirroring "$MIRRORING" --output_dir "$WORK/eval/${name}_fold_$fold" 2>&1 | quiet
  done
done
echo
"$PY" -m scripts.compare_evaluations --eval_dir "$WORK/eval" --reference ensemble
echo "done in $(( $(date +%s) - start )) s"
