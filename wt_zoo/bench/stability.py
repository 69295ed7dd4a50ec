"""``stability``: WT and DEQ twins trained briefly over several seeds and learning rates.

What it measures, per (model, learning rate): how many runs diverged (non-finite loss or a DEQ
solve returning NaN/Inf), the spread of final held-out accuracy over seeds, and for DEQs how the
solver's iterations (and residual) grow during training, tracked on a fixed held-out probe batch
in eval mode after every segment. Accuracy is on images held out from the training split.
"""
import argparse
from typing import Any, Dict, List, Sequence

import numpy as np

from .common import (Column, ModelSpec, Progress, ResultsFolder, log, markdown_table, parse_model_specs, read_table,
                     warn_if_busy)
from .recipe import add_recipe_arguments, fill_defaults, recipe_from_args, subsets_from_args, train_short

__all__ = ['add_arguments', 'run', 'summarise']

CPU_DEFAULTS = dict(epochs=2, train_subset=5000, eval_subset=2000, seeds=[0, 1, 2], lrs=[0.05, 0.15, 0.5, 1.5])
CUDA_DEFAULTS = dict(epochs=10, train_subset=45000, eval_subset=5000, seeds=[0, 1, 2, 3, 4],
                     lrs=[0.05, 0.1, 0.2, 0.5, 1.0, 2.0])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--models', nargs='+', default=['wt_resnet_tiny', 'deq_resnet_tiny'],
                        help="models to train ('name:key=value,...' overrides allowed; default: %(default)s)")
    parser.add_argument('--seeds', type=int, nargs='+', default=None,
                        help=f"training seeds (default: {CPU_DEFAULTS['seeds']} on CPU, {CUDA_DEFAULTS['seeds']} on cuda)")
    parser.add_argument('--lrs', type=float, nargs='+', default=None,
                        help=f"peak learning rates (default: {CPU_DEFAULTS['lrs']} on CPU, {CUDA_DEFAULTS['lrs']} on cuda)")
    parser.add_argument('--out', default='results/stability', help='results folder (default: %(default)s)')
    add_recipe_arguments(parser, CPU_DEFAULTS, CUDA_DEFAULTS)


def _run_row(spec: ModelSpec, lr: float, seed: int, result: Dict[str, Any]) -> Dict[str, Any]:
    curve = result['curve']
    row: Dict[str, Any] = dict(model=spec.label, family=spec.family, lr=lr, seed=seed, status=result['status'],
                               diverged_at=result['diverged_at'], held_out_top1=result.get('held_out_top1'),
                               held_out_loss=result.get('held_out_loss'), final_train_loss=result.get('final_train_loss'),
                               steps_done=result['steps_done'], train_seconds=result['train_seconds'])
    probes = [p for p in curve if 'probe_nstep' in p]
    trains = [p for p in curve if 'train_nstep' in p]
    if probes:
        row.update(probe_nstep_start=probes[0]['probe_nstep'], probe_nstep_end=probes[-1]['probe_nstep'],
                   probe_nstep_growth=probes[-1]['probe_nstep'] - probes[0]['probe_nstep'],
                   probe_residual_start=probes[0]['probe_rel_residual'],
                   probe_residual_end=probes[-1]['probe_rel_residual'])
    if trains:
        row.update(train_nstep_first=trains[0]['train_nstep'], train_nstep_last=trains[-1]['train_nstep'])
    if result.get('held_out_nstep') is not None:
        row['held_out_nstep'] = result['held_out_nstep']
    row['error'] = result.get('error') or ''
    return row


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
        top1 = np.array([r['held_out_top1'] for r in ok], dtype=float)
        row: Dict[str, Any] = dict(model=model, family=group[0]['family'], lr=lr, runs=len(group),
                                   diverged=sum(r['status'] == 'diverged' for r in group))
        if len(top1):
            row.update(top1_mean=float(top1.mean()), top1_std=float(top1.std(ddof=1)) if len(top1) > 1 else 0.0,
                       top1_min=float(top1.min()), top1_max=float(top1.max()),
                       top1_range=float(top1.max() - top1.min()))
        for key in ('probe_nstep_start', 'probe_nstep_end', 'probe_nstep_growth', 'probe_residual_end',
                    'train_nstep_first', 'train_nstep_last'):
            values = [r[key] for r in group if r.get(key) is not None]
            if values:
                row[f'{key}_mean'] = float(np.mean(values))
        out.append(row)
    return out


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

    deq_models = [m for m in models if any(c['model'] == m and c.get('probe_nstep') is not None for c in curves)]
    if deq_models:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for model in deq_models:
            for l_index, lr in enumerate(lrs):
                colour = colours[l_index % len(colours)]
                seeds = sorted(set(c['seed'] for c in curves if c['model'] == model and c['lr'] == lr))
                for s_index, seed in enumerate(seeds):
                    points = [c for c in curves if c['model'] == model and c['lr'] == lr and c['seed'] == seed
                              and c.get('probe_nstep') is not None]
                    label = f'{model}, lr {lr:g}' if s_index == 0 else None
                    axes[0].plot([p['step'] for p in points], [p['probe_nstep'] for p in points], color=colour,
                                 alpha=0.8, lw=1, marker='.', label=label)
                    axes[1].plot([p['step'] for p in points], [p['probe_rel_residual'] for p in points],
                                 color=colour, alpha=0.8, lw=1, marker='.')
        axes[0].set_ylabel('solver iterations (mean over stages)')
        axes[1].set_ylabel('final relative residual (worst stage)')
        axes[1].set_yscale('log')
        for ax in axes:
            ax.set_xlabel('training step')
            ax.grid(alpha=0.3)
        axes[0].set_title('DEQ solver iterations on a fixed held-out batch', fontsize=10)
        axes[1].set_title('DEQ residual at the end of the solve', fontsize=10)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / 'stability_solver.png', dpi=120)
        plt.close(fig)
        written.append('stability_solver.png')
    return written


def run(args, argv: Sequence[str]) -> int:
    fill_defaults(args, CPU_DEFAULTS, CUDA_DEFAULTS)
    try:
        specs = parse_model_specs(args.models)
    except ValueError as e:
        raise SystemExit(f'error: {e}')
    folder = ResultsFolder(args.out, 'stability', argv, settings=vars(args))
    warn_if_busy('the seconds per run')
    runs: List[Dict[str, Any]] = []
    curves: List[Dict[str, Any]] = []
    if args.resume:
        try:
            runs = read_table(folder.path, 'runs')
            curves = read_table(folder.path, 'curves')
        except FileNotFoundError:
            pass
    done = {(r['model'], r['lr'], r['seed']) for r in runs}
    log(f'loading CIFAR-10: {args.train_subset} training images, {args.eval_subset} of {args.held_out} held out ...')
    data = subsets_from_args(args)

    todo = [(spec, lr, seed) for lr in args.lrs for seed in args.seeds for spec in specs
            if (spec.label, lr, seed) not in done]
    progress = Progress([2.0 if spec.family == 'deq' else 1.0 for spec, _, _ in todo])
    for spec, lr, seed in todo:
        what = f'{spec.label} lr {lr:g} seed {seed}'
        progress.start(what)

        def on_segment(point, what=what):
            extra = f", DEQ iterations {point['probe_nstep']:.1f}" if 'probe_nstep' in point else ''
            log(f"    {what}: step {point['step']}, train loss {point['train_loss']:.3f}{extra}")

        result = train_short(lambda spec=spec: spec.create('cpu', num_classes=10), data,
                             recipe_from_args(args, lr=lr), seed, args.device, on_segment)
        row = _run_row(spec, lr, seed, result)
        runs.append(row)
        curves.extend(dict(model=spec.label, lr=lr, seed=seed, **point) for point in result['curve'])
        folder.write_table('runs', runs)
        folder.write_table('curves', curves)
        outcome = (f"held-out top-1 {row['held_out_top1']:.2f}%" if row['status'] == 'ok'
                   else f"DIVERGED after update {row['diverged_at']}")
        progress.finish(f'{what}: {outcome} ({row["train_seconds"]:.0f} s)')

    summary = summarise(runs)
    folder.write_table('summary', summary)
    plots = plot(runs, curves, folder.path)
    sections = format_sections(runs, summary, plots, args, data)
    readme = folder.finish('Stability: weight-tied vs DEQ twins over seeds and learning rates', sections)
    print(sections[1])
    log(f'wrote {readme.parent}/ (README.md, runs/curves/summary .csv and .json, plots, run.json)')
    return 0


def format_sections(runs, summary, plots, args, data) -> List[str]:
    pct = '{:.2f}'
    summary_cols = [
        Column('model', 'model'), Column('lr', 'peak lr', '{:g}'), Column('runs', 'runs'),
        Column('diverged', 'diverged'), Column('top1_mean', 'held-out top-1 mean (%)', pct),
        Column('top1_std', 'std', pct), Column('top1_min', 'min', pct), Column('top1_max', 'max', pct),
        Column('probe_nstep_start_mean', 'DEQ iterations at start', '{:.1f}'),
        Column('probe_nstep_end_mean', 'DEQ iterations at end', '{:.1f}'),
        Column('probe_residual_end_mean', 'DEQ residual at end', '{:.3g}'),
    ]
    run_cols = [
        Column('model', 'model'), Column('lr', 'peak lr', '{:g}'), Column('seed', 'seed'), Column('status', 'status'),
        Column('diverged_at', 'diverged after update'), Column('held_out_top1', 'held-out top-1 (%)', pct),
        Column('final_train_loss', 'last train loss', '{:.3f}'),
        Column('probe_nstep_start', 'DEQ its start', '{:.1f}'), Column('probe_nstep_end', 'DEQ its end', '{:.1f}'),
        Column('train_seconds', 'seconds', '{:.0f}'),
    ]
    recipe = recipe_from_args(args, lr=0.0)
    text = (f'Recipe: {recipe.epochs} epoch(s) over {len(data.train)} training images (a stratified subset of the '
            f'CIFAR-10 training split less {args.held_out} held-out images, held-out seed {args.held_out_seed}), batch '
            f'{recipe.batch_size}, SGD Nesterov momentum {recipe.momentum}, weight decay {recipe.weight_decay}, '
            f'{100 * recipe.warmup_fraction:.0f}% linear warm-up then cosine decay, label smoothing '
            f'{recipe.smoothing}, crop + flip; accuracy on {len(data.held_out)} held-out images. Diverged: the loss '
            'became NaN/Inf, or a DEQ solve returned non-finite values. DEQ iterations are measured in eval mode on '
            f'a fixed batch of {len(data.probe)} held-out images, before training and after every '
            f'{1 / recipe.segments_per_epoch:g} epoch; the models use their default settings unless the command says '
            'otherwise.')
    sections = [text, '## Per model and learning rate\n\n' + markdown_table(summary, summary_cols)]
    sections += [f'![{p}]({p})' for p in plots]
    sections.append('## Every run\n\n' + markdown_table(runs, run_cols))
    return sections
