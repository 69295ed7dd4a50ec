"""compare: finished time-to-accuracy runs grouped into arms (one run per seed), judged against the seed resolution.

A recipe change under a wall-clock budget is judged like any recipe setting: on the held-out split,
over seeds. Each ``--arm NAME=FOLDER,FOLDER,...`` names ``time-to-accuracy`` results folders that
trained one model with the same recipe and train.py flags but the seed; the first arm is the
baseline. The command reads their summary and curves and trains nothing. The resolution is twice the
seed-to-seed standard deviation pooled over the arms (as ``bench ablation``): an arm is better or
worse than the baseline only by more than that. Every run must come from one machine model: the
budget is minutes, so a faster machine is another experiment, not another seed. Test top-1 (each
run's once-measured figure) is reported beside the held-out one, never used for the verdict.

    python -m wt_zoo.bench compare --out results/progressive_tiny \\
        --arm v2=results/time_to_accuracy_xeon,results/time_to_accuracy_xeon_s1 \\
        --arm prog24=results/time_to_accuracy_xeon_prog24,results/time_to_accuracy_xeon_prog24_s1
"""
import argparse
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .ablation import summarise
from .common import REPO_ROOT, Column, ResultsFolder, log, markdown_table, read_table
from .recipe import mean_std
from .time_to_accuracy import BARS, meets_bar

__all__ = ['add_arguments', 'run', 'parse_arm', 'load_run', 'compare_arms', 'readme_section']

# Recipe keys a run resolves for itself: they may differ between the seeds of one arm.
PER_RUN_KEYS = ('epochs', 'seed', 'experiment', 'amp', 'channels_last')


def parse_arm(text: str) -> Tuple[str, List[str]]:
    """'NAME=FOLDER,FOLDER,...' -> (NAME, folders)."""
    name, sep, folders = text.partition('=')
    paths = [f for f in folders.split(',') if f]
    if not sep or not re.fullmatch(r'[A-Za-z0-9_.+-]+', name) or not paths:
        raise argparse.ArgumentTypeError(
            f'--arm expects NAME=FOLDER,FOLDER,... (time-to-accuracy results folders, one run per seed; NAME made '
            f'of letters, digits and _.+-), got {text!r}')
    return name, paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--arm', dest='arms', type=parse_arm, action='append', required=True,
                        metavar='NAME=FOLDER,...', help='an arm: time-to-accuracy results folders, one run per seed; '
                        'repeat it (two at least), the first is the baseline')
    parser.add_argument('--model', default=None,
                        help="the model whose rows are compared (default: each folder's only held-out row)")
    parser.add_argument('--at-minutes', type=float, nargs='+', default=[20, 30, 40, 50],
                        help='training minutes at which each run\'s held-out top-1 is read off its curve')
    parser.add_argument('--out', required=True, help='results folder')


def _train_flags(command: str) -> List[str]:
    """The ``--train-args`` of a time-to-accuracy command, split into train.py flags."""
    words = shlex.split(command)
    for i, word in enumerate(words):
        if word.startswith('--train-args='):
            return shlex.split(word.split('=', 1)[1])
        if word == '--train-args' and i + 1 < len(words):
            return shlex.split(words[i + 1])
    return []


def _without_seed(flags: List[str]) -> List[str]:
    out, skip = [], False
    for flag in flags:
        if skip:
            skip = False
        elif flag == '--seed':
            skip = True
        elif not flag.startswith('--seed='):
            out.append(flag)
    return out


def _repo_relative(folder: Path) -> str:
    path = Path(folder).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def heldout_at(curve: Sequence[Dict[str, Any]], minutes: float) -> Optional[float]:
    """Held-out top-1 of the last evaluation at or before ``minutes`` of training (None before the first)."""
    reached = [p for p in curve if p['train_minutes'] <= minutes]
    return reached[-1]['heldout_top1'] if reached else None


def load_run(folder, model: Optional[str], at_minutes: Sequence[float]) -> Dict[str, Any]:
    """One finished held-out run of a time-to-accuracy results folder, as a comparison reads it."""
    folder = Path(folder)
    try:
        summary, curves = read_table(folder, 'summary'), read_table(folder, 'curves')
    except FileNotFoundError as e:
        raise SystemExit(f'error: {folder} is not a time-to-accuracy results folder ({e}); --arm names folders '
                         'written by `python -m wt_zoo.bench time-to-accuracy --out FOLDER`')
    rows = [r for r in summary if model is None or r['model'] == model]
    if len(rows) != 1:
        held = ', '.join(r['model'] for r in summary) or 'none'
        raise SystemExit(f'error: {folder} holds held-out runs of {held}: name the one to compare with --model'
                         if rows else f'error: {folder} has no held-out run of {model} (it holds: {held})')
    row = rows[0]
    flags = _train_flags(row['command'])
    run = dict(folder=_repo_relative(folder), model=row['model'], config=row['config'], seed=row['recipe']['seed'],
               flags=_without_seed(flags),
               settings={k: v for k, v in row['recipe'].items() if k not in PER_RUN_KEYS},
               epochs=row['epochs'], train_minutes=row['train_minutes'], images_per_s=row['images_per_s'],
               heldout_top1=row['heldout_top1'], test_top1=row['test_top1'], hardware=row['hardware'],
               numeric_path=f"amp {row['amp']}, channels_last {row['channels_last']}",
               matmul_gflops=row.get('matmul_gflops'), load_average_1min=row.get('load_average_1min'),
               date=row['date'], git_commit=row['git_commit'], command=row['command'])
    curve = [p for p in curves if p['model'] == row['model']]
    run.update({f'heldout_at_{m:g}': heldout_at(curve, m) for m in at_minutes})
    return run


def _check_arm(name: str, runs: List[Dict[str, Any]]) -> None:
    first = runs[0]
    for other in runs[1:]:
        for key in ('config', 'flags', 'settings'):
            if other[key] != first[key]:
                what = key if key != 'settings' else 'recipe setting ' + ', '.join(
                    f'{k} ({first[key].get(k)!r} vs {other[key].get(k)!r})'
                    for k in sorted(set(first[key]) | set(other[key])) if first[key].get(k) != other[key].get(k))
                raise SystemExit(f'error: arm {name} mixes recipes: {other["folder"]} differs from {first["folder"]} '
                                 f'in its {what}; an arm holds one recipe over seeds')
    seeds = [r['seed'] for r in runs]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f'error: arm {name} holds seed {max(seeds, key=seeds.count)} twice '
                         f'({", ".join(r["folder"] for r in runs)}); one run per seed')


def _change(base: Dict[str, Any], arm: Dict[str, Any]) -> str:
    """What an arm changes over the baseline: train.py flags and recipe settings (its recipe file's included)."""
    parts = [shlex.join(arm['flags'][len(base['flags']):])] if arm['flags'][:len(base['flags'])] == base['flags'] \
        else [shlex.join(arm['flags'])]
    keys = sorted(set(base['settings']) | set(arm['settings']))
    parts += [f'{k}: {base["settings"].get(k)} -> {arm["settings"].get(k)}' for k in keys
              if base['settings'].get(k) != arm['settings'].get(k) and f'--{k.replace("_", "-")}' not in arm['flags']]
    if arm['config'] != base['config']:
        parts.insert(0, f'config {arm["config"]}')
    return '; '.join(p for p in parts if p) or '(the same recipe)'


def compare_arms(arms: Sequence[Tuple[str, List[Dict[str, Any]]]]) -> Tuple[List[Dict[str, Any]], Optional[float]]:
    """One row per arm (held-out mean and std over its seeds, difference to the baseline with a verdict, the same
    seed by seed, and the test figures beside), and the resolution (twice the pooled seed std; None below two
    seeds in every arm)."""
    if len(arms) < 2:
        raise SystemExit('error: compare needs two --arm at least (the first is the baseline)')
    names = [name for name, _ in arms]
    if len(set(names)) != len(names):
        raise SystemExit(f'error: --arm names must differ, got {names}')
    every = [r for _, runs in arms for r in runs]
    for key, what in (('model', 'model'), ('hardware', 'machine')):
        values = {r[key] for r in every}
        if len(values) > 1:
            raise SystemExit(f'error: the runs compared must share one {what}; they ran '
                             + '; '.join(f'{r["folder"]}: {r[key]}' for r in every))
    for name, runs in arms:
        _check_arm(name, runs)
    as_ablation = [dict(variant=name, seed=r['seed'], status='ok', held_out_top1=r['heldout_top1'],
                        train_seconds=r['train_minutes'] * 60, train_img_s=r['images_per_s'])
                   for name, runs in arms for r in runs]
    rows, resolution = summarise(as_ablation, [(name, runs[0]['flags']) for name, runs in arms], tta='none')
    base_runs = arms[0][1]
    base_by_seed = {r['seed']: r for r in base_runs}
    for row, (name, runs) in zip(rows, arms):
        row['change'] = '(baseline)' if runs is base_runs else _change(base_runs[0], runs[0])
        row['seed_list'] = ', '.join(str(r['seed']) for r in runs)
        row['test_mean'], row['test_std'] = mean_std([r['test_top1'] for r in runs])
        row['epochs_mean'] = float(np.mean([r['epochs'] for r in runs]))
        if runs is not base_runs:
            row['test_delta'] = row['test_mean'] - rows[0]['test_mean']
            paired = [(r['seed'], r['heldout_top1'] - base_by_seed[r['seed']]['heldout_top1'])
                      for r in runs if r['seed'] in base_by_seed]
            row['by_seed'] = ', '.join(f'seed {s}: {d:+.2f}' for s, d in paired) or 'no seed shared with the baseline'
    return rows, resolution


def _run_columns(at_minutes: Sequence[float], link) -> List[Column]:
    return [Column('arm', 'arm'), Column('seed', 'seed'), Column('epochs', 'epochs'),
            Column('train_minutes', 'training min', '{:.1f}'), Column('images_per_s', 'train img/s', '{:,.0f}'),
            Column('heldout_curve', 'held-out top-1 at ' + ' / '.join(f'{m:g}' for m in at_minutes) + ' min'),
            Column('heldout_top1', 'held-out top-1, end', '{:.2f}'), Column('test_top1', 'test top-1', '{:.2f}'),
            Column('matmul_gflops', 'matmul GFLOP/s at start', '{:.0f}'),
            Column('load_average_1min', 'load at start', '{:.2f}'), Column('folder', 'results folder', link)]


def _arm_columns() -> List[Column]:
    pct, pts = '{:.2f}', '{:+.2f}'
    return [Column('variant', 'arm'), Column('change', 'change over the baseline', lambda v: v if v.startswith('(')
                                              else f'`{v}`'),
            Column('seed_list', 'seeds'), Column('top1_mean', 'held-out top-1 (%)', pct), Column('top1_std', 'std', pct),
            Column('delta', 'vs baseline', pts), Column('by_seed', 'seed by seed'), Column('verdict', 'verdict'),
            Column('test_mean', 'test top-1 (%)', pct), Column('test_delta', 'vs baseline', pts),
            Column('epochs_mean', 'epochs', '{:.1f}'), Column('train_minutes', 'training min', '{:.1f}'),
            Column('train_img_s', 'train img/s', '{:,.0f}')]


def _flat_runs(arms, at_minutes) -> List[Dict[str, Any]]:
    rows = []
    for name, runs in arms:
        for r in runs:
            curve = ' / '.join('' if r[f'heldout_at_{m:g}'] is None else f'{r[f"heldout_at_{m:g}"]:.2f}'
                               for m in at_minutes)
            row = dict(arm=name, heldout_curve=curve, **{k: v for k, v in r.items() if k != 'settings'})
            row['flags'] = shlex.join(r['flags'])  # the recipe file's settings stay in each run's folder
            rows.append(row)
    return rows


def summary_text(rows: Sequence[Dict[str, Any]], runs: Sequence[Dict[str, Any]], resolution: Optional[float]) -> str:
    """The comparison in words, from the tables (the project README embeds it)."""
    base = rows[0]
    first = runs[0]
    text = [f'`{first["model"]}`, {len(runs)} time-budgeted runs on {first["hardware"]}, held-out top-1 of the '
            f'finished weights (mean ± std over seeds):']
    for row in rows[1:]:
        std = f' ± {row["top1_std"]:.2f}' if row.get('top1_std') is not None else ''
        base_std = f' ± {base["top1_std"]:.2f}' if base.get('top1_std') is not None else ''
        verdict = (f'resolution {resolution:.2f} (twice the pooled seed std of these runs): **{row["verdict"]}**'
                   if resolution is not None else 'no resolution (one seed per arm): no verdict')
        text.append(f'{row["variant"]} {row["top1_mean"]:.2f}{std} % against {base["variant"]} '
                    f'{base["top1_mean"]:.2f}{base_std} %, {row["delta"]:+.2f} points ({row["by_seed"]}); {verdict}. '
                    f'Test top-1, measured once per run: {row["test_mean"]:.2f} against {base["test_mean"]:.2f} % '
                    f'({row["test_delta"]:+.2f}).')
    return ' '.join(text)


def bar_text(runs: Sequence[Dict[str, Any]]) -> str:
    model = runs[0]['model']
    if model not in BARS:
        return ''
    top1, minutes = BARS[model]
    met = [r for r in runs if meets_bar(r)]
    best = max(runs, key=lambda r: r['test_top1'])
    return (f'Bar (>= {top1:g} % test top-1 within {minutes:g} training minutes): met by {len(met)} of {len(runs)} '
            f'runs; best test top-1 {best["test_top1"]:.2f} % ({best["arm"]}, seed {best["seed"]}, '
            f'{best["train_minutes"]:.1f} min).')


def run(args, argv: Sequence[str]) -> int:
    arms = [(name, [load_run(f, args.model, args.at_minutes) for f in folders]) for name, folders in args.arms]
    rows, resolution = compare_arms(arms)
    out = Path(args.out)
    folder = ResultsFolder(out, 'compare', argv, settings=dict(model=args.model, at_minutes=args.at_minutes,
                                                                 out=args.out))
    runs = _flat_runs(arms, args.at_minutes)
    folder.write_table('arms', rows)
    folder.write_table('runs', runs)
    local = lambda f: f'[{f}]({os.path.relpath(REPO_ROOT / f, out.resolve())}/README.md)'
    intro = ('Finished `python -m wt_zoo.bench time-to-accuracy` runs, one per seed, grouped into arms (the first is '
             'the baseline); read from their results folders, nothing trained here. Held-out top-1: 5,000 images '
             'held out of the training split, the last epoch\'s weights (the EMA\'s where kept). '
             + (f'**Resolution: {resolution:.2f} points** (twice the seed-to-seed standard deviation pooled over the '
                'arms): an arm is better or worse than the baseline only by more than that. '
                if resolution is not None else 'Resolution: not measured (one seed per arm); no verdicts. ')
             + 'Test top-1 is each run\'s finished weights on the test split, measured once, never used to choose.')
    commands = '\n'.join(f'- {r["arm"]}, seed {r["seed"]}: `{r["command"]}` (commit `{r["git_commit"][:10]}`, '
                         f'{r["date"]})' for r in runs)
    folder.finish(f'Comparison: {", ".join(name for name, _ in arms)}', [
        intro, '## Arms\n\n' + markdown_table(rows, _arm_columns()),
        summary_text(rows, runs, resolution) + ' ' + bar_text(runs),
        '## Runs\n\n' + markdown_table(runs, _run_columns(args.at_minutes, local)),
        '## Commands that trained them\n\n' + commands], extra=dict(resolution=resolution))
    print(summary_text(rows, runs, resolution))
    log(f'wrote {out}/ (README.md, arms/runs .csv and .json, run.json)')
    return 0


def readme_section(folder: Path) -> str:
    """The project README's view of a comparison folder (scripts/update_readme.py embeds it)."""
    folder = Path(folder)
    if not (folder / 'arms.json').is_file():
        return f'Not measured yet: `python -m wt_zoo.bench compare --out {_repo_relative(folder)} --arm ...`.'
    rows, runs = read_table(folder, 'arms'), read_table(folder, 'runs')
    provenance = json.loads((folder / 'run.json').read_text())
    at_minutes = [float(k.removeprefix('heldout_at_')) for k in runs[0] if k.startswith('heldout_at_')]
    link = lambda f: f'[{f}]({f}/README.md)'
    return '\n\n'.join([markdown_table(runs, _run_columns(at_minutes, link)),
                        markdown_table(rows, _arm_columns()),
                        summary_text(rows, runs, provenance.get('resolution')) + ' ' + bar_text(runs)
                        + f' ({link(_repo_relative(folder))}, made by `{provenance["command"]}`)'])
