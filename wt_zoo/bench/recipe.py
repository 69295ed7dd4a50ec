"""One short, fixed CIFAR-10 training recipe for ``stability`` and ``sweep``, built on the project's loop.

Data: a stratified subset of the CIFAR-10 training split, minus a held-out part (the same
held-out images for every run, chosen by ``held_out_seed``); accuracy is measured on that
held-out part, never on the test split. Batches come from :class:`wt_zoo.data.DeviceImageLoader`
(crop + flip on the device); the steps are :func:`wt_zoo.training.train_one_epoch`, which stops a
run with ``NonFiniteLossError`` when its loss turns NaN/Inf. SGD (Nesterov, timm's ``sgd``) with
a linear warm-up and cosine decay (timm's ``CosineLRScheduler``, stepped every update), label
smoothing.

Each epoch is cut into segments so that a curve (loss, DEQ solver iterations) has several
points even for a one-epoch run; a segment is a slice of the epoch's one batch iterator, so the
data order is exactly that of an uncut epoch.
"""
import math
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
import torch
from torch import nn

from ..data import DeviceImageLoader, ImageArrays, load_split_arrays
from ..models.implicit_resnet import CIFAR10_MEAN, CIFAR10_STD
from ..training import DistContext, NonFiniteLossError, evaluate, mean_solver_steps, seed_everything, train_one_epoch

__all__ = ['Recipe', 'CifarSubsets', 'load_cifar10_subsets', 'train_short', 'add_recipe_arguments', 'fill_defaults',
           'recipe_from_args', 'subsets_from_args']


@dataclass
class Recipe:
    """The fixed short recipe; every field is a command-line flag of stability and sweep."""
    epochs: int = 2
    batch_size: int = 128
    lr: float = 0.15
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.1
    smoothing: float = 0.1
    segments_per_epoch: int = 4
    eval_batch_size: int = 256


@dataclass
class CifarSubsets:
    """Training subset and held-out images, decoded once and shared by all runs."""
    train: ImageArrays
    held_out: ImageArrays
    probe: torch.Tensor  # normalised held-out images on which DEQ solver iterations are tracked


def load_cifar10_subsets(train_subset: int, held_out: int, eval_subset: Optional[int] = None, probe: int = 256,
                         held_out_seed: int = 42, data_dir=None, cache_dir=None) -> CifarSubsets:
    """``train_subset`` training images from the training split less ``held_out`` held-out ones (``eval_subset``
    of which are evaluated), stratified and seeded; no test image is touched."""
    common = dict(data_dir=data_dir, cache_dir=cache_dir, val_split_size=held_out, val_split_seed=held_out_seed)
    train = load_split_arrays('cifar10', 'train', subset=train_subset, subset_seed=held_out_seed + 1, **common)
    val = load_split_arrays('cifar10', 'val', subset=eval_subset, subset_seed=held_out_seed + 2, **common)
    images = torch.from_numpy(val.images[:probe]).permute(0, 3, 1, 2).float().div(255)
    mean = torch.tensor(CIFAR10_MEAN).view(1, -1, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, -1, 1, 1)
    return CifarSubsets(train, val, ((images - mean) / std).contiguous())


class _Segment:
    """``steps`` batches pulled from a shared epoch iterator: a loader for train_one_epoch."""

    def __init__(self, iterator: Iterator, steps: int):
        self.iterator, self.steps = iterator, steps
        self.yielded = 0  # batches handed out so far: the one in flight when a step fails

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            self.yielded += 1
            yield next(self.iterator)


def _segment_lengths(steps: int, segments: int) -> List[int]:
    segments = max(1, min(segments, steps))
    edges = np.linspace(0, steps, segments + 1).round().astype(int)
    return [int(b - a) for a, b in zip(edges[:-1], edges[1:])]


@torch.no_grad()
def probe_solver(model: nn.Module, probe: torch.Tensor) -> Dict[str, float]:
    """A DEQ's mean solver iterations and worst residual over stages on the fixed probe batch (eval mode)."""
    was_training = model.training
    model.eval()
    model(probe)
    stats = model.solver_stats
    model.train(was_training)
    return dict(probe_nstep=float(np.mean([s['nstep'] for s in stats.values()])),
                probe_rel_residual=float(max(s['rel_residual'] for s in stats.values())))


def train_short(make_model: Callable[[], nn.Module], data: CifarSubsets, recipe: Recipe, seed: int,
                device: str = 'cpu', on_segment: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Train a fresh model with the recipe; returns the outcome, final held-out metrics and the curve.

    ``status`` is ``'ok'`` or ``'diverged'`` (non-finite loss, or a DEQ solver returning non-finite
    values); a diverged run keeps the curve up to where it stopped and says where in ``diverged_at``.
    """
    seed_everything(seed)
    model = make_model().to(device)
    ctx = DistContext(device=torch.device(device))
    train_loader = DeviceImageLoader(data.train, recipe.batch_size, CIFAR10_MEAN, CIFAR10_STD, device,
                                     is_training=True, seed=seed)
    eval_loader = DeviceImageLoader(data.held_out, recipe.eval_batch_size, CIFAR10_MEAN, CIFAR10_STD, device)
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler
    optimizer = create_optimizer_v2(model, opt='sgd', lr=recipe.lr, weight_decay=recipe.weight_decay,
                                    momentum=recipe.momentum)
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * recipe.epochs
    warmup = int(round(recipe.warmup_fraction * total_steps))
    scheduler = CosineLRScheduler(optimizer, t_initial=max(1, total_steps - warmup), warmup_t=warmup,
                                  warmup_lr_init=recipe.lr * 0.01, warmup_prefix=True, t_in_epochs=False)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.smoothing)
    is_deq = hasattr(model, 'solver_stats')
    probe = data.probe.to(device)

    result: Dict[str, Any] = dict(status='ok', diverged_at=None, error=None)
    curve: List[Dict[str, Any]] = []
    num_updates = 0
    segment: Optional[_Segment] = None
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='DEQ solver did not reach')
        try:
            if is_deq:
                curve.append(dict(epoch=0, step=0, **probe_solver(model, probe)))
            for epoch in range(recipe.epochs):
                train_loader.set_epoch(epoch)
                iterator = iter(train_loader)
                for steps in _segment_lengths(steps_per_epoch, recipe.segments_per_epoch):
                    segment = _Segment(iterator, steps)
                    metrics, num_updates = train_one_epoch(
                        model, segment, optimizer, loss_fn, epoch=epoch, ctx=ctx,
                        scheduler=scheduler, num_updates=num_updates, log_interval=max(1, min(steps, 10)),
                        progress=False)
                    segment = None  # a failure from here on (the probe) happened after update num_updates
                    point = dict(epoch=epoch, step=num_updates, train_loss=metrics['loss'], train_top1=metrics['top1'],
                                 train_img_s=metrics['images_per_s'], current_lr=optimizer.param_groups[0]['lr'])
                    if 'solver_nstep' in metrics:
                        point['train_nstep'] = metrics['solver_nstep']
                    if is_deq:
                        point.update(probe_solver(model, probe))
                    curve.append(point)
                    if on_segment:
                        on_segment(point)
        # diverged_at: the updates completed when non-finite values first showed
        except NonFiniteLossError as e:  # e.step is the 0-based step within the segment
            result.update(status='diverged', error=str(e).split(' at epoch')[0], diverged_at=num_updates + e.step)
        except FloatingPointError as e:  # a DEQ solve returned NaN/Inf on the batch in flight (or on the probe)
            result.update(status='diverged', error=str(e).split(';')[0],
                          diverged_at=num_updates + (segment.yielded - 1 if segment else 0))
    result['train_seconds'] = time.perf_counter() - started
    result['steps_done'] = num_updates
    result['train_images'] = len(data.train)

    if result['status'] == 'ok':
        nsteps: List[float] = []
        hook = model.register_forward_hook(lambda m, i, o: nsteps.append(mean_solver_steps(m))) if is_deq else None
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='DEQ solver did not reach')
            try:
                metrics = evaluate(model, eval_loader, ctx)
            except FloatingPointError as e:
                result.update(status='diverged', error=str(e).split(';')[0], diverged_at=num_updates)
                metrics = None
        if hook is not None:
            hook.remove()
        if metrics is not None:
            if not math.isfinite(metrics['loss']):
                result.update(status='diverged', error='non-finite held-out loss', diverged_at=num_updates)
            result.update(held_out_top1=metrics['top1'], held_out_loss=metrics['loss'],
                          held_out_images=metrics['samples'])
            if nsteps:
                result['held_out_nstep'] = float(np.mean(nsteps))
    last_train = [p for p in curve if 'train_loss' in p]
    if last_train:
        result['final_train_loss'] = last_train[-1]['train_loss']
    result['curve'] = curve
    result['recipe'] = asdict(recipe)
    return result


# ----------------------------------------------------------------------------------------------
# Command-line flags shared by stability and sweep


def add_recipe_arguments(parser, cpu_defaults: Dict[str, Any], cuda_defaults: Dict[str, Any]) -> None:
    """Recipe and data flags; those left out take ``cpu_defaults``, or ``cuda_defaults`` with --device cuda."""
    def default(key):
        return f"(default: {cpu_defaults[key]} on CPU, {cuda_defaults[key]} with --device cuda)"
    parser.add_argument('--device', default='cpu', help='cpu or cuda (default: %(default)s); cuda grows the defaults')
    parser.add_argument('--epochs', type=int, default=None, help='epochs of the short recipe ' + default('epochs'))
    parser.add_argument('--train-subset', type=int, default=None,
                        help='training images, a stratified subset of the training split less the held-out part '
                             + default('train_subset'))
    parser.add_argument('--held-out', type=int, default=5000,
                        help='images held out from the training split for accuracy (default: %(default)s)')
    parser.add_argument('--eval-subset', type=int, default=None,
                        help='how many held-out images to evaluate ' + default('eval_subset'))
    parser.add_argument('--held-out-seed', type=int, default=42, help='seed of the held-out split (default: %(default)s)')
    parser.add_argument('--batch-size', type=int, default=128, help='training batch size (default: %(default)s)')
    parser.add_argument('--momentum', type=float, default=0.9)
    parser.add_argument('--weight-decay', type=float, default=5e-4)
    parser.add_argument('--warmup-fraction', type=float, default=0.1, help='share of steps in linear warm-up')
    parser.add_argument('--smoothing', type=float, default=0.1, help='label smoothing')
    parser.add_argument('--segments-per-epoch', type=int, default=4,
                        help='curve points per epoch (loss, DEQ solver iterations; default: %(default)s)')
    parser.add_argument('--data-dir', default=None, help='CIFAR-10 folder (default: the usual places, see wt_zoo.data)')
    parser.add_argument('--data-cache', default=None, help='decoded-image cache folder')
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: torch.get_num_threads())')
    parser.add_argument('--resume', action='store_true',
                        help='keep the finished runs already in --out and run only the missing ones')


def fill_defaults(args, cpu_defaults: Dict[str, Any], cuda_defaults: Dict[str, Any]) -> None:
    """Fill flags left at None from the CPU or CUDA defaults."""
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise SystemExit(f'--device {args.device}: CUDA is not available on this machine')
    if args.threads:
        torch.set_num_threads(args.threads)
    defaults = cuda_defaults if args.device.startswith('cuda') else cpu_defaults
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def recipe_from_args(args, lr: Optional[float] = None) -> Recipe:
    return Recipe(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr if lr is None else lr,
                  momentum=args.momentum, weight_decay=args.weight_decay, warmup_fraction=args.warmup_fraction,
                  smoothing=args.smoothing, segments_per_epoch=args.segments_per_epoch)


def subsets_from_args(args, probe: int = 256) -> CifarSubsets:
    return load_cifar10_subsets(args.train_subset, args.held_out, args.eval_subset, probe=probe,
                                held_out_seed=args.held_out_seed, data_dir=args.data_dir, cache_dir=args.data_cache)
