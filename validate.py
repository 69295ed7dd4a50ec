#!/usr/bin/env python3
"""Evaluate one or many models: top-1, top-5, loss, images/s, parameters and fvcore GFLOPs per image.

    python validate.py --model wt_resnet_tiny --checkpoint output/train/RUN/model.safetensors
    python validate.py --model 'wt_resnet_*' --pretrained --results-file results.csv
    python validate.py --model hf-hub:ORG/NAME --dataset cifar10 --split test --results-file r.json

--results-file writes CSV or JSON (by the extension), one row per model, with the dataset, split,
device and input size next to the figures. --tta flip|flip-translate adds test-time-augmented figures
(tta_top1, tta_top5, tta_loss) beside the plain ones, which stay the plain pass's.
"""
import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Dict, List

import torch

from wt_zoo import data as wt_data
from wt_zoo import training as wt_training
from wt_zoo.tta import TTA_MODES, TTA_SHIFT, num_tta_views

_logger = logging.getLogger('validate')

_MODEL_ARG_KEYS = ('num_classes', 'in_chans', 'input_size', 'model_kwargs')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add('-c', '--config', default='', metavar='FILE', help='YAML file of defaults (keys = flag names)')
    add('--model', nargs='+', default=['wt_resnet_tiny'],
        help="model names, wildcards ('wt_resnet_*'), hf-hub:ORG/NAME or local-dir:PATH")
    add('--pretrained', action='store_true', help="weights from each model's pretrained cfg (the Hub)")
    add('--checkpoint', default='', help='weights file: .safetensors, or .pth/.pth.tar (loaded with weights_only=True)')
    add('--use-ema', action='store_true', help='the EMA weights of a train.py checkpoint')
    add('--num-classes', type=int, default=None, help="classes (default: the checkpoint's, else the dataset's)")
    add('--in-chans', type=int, default=None, help='input channels')
    add('--input-size', type=int, nargs=3, default=None, metavar=('C', 'H', 'W'), help='input size')
    add('--img-size', type=int, default=None, help='input image size (square)')
    add('--model-kwargs', nargs='*', default={}, action=wt_training.ParseKwargs, metavar='K=V', help='extra model arguments')
    add('--data-dir', default=None, help='dataset folder (default: WT_ZOO_<DATASET> env var or the built-in location)')
    add('--dataset', default='', help="cifar10, cifar100, fashion_mnist, '' (an image folder in --data-dir, as in "
        "timm) or a timm dataset")
    add('--dataset-download', action='store_true', help='download with torchvision if missing (needs internet)')
    add('--data-cache', default=None, help='folder for decoded-image caches (default ~/.cache/wt_zoo)')
    add('--split', default='test', help="'test', 'val' (held out from train; needs --val-split-size) or 'train'")
    add('--val-split-size', type=float, default=None, help='held-out part of the training split, as in train.py')
    add('--val-split-seed', type=int, default=42, help='seed of the held-out split, as in train.py')
    add('--eval-subset', type=int, default=None, help='evaluate on this many images only (stratified, seeded)')
    add('--class-map', default='', help='class map file for image folders')
    add('-b', '--batch-size', type=int, default=256, help='batch size')
    add('-j', '--workers', type=int, default=2, help='data loading workers (timm loader only)')
    add('--mean', type=float, nargs='+', default=None, help='override normalisation mean')
    add('--std', type=float, nargs='+', default=None, help='override normalisation std')
    add('--interpolation', default='', help='resize interpolation (timm loader)')
    add('--crop-pct', type=float, default=None, help='centre-crop fraction (timm loader)')
    add('--amp', action='store_true', help='mixed precision (bfloat16 on CPU)')
    add('--amp-dtype', default='float16', choices=['float16', 'bfloat16'], help='AMP dtype on CUDA')
    add('--channels-last', action='store_true', help='channels_last memory layout')
    add('--torchcompile', nargs='?', const='inductor', default=None, help='torch.compile with this backend')
    add('--device', default=None, help='cpu, cuda, cuda:1 (default: cuda if available)')
    add('--no-flops', action='store_true', help='skip the fvcore GFLOPs count')
    add('--results-file', default='', help='write results here: .csv or .json')
    add('--seed', type=int, default=0, help='seed (DEQ solvers and profiling use random tensors)')
    add('--tta', default='none', choices=list(TTA_MODES),
        help=f'test-time augmentation reported beside the plain figures: mean softmax over the image and its mirror '
        f'(flip), and each also shifted {TTA_SHIFT} px up/down/left/right with reflected borders (flip-translate)')
    return parser


def parse_args(argv=None):
    parser = build_parser()
    # a train.py recipe works too: its training-only keys are skipped
    args = wt_training.parse_args_with_config(parser, argv, skip_unknown_keys=True)
    if isinstance(args.model, str):  # a recipe names one model
        args.model = [args.model]
    if args.results_file and Path(args.results_file).suffix.lower() not in ('.csv', '.json'):
        parser.error(f'--results-file {args.results_file}: expected a .csv or .json extension')
    if args.tta not in TTA_MODES:  # a --config file's value skips argparse's choices
        parser.error(f'--tta: expected one of {", ".join(TTA_MODES)}, got {args.tta!r}')
    return args


def expand_model_names(patterns: List[str], pretrained: bool) -> List[str]:
    """Names as given; wildcards expanded over timm's registry (pretrained tags only with --pretrained)."""
    import timm
    import wt_zoo  # noqa: F401
    names: List[str] = []
    for pattern in patterns:
        if any(c in pattern for c in '*?[') and ':' not in pattern:
            matched = timm.list_models(pattern, pretrained=pretrained)
            if not matched:
                what = 'with published weights ' if pretrained else ''
                raise ValueError(f'no model {what}matches {pattern!r}; zoo models: '
                                 f'{", ".join(wt_zoo.list_zoo_models())}')
            names.extend(m for m in matched if m not in names)
        elif pattern not in names:
            names.append(pattern)
    return names


def checkpoint_model_args(path: str) -> Dict[str, object]:
    """num_classes / in_chans / input_size / model_kwargs recorded with a checkpoint (train.py's args, or
    the config.json that train.py writes beside model.safetensors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    if path.suffix == '.safetensors':
        config = path.parent / 'config.json'
        if not config.is_file():
            return {}
        cfg = json.loads(config.read_text())
        model_args = dict(cfg.get('model_args') or {})
        found = {'num_classes': cfg.get('num_classes')}
        if model_args.get('in_chans'):
            found['in_chans'] = model_args['in_chans']
        input_size = (cfg.get('pretrained_cfg') or {}).get('input_size')
        if input_size:
            found['input_size'] = list(input_size)
        extra = {k: v for k, v in model_args.items() if k not in ('num_classes', 'in_chans', 'global_pool')}
        if extra:
            found['model_kwargs'] = extra
        return {k: v for k, v in found.items() if v is not None}
    saved = (wt_training.load_checkpoint_file(path).get('args') or {})
    return {k: saved[k] for k in _MODEL_ARG_KEYS if saved.get(k)}


def _gflops(model, input_size, images) -> Dict[str, object]:
    """fvcore counts: the zoo's profile (DEQ iterations measured on real images) or a plain trace."""
    bare = wt_training.unwrap(model)
    if hasattr(bare, 'implicit_layers'):
        from wt_zoo.profile import profile_model
        row = profile_model(bare, input_size, images=images)
        return {k: v for k, v in row.items() if k in ('gflops', 'effective_gflops', 'deq_iterations')}
    from fvcore.nn import FlopCountAnalysis
    analysis = FlopCountAnalysis(bare.eval(), torch.zeros((1, *input_size), device=next(bare.parameters()).device))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return dict(gflops=float(analysis.total()) / 1e9)


def validate_one(name: str, args, ctx) -> Dict[str, object]:
    from timm.data import resolve_input_data_config
    margs = argparse.Namespace(**vars(args))
    margs.model = name
    if args.checkpoint:
        for key, value in checkpoint_model_args(args.checkpoint).items():
            if getattr(margs, key, None) in (None, {}, []):
                setattr(margs, key, value)
    spec = wt_data.DataSpec.from_args(margs)
    if margs.num_classes is None and not args.pretrained and ':' not in name:
        margs.num_classes = wt_data.dataset_num_classes(spec)
    wt_training.seed_everything(args.seed)
    model = wt_training.create_model_from_args(margs)
    if args.checkpoint:
        wt_training.load_model_weights(model, args.checkpoint, use_ema=args.use_ema)
    data_config = resolve_input_data_config(model, args={k: getattr(margs, k) for k in (
        'input_size', 'img_size', 'in_chans', 'mean', 'std', 'interpolation', 'crop_pct', 'model_kwargs')
        if getattr(margs, k, None)})
    model.to(ctx.device).eval()
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    loader = wt_data.create_eval_loader(spec, args.split, data_config, args.batch_size, ctx.device,
                                        channels_last=args.channels_last)
    run_model = torch.compile(model, backend=args.torchcompile) if args.torchcompile else model
    amp_dtype = None
    if args.amp:
        amp_dtype = torch.bfloat16 if ctx.device.type == 'cpu' or args.amp_dtype == 'bfloat16' else torch.float16
    metrics = wt_training.evaluate(run_model, loader, ctx, amp_dtype, progress=sys.stderr.isatty(), desc=name,
                                   tta=args.tta)
    input_size = tuple(data_config['input_size'])
    row = dict(
        model=name, checkpoint=args.checkpoint or ('pretrained' if args.pretrained else ''),
        top1=round(metrics['top1'], 4), top5=round(metrics['top5'], 4), loss=round(metrics['loss'], 6),
    )
    if args.tta != 'none':  # beside the plain figures, never instead of them
        row.update(tta=args.tta, tta_views=num_tta_views(args.tta), tta_top1=round(metrics['tta_top1'], 4),
                   tta_top5=round(metrics['tta_top5'], 4), tta_loss=round(metrics['tta_loss'], 6),
                   tta_images_per_s=round(metrics['tta_images_per_s'], 2))
    row.update(images_per_s=round(metrics['images_per_s'], 2), params=sum(p.numel() for p in model.parameters()))
    row.update({k: round(v, 6) for k, v in metrics.items() if k.startswith('solver_')})
    if not args.no_flops:
        first_batch = next(iter(loader))[0][:64]
        row.update(_gflops(model, input_size, first_batch))
    row.update(dataset=spec.name or spec.dataset, split=args.split, samples=metrics['samples'],
               device=str(ctx.device), hardware=wt_training.describe_hardware(ctx.device),
               input_size='x'.join(str(s) for s in input_size), batch_size=args.batch_size, amp=bool(args.amp))
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    from timm.utils import setup_default_logging
    setup_default_logging()
    try:
        ctx = wt_training.DistContext(device=torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu')))
        if ctx.device.type == 'cuda' and not torch.cuda.is_available():
            raise ValueError(f'--device {args.device}: CUDA is not available on this machine; use --device cpu')
        names = expand_model_names(args.model, args.pretrained)
        if args.checkpoint and len(names) > 1:
            raise ValueError(f'--checkpoint fits one model, but --model names {len(names)}: {", ".join(names)}')
        rows = []
        for name in names:
            row = validate_one(name, args, ctx)
            tta = (f' | {row["tta"]} TTA ({row["tta_views"]} views): top1 {row["tta_top1"]:.2f} top5 '
                   f'{row["tta_top5"]:.2f} loss {row["tta_loss"]:.4f} |' if 'tta' in row else '')
            _logger.info(f'{name}: top1 {row["top1"]:.2f} top5 {row["top5"]:.2f} loss {row["loss"]:.4f}{tta} '
                         f'{row["images_per_s"]:.0f} img/s, {row["params"] / 1e6:.3f}M params'
                         + (f', {row["gflops"]:.4f} GFLOPs' if 'gflops' in row else ''))
            rows.append(row)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f'error: {e}')
    if args.results_file:
        wt_training.write_results(args.results_file, rows)
        _logger.info(f'results written to {args.results_file}')
    else:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
