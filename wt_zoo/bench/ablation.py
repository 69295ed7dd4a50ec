"""``ablation``: variants of one recipe against its baseline, on the held-out split, over seeds.

Each ``--variant NAME="FLAGS"`` is the ``--recipe`` with some train.py flags changed (the first
variant is the baseline, usually ``base=`` with no flags); every variant trains once per seed, as
train.py would, in its own run folder under ``--runs``, and rerunning the command continues where it
stopped. Accuracy is the last epoch's on images held out from the training split, so a recipe's
settings are chosen without touching the test split; the resolution is twice the seed-to-seed
standard deviation pooled over the variants, and a variant counts as better or worse than the
baseline only outside it. ``--tta`` adds the same weights' test-time-augmented figure beside the
plain one.

    python -m wt_zoo.bench ablation --recipe configs/wt_resnet_tiny.c10.yaml --epochs 16 --out results/ablation/tiny \\
        --variant base= --variant cutout8="--cutout 8" --variant ema995="--model-ema-decay 0.995"
"""
import argparse
import re
import shlex
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..tta import TTA_MODES
from .common import Column, Progress, ResultsFolder, log, markdown_table, partial_section, warn_if_busy
from .recipe import (add_recipe_arguments, data_flags, fill_defaults, mean_std, pooled_std, recipe_file_settings,
                     recipe_overrides, run_finished, train_outcome)

__all__ = ['add_arguments', 'run', 'parse_variant', 'summarise']

CPU_DEFAULTS = dict(epochs=16, seeds=[0, 1])
CUDA_DEFAULTS = dict(epochs=40, seeds=[0, 1, 2])
BETTER, WORSE, UNRESOLVED = 'better', 'worse', 'within resolution'
IDENTICAL = 'identical runs: the flags changed nothing in training'
LEARNING_COLUMNS = ('train_loss', 'eval_loss', 'eval_top1', 'ema_eval_loss', 'ema_eval_top1')


def parse_variant(text: str) -> Tuple[str, List[str]]:
    """'NAME=FLAGS' -> (NAME, train.py flags); NAME names the run folders, so it is a plain word."""
    name, sep, flags = text.partition('=')
    if not sep or not re.fullmatch(r'[A-Za-z0-9_.+-]+', name):
        raise argparse.ArgumentTypeError(f'--variant expects NAME="train.py flags" with NAME made of letters, digits '
                                         f'and _.+- (e.g. cutout8="--cutout 8", or base= for the baseline), got '
                                         f'{text!r}')
    return name, shlex.split(flags)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--recipe', required=True, metavar='CONFIG.yaml', help='the train.py recipe every variant changes')
    parser.add_argument('--variant', dest='variants', type=parse_variant, action='append', required=True,
                        metavar='NAME="FLAGS"', help='a variant: train.py flags over the recipe; repeat it, the first '
                        'is the baseline')
    parser.add_argument('--seeds', type=int, nargs='+', default=None,
                        help=f"training seeds (default: {CPU_DEFAULTS['seeds']} on CPU, {CUDA_DEFAULTS['seeds']} on cuda)")
    parser.add_argument('--tta', default='flip', choices=list(TTA_MODES),
                        help="test-time augmentation figure beside the plain one (default: %(default)s)")
    parser.add_argument('--runs', default=None, help='parent folder of the run folders (default: output/ablation/ + '
                        "the --out folder's name)")
    parser.add_argument('--out', default='results/ablation', help='results folder (default: %(default)s)')
    add_recipe_arguments(parser, CPU_DEFAULTS, CUDA_DEFAULTS)


def _verdict(delta: float, resolution: float) -> str:
    if abs(delta) <= resolution:
        return UNRESOLVED
    return BETTER if delta > 0 else WORSE


def learning_curve(history: Sequence[Dict[str, Any]]) -> List[List[Any]]:
    """What a run learned, epoch by epoch (losses and accuracies, no timings): equal curves mean one run twice."""
    return [[h.get(key) for key in LEARNING_COLUMNS] for h in history]


def summarise(runs: List[Dict[str, Any]], variants: Sequence[Tuple[str, List[str]]], tta: str,
              curves: Optional[Dict[Tuple[str, int], Any]] = None) -> Tuple[List[Dict[str, Any]], Any]:
    """One row per variant (mean and std over its seeds, difference to the baseline with a verdict) and the
    resolution (twice the pooled seed std; None below two seeds). ``curves`` ((variant, seed) -> learning curve)
    tells a variant that trained exactly as the baseline did, whatever its flags said."""
    tta_key = f"held_out_tta_{tta.replace('-', '_')}_top1"
    groups = {name: [r for r in runs if r['variant'] == name and r['status'] == 'ok'] for name, _ in variants}
    std = pooled_std([[r['held_out_top1'] for r in group] for group in groups.values()])
    resolution = 2 * std if std is not None else None
    rows: List[Dict[str, Any]] = []
    for name, flags in variants:
        group = groups[name]
        everything = [r for r in runs if r['variant'] == name]
        row: Dict[str, Any] = dict(variant=name, flags=shlex.join(flags), seeds=len(group),
                                   diverged=len(everything) - len(group))
        if group:
            top1_mean, top1_std = mean_std([r['held_out_top1'] for r in group])
            row.update(top1_mean=top1_mean, top1_std=top1_std,
                       train_minutes=float(np.mean([r['train_seconds'] for r in group])) / 60,
                       train_img_s=float(np.mean([r['train_img_s'] for r in group])))
            tta_values = [r[tta_key] for r in group if r.get(tta_key) is not None]
            if tta != 'none' and tta_values:
                row['tta_top1_mean'] = float(np.mean(tta_values))
            solver = [r['nstep_last'] for r in group if r.get('nstep_last') is not None]
            if solver:
                row.update(nstep_last=float(np.mean(solver)),
                           residual_last=float(np.mean([r['residual_last'] for r in group])))
        rows.append(row)
    base = rows[0]
    for row in rows[1:]:
        if row.get('top1_mean') is None or base.get('top1_mean') is None:
            continue
        row['delta'] = row['top1_mean'] - base['top1_mean']
        if resolution is not None:
            row['verdict'] = _verdict(row['delta'], resolution)
        if curves and _same_learning(runs, curves, row['variant'], base['variant']):
            row['verdict'] = IDENTICAL
        if row.get('tta_top1_mean') is not None and base.get('tta_top1_mean') is not None:
            row['tta_delta'] = row['tta_top1_mean'] - base['tta_top1_mean']
    return rows, resolution


def _same_learning(runs: List[Dict[str, Any]], curves: Dict[Tuple[str, int], Any], variant: str, base: str) -> bool:
    """Every seed of ``variant`` learned exactly what the baseline's run of that seed learned."""
    seeds = [r['seed'] for r in runs if r['variant'] == variant]
    return bool(seeds) and all(curves.get((variant, seed)) is not None
                               and curves[(variant, seed)] == curves.get((base, seed)) for seed in seeds)


def run(args, argv: Sequence[str]) -> int:
    fill_defaults(args, CPU_DEFAULTS, CUDA_DEFAULTS)
    names = [name for name, _ in args.variants]
    if len(set(names)) != len(names):
        raise SystemExit(f'error: --variant names must differ, got {names}')
    if not Path(args.recipe).is_file():
        raise SystemExit(f'error: --recipe {args.recipe}: no such file')
    runs_dir = args.runs or f'output/ablation/{Path(args.out).name}'
    folder = ResultsFolder(args.out, 'ablation', argv, settings=vars(args))
    folder.provenance['recipe_settings'] = recipe_file_settings(args.recipe)  # readable after the file moves on
    warn_if_busy('the training seconds')
    shared = recipe_overrides(args)
    todo = [(name, flags, seed) for seed in args.seeds for name, flags in args.variants]
    progress = Progress([1.0] * len(todo))
    runs: List[Dict[str, Any]] = []
    curves: Dict[Tuple[str, int], Any] = {}
    run_dir_of = lambda name, seed: f'{runs_dir}/{name}-seed{seed}'
    for name, flags, seed in progress.within(
            todo, args.stop_after, lambda item: run_finished(run_dir_of(item[0], item[2]), folder.outcomes)):
        what = f'{name} seed {seed}'
        progress.start(what)
        run_dir = run_dir_of(name, seed)
        outcome = train_outcome(run_dir, ['--config', args.recipe, *shared, '--seed', str(seed), *flags],
                                data_flags(args), tta=args.tta, keep_dir=folder.outcomes)
        row = dict(variant=name, seed=seed, run_folder=run_dir)
        row.update((k, v) for k, v in outcome.items() if k not in row and k not in ('history', 'model_kwargs'))
        curves[(name, seed)] = learning_curve(outcome.get('history', []))
        runs.append(row)
        folder.write_table('runs', runs)
        result = (f"held-out top-1 {row['held_out_top1']:.2f}%" if row['status'] == 'ok'
                  else f"DIVERGED: {row['error']}")
        progress.finish(f'{what}: {result} ({row["train_seconds"]:.0f} s)')

    rows, resolution = summarise(runs, args.variants, args.tta, curves)
    folder.write_table('variants', rows)
    sections = format_sections(rows, runs, resolution, args)
    readme = folder.finish(f'Ablation of `{args.recipe}` on the held-out split',
                           partial_section(len(runs), len(todo)) + sections,
                           extra=dict(resolution=resolution, runs_finished=len(runs), runs_planned=len(todo)))
    print(sections[1])
    log(f'wrote {readme.parent}/ (README.md, variants/runs .csv and .json, run.json)')
    return 0


def format_sections(rows, runs, resolution, args) -> List[str]:
    pct, pts = '{:.2f}', '{:+.2f}'
    cols = [Column('variant', 'variant'), Column('flags', 'train.py flags over the recipe', lambda v: f'`{v}`'),
            Column('seeds', 'seeds'), Column('diverged', 'diverged'),
            Column('top1_mean', 'held-out top-1 (%)', pct), Column('top1_std', 'std', pct),
            Column('delta', 'vs baseline', pts), Column('verdict', 'verdict')]
    if args.tta != 'none':
        cols += [Column('tta_top1_mean', f'with {args.tta} TTA (%)', pct), Column('tta_delta', 'vs baseline', pts)]
    cols += [Column('train_minutes', 'train min / run', '{:.1f}'), Column('train_img_s', 'train img/s', '{:.0f}')]
    if any(r.get('nstep_last') is not None for r in rows):
        cols += [Column('nstep_last', 'DEQ iterations, last epoch', '{:.1f}'),
                 Column('residual_last', 'DEQ residual, last epoch', '{:.3g}')]
    first = runs[0]
    text = (f'Recipe `{args.recipe}` for {args.epochs} epochs on {first["train_images"]:,} training images (its '
            f'dataset\'s training split less {args.held_out:,} held out, seed {args.held_out_seed}), seeds '
            f'{", ".join(map(str, args.seeds))}' + (f', extra train.py flags `{args.train_args}`' if args.train_args
                                                    else '') + '; '
            f'the first variant is the baseline. Accuracy: the last epoch\'s weights (the EMA\'s where the recipe '
            f'keeps one) on {first["heldout_images"]:,} held-out images, mean over seeds; never the test split. ')
    if resolution is not None:
        text += (f'**Resolution: {resolution:.2f} points** (twice the seed-to-seed standard deviation pooled over the '
                 'variants): a variant is better or worse than the baseline only by more than that.')
    else:
        text += 'Resolution: not measured (one seed); no verdicts.'
    if args.tta != 'none':
        text += (f' The TTA column ({args.tta}) is the same weights with test-time augmentation, reported beside '
                 'the plain figure, never instead of it.')
    run_cols = [Column('variant', 'variant'), Column('seed', 'seed'), Column('status', 'status'),
                Column('held_out_top1', 'held-out top-1 (%)', pct), Column('train_seconds', 'train s', '{:.0f}'),
                Column('run_folder', 'run folder')]
    return [text, '## Variants\n\n' + markdown_table(rows, cols), '## Every run\n\n' + markdown_table(runs, run_cols)]
