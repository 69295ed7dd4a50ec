#!/usr/bin/env python3
"""Train a wt-zoo (or any timm) model with timm's flags, on CIFAR-10/100, Fashion-MNIST or an image folder.

    python train.py --config configs/wt_resnet_small.c10.yaml
    python train.py --model wt_resnet_tiny --dataset cifar10 --epochs 30 -b 128 --lr 0.1
    torchrun --nproc_per_node 2 train.py --model wt_resnet_small --dataset cifar10 ...

Writes to --output/--experiment: args.yaml, summary.csv (one row per epoch), last.pth.tar and
best.pth.tar (full state for --resume, written atomically) and, at the end, model.safetensors with
timm's config.json (load it with ``local-dir:<folder>``). The pieces live in wt_zoo.training and
wt_zoo.data; this file wires them to the command line.
"""
import argparse
import logging
import sys
from datetime import datetime
from pathlib import Path

import torch

from wt_zoo import data as wt_data
from wt_zoo import training as wt_training

_logger = logging.getLogger('train')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    add('--channels-last', action='store_true', help='channels_last memory layout')
    add('--torchcompile', nargs='?', const='inductor', default=None, help='torch.compile with this backend')
    add('--sync-bn', action='store_true', help='SyncBatchNorm across ranks (CUDA only)')
    add('--dist-bn', default='reduce', choices=['reduce', 'broadcast', ''],
        help='sync BatchNorm running stats across ranks at each epoch end')
    add('--dist-backend', default=None, help='torch.distributed backend (default nccl on CUDA, gloo on CPU)')

    group = parser.add_argument_group('Data')
    add = group.add_argument
    add('--data-dir', default=None, help='dataset folder (default: WT_ZOO_<DATASET> env var or the built-in location)')
    add('--dataset', default='cifar10', help="cifar10, cifar100, fashion_mnist, '' (image folder) or a timm dataset")
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

    group = parser.add_argument_group('Augmentation and regularisation')
    add = group.add_argument
    add('--no-aug', action='store_true', help='no augmentation')
    add('--crop-padding', type=int, default=4, help='random-crop padding in pixels (on-device loader)')
    add('--hflip', type=float, default=0.5, help='horizontal flip probability')
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
    add('--opt-eps', type=float, default=None, help='optimizer epsilon')
    add('--opt-betas', type=float, nargs='+', default=None, help='optimizer betas')
    add('--momentum', type=float, default=0.9, help='SGD momentum')
    add('--weight-decay', type=float, default=5e-4, help='weight decay')
    add('--clip-grad', type=float, default=None, help='gradient clipping value, off by default')
    add('--clip-mode', default='norm', choices=['norm', 'value', 'agc'], help='gradient clipping mode')
    add('--lr', type=float, default=0.1, help='learning rate')
    add('--sched', default='cosine', help='LR schedule (timm create_scheduler_v2 name)')
    add('--sched-on-updates', action='store_true', help='step the schedule every update, not every epoch')
    add('--min-lr', type=float, default=0., help='lower LR bound')
    add('--warmup-lr', type=float, default=1e-5, help='warmup start LR')
    add('--warmup-epochs', type=float, default=0, help='warmup epochs (fractions allowed with --sched-on-updates)')
    add('--warmup-prefix', action='store_true', help='warmup outside the decay schedule')
    add('--cooldown-epochs', type=int, default=0, help='epochs at min LR after the schedule')
    add('--decay-epochs', type=float, default=90, help='step schedule period')
    add('--decay-milestones', type=int, nargs='+', default=[90, 180, 270], help='multistep milestones')
    add('--decay-rate', type=float, default=0.1, help='step/multistep decay rate')
    add('--patience-epochs', type=int, default=10, help='plateau patience')

    group = parser.add_argument_group('EMA')
    add = group.add_argument
    add('--model-ema', action='store_true', help='keep an EMA of the weights (timm ModelEmaV3); best/exported weights '
        'are the EMA\'s')
    add('--model-ema-decay', type=float, default=0.999, help='EMA decay')
    add('--model-ema-warmup', action='store_true', help='EMA decay warmup')

    group = parser.add_argument_group('Run')
    add = group.add_argument
    add('--seed', type=int, default=42, help='random seed (per-epoch reseeding makes --resume exact on CPU)')
    add('--device', default=None, help='cpu, cuda, cuda:1 (default: cuda if available)')
    add('--amp', action='store_true', help='mixed precision (bfloat16 on CPU)')
    add('--amp-dtype', default='float16', choices=['float16', 'bfloat16'], help='AMP dtype on CUDA')
    add('--output', default='output/train', help='parent folder of run folders')
    add('--experiment', default='', help='run folder name (default: date-model-size, or the resumed run\'s folder)')
    add('--eval-metric', default='top1', choices=['top1', 'top5', 'loss'], help='metric choosing the best checkpoint')
    add('--log-interval', type=int, default=50, help='steps between progress updates and NaN checks')
    add('--no-progress', action='store_true', help='log lines instead of a progress bar')
    return parser


def parse_args(argv=None):
    return wt_training.parse_args_with_config(build_parser(), argv)


def _amp_dtype(args, device):
    if not args.amp:
        return None
    if device.type == 'cpu':
        return torch.bfloat16
    return torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16


def _output_dir(args, data_config) -> Path:
    if args.experiment:
        return Path(args.output) / args.experiment
    if args.resume:
        return wt_training.find_checkpoint(args.resume).parent
    size = data_config['input_size'][-1]
    name = '-'.join([datetime.now().strftime('%Y%m%d-%H%M%S'), args.model.replace('/', '_').replace(':', '_'), str(size)])
    return Path(args.output) / name


def _data_args(args) -> dict:
    return {k: getattr(args, k) for k in ('input_size', 'img_size', 'in_chans', 'mean', 'std', 'interpolation',
                                          'crop_pct', 'model_kwargs') if getattr(args, k, None)}


def _fill_dataset_defaults(args, spec) -> None:
    """Defaults the dataset decides: --num-classes (its class count) and, when training from scratch,
    its native input size (e.g. 1x28x28 for Fashion-MNIST); pretrained weights keep their cfg's size."""
    if args.num_classes is None:
        args.num_classes = wt_data.dataset_num_classes(spec)
    native = wt_data.NATIVE_INPUT_SIZE.get(spec.name)
    from_scratch = not args.pretrained and not args.pretrained_path
    if native and from_scratch and args.input_size is None:
        chans = args.in_chans or native[0]
        size = args.img_size or native[1]
        args.input_size = [chans, size, size]


def main(argv=None) -> int:
    args = parse_args(argv)
    from timm.utils import setup_default_logging
    setup_default_logging()
    ctx = wt_training.init_distributed(args.device, args.dist_backend)
    if not ctx.is_primary:
        logging.getLogger().setLevel(logging.WARNING)
    if args.sync_bn and ctx.device.type != 'cuda':
        raise SystemExit('--sync-bn needs CUDA (SyncBatchNorm has no CPU kernel); use --dist-bn reduce on CPU')
    spec = wt_data.DataSpec.from_args(args)
    try:
        _fill_dataset_defaults(args, spec)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f'error: {e}')
    wt_training.seed_everything(wt_training.epoch_seed(args.seed, 0, ctx.rank))
    try:
        model = wt_training.create_model_from_args(args)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f'error: {e}')
    from timm.data import Mixup, resolve_input_data_config
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3

    data_config = resolve_input_data_config(model, args=_data_args(args))
    args.input_size = list(data_config['input_size'])
    args.in_chans = data_config['input_size'][0]
    if args.grad_checkpointing:
        if not hasattr(model, 'set_grad_checkpointing'):
            raise SystemExit(f'--grad-checkpointing: {args.model} does not support gradient checkpointing')
        model.set_grad_checkpointing(True)
    model.to(ctx.device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.sync_bn and ctx.distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    n_params = sum(p.numel() for p in model.parameters())
    _logger.info(f'{args.model}: {n_params / 1e6:.3f}M params, input {tuple(data_config["input_size"])}, '
                 f'{ctx.world_size} process(es) on {ctx.device}')

    opt_kwargs = {k: v for k, v in dict(eps=args.opt_eps, betas=args.opt_betas).items() if v is not None}
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                    momentum=args.momentum, **opt_kwargs)
    amp_dtype = _amp_dtype(args, ctx.device)
    if amp_dtype is not None:
        args.amp_dtype = str(amp_dtype).removeprefix('torch.')  # args.yaml records the dtype that ran
    scaler = torch.amp.GradScaler('cuda') if amp_dtype == torch.float16 else None
    model_ema = ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup) if args.model_ema else None

    eval_split = args.val_split or ('val' if args.val_split_size else 'test')
    try:
        train_loader = wt_data.create_train_loader(spec, data_config, args.batch_size, ctx.device, ctx.rank,
                                                   ctx.world_size, args.channels_last)
        eval_loader = wt_data.create_eval_loader(spec, eval_split, data_config,
                                                 args.validation_batch_size or args.batch_size, ctx.device, ctx.rank,
                                                 ctx.world_size, args.channels_last)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f'error: {e}')
    _logger.info(f'train: {train_loader.dataset_size} images, {len(train_loader)} steps/epoch/rank; '
                 f'eval ({eval_split}): {eval_loader.dataset_size} images')

    scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, decay_epochs=args.decay_epochs,
        decay_milestones=args.decay_milestones, cooldown_epochs=args.cooldown_epochs,
        patience_epochs=args.patience_epochs, decay_rate=args.decay_rate, min_lr=args.min_lr,
        warmup_lr=args.warmup_lr, warmup_epochs=args.warmup_epochs, warmup_prefix=args.warmup_prefix,
        plateau_mode='min' if args.eval_metric == 'loss' else 'max', step_on_epochs=not args.sched_on_updates,
        updates_per_epoch=len(train_loader))

    start_epoch, num_updates, history, best = 0, 0, [], None
    if args.resume:
        try:
            path = wt_training.find_checkpoint(args.resume)
            checkpoint = wt_training.load_checkpoint_file(path)
        except (ValueError, FileNotFoundError) as e:
            raise SystemExit(f'error: --resume: {e}')
        restore = {} if args.no_resume_opt else dict(optimizer=optimizer, scheduler=scheduler, scaler=scaler)
        start_epoch = wt_training.restore_training_state(checkpoint, model=model, model_ema=model_ema, **restore)
        if not args.no_resume_opt:
            num_updates = int(checkpoint.get('num_updates', start_epoch * len(train_loader)))
            history = list(checkpoint.get('history') or [])
            best = checkpoint.get('best')
        _warn_changed_args(checkpoint.get('args') or {}, args)
        _logger.info(f'resumed from {path} (epoch {start_epoch - 1} done)')
        if start_epoch > 0:
            scheduler.step(start_epoch)
            if args.sched_on_updates:
                scheduler.step_update(num_updates)

    train_model = model
    if args.torchcompile:
        train_model = torch.compile(model, backend=args.torchcompile)
    eval_model = train_model
    if ctx.distributed:
        device_ids = [ctx.device.index] if ctx.device.type == 'cuda' else None
        train_model = torch.nn.parallel.DistributedDataParallel(train_model, device_ids=device_ids)

    mixup_fn = None
    if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
        if args.batch_size % 2:
            raise SystemExit(f'error: --mixup/--cutmix mix pairs within a batch; --batch-size must be even, '
                             f'got {args.batch_size}')
        mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                         prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                         label_smoothing=args.smoothing, num_classes=args.num_classes or model.num_classes)
        train_loss_fn = SoftTargetCrossEntropy()
    elif args.smoothing:
        train_loss_fn = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        train_loss_fn = torch.nn.CrossEntropyLoss()
    train_loss_fn = train_loss_fn.to(ctx.device)

    out_dir = None
    if ctx.is_primary:
        out_dir = _output_dir(args, data_config)
        out_dir.mkdir(parents=True, exist_ok=True)
        wt_training.write_args_yaml(out_dir / wt_training.ARGS_FILE, args,
                                    hardware=wt_training.describe_hardware(ctx.device, ctx.world_size))
        if history:  # a resumed run continues the summary from the checkpoint, dropping rows of redone epochs
            wt_training.write_summary_csv(out_dir / wt_training.SUMMARY_FILE, history)
        _logger.info(f'writing to {out_dir}')
    show_progress = not args.no_progress and sys.stderr.isatty()

    for epoch in range(start_epoch, num_epochs):
        wt_training.seed_everything(wt_training.epoch_seed(args.seed, epoch, ctx.rank))
        train_loader.set_epoch(epoch)
        if mixup_fn is not None and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
            mixup_fn.mixup_enabled = False
        try:
            train_metrics, num_updates = wt_training.train_one_epoch(
                train_model, train_loader, optimizer, train_loss_fn, epoch=epoch, ctx=ctx, scheduler=scheduler,
                num_updates=num_updates, mixup_fn=mixup_fn, model_ema=model_ema, amp_dtype=amp_dtype, scaler=scaler,
                clip_grad=args.clip_grad, clip_mode=args.clip_mode, log_interval=args.log_interval,
                progress=show_progress)
        except wt_training.NonFiniteLossError as e:
            kept = 'no checkpoint was written yet'
            if out_dir is not None and (out_dir / wt_training.LAST_CHECKPOINT).is_file():
                kept = f'last good checkpoint kept: {out_dir / wt_training.LAST_CHECKPOINT} (epoch {epoch - 1})'
            message = f'stopped: {e}; {kept}'
            if ctx.is_primary:
                _logger.error(message)
            _shutdown(ctx)
            raise SystemExit(message)
        if ctx.distributed and args.dist_bn:
            from timm.utils import distribute_bn
            distribute_bn(model, ctx.world_size, args.dist_bn == 'reduce')
        eval_metrics = wt_training.evaluate(eval_model, eval_loader, ctx, amp_dtype, show_progress)
        ema_metrics = None
        if model_ema is not None:
            if ctx.distributed and args.dist_bn:
                from timm.utils import distribute_bn
                distribute_bn(model_ema, ctx.world_size, args.dist_bn == 'reduce')
            ema_metrics = wt_training.evaluate(model_ema, eval_loader, ctx, amp_dtype, show_progress, 'eval ema')
        epoch_lr = sum(g['lr'] for g in optimizer.param_groups) / len(optimizer.param_groups)
        scheduler.step(epoch + 1, (ema_metrics or eval_metrics)[args.eval_metric])

        row = dict(epoch=epoch, train_loss=train_metrics['loss'], train_top1=train_metrics['top1'],
                   eval_loss=eval_metrics['loss'], eval_top1=eval_metrics['top1'], eval_top5=eval_metrics['top5'])
        if ema_metrics is not None:
            row.update(ema_eval_loss=ema_metrics['loss'], ema_eval_top1=ema_metrics['top1'],
                       ema_eval_top5=ema_metrics['top5'])
        row.update(lr=epoch_lr,
                   epoch_seconds=train_metrics['seconds'], images_per_s=train_metrics['images_per_s'],
                   eval_images_per_s=eval_metrics['images_per_s'], peak_memory_mb=train_metrics['peak_memory_mb'],
                   train_samples=train_metrics['samples'], train_steps=train_metrics['steps'],
                   world_size=ctx.world_size)
        if 'solver_nstep' in train_metrics:
            row['solver_nstep'] = train_metrics['solver_nstep']
        if ctx.distributed:
            row['rank_weight_max_diff'] = wt_training.rank_weight_max_diff(model, ctx)
        history.append(row)
        chosen = ema_metrics or eval_metrics
        score = chosen[args.eval_metric]
        improved = best is None or (score < best['score'] if args.eval_metric == 'loss' else score > best['score'])
        if improved:
            best = dict(epoch=epoch, score=score, metric=args.eval_metric, ema=ema_metrics is not None)
        _logger.info(
            f'epoch {epoch}: train loss {row["train_loss"]:.4f} top1 {row["train_top1"]:.2f} | eval ({eval_split}) loss '
            f'{row["eval_loss"]:.4f} top1 {row["eval_top1"]:.2f} top5 {row["eval_top5"]:.2f}'
            + (f' | ema top1 {ema_metrics["top1"]:.2f}' if ema_metrics else '')
            + f' | {row["images_per_s"]:.0f} img/s, {row["epoch_seconds"]:.1f} s')
        if ctx.is_primary:
            ckpt = dict(model=model, optimizer=optimizer, scheduler=scheduler, epoch=epoch, args=args, history=history,
                        best=best, model_ema=model_ema, scaler=scaler, num_updates=num_updates)
            wt_training.save_training_checkpoint(out_dir / wt_training.LAST_CHECKPOINT, **ckpt)
            if improved:
                wt_training.save_training_checkpoint(out_dir / wt_training.BEST_CHECKPOINT, **ckpt)
            wt_training.write_summary_csv(out_dir / wt_training.SUMMARY_FILE, history)

    if ctx.is_primary and best is not None:
        best_ckpt = wt_training.load_checkpoint_file(out_dir / wt_training.BEST_CHECKPOINT)
        final = model_ema.module if model_ema is not None else model
        final.load_state_dict(best_ckpt['state_dict_ema' if model_ema is not None else 'state_dict'])
        classes = getattr(eval_loader, 'classes', None)
        wt_training.export_weights(final, out_dir, data_config, classes)
        _logger.info(f'best {best["metric"]} {best["score"]:.4f} at epoch {best["epoch"]}; weights in '
                     f'{out_dir / wt_training.WEIGHTS_FILE}')
    _shutdown(ctx)
    return 0


_RECIPE_KEYS = ('model', 'epochs', 'batch_size', 'lr', 'opt', 'weight_decay', 'sched', 'warmup_epochs', 'seed',
                'dataset', 'val_split_size', 'val_split_seed', 'train_subset', 'smoothing', 'mixup', 'cutmix',
                'model_kwargs', 'input_size', 'num_classes', 'model_ema')


def _warn_changed_args(saved: dict, args) -> None:
    current = wt_training.plain(vars(args))
    changed = [f'{k}: {saved[k]!r} -> {current.get(k)!r}' for k in _RECIPE_KEYS
               if k in saved and saved[k] != current.get(k)]
    if changed:
        _logger.warning('resuming with a different recipe than the checkpoint\'s, results will differ from an '
                        'uninterrupted run: ' + '; '.join(changed))


def _shutdown(ctx) -> None:
    if ctx.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == '__main__':
    sys.exit(main())
