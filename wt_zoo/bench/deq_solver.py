"""deq-solver: how far, and with which solver, to solve a trained DEQ at test time, chosen on its held-out split.

A DEQ promises a fixed point, but training solved only ``f_max_iter`` iterations with approximate
gradients; whether solving further at test time (``eval_f_max_iter``, torchdeq's test-time cap), or with
another forward solver (``--f-solvers``), brings accuracy, or only a smaller residual at a higher cost, is
measured here. Each published DEQ tag is
loaded as a user loads it (``--pretrained``, offline: the Hub cache, else the clone's ``hub_configs/``)
and validated by validate.py on the images its run held out of the training split (its
``train_args.yaml`` gives the split), once per cap. The test split is never read.

Results (``--out``, default results/deq_solver): solver.{csv,json} (held-out top-1, mean solver
iterations, mean and worst relative residual, images/s per tag, solver and cap), README.md, run.json.

    python -m wt_zoo.bench deq-solver deq_resnet_tiny.c10 --eval-f-max-iter 0 24 48 --f-solvers anderson broyden
"""
import json
import tempfile
from pathlib import Path
from typing import Any, Dict, List

from ..cards import RESIDUAL_AIM, TRAIN_ARGS, HubFolderError, choose_solver_cap, read_args
from ..hub import run_validate
from ..solvers import SOLVERS
from .common import REPO_ROOT, Column, ResultsFolder, log, markdown_table, warn_if_busy

__all__ = ['add_arguments', 'run', 'held_out_flags']


def add_arguments(parser) -> None:
    parser.add_argument('names', nargs='*', metavar='NAME',
                        help='published DEQ tags (default: every DEQ folder in hub_configs/)')
    parser.add_argument('--eval-f-max-iter', type=int, nargs='+', default=[0, 24, 48],
                        help='test-time solver caps; 0 is the training cap f_max_iter (default: %(default)s)')
    parser.add_argument('--f-solvers', nargs='+', default=None, metavar='SOLVER',
                        help=f'forward solvers to try at test time ({", ".join(SOLVERS)}; default: the one each tag '
                             'trained with)')
    parser.add_argument('--eval-subset', type=int, default=None,
                        help='validate on this many held-out images (default: all of them)')
    parser.add_argument('-b', '--batch-size', type=int, default=256)
    parser.add_argument('--hub-configs', default=str(REPO_ROOT / 'hub_configs'), help='published folders')
    parser.add_argument('--out', default=str(REPO_ROOT / 'results' / 'deq_solver'), help='results folder')


def held_out_flags(folder: Path) -> List[str]:
    """validate.py's flags for the images a published run held out of its training split."""
    path = Path(folder) / TRAIN_ARGS
    try:
        train_args = read_args(path)
    except HubFolderError as e:
        raise SystemExit(f'error: {e} (a published folder keeps its run\'s {TRAIN_ARGS})') from None
    if not train_args.get('val_split_size'):
        raise SystemExit(f'error: {path}: the run held nothing out of its training split (val_split_size '
                         f'{train_args.get("val_split_size")!r}), so there is no split to choose a solver cap on '
                         'without the test split')
    return ['--dataset', str(train_args['dataset']), '--split', 'val',
            '--val-split-size', str(train_args['val_split_size']),
            '--val-split-seed', str(train_args.get('val_split_seed', 42))]


def _deq_names(hub_configs: Path) -> List[str]:
    """Published tags whose architecture solves its implicit layers (the DEQ families)."""
    import timm
    from ..models.deq_resnet import EquilibriumMixin
    names = []
    for folder in sorted(Path(hub_configs).iterdir()):
        config = folder / 'config.json'
        if config.is_file():
            arch = json.loads(config.read_text())['architecture']
            if isinstance(timm.create_model(arch, pretrained=False), EquilibriumMixin):
                names.append(folder.name)
    return names


def _validate(name: str, flags: List[str], solver: str, cap: int, args, tmp: Path) -> Dict[str, Any]:
    command = ['--model', name, '--pretrained', *flags, '-b', str(args.batch_size), '--no-flops',
               '--model-kwargs', f'eval_f_max_iter={cap}', f'f_solver={solver}']
    if args.eval_subset:
        command += ['--eval-subset', str(args.eval_subset)]
    try:
        row, = run_validate(command, tmp / f'{name}-{solver}-{cap}.json')
    except HubFolderError as e:
        raise SystemExit(f'error: {e}') from None
    return row


def run(args, argv) -> int:
    hub_configs = Path(args.hub_configs)
    names = args.names or _deq_names(hub_configs)
    if not names:
        raise SystemExit(f'error: no DEQ folder in {hub_configs}')
    if any(cap < 0 for cap in args.eval_f_max_iter):
        raise SystemExit(f'error: --eval-f-max-iter takes caps >= 0 (0: the training cap), got {args.eval_f_max_iter}')
    unknown = [solver for solver in args.f_solvers or () if solver not in SOLVERS]
    if unknown:
        raise SystemExit(f'error: --f-solvers: unknown {", ".join(unknown)}; valid choices: {", ".join(SOLVERS)}')
    load = warn_if_busy('deq-solver images/s')
    folder = ResultsFolder(Path(args.out), 'deq-solver', argv, settings=vars(args))
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix='wt-zoo-deq-solver.') as tmp:
        for name in names:
            if not (hub_configs / name).is_dir():
                raise SystemExit(f'error: {name} is not published: no folder {hub_configs / name}')
            flags = held_out_flags(hub_configs / name)
            trained = json.loads((hub_configs / name / 'config.json').read_text()).get('model_args', {})
            for solver in args.f_solvers or [trained.get('f_solver', SOLVERS[0])]:
                for cap in args.eval_f_max_iter:
                    log(f'{name}: f_solver {solver}, eval_f_max_iter {cap} on the held-out split')
                    row = _validate(name, flags, solver, cap, args, Path(tmp))
                    rows.append(dict(model=name, f_solver=solver, eval_f_max_iter=cap,
                                     solver_cap=cap or trained.get('f_max_iter'), top1=row['top1'],
                                     solver_nstep=row['solver_nstep'], solver_rel_residual=row['solver_rel_residual'],
                                     solver_rel_residual_max=row['solver_rel_residual_max'],
                                     images_per_s=row['images_per_s'], samples=row['samples'], split=row['split'],
                                     load_average_1min=load))
    folder.write_table('solver', rows)
    columns = [Column('model', 'model'), Column('f_solver', 'solver'), Column('eval_f_max_iter', 'eval_f_max_iter'),
               Column('solver_cap', 'solver cap'), Column('top1', 'held-out top-1 (%)', '{:.2f}'),
               Column('solver_nstep', 'mean iterations', '{:.1f}'),
               Column('solver_rel_residual', 'mean rel. residual', '{:.3f}'),
               Column('solver_rel_residual_max', 'worst rel. residual', '{:.3f}'),
               Column('images_per_s', 'images/s', '{:.0f}')]
    lines = []
    for name in names:
        best = choose_solver_cap([r for r in rows if r['model'] == name])
        aim = 'below' if best['solver_rel_residual'] < RESIDUAL_AIM else 'not below'
        lines.append(f"- {name}: {best['f_solver']} at eval_f_max_iter {best['eval_f_max_iter']} (cap "
                     f"{best['solver_cap']}), held-out top-1 {best['top1']:.2f} %, mean relative residual "
                     f"{best['solver_rel_residual']:.3f}, {aim} the {RESIDUAL_AIM:g} aim.")
    folder.finish('DEQ test-time solver budget', [
        'Published DEQ checkpoints validated on the images their run held out of the training split, once per '
        'forward solver and test-time solver cap (`eval_f_max_iter`, 0 = the training cap). The residual is the solver\'s relative '
        'residual of the worst image in a batch, averaged over batches (the worst batch beside it); images/s is single-process CPU inference and '
        'moves with the machine\'s load (1-minute load average at start in `solver.json`).',
        markdown_table(rows, columns),
        f'## Choice (mean relative residual below {RESIDUAL_AIM:g} first, then the best held-out top-1, the fewer '
        'iterations on a tie)\n\n' + '\n'.join(lines)])
    return 0
