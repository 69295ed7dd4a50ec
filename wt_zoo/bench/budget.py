"""budget: how many epochs twins can share within a device-time budget, from timed training steps.

Each recipe is set up as train.py would set it up (:class:`wt_zoo.trainer.TrainingRun`, fast path
chosen as the recipe asks), the first batches of an epoch are trained through the run's own epoch loop on copies
of the model, optimizer and EMA (:meth:`~wt_zoo.trainer.TrainingRun.seconds_per_epoch`), and the common
epoch count is the largest that fits the budget when the recipes run one after another:

    epochs = floor(minutes * 60 / sum_i(train_seconds_per_epoch_i * (1 + eval_share_i)))

where ``eval_share_i`` is the per-epoch evaluation (held-out images, twice with EMA) as a fraction
of the training epoch, counted as forward passes at a third of a training step each. Twins then
train the same number of epochs, as the checkpoints' recipes require; recipes run side by side on
one GPU finish no later than one after another. Prints one JSON object; ``--json`` also writes it.

    python -m wt_zoo.bench budget --minutes 3 configs/{wt,wtsm,deq}_resnet_small.c10.yaml --train-args="--device cuda"
"""
import gc
import json
import math
import shlex
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch

from ..training import atomic_write_text, describe_hardware
from .common import log

__all__ = ['add_arguments', 'run', 'plan_epochs']


def add_arguments(parser) -> None:
    parser.add_argument('configs', nargs='+', metavar='CONFIG.yaml',
                        help='train.py recipes that share the epochs; one named n times (variants of it) counts n times')
    parser.add_argument('--minutes', type=float, required=True,
                        help='device minutes for all the recipes together, as if run one after another')
    parser.add_argument('--min-epochs', type=int, default=1, help='fewest epochs worth training (else: error)')
    parser.add_argument('--max-epochs', type=int, default=None, help='cap on the epochs')
    parser.add_argument('--json', default=None, metavar='FILE', help='also write the plan here')
    parser.add_argument('--train-args', default='', metavar='"FLAGS"',
                        help='train.py flags for every recipe, one string: --train-args="--device cuda"')


def _eval_share(run) -> float:
    passes = 2 if run.args.model_ema else 1
    return passes * run.eval_loader.dataset_size / (3 * run.train_loader.dataset_size)


def machine_speed(device: torch.device) -> float:
    """fp32 matmul GFLOP/s where a run is planned: machines sold under one CPU name differ by up to 2x here, so
    minutes measured on two of them are compared only beside this."""
    from .efficiency import matmul_peak
    return round(matmul_peak(1024, device.type, torch.get_num_threads(), min_run_time=0.5)['gflops_2n3_per_s'], 1)


def measure(config: str, train_args: Sequence[str]) -> Dict[str, Any]:
    """Seconds per training epoch of one recipe on this machine, with the fast path it would choose."""
    from ..trainer import TrainingRun, parse_train_args
    args = parse_train_args(['--config', config, '--no-progress', *train_args])
    run = TrainingRun(args)
    try:
        seconds = run.seconds_per_epoch()
        return dict(config=config, model=args.model, train_seconds_per_epoch=seconds, eval_share=_eval_share(run),
                    steps_per_epoch=len(run.train_loader), amp=args.amp, channels_last=args.channels_last,
                    hardware=describe_hardware(run.ctx.device), matmul_gflops=machine_speed(run.ctx.device))
    finally:
        del run
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def plan_epochs(rows: List[Dict[str, Any]], minutes: float, min_epochs: int = 1, max_epochs=None) -> int:
    per_epoch = sum(r['train_seconds_per_epoch'] * (1 + r['eval_share']) for r in rows)
    epochs = math.floor(minutes * 60 / per_epoch)
    if max_epochs:
        epochs = min(epochs, max_epochs)
    if epochs < min_epochs:
        raise ValueError(f'{minutes} min fit {epochs} epoch(s) of these recipes ({per_epoch:.1f} s per epoch for all), '
                         f'fewer than --min-epochs {min_epochs}')
    return epochs


def run(args, argv) -> int:
    measured: Dict[str, Dict[str, Any]] = {}  # a recipe named n times counts n times, timed once
    for config in dict.fromkeys(args.configs):
        row = measured[config] = measure(config, shlex.split(args.train_args))
        log(f'{Path(config).name}: {row["train_seconds_per_epoch"]:.1f} s per training epoch '
            f'(amp {row["amp"]}, channels_last {row["channels_last"]}, {row["hardware"]})')
    rows = [measured[config] for config in args.configs]
    try:
        epochs = plan_epochs(rows, args.minutes, args.min_epochs, args.max_epochs)
    except ValueError as e:
        raise SystemExit(f'error: {e}')
    plan = dict(epochs=epochs, minutes=args.minutes, recipes=rows,
                command='python -m wt_zoo.bench budget ' + ' '.join(shlex.quote(a) for a in argv))
    text = json.dumps(plan, indent=2)
    if args.json:
        atomic_write_text(args.json, text + '\n')
    print(text)
    return 0
