#!/usr/bin/env bash
# The checks that need a GPU, for a machine that has one and whose python (PY, default python3) already holds a
# CUDA build of torch and requirements.txt's other packages: multi-process training through
# multi_gpu_train.yaml with NCCL (one process per visible GPU), the same command resumed to more epochs, and the
# kill-and-resume tests, which then train on the GPU. CI has no GPU and never runs this.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PY:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
WORK="$(mktemp -d)"; D="$WORK/data"; W="$WORK/nnunet_3d_fullres"
GPUS="$("$PY" -c 'import torch; print(torch.cuda.device_count())')"
[ "$GPUS" -gt 0 ] || { echo "error: torch sees no GPU" >&2; exit 1; }
"$PY" -c 'import torch; print(torch.__version__, [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])'
"$PY" -m scripts.make_demo_data --output_dir "$D" --n_train 6 --n_test 1 || exit 1
"$PY" -m scripts.plan --dataset_dir "$D" --template bundles/nnunet_3d_fullres --output_dir "$W" || exit 1
train() {
  "$PY" -m torch.distributed.run --nproc_per_node "$GPUS" -m monai.bundle run training \
    --config_file "['$W/configs/train.yaml','$W/configs/multi_gpu_train.yaml']" --bundle_root "$W" --dataset_dir "$D" \
    --train#trainer#max_epochs "$1" --iterations_per_epoch 10 --val_interval 1 2>&1 | grep -v " - INFO - "
  return "${PIPESTATUS[0]}"
}
echo "== NCCL training on $GPUS GPU(s), 3 epochs"; train 3 || exit 1
echo "== the same command, 5 epochs: resumes at epoch 3"; train 5 || exit 1
"$PY" - "$W" <<'PY' || exit 1
import json, sys
w = sys.argv[1]
epochs = [e["epoch"] for e in json.load(open(f"{w}/logs/progress.json"))]
assert epochs == [1, 2, 3, 4, 5], f"metric history not continuous: {epochs}"
ranks = json.load(open(f"{w}/logs/distributed.json"))["ranks"]
assert len({r["weights_sha256"] for r in ranks}) == 1, "ranks ended with different weights"
print(f"history continuous over epochs {epochs}; {len(ranks)} rank(s), one weights digest")
PY
echo "== kill-and-resume tests on the GPU"
"$PY" -m pytest -q -p no:cacheprovider tests/test_kill_and_resume.py
