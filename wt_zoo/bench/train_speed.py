"""train-speed: training images/s of each numeric path side by side, and how close ``auto`` comes to the best.

For each recipe (default: the three families' CIFAR-10 recipes at tiny and small) and batch size, the
recipe is set up as train.py sets it up with ``--amp auto --channels-last auto``
(:class:`wt_zoo.trainer.TrainingRun`): that times a training step (forward, loss, backward, SGD) of
every combination of bf16 autocast and channels_last on a copy of the model and keeps the fastest.
The table gives those timings, the path chosen, a second timing of the chosen path (what a run then
gets, against the best of the first timings: the 'default within 10 % of the best' check), the
on-device data path alone (batches drawn, cropped, flipped and normalised without the model), and,
for ``--compile`` recipes, ``torch.compile`` of the model on the chosen path.

A second table (``batch_optimizer``) keeps the path ``auto`` picked at the largest ``--batch-sizes`` and
times it at each ``--sweep-batch-sizes`` with each optimizer implementation (``--opt-impls``, train.py's
``--opt-impl``: torch's default, for-loop, foreach, fused), side by side in the same run: the training step
as above, and the optimizer's update alone (fixed gradients, 20 updates), whose share a whole step's noise
would hide.

Training FLOP/s counts fvcore's forward multiply-adds (results/profile.json) three times per image
(forward, and backward's two products) and two flops a multiply-add, as a fraction of the fastest kernel
this machine runs at the row's precision, measured in the same run (the best of an n x n matmul and a
3x3 convolution in both layouts, :func:`wt_zoo.bench.efficiency.kernel_peaks`); DEQ models are left out
of that column, since their work per image depends on the solver's iterations.

    python -m wt_zoo.bench train-speed
"""
import gc
import json
import shlex
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ..trainer import OPT_IMPLS
from .common import REPO_ROOT, Column, ResultsFolder, log, markdown_table, warn_if_busy
from .efficiency import PEAK_CONV_SHAPE, kernel_peaks

__all__ = ['add_arguments', 'run', 'readme_section']

BATCH_OPTIMIZER_TABLE = 'batch_optimizer'
DEFAULT_CONFIGS = [f'configs/{family}_resnet_{size}.c10.yaml' for size in ('tiny', 'small')
                   for family in ('wt', 'wtsm', 'deq')]


def add_arguments(parser) -> None:
    parser.add_argument('configs', nargs='*', metavar='CONFIG.yaml', help=f'recipes (default: {" ".join(DEFAULT_CONFIGS)})')
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[128, 256], help='batch sizes to time')
    parser.add_argument('--compile', nargs='*', default=['configs/wt_resnet_tiny.c10.yaml'], metavar='CONFIG.yaml',
                        help='recipes also timed under torch.compile (on the chosen path, largest batch)')
    parser.add_argument('--data-batches', type=int, default=20, help='batches drawn to time the data path alone')
    parser.add_argument('--sweep-batch-sizes', type=int, nargs='*', default=[128, 256, 512],
                        help='batch sizes timed on the path auto picks (at the largest --batch-sizes), with each '
                        '--opt-impls; none: no batch_optimizer table')
    parser.add_argument('--opt-impls', nargs='+', default=['default', 'foreach', 'fused'], choices=list(OPT_IMPLS),
                        help="optimizer implementations (train.py's --opt-impl) timed at each --sweep-batch-sizes")
    parser.add_argument('--sweep-rounds', type=int, default=2,
                        help='rounds over the implementations at each sweep batch size; each keeps its fastest')
    parser.add_argument('--matmul-size', type=int, default=2048, help='n of the n x n matmul timed for the peaks')
    parser.add_argument('--out', default=str(REPO_ROOT / 'results' / 'train_speed'), help='results folder')
    parser.add_argument('--train-args', default='', metavar='"FLAGS"',
                        help='train.py flags for every recipe, one string: --train-args="--device cuda"')


def _profile_gmacs() -> Dict[str, float]:
    path = REPO_ROOT / 'results' / 'profile.json'
    return {row['model']: float(row['gflops']) for row in json.loads(path.read_text())} if path.is_file() else {}


def _data_images_per_s(run, batches: int) -> float:
    loader, device = run.train_loader, run.ctx.device
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    count = 0
    for _ in range(min(batches, len(loader) - 1)):
        x, _ = next(iterator)
        count += x.shape[0]
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return count / (time.perf_counter() - start)


def measure(config: str, batch_size: int, train_args: List[str], with_compile: bool, data_batches: int) -> List[Dict[str, Any]]:
    from ..trainer import TrainingRun, parse_train_args
    from ..training import describe_hardware
    args = parse_train_args(['--config', config, '-b', str(batch_size), '--amp', 'auto', '--channels-last', 'auto',
                             '--no-progress', *train_args])
    run = TrainingRun(args)
    try:
        base = dict(model=args.model.split('.')[0], batch_size=batch_size, hardware=describe_hardware(run.ctx.device))
        amp_precision = _PRECISIONS.get(args.amp_dtype, args.amp_dtype)
        rows = [dict(base, path=_path_name(t['amp'], t['channels_last']), images_per_s=t['images_per_s'],
                     precision=amp_precision if t['amp'] else 'fp32',
                     chosen=(t['amp'], t['channels_last']) == (args.amp == 'on', args.channels_last == 'on'),
                     note=t.get('timed'))  # set where auto gave the path up after its first steps
                for t in run.fast_path_timings]
        best = max(r['images_per_s'] for r in rows)
        again = batch_size / run.seconds_per_step()
        chosen_precision = amp_precision if args.amp == 'on' else 'fp32'
        rows.append(dict(base, path='auto: ' + _path_name(args.amp == 'on', args.channels_last == 'on') + ', timed again',
                         images_per_s=round(again, 2), of_best=round(again / best, 3), precision=chosen_precision))
        if with_compile:
            seconds = run.seconds_per_step(compile=True, warmup=2)
            rows.append(dict(base, path='auto path + torch.compile(model)', images_per_s=round(batch_size / seconds, 2),
                             of_best=round(batch_size / seconds / best, 3), precision=chosen_precision))
        rows.append(dict(base, path='data path alone (on-device loader)',
                         images_per_s=round(_data_images_per_s(run, data_batches), 1)))
        return rows
    finally:
        del run
        gc.collect()


def measure_batch_and_optimizer(config: str, amp: bool, channels_last: bool, batch_sizes: List[int],
                                opt_impls: List[str], train_args: List[str], rounds: int = 2) -> List[Dict[str, Any]]:
    """One path, fixed: training images/s and the optimizer's update alone per batch size and implementation.

    The implementations are timed in turn, ``rounds`` times, and each keeps its fastest round, so a slow
    first step or a burst of load elsewhere does not land on whichever implementation happens to go first.
    """
    from ..trainer import TrainingRun, parse_train_args
    from ..training import describe_hardware
    rows = []
    for batch_size in batch_sizes:
        args = parse_train_args(['--config', config, '-b', str(batch_size), '--amp', 'on' if amp else 'off',
                                 '--channels-last', 'on' if channels_last else 'off', '--no-progress', *train_args])
        base = dict(model=args.model.split('.')[0], batch_size=batch_size, path=_path_name(amp, channels_last))
        try:
            run = TrainingRun(args)
        except ValueError as e:  # e.g. a batch larger than the training split
            rows += [dict(base, optimizer=impl, note=str(e)) for impl in opt_impls]
            continue
        try:
            base['hardware'] = describe_hardware(run.ctx.device)
            step: Dict[str, float] = {}
            update: Dict[str, float] = {}
            notes: Dict[str, str] = {}
            for _ in range(rounds):
                for impl in opt_impls:
                    if impl in notes:
                        continue
                    try:
                        seconds = run.seconds_per_step(opt_impl=impl)
                        update_seconds = run.seconds_per_optimizer_step(opt_impl=impl)
                    except ValueError as e:  # e.g. fused where the optimizer or device has no fused kernel
                        notes[impl] = str(e)
                        continue
                    step[impl] = min(step.get(impl, seconds), seconds)
                    update[impl] = min(update.get(impl, update_seconds), update_seconds)
            for impl in opt_impls:
                if impl in notes:
                    rows.append(dict(base, optimizer=impl, note=notes[impl]))
                else:
                    rows.append(dict(base, optimizer=impl, images_per_s=round(batch_size / step[impl], 2),
                                     optimizer_step_ms=round(1000 * update[impl], 4)))
        finally:
            del run
            gc.collect()
    best = max((r['images_per_s'] for r in rows if 'images_per_s' in r), default=None)
    for row in rows:
        if best and 'images_per_s' in row:
            row['of_best'] = round(row['images_per_s'] / best, 3)
    return rows


_PRECISIONS = {'bfloat16': 'bf16', 'float16': 'fp16'}


def _path_name(amp: bool, channels_last: bool) -> str:
    return ('bf16 autocast' if amp else 'fp32') + (' + channels_last' if channels_last else '')


def run(args, argv) -> int:
    load = warn_if_busy('training images/s')
    folder = ResultsFolder(args.out, 'train-speed', argv, settings=vars(args))
    from ..trainer import parse_train_args
    train_args = shlex.split(args.train_args)
    device = parse_train_args(train_args).device or ('cuda' if torch.cuda.is_available() else 'cpu')
    peaks = kernel_peaks(args.matmul_size, device, torch.get_num_threads(), min_run_time=1.0)
    gmacs = _profile_gmacs()
    rows: List[Dict[str, Any]] = []
    sweep_rows: List[Dict[str, Any]] = []
    for config in args.configs or DEFAULT_CONFIGS:
        config = str(config)
        chosen = None
        for batch_size in args.batch_sizes:
            with_compile = config in args.compile and batch_size == max(args.batch_sizes)
            log(f'{Path(config).name}, batch {batch_size}' + (' (+ torch.compile)' if with_compile else '') + ' ...')
            for row in measure(config, batch_size, train_args, with_compile, args.data_batches):
                macs = gmacs.get(row['model'])
                if macs and not row['model'].startswith('deq') and not row['path'].startswith('data'):
                    flops = row['images_per_s'] * 3 * macs * 2
                    row['train_gflops_per_s'] = round(flops, 1)
                    if row['precision'] in peaks:
                        row['of_peak'] = round(flops / peaks[row['precision']]['gflops_per_s'], 3)
                if row.get('chosen') and batch_size == max(args.batch_sizes):
                    chosen = row
                rows.append(row)
            folder.write_table('speed', rows)
        if args.sweep_batch_sizes and chosen is not None:
            paths = {_path_name(a, c): (a, c) for a in (False, True) for c in (False, True)}
            amp, channels_last = paths[chosen['path']]
            log(f'{Path(config).name}, {chosen["path"]}: batch {", ".join(map(str, args.sweep_batch_sizes))} x '
                f'optimizer {", ".join(args.opt_impls)} ...')
            sweep_rows += measure_batch_and_optimizer(config, amp, channels_last, args.sweep_batch_sizes,
                                                      args.opt_impls, train_args, args.sweep_rounds)
            folder.write_table(BATCH_OPTIMIZER_TABLE, sweep_rows)
    columns = [Column('model', 'model'), Column('batch_size', 'batch'), Column('path', 'path'),
               Column('images_per_s', 'train img/s', '{:.0f}'), Column('chosen', 'auto picks', lambda v: 'yes' if v else ''),
               Column('of_best', 'of best', '{:.0%}'), Column('train_gflops_per_s', 'train GFLOP/s', '{:.0f}'),
               Column('of_peak', 'of peak at its precision', '{:.0%}'), Column('note', 'note')]
    auto_rows = [r for r in rows if r['path'].startswith('auto:')]
    worst = min(auto_rows, key=lambda r: r['of_best']) if auto_rows else None
    verdict = (f'The path `auto` picks, timed again, runs at {worst["of_best"]:.0%} or more of the best path timed '
               f'for the same model and batch (lowest: {worst["model"]}, batch {worst["batch_size"]}).' if worst else '')
    folder.finish('Training speed per numeric path', [
        f'Machine: {rows[0]["hardware"] if rows else device}; 1-minute load average at start {load}. Each timing is '
        'the mean of 3 training steps after 2 warm-up steps on one real CIFAR-10 batch (a copy of the model, a fresh '
        'optimizer), so it carries a few per cent of noise. ' + verdict,
        _peaks_paragraph(peaks), markdown_table(rows, columns), *_batch_optimizer_sections(sweep_rows)],
                  extra=dict(peaks=peaks))
    return 0


def _peaks_paragraph(peaks: Dict[str, Dict[str, Any]]) -> str:
    shape = PEAK_CONV_SHAPE
    lines = [f'- {name}: **{p["gflops_per_s"]:.0f} GFLOP/s** ({p["kernel"]}); '
             + ', '.join(f'{kernel} {value:.0f}' for kernel, value in p['kernels'].items())
             for name, p in peaks.items()]
    return ('"of peak at its precision" is a row\'s training GFLOP/s against the fastest kernel timed in this run at '
            'the precision the row computes in (bf16 autocast rows against bf16 kernels, the rest against fp32): the '
            f'best of an n x n matmul and a {shape["kernel"]}x{shape["kernel"]} convolution ({shape["channels"]} -> '
            f'{shape["channels"]} channels, {shape["size"]}x{shape["size"]}, batch {shape["batch"]}) in both layouts, '
            'two flops a multiply-add (run.json keeps each kernel). A training step runs backward kernels and small layers too, so '
            'the gap to 100 % is what is left to gain at that precision, an upper bound:\n\n' + '\n'.join(lines))


_OPT_IMPL_WORDS = {'default': "torch's default (for-loop on CPU, foreach on CUDA)", 'for-loop': 'the per-tensor for-loop',
                   'foreach': 'foreach (multi-tensor)', 'fused': 'fused (one kernel)'}


def _batch_optimizer_sections(rows: List[Dict[str, Any]]) -> List[str]:
    if not rows:
        return []
    columns = [Column('model', 'model'), Column('path', 'path'), Column('batch_size', 'batch'),
               Column('optimizer', 'optimizer'), Column('images_per_s', 'train img/s', '{:.0f}'),
               Column('of_best', 'of best (model)', '{:.0%}'), Column('optimizer_step_ms', 'optimizer update (ms)',
                                                                      '{:.3f}'), Column('note', 'note')]
    impls = ', '.join(_OPT_IMPL_WORDS.get(i, i) for i in dict.fromkeys(r['optimizer'] for r in rows))
    return ['## Batch size and optimizer implementation, on the path auto picks',
            f'Optimizer implementations: {impls} (train.py --opt-impl). Each timing as above; the implementations '
            'take turns, and each figure is the fastest of their rounds (--sweep-rounds). "of best" is against the '
            'fastest row of the same model; the optimizer update is the mean of 20 updates of the recipe\'s '
            'optimizer with fixed gradients, after 3 warm-up updates, on a copy of the model.',
            markdown_table(rows, columns)]


def readme_section(folder: Path = REPO_ROOT / 'results' / 'train_speed') -> str:
    """The project README's table of this folder: one row per model and batch, the paths side by side."""
    path = Path(folder) / 'speed.json'
    if not path.is_file():
        return 'Not measured yet: `python -m wt_zoo.bench train-speed`.'
    rows = json.loads(path.read_text())
    paths = [_path_name(amp, cl) for amp in (False, True) for cl in (False, True)]
    table = []
    for key in dict.fromkeys((r['model'], r['batch_size']) for r in rows):
        group = [r for r in rows if (r['model'], r['batch_size']) == key]
        by_path = {r['path']: r for r in group}
        auto = next(r for r in group if r['path'].startswith('auto:'))
        out = dict(model=key[0], batch=key[1], picks=next(r['path'] for r in group if r.get('chosen')),
                   again=f'{auto["images_per_s"]:.0f} ({auto["of_best"]:.0%})',
                   data=by_path['data path alone (on-device loader)']['images_per_s'])
        out.update({p: by_path[p]['images_per_s'] for p in paths if p in by_path})
        compiled = next((r for r in group if 'compile' in r['path']), None)
        out['compiled'] = f'{compiled["images_per_s"]:.0f} ({compiled["of_best"]:.0%})' if compiled else ''
        table.append(out)
    columns = [Column('model', 'model'), Column('batch', 'batch'),
               *[Column(p, p, '{:.0f}') for p in paths], Column('picks', 'auto picks'),
               Column('again', 'auto, timed again (of best)'), Column('compiled', '+ torch.compile (of best)'),
               Column('data', 'data path alone', '{:.0f}')]
    text = (f'Training images/s on {rows[0]["hardware"]} ([results/train_speed](results/train_speed/README.md), '
            'made by `python -m wt_zoo.bench train-speed`; "of best" is the chosen path timed a second time against '
            'the best first timing):\n\n' + markdown_table(table, columns))
    sweep = Path(folder) / f'{BATCH_OPTIMIZER_TABLE}.json'
    if sweep.is_file():
        text += '\n\n' + _batch_optimizer_readme_table(json.loads(sweep.read_text()))
    return text


def _batch_optimizer_readme_table(rows: List[Dict[str, Any]]) -> str:
    """One row per model and batch size: training img/s and the optimizer update's ms per implementation."""
    impls = list(dict.fromkeys(r['optimizer'] for r in rows))
    table = []
    for key in dict.fromkeys((r['model'], r['path'], r['batch_size']) for r in rows):
        out = dict(model=key[0], path=key[1], batch=key[2])
        for r in rows:
            if (r['model'], r['path'], r['batch_size']) == key:
                out[f'{r["optimizer"]}_img_s'] = r.get('images_per_s')
                out[f'{r["optimizer"]}_ms'] = r.get('optimizer_step_ms')
        table.append(out)
    columns = [Column('model', 'model'), Column('path', 'path (auto\'s pick)'), Column('batch', 'batch'),
               *[Column(f'{i}_img_s', f'{i}: train img/s', '{:.0f}') for i in impls],
               *[Column(f'{i}_ms', f'{i}: optimizer update (ms)', '{:.3f}') for i in impls]]
    return ('Batch size and optimizer implementation (`--opt-impl`; default is torch\'s choice, the for-loop on CPU) '
            'on the path auto picks, timed side by side in the same run:\n\n' + markdown_table(table, columns))
