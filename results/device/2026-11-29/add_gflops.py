"""One-off: the GFLOPs validate.py would have written for the device's DEQ base row (it ran with --no-flops)."""
import json, sys, argparse
sys.argv = ['validate.py']
sys.path.insert(0, '.')
import torch, validate, wt_zoo
from wt_zoo import data as wt_data, training as wt_training
from timm.data import resolve_input_data_config
import timm
run = '/work/device-base/base/train/deq_resnet_base.c10'
model = timm.create_model('deq_resnet_base', num_classes=10, f_max_iter=30)
wt_training.load_model_weights(model, run + '/model.safetensors', use_ema=False)
model.eval()
cfg = resolve_input_data_config(model, args={})
print(cfg)
spec = wt_data.DataSpec(dataset='cifar10')
loader = wt_data.create_eval_loader(spec, 'test', cfg, 256, torch.device('cpu'))
first_batch = next(iter(loader))[0][:64]
extra = validate._gflops(model, tuple(cfg['input_size']), first_batch)
print(extra)
path = '/work/device-base/base/results/deq_resnet_base.c10.f_max_iter30.json'
rows = json.load(open(path))
rows[0].update(extra)
json.dump(rows, open(path.replace('.json', '.with_gflops.json'), 'w'), indent=2)
