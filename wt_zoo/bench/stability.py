"""``stability``: WT and DEQ twins trained with the zoo's recipe over several seeds and learning rates.

What it measures, per (model, learning rate): how many runs diverged (non-finite loss or a DEQ
solve returning NaN/Inf), the spread of the last epoch's held-out accuracy over seeds, and for
DEQs the solver's iterations and relative residual on the held-out images after every epoch. Each ``--recipes`` file (a train.py config; the twins' recipes differ only in what makes a
DEQ a DEQ) trains as train.py would, in its own run folder under ``--runs``, with the peak
learning rate and seed replaced; rerunning the command continues where it stopped.
"""
import argparse
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import yaml

from .common import Column, Progress, ResultsFolder, log, markdown_table, partial_section, warn_if_busy
from .recipe import (add_recipe_arguments, data_flags, default_recipe, fill_defaults, mean_std,
                     recipe_overrides, run_finished, train_outcome)

__all__ = ['add_arguments', 'run', 'summarise', 'solver_trend']

CPU_DEFAULTS = dict(epochs=10, seeds=[0, 1, 2], lrs=[0.1, 0.2, 0.5, 1.0])
CUDA_DEFAULTS = dict(epochs=30, seeds=[0, 1, 2, 3, 4], lrs=[0.05, 0.1, 0.2, 0.5, 1.0, 2.0])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--recipes', nargs='+', metavar='CONFIG.yaml',
                        default=[default_recipe('wt_resnet_tiny.c10.yaml'), default_recipe('deq_resnet_tiny.c10.yaml')],
                        help='train.py recipes of the twins (default: %(default)s)')
    parser.add_argument('--seeds', type=int, nargs='+', default=None,
                        help=f"training seeds (default: {CPU_DEFAULTS['seeds']} on CPU, {CUDA_DEFAULTS['seeds']} on cuda)")
    parser.add_argument('--lrs', type=float, nargs='+', default=None,
                        help=f"peak learning rates (default: {CPU_DEFAULTS['lrs']} on CPU, {CUDA_DEFAULTS['lrs']} on cuda)")
    parser.add_argument('--runs', default='output/stability', help='parent folder of the run folders (default: %(default)s)')
    parser.add_argument('--out', default='results/stability', help='results folder (default: %(default)s)')
    add_recipe_arguments(parser, CPU_DEFAULTS, CUDA_DEFAULTS)


def _recipe_model(recipe: str) -> str:
    """The model a recipe trains, without its pretrained tag."""
    try:
        model = (yaml.safe_load(Path(recipe).read_text()) or {}).get('model')
    except (OSError, yaml.YAMLError) as e:
        raise SystemExit(f'error: cannot read recipe {recipe}: {e}')
    if not model:
        raise SystemExit(f'error: recipe {recipe} names no model (a `model:` line)')
    return str(model).split('.')[0]


def _run_row(model: str, lr: float, seed: int, outcome: Dict[str, Any], run_dir: str) -> Dict[str, Any]:
    from .. import zoo_family
    row: Dict[str, Any] = dict(model=model, family=zoo_family(model)[0], lr=lr, seed=seed)
    row.update({k: outcome.get(k) for k in ('status', 'diverged_epoch', 'epochs_done', 'train_images', 'held_out_top1',
                                            'held_out_loss', 'final_train_loss', 'train_seconds', 'nstep_first',
                                            'nstep_last', 'residual_first', 'residual_last')})
    row.update(error=outcome.get('error') or '', run_folder=run_dir)
    return row


def _curve_rows(model: str, lr: float, seed: int, outcome: Dict[str, Any]) -> List[Dict[str, Any]]:
    rows = []
    for h in outcome['history']:
        row = dict(model=model, lr=lr, seed=seed, epoch=int(h['epoch']) + 1, train_loss=h['train_loss'],
                   held_out_top1=h.get('ema_eval_top1', h['eval_top1']))
        for key, name in (('solver_nstep', 'train_nstep'), ('eval_solver_nstep', 'held_out_nstep'),
                          ('eval_solver_rel_residual', 'held_out_residual')):
            if h.get(key) is not None:
                row[name] = h[key]
        rows.append(row)
    return rows


def summarise(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per (model, lr): runs, diverged runs, held-out top-1 mean/std/min/max over the runs that finished."""
    out = []
    keys = []
    for r in runs:
        if (r['model'], r['lr']) not in keys:
            keys.append((r['model'], r['lr']))
    for model, lr in keys:
        group = [r for r in runs if r['model'] == model and r['lr'] == lr]
        ok = [r for r in group if r['status'] == 'ok' and r.get('held_out_top1') is not None]
        top1 = [r['held_out_top1'] for r in ok]
        row: Dict[str, Any] = dict(model=model, family=group[0]['family'], lr=lr, runs=len(group),
                                   diverged=sum(r['status'] == 'diverged' for r in group))
        if top1:
            top1_mean, top1_std = mean_std(top1)
            row.update(top1_mean=top1_mean, top1_std=top1_std, top1_min=min(top1), top1_max=max(top1),
                       top1_range=max(top1) - min(top1))
        for key in ('nstep_first', 'nstep_last', 'residual_first', 'residual_last'):
            values = [r[key] for r in group if r.get(key) is not None]
            if values:
                row[f'{key}_mean'] = float(np.mean(values))
        out.append(row)
    return out


def solver_trend(row: Dict[str, Any]) -> Optional[Tuple[float, float]]:
    """A DEQ's solver iterations early and late in training, from a stability summary row: on the held-out
    images after its first and last epochs, or (results from before the bench trained with the zoo's
    recipe) on a fixed probe batch before and after training."""
    for first, last in (('nstep_first_mean', 'nstep_last_mean'), ('probe_nstep_start_mean', 'probe_nstep_end_mean')):
        if row.get(first) is not None and row.get(last) is not None:
            return row[first], row[last]
    return None


def plot(runs: List[Dict[str, Any]], curves: List[Dict[str, Any]], out_dir) -> List[str]:
    """stability_accuracy.png (held-out top-1 per run) and stability_solver.png (DEQ iterations over training)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    written = []
    models = list(dict.fromkeys(r['model'] for r in runs))
    lrs = sorted(set(r['lr'] for r in runs))
    colours = plt.rcParams['axes.prop_cycle'].by_key()['color']

    fig, ax = plt.subplots(figsize=(1.2 + 1.6 * len(lrs), 3.8))
    width = 0.8 / max(1, len(models))
    for m_index, model in enumerate(models):
        for l_index, lr in enumerate(lrs):
            group = [r for r in runs if r['model'] == model and r['lr'] == lr]
            x = l_index + (m_index - (len(models) - 1) / 2) * width
            ok = [r['held_out_top1'] for r in group if r['status'] == 'ok' and r.get('held_out_top1') is not None]
            bad = sum(r['status'] == 'diverged' for r in group)
            ax.scatter([x] * len(ok), ok, color=colours[m_index % len(colours)], s=22,
                       label=model if l_index == 0 else None, zorder=3)
            if bad:
                ax.scatter([x], [0], marker='x', color=colours[m_index % len(colours)], s=40, zorder=3)
                ax.annotate(f'{bad} diverged', (x, 0), textcoords='offset points', xytext=(0, 6), ha='center',
                            fontsize=7)
    ax.set_xticks(range(len(lrs)), [f'{lr:g}' for lr in lrs])
    ax.set_xlabel('peak learning rate')
    ax.set_ylabel('held-out top-1 (%)')
    ax.set_title('Final held-out accuracy per seed (x: diverged runs)', fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / 'stability_accuracy.png', dpi=120)
    plt.close(fig)
    written.append('stability_accuracy.png')

    deq_models = [m for m in models if any(c['model'] == m and c.get('held_out_nstep') is not None for c in curves)]
    if deq_models:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for model in deq_models:
            for l_index, lr in enumerate(lrs):
                colour = colours[l_index % len(colours)]
                seeds = sorted(set(c['seed'] for c in curves if c['model'] == model and c['lr'] == lr))
                for s_index, seed in enumerate(seeds):
                    points = [c for c in curves if c['model'] == model and c['lr'] == lr and c['seed'] == seed
                              and c.get('held_out_nstep') is not None]
                    label = f'{model}, lr {lr:g}' if s_index == 0 else None
                    axes[0].plot([p['epoch'] for p in points], [p['held_out_nstep'] for p in points], color=colour,
                                 alpha=0.8, lw=1, marker='.', label=label)
                    axes[1].plot([p['epoch'] for p in points], [p['held_out_residual'] for p in points],
                                 color=colour, alpha=0.8, lw=1, marker='.')
        axes[0].set_ylabel('solver iterations (mean over stages)')
        axes[1].set_ylabel('relative residual (worst stage)')
        axes[1].set_yscale('log')
        for ax in axes:
            ax.set_xlabel('epoch')
            ax.grid(alpha=0.3)
        axes[0].set_title('DEQ solver iterations on the held-out images', fontsize=10)
        axes[1].set_title('DEQ residual at the end of the solve', fontsize=10)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / 'stability_solver.png', dpi=120)
        plt.close(fig)
        written.append('stability_solver.png')
    return written


def run(args, argv: Sequence[str]) -> int:
    fill_defaults(args, CPU_DEFAULTS, CUDA_DEFAULTS)
    models = [_recipe_model(recipe) for recipe in args.recipes]
    folder = ResultsFolder(args.out, 'stability', argv, settings=vars(args))
    warn_if_busy('the seconds per run')
    shared = recipe_overrides(args)
    todo = [(recipe, model, lr, seed) for lr in args.lrs for seed in args.seeds
            for recipe, model in zip(args.recipes, models)]
    progress = Progress([1.0 if model.startswith('wt') else 4.0 for _, model, _, _ in todo])
    runs: List[Dict[str, Any]] = []
    curves: List[Dict[str, Any]] = []
    run_dir_of = lambda model, lr, seed: f'{args.runs}/{model}-lr{lr:g}-seed{seed}'
    for recipe, model, lr, seed in progress.within(
            todo, args.stop_after, lambda item: run_finished(run_dir_of(*item[1:]), folder.outcomes)):
        what = f'{model} lr {lr:g} seed {seed}'
        progress.start(what)
        run_dir = run_dir_of(model, lr, seed)
        flags = ['--config', recipe, '--lr', str(lr), '--seed', str(seed), *shared]
        outcome = train_outcome(run_dir, flags, data_flags(args), keep_dir=folder.outcomes)
        row = _run_row(model, lr, seed, outcome, run_dir)
        runs.append(row)
        curves.extend(_curve_rows(model, lr, seed, outcome))
        folder.write_table('runs', runs)
        folder.write_table('curves', curves)
        result = (f"held-out top-1 {row['held_out_top1']:.2f}%" if row['status'] == 'ok'
                  else f"DIVERGED in epoch {row['diverged_epoch'] + 1}: {row['error']}")
        if row.get('nstep_last') is not None:
            result += f", DEQ iterations {row['nstep_first']:.1f} -> {row['nstep_last']:.1f}"
        progress.finish(f'{what}: {result} ({row["train_seconds"]:.0f} s)')

    summary = summarise(runs)
    folder.write_table('summary', summary)
    plots = plot(runs, curves, folder.path)
    sections = format_sections(runs, summary, plots, args)
    readme = folder.finish('Stability: weight-tied vs DEQ twins over seeds and learning rates',
                           partial_section(len(runs), len(todo)) + sections,
                           extra=dict(runs_finished=len(runs), runs_planned=len(todo)))
    print(sections[1])
    log(f'wrote {readme.parent}/ (README.md, runs/curves/summary .csv and .json, plots, run.json)')
    return 0


def format_sections(runs, summary, plots, args) -> List[str]:
    pct = '{:.2f}'
    summary_cols = [
        Column('model', 'model'), Column('lr', 'peak lr', '{:g}'), Column('runs', 'runs'),
        Column('diverged', 'diverged'), Column('top1_mean', 'held-out top-1 mean (%)', pct),
        Column('top1_std', 'std', pct), Column('top1_min', 'min', pct), Column('top1_max', 'max', pct),
        Column('nstep_first_mean', 'DEQ iterations after epoch 1', '{:.1f}'),
        Column('nstep_last_mean', 'DEQ iterations, last epoch', '{:.1f}'),
        Column('residual_last_mean', 'DEQ residual, last epoch', '{:.3g}'),
    ]
    run_cols = [
        Column('model', 'model'), Column('lr', 'peak lr', '{:g}'), Column('seed', 'seed'), Column('status', 'status'),
        Column('diverged_epoch', 'diverged in epoch', lambda v: str(int(v) + 1)),
        Column('held_out_top1', 'held-out top-1 (%)', pct), Column('final_train_loss', 'last train loss', '{:.3f}'),
        Column('nstep_first', 'DEQ its first', '{:.1f}'), Column('nstep_last', 'DEQ its last', '{:.1f}'),
        Column('residual_last', 'DEQ residual last', '{:.3g}'), Column('train_seconds', 'seconds', '{:.0f}'),
    ]
    first = runs[0]
    recipes = ', '.join(f'`{r}`' for r in args.recipes)
    text = (f'Recipes: {recipes} (twins: every line shared but what makes a DEQ a DEQ) for {args.epochs} epochs '
            f"over {first['train_images']:,} training images (the CIFAR-10 training split less "
            f'{args.held_out:,} held-out images, held-out seed {args.held_out_seed}), with the peak learning rate and '
            f'the seed replaced' + (f', extra train.py flags `{args.train_args}`' if args.train_args else '') + '. '
            "Accuracy: the last epoch's weights (the EMA's where the recipe keeps one) on the held-out images, never "
            'the test split. Diverged: the loss became NaN/Inf, or a DEQ solve returned non-finite values. DEQ '
            'iterations and relative residual (worst stage, mean over batches) are measured on the held-out images '
            'at the end of every epoch; evaluation solves even after an unrolled warm-up epoch, whose training '
            'does not.')
    sections = [text, '## Per model and learning rate\n\n' + markdown_table(summary, summary_cols)]
    sections += [f'![{p}]({p})' for p in plots]
    sections.append('## Every run\n\n' + markdown_table(runs, run_cols))
    return sections
