"""nnU-Net v2's sliding-window inference timed in-process, for scripts.benchmark (run with nnU-Net's own python).

    python time_inference.py PLANS_DIR IMAGE --mirroring 1 --repeats 3 --threads 2

PLANS_DIR is nnU-Net's preprocessed dataset folder (nnUNetPlans.json, dataset.json). The network is built from
the 3d_fullres plan with seeded random weights: inference time does not depend on the weights. The case is
preprocessed once by nnU-Net's own preprocessor; then `predict_sliding_window_return_logits` (tile step 0.5,
Gaussian weighting, mirroring over all axes or none) is timed `repeats` times. Prints one JSON line.
"""

import argparse
import json
import os
import statistics
import time

import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("plans_dir")
    parser.add_argument("image")
    parser.add_argument("--mirroring", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    plans = PlansManager(os.path.join(args.plans_dir, "nnUNetPlans.json"))
    config = plans.get_configuration("3d_fullres")
    with open(os.path.join(args.plans_dir, "dataset.json")) as f:
        dataset_json = json.load(f)
    labels = plans.get_label_manager(dataset_json)
    network = get_network_from_plans(config.network_arch_class_name, config.network_arch_init_kwargs,
                                     config.network_arch_init_kwargs_req_import,
                                     determine_num_input_channels(plans, config, dataset_json),
                                     labels.num_segmentation_heads, allow_init=True, deep_supervision=False)
    network.eval()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=bool(args.mirroring),
                                perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.manual_initialization(network, plans, config, [network.state_dict()], dataset_json,
                                    "nnUNetTrainer", (0, 1, 2))
    start = time.perf_counter()
    data, _, _ = config.preprocessor_class(verbose=False).run_case([args.image], None, plans, config, dataset_json)
    preprocessing = time.perf_counter() - start
    torch.set_num_threads(args.threads)  # nnU-Net's predictor may have changed it
    data = torch.from_numpy(data)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        logits = predictor.predict_sliding_window_return_logits(data)
        times.append(time.perf_counter() - start)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        predictor.predict_sliding_window_return_logits(data)
    flops = int(counter.get_total_flops())
    print(json.dumps({"system": "nnunetv2", "mirroring": bool(args.mirroring), "seconds": times,
                      "flops": flops, "gflops": flops / statistics.median(times) / 1e9,
                      "median_seconds": statistics.median(times), "preprocessing_seconds": preprocessing,
                      "input_shape": list(data.shape), "output_shape": list(logits.shape),
                      "threads": torch.get_num_threads(),
                      # nnU-Net mirrors each tile, one copy after another, in float32 on the CPU
                      "settings": {"tile_mirroring": True, "precision": "float32", "mirror_batch": 1}}))


if __name__ == "__main__":
    main()
