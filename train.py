#!/usr/bin/env python3
"""Train a wt-zoo (or any timm) model with timm's flags, on CIFAR-10/100, Fashion-MNIST or an image folder.

    python train.py --config configs/wt_resnet_small.c10.yaml
    python train.py --model wt_resnet_tiny --dataset cifar10 --epochs 30 -b 128 --lr 0.1
    torchrun --nproc_per_node 2 train.py --model wt_resnet_small --dataset cifar10 ...

Writes to --output/--experiment: args.yaml, summary.csv (one row per epoch), last.pth.tar and
best.pth.tar (full state for --resume, written atomically) and, at the end, model.safetensors with
timm's config.json (load it with ``local-dir:<folder>``). The run itself is wt_zoo.trainer.TrainingRun;
this file is its command line.
"""
import logging
import sys

from wt_zoo.trainer import OutputFolderInUse, TrainingRun, TrainingStopped, build_train_parser as build_parser, \
    parse_train_args as parse_args

_logger = logging.getLogger('train')


def main(argv=None) -> int:
    args = parse_args(argv)
    from timm.utils import setup_default_logging
    setup_default_logging()
    try:
        run = TrainingRun(args)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f'error: {e}')
    if not run.ctx.is_primary:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        run.run(progress=not args.no_progress and sys.stderr.isatty())
    except OutputFolderInUse as e:
        raise SystemExit(f'error: {e}')
    except TrainingStopped as e:
        if run.ctx.is_primary:
            _logger.error(str(e))
        raise SystemExit(str(e))
    finally:
        run.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
