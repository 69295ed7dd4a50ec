"""One training run as a library object, so that train.py and the benches drive the same code.

:class:`TrainingRun` takes train.py's flags (an ``argparse.Namespace``), builds the model, data,
optimizer, schedule and EMA, picks the fastest numeric path for this machine when asked
(``--amp auto``, ``--channels-last auto``: a few timed steps on a throw-away copy), and runs the
epochs with atomic checkpoints and an exact ``--resume``, recording each sitting of a run resumed over several
(date, commit, hardware, load: in the checkpoints and ``args.yaml``). The per-step and per-epoch pieces live in
:mod:`wt_zoo.training`; this module only wires them into a run.
"""
import argparse
import copy
import logging
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from . import data as wt_data
from . import training as wt_training
from .models.implicit_resnet import built_tag_model_args

__all__ = ['TrainingRun', 'TrainingStopped', 'OutputFolderInUse', 'SWITCHES', 'OPT_IMPLS', 'switch_value',
           'build_train_parser', 'parse_train_args']

_logger = logging.getLogger('train')

# Flags that take on / off / auto ('auto' times both at start-up and keeps the faster).
SWITCHES = ('amp', 'channels_last')
# An auto option whose first (warm-up) step takes this many times the fastest option's step is not timed further;
# a step on 1/GIVE_UP_PROBE of the batch, scaled to the batch, is timed first, so a hopeless option costs that much.
GIVE_UP_FACTOR = 3
GIVE_UP_PROBE = 8
GIVEN_UP = (f'first steps only: a 1/{GIVE_UP_PROBE}-batch probe (scaled) or the first warm-up step was over '
            f'{GIVE_UP_FACTOR}x the fastest option\'s step')
_SWITCH_WORDS = {True: 'on', False: 'off', None: 'off', 'true': 'on', 'false': 'off', 'on': 'on', 'off': 'off',
                 'auto': 'auto'}

# How the optimizer updates the weights (--opt-impl): torch's own choice ('default': the per-tensor for-loop on
# CPU, foreach on CUDA), or one forced: the per-tensor 'for-loop', 'foreach' (multi-tensor ops, fewer kernel
# launches) or 'fused' (one kernel per step; torch's SGD/Adam/AdamW have it on CPU and CUDA). Same maths; the
# last bits can differ between them.
OPT_IMPLS = ('default', 'for-loop', 'foreach', 'fused')
_OPT_IMPL_KWARGS = {'default': {}, 'for-loop': dict(foreach=False), 'foreach': dict(foreach=True),
                    'fused': dict(fused=True)}

# Recipe keys whose change on --resume makes the result differ from an uninterrupted run.
_RECIPE_KEYS = ('model', 'epochs', 'batch_size', 'lr', 'opt', 'weight_decay', 'sched', 'warmup_epochs', 'seed',
                'dataset', 'val_split_size', 'val_split_seed', 'train_subset', 'smoothing', 'mixup', 'cutmix',
                'model_kwargs', 'input_size', 'num_classes', 'model_ema', 'unrolled_warmup_epochs', 'hflip_mode',
                'opt_impl', 'progressive_min_size', 'progressive_end')


class TrainingStopped(RuntimeError):
    """A run stopped early (NaN/Inf loss); the message says where and which checkpoint was kept."""


class OutputFolderInUse(ValueError):
    """The run folder holds another run's checkpoint, which a new run would overwrite."""


def switch_value(name: str, value: Any) -> str:
    """'on', 'off' or 'auto' from a flag or a YAML value (recipes write ``amp: true``)."""
    word = _SWITCH_WORDS.get(value.lower() if isinstance(value, str) else value)
    if word is None:
        raise ValueError(f'--{name.replace("_", "-")} expects on, off or auto, got {value!r}')
    return word


_TRAIN_DESCRIPTION = ('Train a wt-zoo (or any timm) model with timm\'s flags, on CIFAR-10/100, Fashion-MNIST or an '
                      'image folder.')


def build_train_parser() -> argparse.ArgumentParser:
    """train.py's flags: timm's names, plus the zoo's (--unrolled-warmup-epochs, on/off/auto switches)."""
    parser = argparse.ArgumentParser(description=_TRAIN_DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    parser.add_argument('-c', '--config', default='', metavar='FILE', help='YAML file of defaults (keys = flag names)')
    group = parser.add_argument_group('Model')
    add = group.add_argument
    add('--model', default='wt_resnet_tiny', help='model name (timm registry, hf-hub:ORG/NAME or local-dir:PATH)')
    add('--pretrained', action='store_true', help="start from the model's published weights (its pretrained cfg)")
    add('--pretrained-path', default=None, help='load this file as if it were the pretrained weights (timm adapts '
        'first conv and head)')
    add('--initial-checkpoint', default='', help='load these weights (exact fit) after creating the model')
    add('--resume', default='', help='checkpoint or run folder to resume from (its last.pth.tar)')
    add('--no-resume-opt', action='store_true', help='resume weights only, not optimizer/scheduler state')
    add('--num-classes', type=int, default=None, help='classes (default: the dataset\'s)')
    add('--in-chans', type=int, default=None, help='input channels (default: the model\'s, else the dataset\'s)')
    add('--input-size', type=int, nargs=3, default=None, metavar=('C', 'H', 'W'), help='input size, e.g. 3 32 32')
    add('--img-size', type=int, default=None, help='input image size (square)')
    add('--model-kwargs', nargs='*', default={}, action=wt_training.ParseKwargs, metavar='K=V', help='extra model arguments')
    add('--drop', type=float, default=None, help='classifier dropout')
    add('--drop-path', type=float, default=None, help='stochastic depth (models that support it)')
    add('--grad-checkpointing', action='store_true', help='trade compute for memory')
    add('--channels-last', nargs='?', const='on', default='off', metavar='{on,off,auto}',
        help="channels_last memory layout; auto times both at start-up and keeps the faster")
    add('--torchcompile', nargs='?', const='inductor', default=None, help='torch.compile with this backend')
    add('--sync-bn', action='store_true', help='SyncBatchNorm across ranks (CUDA only)')
    add('--dist-bn', default='reduce', choices=['reduce', 'broadcast', ''],
        help='sync BatchNorm running stats across ranks at each epoch end')
    add('--dist-backend', default=None, help='torch.distributed backend (default nccl on CUDA, gloo on CPU)')

    group = parser.add_argument_group('Data')
    add = group.add_argument
    add('--data-dir', default=None, help='dataset folder (default: WT_ZOO_<DATASET> env var or the built-in location)')
    add('--dataset', default='', help="cifar10, cifar100, fashion_mnist, '' (an image folder in --data-dir, as in "
        "timm) or a timm dataset")
    add('--dataset-download', action='store_true', help='download with torchvision if missing (needs internet)')
    add('--data-cache', default=None, help='folder for decoded-image caches and downloads (default ~/.cache/wt_zoo)')
    add('--train-split', default='train', help='training split')
    add('--val-split', default=None, help="evaluation split: 'val' (held out from train, default with "
        "--val-split-size) or 'test' (default otherwise)")
    add('--val-split-size', type=float, default=None, help='hold out this fraction (<1) or count of the training split')
    add('--val-split-seed', type=int, default=42, help='seed of the held-out split (independent of --seed)')
    add('--train-subset', type=int, default=None, help='train on this many images only (stratified, seeded)')
    add('--eval-subset', type=int, default=None, help='evaluate on this many images only (stratified, seeded)')
    add('--class-map', default='', help='class map file for image folders')
    add('-j', '--workers', type=int, default=2, help='data loading workers (timm loader only)')
    add('--pin-mem', action='store_true', help='pin CPU memory (timm loader only)')
    add('--mean', type=float, nargs='+', default=None, help='override normalisation mean')
    add('--std', type=float, nargs='+', default=None, help='override normalisation std')
    add('--interpolation', default='', help='resize interpolation (timm loader)')
    add('--crop-pct', type=float, default=None, help='eval centre-crop fraction (timm loader)')
    add('--progressive-min-size', type=int, default=0, metavar='PIXELS',
        help='progressive resizing (on-device loader): train the first epochs on images downscaled to this side, '
        'growing in 4-pixel steps to the full size by --progressive-end; cheaper early epochs. 0 = off')
    add('--progressive-end', type=float, default=0.75, metavar='FRACTION',
        help='progressive resizing: fraction of the epochs after which training images are full size')

    group = parser.add_argument_group('Augmentation and regularisation')
    add = group.add_argument
    add('--no-aug', action='store_true', help='no augmentation')
    add('--crop-padding', type=int, default=4, help='random-crop padding in pixels (on-device loader)')
    add('--hflip', type=float, default=0.5, help='horizontal flip probability')
    add('--hflip-mode', default='random', choices=list(wt_data.HFLIP_MODES),
        help='random: a coin per image and epoch; alternate (on-device loader, --hflip 0.5): a coin per image at '
        'epoch 0 from --seed, then flipped the other way every epoch, so any two epochs show each image both ways')
    add('--cutout', type=int, default=0, help='cutout square side in pixels, 0 = off (on-device loader)')
    add('--scale', type=float, nargs=2, default=None, help='random-resized-crop scale (timm loader)')
    add('--ratio', type=float, nargs=2, default=None, help='random-resized-crop ratio (timm loader)')
    add('--color-jitter', type=float, default=0., help='colour jitter (timm loader)')
    add('--aa', default=None, help='auto-augment policy, e.g. rand-m9-mstd0.5 (timm loader)')
    add('--reprob', type=float, default=0., help='random erasing probability (timm loader)')
    add('--smoothing', type=float, default=0.1, help='label smoothing')
    add('--mixup', type=float, default=0., help='mixup alpha, 0 = off')
    add('--cutmix', type=float, default=0., help='cutmix alpha, 0 = off')
    add('--cutmix-minmax', type=float, nargs=2, default=None, help='cutmix min/max ratio')
    add('--mixup-prob', type=float, default=1., help='probability of mixup or cutmix per batch')
    add('--mixup-switch-prob', type=float, default=0.5, help='probability of cutmix instead of mixup')
    add('--mixup-mode', default='batch', choices=['batch', 'pair', 'elem'], help='how mixup params are drawn')
    add('--mixup-off-epoch', type=int, default=0, help='turn mixup off from this epoch, 0 = never')

    group = parser.add_argument_group('Optimisation')
    add = group.add_argument
    add('--epochs', type=int, default=30, help='epochs')
    add('-b', '--batch-size', type=int, default=128, help='batch size per rank')
    add('-vb', '--validation-batch-size', type=int, default=None, help='evaluation batch size')
    add('--opt', default='sgd', help='optimizer (timm create_optimizer_v2 name)')
    add('--opt-impl', default='default', choices=list(OPT_IMPLS),
        help="optimizer implementation: torch's default (for-loop on CPU, foreach on CUDA), or for-loop, foreach or "
        'fused (torch SGD/Adam/AdamW)')
    add('--opt-eps', type=float, default=None, help='optimizer epsilon')
    add('--opt-betas', type=float, nargs='+', default=None, help='optimizer betas')
    add('--momentum', type=float, default=0.9, help='SGD momentum')
    add('--weight-decay', type=float, default=5e-4, help='weight decay')
    add('--clip-grad', type=float, default=None, help='gradient clipping value, off by default')
    add('--clip-mode', default='norm', choices=['norm', 'value', 'agc'], help='gradient clipping mode')
    add('--lr', type=float, default=0.1, help='learning rate')
    add('--sched', default='cosine', help='LR schedule (timm create_scheduler_v2 name)')
    add('--sched-on-updates', action=argparse.BooleanOptionalAction, default=False,
        help='step the schedule every update, not every epoch')
    add('--min-lr', type=float, default=0., help='lower LR bound')
    add('--warmup-lr', type=float, default=1e-5, help='warmup start LR')
    add('--warmup-epochs', type=float, default=0, help='warmup epochs (fractions allowed with --sched-on-updates)')
    add('--warmup-prefix', action='store_true', help='warmup outside the decay schedule')
    add('--cooldown-epochs', type=int, default=0, help='epochs at min LR after the schedule')
    add('--decay-epochs', type=float, default=90, help='step schedule period')
    add('--decay-milestones', type=int, nargs='+', default=[90, 180, 270], help='multistep milestones')
    add('--decay-rate', type=float, default=0.1, help='step/multistep decay rate')
    add('--patience-epochs', type=int, default=10, help='plateau patience')

    add('--unrolled-warmup-epochs', type=int, default=0,
        help='DEQ models: train the first epochs unrolled as the weight-tied twin, then solve (MDEQ pretraining)')

    group = parser.add_argument_group('EMA')
    add = group.add_argument
    add('--model-ema', action=argparse.BooleanOptionalAction, default=False, help='keep an EMA of the weights (timm ModelEmaV3); best/exported weights '
        'are the EMA\'s')
    add('--model-ema-decay', type=float, default=0.999, help='EMA decay')
    add('--model-ema-warmup', action=argparse.BooleanOptionalAction, default=False,
        help='EMA decay warm-up (timm: 1 - (1 + step)^(-2/3), capped by --model-ema-decay)')

    group = parser.add_argument_group('Run')
    add = group.add_argument
    add('--seed', type=int, default=42, help='random seed (per-epoch reseeding makes --resume exact on CPU)')
    add('--device', default=None, help='cpu, cuda, cuda:1 (default: cuda if available)')
    add('--amp', nargs='?', const='on', default='off', metavar='{on,off,auto}',
        help='mixed precision (bfloat16 on CPU); auto times both at start-up and keeps the faster')
    add('--amp-dtype', default='float16', choices=['float16', 'bfloat16'], help='AMP dtype on CUDA')
    add('--output', default='output/train', help='parent folder of run folders')
    add('--experiment', default='', help='run folder name (default: date-model-size, or the resumed run\'s folder)')
    add('--eval-metric', default='top1', choices=['top1', 'top5', 'loss'], help='metric choosing the best checkpoint')
    add('--log-interval', type=int, default=50, help='steps between progress updates and NaN checks')
    add('--no-progress', action='store_true', help='log lines instead of a progress bar')
    return parser


def parse_train_args(argv=None) -> argparse.Namespace:
    """train.py's arguments from a --config YAML file overridden by the command line."""
    return wt_training.parse_args_with_config(build_train_parser(), argv)


class TrainingRun:
    """Everything one ``train.py`` invocation holds; :meth:`run` trains it to the end.

    Construction does the set-up in the order the pieces depend on each other (dataset defaults,
    model, loaders, fast-path choice, optimizer, schedule, resume). Benches may stop there and use
    :meth:`seconds_per_epoch` to plan a budget without training. ``sitting`` (this process's record) and
    ``sittings`` (the run's earlier ones, from the checkpoint) may be amended before :meth:`run` by a caller that
    knows more (a load measured before its own planning, sittings it kept before train.py recorded them).
    """

    def __init__(self, args):
        from timm.data import resolve_input_data_config
        self.args = args
        self.ctx = ctx = wt_training.init_distributed(args.device, args.dist_backend)
        # This sitting, recorded in the checkpoints and args.yaml once it trains (the load before its own work).
        self.sitting = wt_training.this_sitting(ctx.device, ctx.world_size)
        self.sittings: List[Dict[str, Any]] = []  # the earlier sittings of a resumed run
        if args.sync_bn and ctx.device.type != 'cuda':
            raise ValueError('--sync-bn needs CUDA (SyncBatchNorm has no CPU kernel); use --dist-bn reduce on CPU')
        for name in SWITCHES:
            setattr(args, name, switch_value(name, getattr(args, name)))
        self.spec = wt_data.DataSpec.from_args(args)
        self._fill_dataset_defaults()
        wt_training.seed_everything(wt_training.epoch_seed(args.seed, 0, ctx.rank))
        self.model = model = wt_training.create_model_from_args(args)
        # The tag's own arguments (a DEQ tag's test-time solver cap) are pinned in args.yaml, so that a retrain from
        # a published train_args.yaml evaluates its epochs as this run did, even after the tag's cap is re-chosen.
        pinned = built_tag_model_args(model)
        if pinned:
            args.model_kwargs = {**pinned, **(args.model_kwargs or {})}
        self.data_config = resolve_input_data_config(model, args=self._data_args())
        args.input_size = list(self.data_config['input_size'])
        args.in_chans = self.data_config['input_size'][0]
        if args.grad_checkpointing:
            if not hasattr(model, 'set_grad_checkpointing'):
                raise ValueError(f'--grad-checkpointing: {args.model} does not support gradient checkpointing')
            model.set_grad_checkpointing(True)
        if args.unrolled_warmup_epochs and not hasattr(model, 'set_unrolled_warmup'):
            raise ValueError(f'--unrolled-warmup-epochs: {args.model} has no unrolled warm-up (DEQ models have)')
        model.to(ctx.device)
        if ctx.device.type == 'cuda':
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
        self.eval_split = args.val_split or ('val' if args.val_split_size else 'test')
        self.train_loader = wt_data.create_train_loader(self.spec, self.data_config, args.batch_size, ctx.device,
                                                        ctx.rank, ctx.world_size)
        self.eval_loader = wt_data.create_eval_loader(self.spec, self.eval_split, self.data_config,
                                                      args.validation_batch_size or args.batch_size, ctx.device,
                                                      ctx.rank, ctx.world_size)
        self._check_progressive_resizing()
        self.mixup_fn, self.train_loss_fn = self._create_loss()
        self.fast_path_timings: List[Dict[str, Any]] = []
        self._checkpoint = self._read_resume_checkpoint() if args.resume else None
        if self._checkpoint is not None:
            self._keep_resumed_switches()
        self._choose_fast_path()
        self._apply_layout()
        if args.sync_bn and ctx.distributed:
            self.model = model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.amp_dtype = self._amp_dtype()
        if self.amp_dtype is not None:
            args.amp_dtype = str(self.amp_dtype).removeprefix('torch.')  # args.yaml records the dtype that ran
        self.optimizer = self._create_optimizer(model)
        self.scaler = torch.amp.GradScaler('cuda') if self.amp_dtype == torch.float16 else None
        self.model_ema = None
        if args.model_ema:
            from timm.utils import ModelEmaV3
            self.model_ema = ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup)
        self.scheduler, self.num_epochs = self._create_scheduler()
        self.start_epoch, self.num_updates, self.history, self.best = 0, 0, [], None
        self.resumed_from: Optional[Path] = None
        if args.resume:
            self._resume()
        self.train_model = model
        if args.torchcompile:
            self.train_model = torch.compile(model, backend=args.torchcompile)
        self.eval_model = self.train_model
        if ctx.distributed:
            device_ids = [ctx.device.index] if ctx.device.type == 'cuda' else None
            self.train_model = torch.nn.parallel.DistributedDataParallel(self.train_model, device_ids=device_ids)
        self.out_dir: Optional[Path] = None

    # ------------------------------------------------------------------------------------------
    # Set-up pieces

    def _fill_dataset_defaults(self) -> None:
        """Defaults the dataset decides: --num-classes (its class count) and, when training from scratch,
        its native input size (e.g. 1x28x28 for Fashion-MNIST); pretrained weights keep their cfg's size."""
        args, spec = self.args, self.spec
        if args.num_classes is None:
            args.num_classes = wt_data.dataset_num_classes(spec)
        native = wt_data.NATIVE_INPUT_SIZE.get(spec.name)
        from_scratch = not args.pretrained and not args.pretrained_path
        if native and from_scratch and args.input_size is None:
            chans = args.in_chans or native[0]
            size = args.img_size or native[1]
            args.input_size = [chans, size, size]

    def _check_progressive_resizing(self) -> None:
        args = self.args
        if not args.progressive_min_size:
            return
        if not hasattr(self.train_loader, 'set_image_size'):
            on_device = ', '.join(wt_data.SMALL_IMAGE_DATASETS)
            raise ValueError(f'--progressive-min-size needs the on-device loader ({on_device}); '
                             f'timm\'s loader for {args.dataset or "an image folder"!r} serves one size')
        wt_data.progressive_image_size(0, args.epochs, args.input_size[-1], args.progressive_min_size,
                                       args.progressive_end)
        smallest = getattr(self.model, 'min_input_size', 1)
        if args.progressive_min_size < smallest:
            raise ValueError(f'--progressive-min-size {args.progressive_min_size}: {args.model} takes images of at '
                             f'least {smallest} pixels a side')

    def train_image_size(self, epoch: int) -> Optional[int]:
        """The training images' side at ``epoch`` under --progressive-min-size (None when it is off)."""
        args = self.args
        if not args.progressive_min_size:
            return None
        return wt_data.progressive_image_size(epoch, self.num_epochs, args.input_size[-1], args.progressive_min_size,
                                              args.progressive_end)

    def _data_args(self) -> dict:
        return {k: getattr(self.args, k) for k in ('input_size', 'img_size', 'in_chans', 'mean', 'std',
                                                   'interpolation', 'crop_pct', 'model_kwargs')
                if getattr(self.args, k, None)}

    def _amp_dtype(self, amp: Optional[bool] = None) -> Optional[torch.dtype]:
        amp = self.args.amp == 'on' if amp is None else amp
        if not amp:
            return None
        if self.ctx.device.type == 'cpu' or self.args.amp_dtype == 'bfloat16':
            return torch.bfloat16
        return torch.float16

    def _create_optimizer(self, model: torch.nn.Module, opt_impl: Optional[str] = None) -> torch.optim.Optimizer:
        """timm's optimizer from the flags; ``opt_impl`` (default --opt-impl) picks torch's implementation."""
        from timm.optim import create_optimizer_v2
        args = self.args
        opt_impl = opt_impl or getattr(args, 'opt_impl', None) or 'default'
        if opt_impl not in OPT_IMPLS:
            raise ValueError(f'--opt-impl expects one of {", ".join(OPT_IMPLS)}, got {opt_impl!r}')
        opt_kwargs = {k: v for k, v in dict(eps=args.opt_eps, betas=args.opt_betas).items() if v is not None}
        try:
            return create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                       momentum=args.momentum, **opt_kwargs, **_OPT_IMPL_KWARGS[opt_impl])
        except (TypeError, RuntimeError) as e:
            if opt_impl == 'default':
                raise
            raise ValueError(f'--opt-impl {opt_impl}: optimizer {args.opt!r} on {self.ctx.device.type} does not offer '
                             f'it ({e}); use --opt-impl default') from e

    def _create_scheduler(self):
        from timm.scheduler import create_scheduler_v2
        args = self.args
        return create_scheduler_v2(
            self.optimizer, sched=args.sched, num_epochs=args.epochs, decay_epochs=args.decay_epochs,
            decay_milestones=args.decay_milestones, cooldown_epochs=args.cooldown_epochs,
            patience_epochs=args.patience_epochs, decay_rate=args.decay_rate, min_lr=args.min_lr,
            warmup_lr=args.warmup_lr, warmup_epochs=args.warmup_epochs, warmup_prefix=args.warmup_prefix,
            plateau_mode='min' if args.eval_metric == 'loss' else 'max', step_on_epochs=not args.sched_on_updates,
            updates_per_epoch=len(self.train_loader))

    def _create_loss(self):
        from timm.data import Mixup
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
        args = self.args
        mixup_fn = None
        if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
            if args.batch_size % 2:
                raise ValueError(f'--mixup/--cutmix mix pairs within a batch; --batch-size must be even, '
                                 f'got {args.batch_size}')
            mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                             prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                             label_smoothing=args.smoothing, num_classes=args.num_classes or self.model.num_classes)
            loss_fn = SoftTargetCrossEntropy()
        elif args.smoothing:
            loss_fn = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
        else:
            loss_fn = torch.nn.CrossEntropyLoss()
        return mixup_fn, loss_fn.to(self.ctx.device)

    def _apply_layout(self) -> None:
        channels_last = self.args.channels_last == 'on'
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        for loader in (self.train_loader, self.eval_loader):
            loader.channels_last = channels_last

    def _read_resume_checkpoint(self) -> Dict[str, Any]:
        try:
            path = wt_training.find_checkpoint(self.args.resume)
            checkpoint = wt_training.load_checkpoint_file(path)
        except (ValueError, FileNotFoundError) as e:
            raise ValueError(f'--resume: {e}') from e
        checkpoint['path'] = path
        return checkpoint

    def _keep_resumed_switches(self) -> None:
        """An 'auto' switch resumes as the interrupted run chose it, so the run ends as it would have."""
        saved = self._checkpoint.get('args') or {}
        for name in SWITCHES:
            if getattr(self.args, name) == 'auto' and name in saved:
                setattr(self.args, name, 'on' if saved[name] else 'off')
        if saved.get('fast_path_timings'):
            self.args.fast_path_timings = saved['fast_path_timings']

    def _resume(self) -> None:
        args = self.args
        checkpoint, self._checkpoint = self._checkpoint, None
        path = checkpoint.pop('path')
        restore = {} if args.no_resume_opt else dict(optimizer=self.optimizer, scheduler=self.scheduler,
                                                      scaler=self.scaler)
        impl = [{k: g.get(k) for k in ('foreach', 'fused')} for g in self.optimizer.param_groups]
        self.start_epoch = wt_training.restore_training_state(checkpoint, model=self.model, model_ema=self.model_ema,
                                                              **restore)
        for group, keys in zip(self.optimizer.param_groups, impl):  # the saved groups carry the old --opt-impl
            group.update(keys)
        if not args.no_resume_opt:
            self.num_updates = int(checkpoint.get('num_updates', self.start_epoch * len(self.train_loader)))
            self.history = list(checkpoint.get('history') or [])
            self.best = checkpoint.get('best')
            self.sittings = list(checkpoint.get('sittings') or [])
        _warn_changed_args(checkpoint.get('args') or {}, args)
        _logger.info(f'resumed from {path} (epoch {self.start_epoch - 1} done)')
        if self.start_epoch > 0:
            self.scheduler.step(self.start_epoch)
            if args.sched_on_updates:
                self.scheduler.step_update(self.num_updates)
        self.resumed_from = path

    # ------------------------------------------------------------------------------------------
    # Speed: timed steps on a throw-away copy, never on the run's own model or optimizer

    def seconds_per_step(self, amp: Optional[bool] = None, channels_last: Optional[bool] = None, steps: int = 3,
                         warmup: int = 2, compile: bool = False, opt_impl: Optional[str] = None,
                         image_size: Optional[int] = None, give_up_after: Optional[float] = None) -> float:
        """Mean wall time of a training step (forward, loss, backward, optimizer) on a real batch.

        Runs on a deep copy with a fresh optimizer, so the run's state and random streams are untouched;
        a DEQ is timed solving (its dearer mode), not in its unrolled warm-up. ``compile`` times
        ``torch.compile`` of the model (its compilation falls in the warm-up steps); ``opt_impl`` another
        --opt-impl than the run's; ``image_size`` a batch downscaled to that side (progressive resizing).
        ``give_up_after`` (seconds): when a step on 1/GIVE_UP_PROBE of the batch, scaled to the whole batch, or
        else the first warm-up step takes longer, return that time at once; an option that slow is out of the
        race, and its full timing could cost many minutes (bf16 autocast on a CPU without native bf16 took 222 s
        for one step of wt_resnet_small at batch 256, that fp32 does in 14 s).
        """
        args, device = self.args, self.ctx.device
        amp = self.args.amp == 'on' if amp is None else amp
        channels_last = self.args.channels_last == 'on' if channels_last is None else channels_last
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model = copy.deepcopy(wt_training.unwrap(self.model)).to(memory_format=memory_format).train()
        optimizer = self._create_optimizer(model, opt_impl)
        forward = torch.compile(model) if compile else model
        x, y = next(iter(self.train_loader))
        if image_size:
            x = wt_data.resize_batch(x, image_size)
        x = x.contiguous(memory_format=memory_format)
        amp_dtype = self._amp_dtype(amp)
        has_aux = callable(getattr(model, 'aux_loss', None))
        rng = torch.random.get_rng_state()

        def step(x=x, y=y):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = self.train_loss_fn(forward(x), y)
                if has_aux:
                    loss = loss + model.aux_loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        try:
            probe = len(x) // GIVE_UP_PROBE
            if give_up_after is not None and probe:
                start = time.perf_counter()
                step(x[:probe], y[:probe])
                _synchronize(device)
                scaled = (time.perf_counter() - start) * len(x) / probe
                if scaled > give_up_after:
                    return scaled
            for index in range(warmup):
                start = time.perf_counter()
                step()
                _synchronize(device)
                seconds = time.perf_counter() - start
                if index == 0 and give_up_after is not None and seconds > give_up_after:
                    return seconds
            start = time.perf_counter()
            for _ in range(steps):
                step()
            _synchronize(device)
            return (time.perf_counter() - start) / steps
        finally:
            torch.random.set_rng_state(rng)

    def seconds_per_optimizer_step(self, opt_impl: Optional[str] = None, steps: int = 20, warmup: int = 3) -> float:
        """Mean wall time of the optimizer's update alone (gradients fixed), on a copy of the model.

        A whole training step hides the optimizer's share in its noise; this isolates it, to compare
        --opt-impl choices.
        """
        model = copy.deepcopy(wt_training.unwrap(self.model)).train()
        optimizer = self._create_optimizer(model, opt_impl)
        generator = torch.Generator(device=self.ctx.device).manual_seed(0)
        for p in model.parameters():
            if p.requires_grad:
                p.grad = torch.empty_like(p).normal_(std=1e-3, generator=generator)
        for _ in range(warmup):
            optimizer.step()
        _synchronize(self.ctx.device)
        start = time.perf_counter()
        for _ in range(steps):
            optimizer.step()
        _synchronize(self.ctx.device)
        return (time.perf_counter() - start) / steps

    def seconds_per_epoch(self, max_steps: int = 40, timing_seconds: float = 8.) -> float:
        """Training seconds per epoch on this machine (evaluation excluded), for planning a budget; under
        progressive resizing, the mean over the schedule's epochs, each size timed once.

        Times the run's own epoch loop on copies (:meth:`seconds_per_loop_step`), not a bare step: every step of
        an epoch also draws and augments a batch, clips the gradients and updates the EMA, and a plan that leaves
        them out trains past its budget.
        """
        sizes = [self.train_image_size(epoch) for epoch in range(self.num_epochs)]
        step_seconds = {size: self.seconds_per_loop_step(size, max_steps, timing_seconds) for size in set(sizes)}
        return sum(step_seconds[size] for size in sizes) / len(sizes) * len(self.train_loader)

    def seconds_per_loop_step(self, image_size: Optional[int] = None, max_steps: int = 40,
                              timing_seconds: float = 8., warmup: int = 2) -> float:
        """Mean wall time of one step of :func:`wt_zoo.training.train_one_epoch` as this run calls it, over the
        first batches of its loader (downscaled to ``image_size`` under progressive resizing).

        Runs on copies of the model, optimizer and EMA, so the run's state is untouched. After ``warmup`` steps,
        as many steps as fit about ``timing_seconds`` (at least 3, at most ``max_steps``): a slow model is timed
        briefly, a fast one long enough to average out the noise of single steps.
        """
        args = self.args
        model = copy.deepcopy(wt_training.unwrap(self.model)).train()
        optimizer = self._create_optimizer(model)
        model_ema = copy.deepcopy(self.model_ema)
        scaler = torch.amp.GradScaler('cuda') if self.scaler is not None else None
        loader = self.train_loader
        kept_size = getattr(loader, 'image_size', None)
        rng = torch.random.get_rng_state()

        def mean_step_seconds(steps: int) -> float:
            metrics, _ = wt_training.train_one_epoch(
                model, _FirstBatches(loader, steps), optimizer, self.train_loss_fn, epoch=0, ctx=self.ctx,
                mixup_fn=self.mixup_fn, model_ema=model_ema, amp_dtype=self.amp_dtype, scaler=scaler,
                clip_grad=args.clip_grad, clip_mode=args.clip_mode, log_interval=steps + 1, progress=False)
            return metrics['seconds'] / metrics['steps']

        try:
            if image_size is not None:
                loader.set_image_size(image_size)
            first = mean_step_seconds(warmup)
            return mean_step_seconds(max(3, min(max_steps, round(timing_seconds / max(first, 1e-6)))))
        finally:
            if image_size is not None:
                loader.set_image_size(kept_size)
            torch.random.set_rng_state(rng)

    def _choose_fast_path(self) -> None:
        """Resolve 'auto' switches by timing each combination; the timings go to args.yaml."""
        args = self.args
        options = {name: ([False, True] if getattr(args, name) == 'auto' else [getattr(args, name) == 'on'])
                   for name in SWITCHES}
        if all(len(v) == 1 for v in options.values()):
            return
        fastest_seconds = math.inf
        for amp in options['amp']:
            for channels_last in options['channels_last']:
                give_up = GIVE_UP_FACTOR * fastest_seconds if math.isfinite(fastest_seconds) else None
                seconds = self.seconds_per_step(amp=amp, channels_last=channels_last, give_up_after=give_up)
                timing = dict(amp=amp, channels_last=channels_last, images_per_s=round(args.batch_size / seconds, 2))
                if give_up is not None and seconds > give_up:
                    timing['timed'] = GIVEN_UP
                else:
                    fastest_seconds = min(fastest_seconds, seconds)
                self.fast_path_timings.append(timing)
        fastest = max(self.fast_path_timings, key=lambda row: row['images_per_s'])
        choice = torch.tensor([int(fastest[name]) for name in SWITCHES], device=self.ctx.device)
        if self.ctx.distributed:  # every rank runs what the first rank measured fastest
            torch.distributed.broadcast(choice, src=0)
        for name, on in zip(SWITCHES, choice.tolist()):
            setattr(args, name, 'on' if on else 'off')
        args.fast_path_timings = self.fast_path_timings
        _logger.info('fast path: ' + ', '.join(
            f'amp {r["amp"]} channels_last {r["channels_last"]}: {r["images_per_s"]:.1f} img/s'
            + (f' ({r["timed"]})' if 'timed' in r else '') for r in self.fast_path_timings)
            + f'; chose amp {args.amp}, channels_last {args.channels_last}')

    # ------------------------------------------------------------------------------------------
    # Running

    def output_dir(self) -> Path:
        args = self.args
        if args.experiment:
            return Path(args.output) / args.experiment
        if self.resumed_from is not None:
            return self.resumed_from.parent
        size = self.data_config['input_size'][-1]
        name = '-'.join([datetime.now().strftime('%Y%m%d-%H%M%S'), args.model.replace('/', '_').replace(':', '_'),
                         str(size)])
        return Path(args.output) / name

    def _recorded_args(self):
        """args.yaml records the switches as what ran (booleans), as older runs did."""
        recorded = copy.copy(self.args)
        for name in SWITCHES:
            setattr(recorded, name, getattr(self.args, name) == 'on')
        return recorded

    def prepare_output(self) -> None:
        if not self.ctx.is_primary:
            return
        self.out_dir = self.output_dir()
        taken = self.out_dir / wt_training.LAST_CHECKPOINT
        resuming_it = self.resumed_from is not None and self.resumed_from.parent.resolve() == self.out_dir.resolve()
        if taken.is_file() and not resuming_it:
            raise OutputFolderInUse(f'{self.out_dir} holds another run ({taken.name}), which this run would overwrite; '
                                    f'continue it with --resume {self.out_dir}, or name another --experiment or '
                                    '--output')
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.start_epoch < self.num_epochs:
            self.sittings = wt_training.record_sitting(self.sittings, self.start_epoch + 1, self.sitting)
        wt_training.write_args_yaml(self.out_dir / wt_training.ARGS_FILE, self._recorded_args(),
                                    hardware=self.sitting['hardware'], sittings=self.sittings)
        if self.history:  # a resumed run continues the summary from the checkpoint, dropping rows of redone epochs
            wt_training.write_summary_csv(self.out_dir / wt_training.SUMMARY_FILE, self.history)
        _logger.info(f'writing to {self.out_dir}')

    def _set_epoch_mode(self, epoch: int) -> None:
        args = self.args
        if self.mixup_fn is not None and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
            self.mixup_fn.mixup_enabled = False
        if args.unrolled_warmup_epochs:
            wt_training.unwrap(self.model).set_unrolled_warmup(epoch < args.unrolled_warmup_epochs)
        image_size = self.train_image_size(epoch)
        if image_size is not None:
            self.train_loader.set_image_size(image_size)

    def train_epoch(self, epoch: int, progress: bool = False) -> Dict[str, Any]:
        """One epoch of training, evaluation, schedule step and checkpoint; returns its summary row."""
        args, ctx = self.args, self.ctx
        wt_training.seed_everything(wt_training.epoch_seed(args.seed, epoch, ctx.rank))
        self.train_loader.set_epoch(epoch)
        self._set_epoch_mode(epoch)
        try:
            train_metrics, self.num_updates = wt_training.train_one_epoch(
                self.train_model, self.train_loader, self.optimizer, self.train_loss_fn, epoch=epoch, ctx=ctx,
                scheduler=self.scheduler, num_updates=self.num_updates, mixup_fn=self.mixup_fn,
                model_ema=self.model_ema, amp_dtype=self.amp_dtype, scaler=self.scaler, clip_grad=args.clip_grad,
                clip_mode=args.clip_mode, log_interval=args.log_interval, progress=progress)
        except wt_training.NonFiniteLossError as e:
            kept = 'no checkpoint was written yet'
            if self.out_dir is not None and (self.out_dir / wt_training.LAST_CHECKPOINT).is_file():
                kept = f'last good checkpoint kept: {self.out_dir / wt_training.LAST_CHECKPOINT} (epoch {epoch - 1})'
            raise TrainingStopped(f'stopped: {e}; {kept}') from e
        self._distribute_bn(self.model)
        eval_metrics = wt_training.evaluate(self.eval_model, self.eval_loader, ctx, self.amp_dtype, progress)
        ema_metrics = None
        if self.model_ema is not None:
            self._distribute_bn(self.model_ema)
            ema_metrics = wt_training.evaluate(self.model_ema, self.eval_loader, ctx, self.amp_dtype, progress,
                                               'eval ema')
        groups = self.optimizer.param_groups
        epoch_lr = sum(g['lr'] for g in groups) / len(groups)
        chosen = ema_metrics or eval_metrics
        self.scheduler.step(epoch + 1, chosen[args.eval_metric])
        row = self._summary_row(epoch, train_metrics, eval_metrics, ema_metrics, epoch_lr)
        self.history.append(row)
        score = chosen[args.eval_metric]
        best = self.best
        improved = best is None or (score < best['score'] if args.eval_metric == 'loss' else score > best['score'])
        if improved:
            self.best = dict(epoch=epoch, score=score, metric=args.eval_metric, ema=ema_metrics is not None)
        _logger.info(
            f'epoch {epoch}: train loss {row["train_loss"]:.4f} top1 {row["train_top1"]:.2f} | eval '
            f'({self.eval_split}) loss {row["eval_loss"]:.4f} top1 {row["eval_top1"]:.2f} top5 {row["eval_top5"]:.2f}'
            + (f' | ema top1 {ema_metrics["top1"]:.2f}' if ema_metrics else '')
            + f' | {row["images_per_s"]:.0f} img/s, {row["epoch_seconds"]:.1f} s')
        if ctx.is_primary:
            ckpt = dict(model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, epoch=epoch,
                        args=self._recorded_args(), history=self.history, best=self.best, model_ema=self.model_ema,
                        scaler=self.scaler, num_updates=self.num_updates, sittings=self.sittings)
            wt_training.save_training_checkpoint(self.out_dir / wt_training.LAST_CHECKPOINT, **ckpt)
            if improved:
                wt_training.save_training_checkpoint(self.out_dir / wt_training.BEST_CHECKPOINT, **ckpt)
            wt_training.write_summary_csv(self.out_dir / wt_training.SUMMARY_FILE, self.history)
        return row

    def _distribute_bn(self, model) -> None:
        if self.ctx.distributed and self.args.dist_bn:
            from timm.utils import distribute_bn
            distribute_bn(model, self.ctx.world_size, self.args.dist_bn == 'reduce')

    def _summary_row(self, epoch, train_metrics, eval_metrics, ema_metrics, epoch_lr) -> Dict[str, Any]:
        row = dict(epoch=epoch, train_loss=train_metrics['loss'], train_top1=train_metrics['top1'],
                   eval_loss=eval_metrics['loss'], eval_top1=eval_metrics['top1'], eval_top5=eval_metrics['top5'])
        if ema_metrics is not None:
            row.update(ema_eval_loss=ema_metrics['loss'], ema_eval_top1=ema_metrics['top1'],
                       ema_eval_top5=ema_metrics['top5'])
        row.update(lr=epoch_lr,
                   epoch_seconds=train_metrics['seconds'], images_per_s=train_metrics['images_per_s'],
                   eval_images_per_s=eval_metrics['images_per_s'], peak_memory_mb=train_metrics['peak_memory_mb'],
                   train_samples=train_metrics['samples'], train_steps=train_metrics['steps'],
                   world_size=self.ctx.world_size)
        if self.args.progressive_min_size:
            row['train_image_size'] = self.train_loader.image_size
        if 'solver_nstep' in train_metrics:
            row['solver_nstep'] = train_metrics['solver_nstep']
        row.update({f'eval_{k}': v for k, v in (ema_metrics or eval_metrics).items() if k.startswith('solver_')})
        if self.ctx.distributed:
            row['rank_weight_max_diff'] = wt_training.rank_weight_max_diff(self.model, self.ctx)
        return row

    def export_best(self) -> Optional[Path]:
        """The best epoch's weights (the EMA's when kept) as model.safetensors + config.json."""
        if not self.ctx.is_primary or self.best is None:
            return None
        best_ckpt = wt_training.load_checkpoint_file(self.out_dir / wt_training.BEST_CHECKPOINT)
        final = self.model_ema.module if self.model_ema is not None else self.model
        final.load_state_dict(best_ckpt['state_dict_ema' if self.model_ema is not None else 'state_dict'])
        classes = getattr(self.eval_loader, 'classes', None)
        path = wt_training.export_weights(final, self.out_dir, self.data_config, classes)
        _logger.info(f'best {self.best["metric"]} {self.best["score"]:.4f} at epoch {self.best["epoch"]}; weights in '
                     f'{path}')
        return path

    def run(self, progress: bool = False) -> Optional[Dict[str, Any]]:
        """Train from the start (or the resumed epoch) to the end; returns the best epoch's record."""
        n_params = sum(p.numel() for p in self.model.parameters())
        _logger.info(f'{self.args.model}: {n_params / 1e6:.3f}M params, input {tuple(self.data_config["input_size"])}, '
                     f'{self.ctx.world_size} process(es) on {self.ctx.device}; train: {self.train_loader.dataset_size} '
                     f'images, {len(self.train_loader)} steps/epoch/rank; eval ({self.eval_split}): '
                     f'{self.eval_loader.dataset_size} images')
        self.prepare_output()
        for epoch in range(self.start_epoch, self.num_epochs):
            self.train_epoch(epoch, progress)
        self.export_best()
        return self.best

    def close(self) -> None:
        if self.ctx.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class _FirstBatches:
    """The first ``steps`` batches of a training loader (fewer if an epoch holds fewer), for timing the epoch loop
    on a slice of an epoch."""

    def __init__(self, loader, steps: int):
        self.loader, self.steps = loader, min(steps, len(loader))

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for step, batch in enumerate(self.loader):
            if step == self.steps:
                return
            yield batch


def _synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _warn_changed_args(saved: dict, args) -> None:
    current = wt_training.plain(vars(args))
    for name in SWITCHES:  # args.yaml and checkpoints record the switches as booleans
        current[name] = current.get(name) == 'on'
    changed = [f'{k}: {saved[k]!r} -> {current.get(k)!r}' for k in _RECIPE_KEYS
               if k in saved and saved[k] != current.get(k)]
    if changed:
        _logger.warning('resuming with a different recipe than the checkpoint\'s, results will differ from an '
                        'uninterrupted run: ' + '; '.join(changed))
