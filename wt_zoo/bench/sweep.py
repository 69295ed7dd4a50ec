"""``sweep``: depth x width x mask density (and mask kind and mode), each trained with the zoo's recipe.

The grid: dense weight-tied models over ``--depths`` x ``--widths`` (plus ``--dense-extra`` points,
e.g. ``16x32`` to match ``4x64`` in FLOPs), and sparse-mask models at ``--mask-width`` for every
``--mask-depths`` x ``--densities`` (unstructured, a distinct mask per iteration), plus the other
``--mask-kinds`` and ``--mask-modes`` at density 0.5 at the first mask depth. Every model uses the
architecture of ``--size`` (stages, stem stride) with depth and width overridden, and trains with
``--recipe`` (a train.py config, the fast recipe by default) for ``--epochs`` on the training split
less the held-out part, once per ``--seeds`` seed. Accuracy is the last epoch's on the held-out
images (never the test split); the seeds give each configuration a mean and the sweep its
resolution, twice the seed-to-seed standard deviation pooled over configurations. Parameters and
(effective) FLOPs come from :func:`wt_zoo.profile.profile_model`.

Every run is a train.py run in its own folder under ``--runs``; rerunning the command continues
where it stopped (an unfinished run resumes from its checkpoint, a finished one is never rerun).
``--dry-run`` prints the grid and a time estimate calibrated on the 2-core CPUs.
"""
import argparse
import math
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from .common import Column, ModelSpec, Progress, ResultsFolder, log, markdown_table, partial_section, warn_if_busy
from .recipe import (add_recipe_arguments, data_flags, default_recipe, fill_defaults, mean_std, model_kwargs_flags,
                     pooled_std, recipe_overrides, run_finished, train_outcome)

__all__ = ['add_arguments', 'run', 'build_grid', 'SweepConfig', 'pareto_front', 'plot', 'aggregate']

CPU_DEFAULTS = dict(
    epochs=15, seeds=[0, 1], depths=[2, 4, 8], widths=[32, 48, 64], dense_extra=['16x32'],
    densities=[0.25, 0.5, 0.75], mask_depths=[4, 8], mask_width=48, mask_kinds=['2:4', 'channel'],
    mask_modes=['shared'],
)
CUDA_DEFAULTS = dict(
    epochs=40, seeds=[0, 1, 2], depths=[2, 4, 8, 12, 16], widths=[32, 48, 64, 96],
    dense_extra=['32x32'], densities=[0.125, 0.25, 0.5, 0.75], mask_depths=[4, 8, 16], mask_width=48,
    mask_kinds=['2:4', 'channel'], mask_modes=['shared'],
)
# results/time_to_accuracy: wt_resnet_tiny (0.0891 GFLOPs/img, fvcore) trains ~1030 img/s under the fast recipe
# (bf16 autocast) on the 2-core CPUs
CPU_SECONDS_PER_IMAGE_GFLOP = 1 / 1030 / 0.0891
TRAIN_IMAGES = 50000  # the CIFAR-10 training split, before the held-out part is taken out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    def default(key):
        return f"(default: {CPU_DEFAULTS[key]} on CPU, {CUDA_DEFAULTS[key]} with --device cuda)"
    parser.add_argument('--size', default='tiny', choices=('tiny', 'small', 'base'),
                        help='architecture (stages, stem stride) the grid varies (default: %(default)s)')
    parser.add_argument('--depths', type=int, nargs='+', default=None, help='dense WT depths ' + default('depths'))
    parser.add_argument('--widths', type=int, nargs='+', default=None, help='dense WT widths ' + default('widths'))
    parser.add_argument('--dense-extra', nargs='*', default=None, metavar='DEPTHxWIDTH',
                        help='further dense WT points ' + default('dense_extra'))
    parser.add_argument('--densities', type=float, nargs='*', default=None,
                        help='mask densities (unstructured, distinct) ' + default('densities'))
    parser.add_argument('--mask-depths', type=int, nargs='*', default=None,
                        help='depths of the masked models ' + default('mask_depths'))
    parser.add_argument('--mask-width', type=int, default=None, help='width of the masked models ' + default('mask_width'))
    parser.add_argument('--mask-kinds', nargs='*', default=None,
                        help='other mask kinds, at density 0.5 and the first mask depth ' + default('mask_kinds'))
    parser.add_argument('--mask-modes', nargs='*', default=None,
                        help='other mask modes, at density 0.5 and the first mask depth ' + default('mask_modes'))
    parser.add_argument('--recipe', default=default_recipe('wt_resnet_tiny.c10.yaml'), metavar='CONFIG.yaml',
                        help='train.py recipe every configuration trains with (default: %(default)s)')
    parser.add_argument('--lr', type=float, default=None, help="peak learning rate (default: the recipe's)")
    parser.add_argument('--seeds', type=int, nargs='+', default=None, help='training seeds ' + default('seeds'))
    parser.add_argument('--runs', default='output/sweep', help='parent folder of the run folders (default: %(default)s)')
    parser.add_argument('--out', default='results/sweep', help='results folder (default: %(default)s)')
    parser.add_argument('--dry-run', action='store_true', help='print the grid and a time estimate, train nothing')
    add_recipe_arguments(parser, CPU_DEFAULTS, CUDA_DEFAULTS)


class SweepConfig:
    """One grid point: a dense or masked weight-tied model of the chosen size."""

    def __init__(self, size: str, depth: int, width: int, density: float = 1.0, kind: str = '', mode: str = ''):
        self.size, self.depth, self.width = size, depth, width
        self.density, self.kind, self.mode = float(density), kind, mode

    @property
    def masked(self) -> bool:
        return bool(self.kind)

    @property
    def family(self) -> str:
        return 'wtsm' if self.masked else 'wt'

    @property
    def key(self) -> str:
        base = f'{self.family}_d{self.depth}_w{self.width}'
        return base + (f'_p{self.density:g}_{self.kind}_{self.mode}' if self.masked else '')

    @property
    def short(self) -> str:
        """A label for plots: 'd4 w48' or 'd4 w48 0.5' (+ kind/mode when not unstructured/distinct)."""
        text = f'd{self.depth} w{self.width}'
        if self.masked:
            text += f' {self.density:g}'
            if self.kind != 'unstructured':
                text += f' {self.kind}'
            if self.mode != 'distinct':
                text += f' {self.mode}'
        return text

    def spec(self) -> ModelSpec:
        kwargs: List[Tuple[str, Any]] = [('depth', self.depth), ('width', self.width)]
        if self.masked:
            kwargs += [('mask_density', self.density), ('mask_kind', self.kind), ('mask_mode', self.mode)]
        return ModelSpec(f'{self.family}_resnet_{self.size}', tuple(kwargs))

    def as_row(self) -> Dict[str, Any]:
        return dict(config=self.key, label=self.short, family=self.family, depth=self.depth, width=self.width,
                    mask_density=self.density, mask_kind=self.kind or 'dense', mask_mode=self.mode or 'dense',
                    model=self.spec().label)


def _parse_point(text: str) -> Tuple[int, int]:
    depth, sep, width = text.lower().partition('x')
    if not sep:
        raise SystemExit(f'--dense-extra {text!r}: expected DEPTHxWIDTH, e.g. 16x32')
    return int(depth), int(width)


def build_grid(args) -> List[SweepConfig]:
    grid: List[SweepConfig] = []

    def add(cfg: SweepConfig):
        if cfg.key not in {g.key for g in grid}:
            grid.append(cfg)
    for depth in args.depths:
        for width in args.widths:
            add(SweepConfig(args.size, depth, width))
    for text in args.dense_extra or []:
        add(SweepConfig(args.size, *_parse_point(text)))
    mask_depths = args.mask_depths or []
    for depth in mask_depths:
        add(SweepConfig(args.size, depth, args.mask_width))  # the density-1 end of every density curve
        for density in args.densities or []:
            if density < 1.0:
                add(SweepConfig(args.size, depth, args.mask_width, density, 'unstructured', 'distinct'))
    if mask_depths:
        first = mask_depths[0]
        for kind in args.mask_kinds or []:
            if kind != 'unstructured':
                add(SweepConfig(args.size, first, args.mask_width, 0.5, kind, 'distinct'))
        for mode in args.mask_modes or []:
            if mode != 'distinct':
                add(SweepConfig(args.size, first, args.mask_width, 0.5, 'unstructured', mode))
    return grid


def _profile(cfg: SweepConfig) -> Dict[str, Any]:
    import torch
    from ..profile import profile_model
    torch.manual_seed(0)
    row = profile_model(cfg.spec().create('cpu', num_classes=10))
    return dict(params=row['params'], gflops=row['gflops'],
                effective_gflops=row.get('effective_gflops', row['gflops']))


def _estimate_seconds(gflops: float, args) -> float:
    """Rough 2-core CPU time of one run: training plus two held-out evaluations an epoch (raw and EMA weights,
    each ~1/3 of a training image)."""
    train = args.train_subset or TRAIN_IMAGES - args.held_out
    held_out = args.eval_subset or args.held_out
    return CPU_SECONDS_PER_IMAGE_GFLOP * gflops * args.epochs * (train + 2 * held_out / 3) + 20.0


def aggregate(runs: List[Dict[str, Any]], grid: Sequence['SweepConfig']) -> List[Dict[str, Any]]:
    """One row per configuration: held-out top-1 mean and std over its finished seeds, in grid order."""
    rows = []
    for cfg in grid:
        group = [r for r in runs if r['config'] == cfg.key]
        if not group:
            continue
        ok = [r for r in group if r['status'] == 'ok']
        top1_mean, top1_std = mean_std([r['held_out_top1'] for r in ok])
        row = {k: group[0][k] for k in (*cfg.as_row(), 'params', 'gflops', 'effective_gflops')}
        row.update(status='ok' if ok else 'diverged', seeds=len(ok), diverged=len(group) - len(ok),
                   held_out_top1=top1_mean, held_out_top1_std=top1_std,
                   train_seconds=float(np.mean([r['train_seconds'] for r in group])),
                   train_img_s=float(np.mean([r['train_img_s'] for r in ok])) if ok else None)
        rows.append(row)
    return rows


def pareto_front(rows: List[Dict[str, Any]], cost_key: str, value_key: str = 'held_out_top1') -> List[Dict[str, Any]]:
    """Rows not beaten by a cheaper-or-equal row with higher value, sorted by cost."""
    ok = sorted((r for r in rows if r.get(value_key) is not None), key=lambda r: (r[cost_key], -r[value_key]))
    front, best = [], -math.inf
    for row in ok:
        if row[value_key] > best:
            front.append(row)
            best = row[value_key]
    return front


def plot(rows: List[Dict[str, Any]], out_dir) -> List[str]:
    """The sweep's figures; returns their file names."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    ok = [r for r in rows if r.get('held_out_top1') is not None]
    dense = [r for r in ok if r['family'] == 'wt']
    masked = [r for r in ok if r['family'] == 'wtsm']
    colours = plt.rcParams['axes.prop_cycle'].by_key()['color']
    written = []

    def finish(fig, ax, name, title, xlabel):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel('held-out top-1 (%)')
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=120)
        plt.close(fig)
        written.append(name)

    # accuracy vs depth: one line per width, so each line is at equal parameters
    fig, ax = plt.subplots(figsize=(5.4, 3.8))
    for i, width in enumerate(sorted({r['width'] for r in dense})):
        line = sorted((r for r in dense if r['width'] == width), key=lambda r: r['depth'])
        params = line[0]['params'] / 1e6
        ax.plot([r['depth'] for r in line], [r['held_out_top1'] for r in line], marker='o', color=colours[i % 10],
                label=f'width {width} ({params:.2f}M params)')
    ax.set_xscale('log', base=2)
    finish(fig, ax, 'sweep_depth.png', 'Dense WT: accuracy vs depth (each line at equal parameters)',
           'depth (iterations per stage)')

    # accuracy vs width: one line per depth
    fig, ax = plt.subplots(figsize=(5.4, 3.8))
    for i, depth in enumerate(sorted({r['depth'] for r in dense})):
        line = sorted((r for r in dense if r['depth'] == depth), key=lambda r: r['width'])
        if len(line) < 2:
            continue
        ax.plot([r['width'] for r in line], [r['held_out_top1'] for r in line], marker='o', color=colours[i % 10],
                label=f'depth {depth}')
    finish(fig, ax, 'sweep_width.png', 'Dense WT: accuracy vs width (parameters grow with width)', 'width (first stage)')

    # accuracy vs density at fixed depth and width: equal parameters along each line
    if masked:
        fig, ax = plt.subplots(figsize=(5.4, 3.8))
        width = masked[0]['width']
        for i, depth in enumerate(sorted({r['depth'] for r in masked})):
            line = [r for r in ok if r['depth'] == depth and r['width'] == width and
                    (r['family'] == 'wt' or (r['mask_kind'] == 'unstructured' and r['mask_mode'] == 'distinct'))]
            line.sort(key=lambda r: r['mask_density'])
            ax.plot([r['mask_density'] for r in line], [r['held_out_top1'] for r in line], marker='o',
                    color=colours[i % 10], label=f'depth {depth}, unstructured, distinct')
            others = [r for r in masked if r['depth'] == depth and r not in line]
            for j, r in enumerate(others):
                marker = {'2:4': 's', 'channel': '^'}.get(r['mask_kind'], 'D')
                ax.scatter([r['mask_density']], [r['held_out_top1']], marker=marker, color=colours[i % 10],
                           edgecolor='black', zorder=3, s=40,
                           label=f"depth {depth}, {r['mask_kind']}, {r['mask_mode']}")
        finish(fig, ax, 'sweep_density.png',
               f'Sparse masks at width {width}: accuracy vs density\n(equal parameters; density 1 = dense)', 'mask density')

    # accuracy at equal parameters / equal FLOPs: every configuration, Pareto front drawn
    for key, name, xlabel, title in (
            ('params', 'sweep_params.png', 'parameters (M)', 'All configurations: accuracy vs parameters'),
            ('effective_gflops', 'sweep_flops.png', 'effective GFLOPs / image (fvcore, masked convs scaled by density)',
             'All configurations: accuracy vs FLOPs')):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        scale = 1e6 if key == 'params' else 1.0
        for family, marker, colour in (('wt', 'o', colours[0]), ('wtsm', 's', colours[1])):
            group = [r for r in ok if r['family'] == family]
            ax.scatter([r[key] / scale for r in group], [r['held_out_top1'] for r in group], marker=marker,
                       color=colour, label='dense WT' if family == 'wt' else 'sparse masks (WTSM)', zorder=3)
            for r in group:
                ax.annotate(r['label'], (r[key] / scale, r['held_out_top1']), textcoords='offset points',
                            xytext=(3, 3), fontsize=6)
        front = pareto_front(ok, key)
        ax.plot([r[key] / scale for r in front], [r['held_out_top1'] for r in front], color='grey', lw=1, ls='--',
                label='best at or below this cost')
        ax.set_xscale('log')
        finish(fig, ax, name, title, xlabel)
    return written


def run(args, argv: Sequence[str]) -> int:
    fill_defaults(args, CPU_DEFAULTS, CUDA_DEFAULTS)
    grid = build_grid(args)
    if not grid:
        raise SystemExit('error: the grid is empty (give --depths and --widths, or --mask-depths)')
    log(f'{len(grid)} configurations x {len(args.seeds)} seed(s); profiling them with fvcore ...')
    profiles = {cfg.key: _profile(cfg) for cfg in grid}
    # seed by seed: after the first pass every configuration has a figure, after the second a spread
    todo = [(cfg, seed) for seed in args.seeds for cfg in grid]
    estimates = {cfg.key: _estimate_seconds(profiles[cfg.key]['gflops'], args) for cfg in grid}
    if args.dry_run or not args.device.startswith('cuda'):
        lines = [f"{cfg.key:<44} {profiles[cfg.key]['params'] / 1e6:6.3f}M params "
                 f"{profiles[cfg.key]['effective_gflops']:7.4f} eff. GFLOPs  ~{estimates[cfg.key] / 60:5.1f} min/run"
                 for cfg in grid]
        total = sum(estimates[cfg.key] for cfg, _ in todo) / 60
        log('\n'.join(lines) + f'\nestimated total on the 2-core CPUs: ~{total / 60:.1f} h for {len(todo)} runs '
            f'({args.epochs} epochs each under {args.recipe}, seeds {args.seeds}); an interrupted sweep continues '
            'where it stopped when rerun')
        if args.dry_run:
            return 0

    folder = ResultsFolder(args.out, 'sweep', argv, settings=vars(args))
    warn_if_busy('the training seconds')
    shared = recipe_overrides(args) + (['--lr', str(args.lr)] if args.lr is not None else [])
    progress = Progress([estimates[cfg.key] for cfg, _ in todo])
    runs: List[Dict[str, Any]] = []
    run_dir_of = lambda cfg, seed: f'{args.runs}/{cfg.key}-seed{seed}'
    for cfg, seed in progress.within(
            todo, args.stop_after, lambda item: run_finished(run_dir_of(*item), folder.outcomes)):
        spec = cfg.spec()
        progress.start(f'{cfg.key} seed {seed} ({profiles[cfg.key]["effective_gflops"]:.4f} effective GFLOPs)')
        flags = ['--config', args.recipe, '--model', spec.name, *model_kwargs_flags(spec.kwargs_dict()), '--seed',
                 str(seed), *shared]
        run_dir = run_dir_of(cfg, seed)
        outcome = train_outcome(run_dir, flags, data_flags(args), keep_dir=folder.outcomes)
        row = dict(cfg.as_row(), **profiles[cfg.key], seed=seed,
                   **{k: outcome.get(k) for k in ('status', 'held_out_top1', 'held_out_loss', 'final_train_loss',
                                                  'train_seconds', 'train_img_s', 'epochs_done', 'train_images',
                                                  'heldout_images', 'lr', 'amp', 'error', 'diverged_epoch')},
                   run_folder=run_dir)
        runs.append(row)
        folder.write_table('runs', runs)
        rows = aggregate(runs, grid)
        folder.write_table('sweep', rows)
        outcome_text = (f"held-out top-1 {row['held_out_top1']:.2f}%" if row['status'] == 'ok'
                        else f"DIVERGED: {row['error']}")
        progress.finish(f'{cfg.key} seed {seed}: {outcome_text} ({row["train_seconds"]:.0f} s)')

    rows = aggregate(runs, grid)
    std = pooled_std([[r['held_out_top1'] for r in runs if r['config'] == cfg.key and r['status'] == 'ok']
                      for cfg in grid])
    plots = plot(rows, folder.path)
    sections = format_sections(rows, runs, std, plots, args)
    readme = folder.finish('Sweep: depth x width x mask density under the zoo\'s recipe',
                           partial_section(len(runs), len(todo)) + sections,
                           extra=dict(seed_std_pooled=std, resolution=2 * std if std is not None else None,
                                      runs_finished=len(runs), runs_planned=len(todo)))
    print(sections[1])
    log(f'wrote {readme.parent}/ (README.md, sweep/runs .csv and .json, plots, run.json); '
        f'docs: python -m wt_zoo.bench guidelines --sweep-results {args.out}')
    return 0


def format_sections(rows, runs, std, plots, args) -> List[str]:
    cols = [
        Column('config', 'configuration'), Column('depth', 'depth'), Column('width', 'width'),
        Column('mask_density', 'density', '{:g}'), Column('mask_kind', 'mask kind'), Column('mask_mode', 'mask mode'),
        Column('params', 'params (M)', lambda v: f'{v / 1e6:.3f}'), Column('gflops', 'GFLOPs', '{:.4f}'),
        Column('effective_gflops', 'effective GFLOPs', '{:.4f}'),
        Column('held_out_top1', 'held-out top-1 (%)', '{:.2f}'), Column('held_out_top1_std', 'std', '{:.2f}'),
        Column('seeds', 'seeds'), Column('diverged', 'diverged'), Column('train_seconds', 'train s / run', '{:.0f}'),
    ]
    first = runs[0]
    lr = f'peak lr {args.lr}' if args.lr is not None else f"the recipe's peak lr ({first['lr']:g})"
    text = (f'Recipe (the same for every configuration): `{args.recipe}` for {args.epochs} epochs over '
            f"{first['train_images']:,} training images (the CIFAR-10 training split less {args.held_out:,} held-out "
            f'images, held-out seed {args.held_out_seed}), {lr}, seeds {", ".join(map(str, args.seeds))}'
            + (f', extra train.py flags `{args.train_args}`' if args.train_args else '') + '. '
            f"Accuracy: the last epoch's weights (the EMA's where the recipe keeps one) on {first['heldout_images']:,} "
            'held-out images (never the test split), mean over the seeds that finished. Architecture: '
            f'`{args.size}` with depth and width overridden. FLOPs: fvcore (one multiply-add = one flop), per 32x32 '
            'image; effective FLOPs scale each masked conv by its mask density.')
    if std is not None:
        text += (f'\n\n**Resolution: {2 * std:.2f} points**, twice the seed-to-seed standard deviation of held-out '
                 f'top-1 ({std:.2f}) pooled over the configurations with two or more finished seeds. Differences '
                 'below it are not told apart.')
    else:
        text += '\n\nResolution: not measured yet (no configuration has two finished seeds).'
    sections = [text, '## Results\n\n' + markdown_table(rows, cols)]
    sections += [f'![{p}]({p})' for p in plots]
    run_cols = [Column('config', 'configuration'), Column('seed', 'seed'), Column('status', 'status'),
                Column('held_out_top1', 'held-out top-1 (%)', '{:.2f}'),
                Column('final_train_loss', 'last train loss', '{:.3f}'), Column('train_seconds', 'train s', '{:.0f}'),
                Column('train_img_s', 'img/s', '{:.0f}'), Column('run_folder', 'run folder')]
    sections.append('## Every run\n\n' + markdown_table(runs, run_cols))
    return sections
