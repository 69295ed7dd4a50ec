"""One-off: the GFLOPs validate.py would have written for the device's DEQ base row (that call ran --no-flops).

validate.py's own counter (``validate._gflops``) on the same first 64 test images, the model built as validated
there (``f_max_iter=30``); writes RESULTS with ``.with_gflops.json`` for ``.json``. From the repository root:

    python results/device/2026-11-29/add_gflops.py RUN_DIR RESULTS.json
"""
import json
import sys

import timm
import torch
from timm.data import resolve_input_data_config

import validate
from wt_zoo import data as wt_data, training as wt_training

run_dir, results_path = sys.argv[1:3]
model = timm.create_model('deq_resnet_base', num_classes=10, f_max_iter=30)
wt_training.load_model_weights(model, f'{run_dir}/model.safetensors', use_ema=False)
model.eval()
data_config = resolve_input_data_config(model, args={})
loader = wt_data.create_eval_loader(wt_data.DataSpec(dataset='cifar10'), 'test', data_config, 256, torch.device('cpu'))
first_batch = next(iter(loader))[0][:64]
rows = json.load(open(results_path))
rows[0].update(validate._gflops(model, tuple(data_config['input_size']), first_batch))
print(rows[0])
json.dump(rows, open(results_path.replace('.json', '.with_gflops.json'), 'w'), indent=2)
