"""``sweep``: depth x width x mask density (and mask kind and mode) on one short fixed CIFAR-10 recipe.

The grid: dense weight-tied models over ``--depths`` x ``--widths`` (plus ``--dense-extra`` points,
e.g. ``16x32`` to match ``4x64`` in FLOPs), and sparse-mask models at ``--mask-width`` for every
``--mask-depths`` x ``--densities`` (unstructured, a distinct mask per iteration), plus the other
``--mask-kinds`` and ``--mask-modes`` at density 0.5 at the first mask depth. Every model uses the
architecture of ``--size`` (stages, stem stride) with depth and width overridden. Accuracy is on
images held out from the training split; parameters and (effective) FLOPs come from
:func:`wt_zoo.profile.profile_model`.

The default grid is sized for 2 CPU cores in under an hour (``--dry-run`` prints the grid and a
time estimate calibrated on those cores); ``--device cuda`` grows it.
"""
import argparse
import math
from typing import Any, Dict, List, Sequence, Tuple

from .common import Column, ModelSpec, Progress, ResultsFolder, log, markdown_table, read_table, warn_if_busy
from .recipe import add_recipe_arguments, fill_defaults, recipe_from_args, subsets_from_args, train_short

__all__ = ['add_arguments', 'run', 'build_grid', 'SweepConfig', 'pareto_front', 'plot']

CPU_DEFAULTS = dict(
    epochs=2, train_subset=10000, eval_subset=5000, depths=[2, 4, 8], widths=[32, 48, 64], dense_extra=['16x32'],
    densities=[0.25, 0.5, 0.75], mask_depths=[4, 8], mask_width=48, mask_kinds=['2:4', 'channel'],
    mask_modes=['shared'],
)
CUDA_DEFAULTS = dict(
    epochs=15, train_subset=45000, eval_subset=5000, depths=[2, 4, 8, 12, 16], widths=[32, 48, 64, 96],
    dense_extra=['32x32'], densities=[0.125, 0.25, 0.5, 0.75], mask_depths=[4, 8, 16], mask_width=48,
    mask_kinds=['2:4', 'channel'], mask_modes=['shared'],
)
# anchors.md: the tiny WT model (0.0891 GFLOPs/img, fvcore) trains a 50k-image epoch in ~145 s on the 2-core CPUs
CPU_SECONDS_PER_IMAGE_GFLOP = 145 / 50000 / 0.0891


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
    parser.add_argument('--lr', type=float, default=0.15, help='peak learning rate (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0, help='training seed (default: %(default)s)')
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
    """Rough 2-core CPU time of one config: training plus held-out evaluation (eval ~1/3 of a training image)."""
    images = args.train_subset * args.epochs + args.eval_subset / 3
    return CPU_SECONDS_PER_IMAGE_GFLOP * gflops * images + 5.0


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
    log(f'{len(grid)} configurations; profiling them with fvcore ...')
    profiles = {cfg.key: _profile(cfg) for cfg in grid}
    estimates = {cfg.key: _estimate_seconds(profiles[cfg.key]['gflops'], args) for cfg in grid}
    if args.dry_run or not args.device.startswith('cuda'):
        lines = [f"{cfg.key:<44} {profiles[cfg.key]['params'] / 1e6:6.3f}M params "
                 f"{profiles[cfg.key]['effective_gflops']:7.4f} eff. GFLOPs  ~{estimates[cfg.key] / 60:5.1f} min"
                 for cfg in grid]
        total = sum(estimates.values()) / 60
        log('\n'.join(lines) + f'\nestimated total on the 2-core CPUs of anchors.md: ~{total:.0f} min '
            f'({args.epochs} epoch(s) x {args.train_subset} images, {args.eval_subset} held-out images evaluated)')
        if args.dry_run:
            return 0

    folder = ResultsFolder(args.out, 'sweep', argv, settings=vars(args))
    warn_if_busy('the training seconds')
    rows: List[Dict[str, Any]] = []
    if args.resume:
        try:
            rows = [r for r in read_table(folder.path, 'sweep') if r.get('status') == 'ok']
        except FileNotFoundError:
            pass
    done = {r['config'] for r in rows}
    log(f'loading CIFAR-10: {args.train_subset} training images, {args.eval_subset} of {args.held_out} held out ...')
    data = subsets_from_args(args, probe=1)
    todo = [cfg for cfg in grid if cfg.key not in done]
    progress = Progress([estimates[cfg.key] for cfg in todo])
    recipe = recipe_from_args(args)
    for cfg in todo:
        progress.start(f'{cfg.key} ({profiles[cfg.key]["effective_gflops"]:.4f} effective GFLOPs)')
        spec = cfg.spec()
        result = train_short(lambda spec=spec: spec.create('cpu', num_classes=10), data, recipe, args.seed,
                             args.device)
        train_points = [p for p in result['curve'] if 'train_img_s' in p]
        row = dict(cfg.as_row(), **profiles[cfg.key], status=result['status'], held_out_top1=result.get('held_out_top1'),
                   held_out_loss=result.get('held_out_loss'), final_train_loss=result.get('final_train_loss'),
                   train_seconds=result['train_seconds'], seed=args.seed,
                   train_img_s=sum(p['train_img_s'] for p in train_points) / len(train_points) if train_points else None,
                   error=result.get('error') or '')
        rows = [r for r in rows if r['config'] != cfg.key] + [row]
        order = {c.key: i for i, c in enumerate(grid)}
        rows.sort(key=lambda r: order.get(r['config'], len(order)))
        folder.write_table('sweep', rows)
        outcome = (f"held-out top-1 {row['held_out_top1']:.2f}%" if row['status'] == 'ok'
                   else f"DIVERGED: {row['error']}")
        progress.finish(f'{cfg.key}: {outcome} ({row["train_seconds"]:.0f} s)')

    plots = plot(rows, folder.path)
    sections = format_sections(rows, plots, args, data, recipe)
    readme = folder.finish('Sweep: depth x width x mask density on a short CIFAR-10 recipe', sections)
    print(sections[1])
    log(f'wrote {readme.parent}/ (README.md, sweep.csv/.json, plots, run.json); '
        f'docs: python -m wt_zoo.bench guidelines --sweep-results {args.out}')
    return 0


def format_sections(rows, plots, args, data, recipe) -> List[str]:
    cols = [
        Column('config', 'configuration'), Column('depth', 'depth'), Column('width', 'width'),
        Column('mask_density', 'density', '{:g}'), Column('mask_kind', 'mask kind'), Column('mask_mode', 'mask mode'),
        Column('params', 'params (M)', lambda v: f'{v / 1e6:.3f}'), Column('gflops', 'GFLOPs', '{:.4f}'),
        Column('effective_gflops', 'effective GFLOPs', '{:.4f}'),
        Column('held_out_top1', 'held-out top-1 (%)', '{:.2f}'), Column('status', 'status'),
        Column('train_seconds', 'train s', '{:.0f}'),
    ]
    text = (f'Recipe (the same for every configuration): {recipe.epochs} epoch(s) over {len(data.train)} training '
            f'images (a stratified subset of the CIFAR-10 training split less {args.held_out} held-out images, '
            f'held-out seed {args.held_out_seed}), batch {recipe.batch_size}, SGD Nesterov, peak lr {recipe.lr}, '
            f'{100 * recipe.warmup_fraction:.0f}% warm-up then cosine, weight decay {recipe.weight_decay}, label '
            f'smoothing {recipe.smoothing}, crop + flip, training seed {args.seed}; accuracy on {len(data.held_out)} '
            f'held-out images (never the test split). Architecture: `{args.size}` with depth and width overridden. '
            'FLOPs: fvcore (one multiply-add = one flop), per 32x32 image; effective FLOPs scale each masked conv '
            'by its mask density.')
    sections = [text, '## Results\n\n' + markdown_table(rows, cols)]
    sections += [f'![{p}]({p})' for p in plots]
    return sections
