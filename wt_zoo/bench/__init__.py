"""Benchmarks of the zoo: weight-tied vs DEQ vs sparse masks, measured side by side (``python -m wt_zoo.bench``).

Subcommands, one module each:

- ``efficiency``  params, fvcore FLOPs, inference and training images/s, peak training memory (with and
  without grad checkpointing), DEQ solver iterations; ratios to the dense WT twin; the performance bars.
- ``stability``   WT and DEQ twins under their recipes over seeds and learning rates: divergence, accuracy
  spread, DEQ solver iterations and residual over training.
- ``sweep``       depth x width x mask density (kind, mode) under one recipe over seeds, with plots.
- ``guidelines``  docs/guidelines.md written from the sweep's results.
- ``ablation``    variants of one recipe against its baseline on the held-out split, over seeds (how a recipe's
  settings are chosen).
- ``budget``      the epochs twins can share within a device-time budget, from timed training steps.
- ``time-to-accuracy``  held-out top-1 against training minutes for twins under one recipe and budget.
- ``compare``     finished time-to-accuracy runs grouped into arms over seeds, against the seed resolution.
- ``train-speed`` training images/s per numeric path (bf16, channels_last, compile), and what ``auto`` picks.
- ``transfer``    the .c10 checkpoints fine-tuned on Fashion-MNIST against scratch, same recipe and budget.
- ``deq-solver``  published DEQ checkpoints at several test-time solver caps on their held-out split.
- ``claims``      the paper's findings against the committed results files, one row each with a verdict
  (reads results only; trains and times nothing).

Each writes a results folder (CSV + JSON per table, README.md with tables and plots, run.json with the
exact command, machine, date and git commit); see :mod:`wt_zoo.bench.common`.
"""
import argparse
import sys
from typing import Optional, Sequence

__all__ = ['main', 'build_parser']

SUBCOMMANDS = ('efficiency', 'stability', 'sweep', 'guidelines', 'ablation', 'budget', 'time-to-accuracy', 'compare',
               'train-speed', 'transfer', 'deq-solver', 'claims')


def build_parser() -> argparse.ArgumentParser:
    from . import (ablation, budget, claims, compare, deq_solver, efficiency, guidelines, stability, sweep,
                   time_to_accuracy, train_speed, transfer)
    parser = argparse.ArgumentParser(prog='python -m wt_zoo.bench', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest='command', required=True, metavar='{' + ','.join(SUBCOMMANDS) + '}')
    for name, module in (('efficiency', efficiency), ('stability', stability), ('sweep', sweep),
                         ('guidelines', guidelines), ('ablation', ablation), ('budget', budget), ('time-to-accuracy', time_to_accuracy),
                         ('compare', compare), ('train-speed', train_speed), ('transfer', transfer), ('deq-solver', deq_solver),
                         ('claims', claims)):
        doc = module.__doc__.strip()
        sub = subparsers.add_parser(name, help=doc.split('\n')[0].split(': ', 1)[-1], description=doc,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(module=module)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    import wt_zoo  # noqa: F401  registers the models with timm
    return args.module.run(args, argv[1:])
