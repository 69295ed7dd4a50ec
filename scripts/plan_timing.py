#!/usr/bin/env python3
"""What a budget's plan reads per training image size: the run's own epoch loop timed on copies (what
``bench budget`` and ``bench time-to-accuracy`` plan from) beside bare training steps on one batch (what they
planned from before), both as seconds per epoch, one after the other on this machine.

    python scripts/plan_timing.py configs/wt_resnet_tiny.c10.yaml --train-args="--progressive-min-size 24"
"""
import argparse
import shlex
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='a train.py recipe')
    parser.add_argument('--train-args', default='', metavar='"FLAGS"', help='train.py flags over the recipe, one string')
    args = parser.parse_args()
    from wt_zoo.trainer import TrainingRun, parse_train_args
    run = TrainingRun(parse_train_args(['--config', args.config, '--no-progress', *shlex.split(args.train_args)]))
    steps = len(run.train_loader)
    full = run.args.input_size[-1]
    sizes = sorted({run.train_image_size(epoch) for epoch in range(run.num_epochs)}, key=lambda size: size or full)
    print(f'{run.args.model}: amp {run.args.amp}, channels_last {run.args.channels_last}, {steps} steps per epoch')
    for size in sizes:
        start = time.perf_counter()
        loop = run.seconds_per_loop_step(size) * steps
        loop_cost = time.perf_counter() - start
        start = time.perf_counter()
        bare = run.seconds_per_step(image_size=size) * steps
        bare_cost = time.perf_counter() - start
        print(f'{size or full} px: epoch loop {loop:.1f} s per epoch (timed in {loop_cost:.1f} s), bare steps {bare:.1f} '
              f'({bare_cost:.1f} s), {100 * (loop / bare - 1):+.0f} %')


if __name__ == '__main__':
    main()
