"""Bench training runs: train.py's library object on a recipe, one resumable run folder each.

``stability``, ``sweep``, ``time-to-accuracy`` and ``transfer`` train through
:class:`wt_zoo.trainer.TrainingRun`, so a bench run is a train.py run: the same recipe file
(``configs/*.yaml``), fast path, atomic checkpoints and exact ``--resume``. A folder with
``last.pth.tar`` resumes where it stopped; one with an outcome file is finished and is read back,
never retrained. A run that diverges (NaN/Inf loss, or a DEQ solve returning non-finite values) is
finished too: divergence is what the stability benchmark counts.
"""
import contextlib
import json
import os
import shlex
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import yaml

from ..training import LAST_CHECKPOINT, atomic_write_json, describe_hardware, parse_kwargs_value, plain
from .common import REPO_ROOT

__all__ = ['open_run', 'recipe_file_settings', 'recipe_as_run', 'train_outcome', 'run_finished', 'model_kwargs_flags', 'add_recipe_arguments', 'fill_defaults', 'recipe_overrides', 'data_flags',
           'default_recipe', 'pooled_std', 'stability_regime', 'sweep_regime', 'OUTCOME_FILE', 'REQUEST_FILE']

OUTCOME_FILE = 'outcome.json'
REQUEST_FILE = 'request.json'  # what the folder was started with; a rerun asking for something else is refused


def open_run(run_dir: Path, flags: Sequence[str]):
    """A TrainingRun writing into ``run_dir``, resuming from its last checkpoint when there is one."""
    from ..trainer import TrainingRun, parse_train_args
    flags = [*flags, '--output', str(run_dir.parent), '--experiment', run_dir.name, '--no-progress']
    if (run_dir / LAST_CHECKPOINT).is_file():
        flags += ['--resume', str(run_dir)]
    return TrainingRun(parse_train_args(flags))


def recipe_file_settings(config: str) -> Dict[str, Any]:
    """A recipe file's settings (its comments aside), as JSON-able values."""
    return plain(yaml.safe_load(Path(config).read_text()) or {})


def recipe_as_run(config: str, args) -> Dict[str, Any]:
    """The recipe file's settings as a run resolved them (flags over the file included), recorded beside a result:
    what it trained with stays readable after the file moves on, without the repository's history."""
    return {key: plain(getattr(args, key, value)) for key, value in recipe_file_settings(config).items()}


def model_kwargs_flags(model_kwargs: Dict[str, Any]) -> List[str]:
    """``--model-kwargs k=v ...`` that train.py parses back to the same values (JSON, which YAML reads, where the
    plain text would not round-trip, e.g. mask_kind 2:4)."""
    if not model_kwargs:
        return []
    return ['--model-kwargs', *(f'{k}={v if parse_kwargs_value(str(v)) == v else json.dumps(v)}'
                                for k, v in model_kwargs.items())]


def _request(flags: List[str]) -> Dict[str, Any]:
    """The flags and the recipe file's settings (its comments aside): a folder's run is defined by both."""
    recipe = flags[flags.index('--config') + 1] if '--config' in flags else None
    return dict(flags=flags, recipe=recipe_file_settings(recipe) if recipe else None)


def _check_request(run_dir: Path, flags: List[str]) -> None:
    path, request = run_dir / REQUEST_FILE, _request(flags)
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != request:
            what = ('its recipe file changed since' if saved['flags'] == flags
                    else f'it was started as `{shlex.join(saved["flags"])}`')
            raise SystemExit(f'error: {run_dir} cannot continue as `{shlex.join(flags)}`: {what}; use another '
                             '--runs folder (a run folder holds one run, never two spliced)')
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, request)


@contextlib.contextmanager
def _quiet_run(run_dir: Path, flags: Sequence[str]):
    """open_run, closed afterwards, without the warning an untrained DEQ gives at every unconverged solve."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='DEQ solver did not reach')
        run = open_run(run_dir, [str(f) for f in flags])
        try:
            yield run
        finally:
            run.close()


def _heldout_top1(row: Dict[str, Any]) -> float:
    return float(row.get('ema_eval_top1', row['eval_top1']))


def _kept_path(run_dir: Path, keep_dir: Optional[Path]) -> Optional[Path]:
    """Where a bench's results folder keeps the outcome of ``run_dir`` (none without a ``keep_dir``)."""
    return Path(keep_dir) / f'{Path(run_dir).name}.json' if keep_dir is not None else None


def run_finished(run_dir: Path, keep_dir: Optional[Path] = None) -> bool:
    """Whether :func:`train_outcome` would read this run back (its folder's outcome, or a kept copy)."""
    kept = _kept_path(run_dir, keep_dir)
    return (Path(run_dir) / OUTCOME_FILE).is_file() or (kept is not None and kept.is_file())


def train_outcome(run_dir: Path, flags: Sequence[str], location_flags: Sequence[str] = (),
                  tta: str = 'none', keep_dir: Optional[Path] = None) -> Dict[str, Any]:
    """Train ``flags`` (train.py's) in ``run_dir`` to the end, or read the finished outcome back.

    ``location_flags`` (where the data lies: --data-dir, --data-cache) join the run but not its
    definition, so a run started on one machine finishes on another.

    ``keep_dir`` (a bench's results folder, which is committed) keeps a copy of each finished outcome
    with its request: a bench that spans sittings on machines that are not kept (the run folders lost)
    reads a finished run back from there instead of training it again. Only the unfinished run is lost.

    The outcome: ``status`` ('ok' or 'diverged', with ``error`` and ``diverged_epoch``), the final
    epoch's held-out top-1 (the EMA's when the recipe keeps one; never the best epoch's, which would
    select on the figure it reports), training seconds and images/s, the per-epoch ``history`` and,
    for a DEQ, the solver iterations and residual on the held-out images after the first and the last
    epoch (evaluation solves even after an unrolled warm-up epoch). ``tta`` (a :mod:`wt_zoo.tta` mode)
    adds the same weights' test-time-augmented held-out top-1 beside the plain one, never instead.
    """
    flags = [str(f) for f in flags]
    run_dir = Path(run_dir)
    _check_request(run_dir, flags)
    kept = _kept_path(run_dir, keep_dir)
    if kept is not None and kept.is_file() and not (run_dir / OUTCOME_FILE).is_file():
        _restore_kept(kept, run_dir, flags, tta)
    outcome = _finished_outcome(run_dir, flags, location_flags, tta)
    if kept is not None:
        kept.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(kept, dict(request=_request(flags), outcome=outcome))
    return outcome


def _finished_outcome(run_dir: Path, flags: List[str], location_flags: Sequence[str], tta: str) -> Dict[str, Any]:
    from ..trainer import TrainingStopped
    path = run_dir / OUTCOME_FILE
    if path.is_file():
        outcome = json.loads(path.read_text())
        if tta == 'none' or outcome['status'] != 'ok' or f'held_out_{_tta_key(tta)}' in outcome:
            return outcome
        with _quiet_run(run_dir, [*flags, *location_flags]) as run:  # a finished run lacking the TTA figure
            outcome[f'held_out_{_tta_key(tta)}'] = _tta_top1(run, run_dir, tta)  # gets it from its last checkpoint
        atomic_write_json(path, outcome)
        return outcome
    status, error, diverged_epoch = 'ok', '', None
    tta_top1 = None
    with _quiet_run(run_dir, [*flags, *location_flags]) as run:
        try:
            run.run()
            if tta != 'none':
                tta_top1 = _tta_top1(run, run_dir, tta)
        except (TrainingStopped, FloatingPointError) as e:  # a DEQ solve returning NaN/Inf raises the latter
            status, error, diverged_epoch = 'diverged', str(e).split(';')[0], len(run.history)
    history = [plain(row) for row in run.history]
    outcome: Dict[str, Any] = dict(
        status=status, error=error, diverged_epoch=diverged_epoch, epochs=run.num_epochs, epochs_done=len(history),
        model=run.args.model, model_kwargs=plain(run.args.model_kwargs), lr=run.args.lr, seed=run.args.seed,
        train_images=run.train_loader.dataset_size, heldout_images=run.eval_loader.dataset_size,
        train_seconds=sum(float(h['epoch_seconds']) for h in history),
        train_img_s=float(np.mean([h['images_per_s'] for h in history])) if history else None,
        amp=run.args.amp, channels_last=run.args.channels_last,
        hardware=describe_hardware(run.ctx.device, run.ctx.world_size), history=history)
    if history:
        last = history[-1]
        outcome.update(held_out_top1=_heldout_top1(last), held_out_top1_raw=float(last['eval_top1']),
                       held_out_loss=float(last.get('ema_eval_loss', last['eval_loss'])),
                       final_train_loss=float(last['train_loss']))
        if status == 'ok' and not np.isfinite(outcome['held_out_loss']):
            outcome.update(status='diverged', error='non-finite held-out loss', diverged_epoch=len(history))
        if tta_top1 is not None:
            outcome[f'held_out_{_tta_key(tta)}'] = tta_top1
    solving = [h for h in history if h.get('eval_solver_nstep') is not None]
    if solving:
        outcome.update(nstep_first=float(solving[0]['eval_solver_nstep']),
                       nstep_last=float(solving[-1]['eval_solver_nstep']),
                       residual_first=float(solving[0]['eval_solver_rel_residual']),
                       residual_last=float(solving[-1]['eval_solver_rel_residual']))
    outcome = plain(outcome)
    atomic_write_json(path, outcome)
    return outcome


def _restore_kept(kept: Path, run_dir: Path, flags: List[str], tta: str) -> None:
    """Put a kept outcome back into its (new) run folder, if it is the outcome of the run asked for."""
    saved = json.loads(kept.read_text())
    if saved.get('request') != _request(flags):
        raise SystemExit(f'error: {kept} keeps the outcome of `{shlex.join(saved.get("request", {}).get("flags", []))}`,'
                         f' not of `{shlex.join(flags)}` (or its recipe file changed since); move it away to train '
                         'the run again (a kept outcome stands for one run, never another)')
    outcome = saved['outcome']
    if tta != 'none' and outcome['status'] == 'ok' and f'held_out_{_tta_key(tta)}' not in outcome \
            and not (run_dir / LAST_CHECKPOINT).is_file():
        raise SystemExit(f'error: {kept} keeps no --tta {tta} figure and {run_dir} no checkpoint to compute it from; '
                         'move the kept outcome away to train the run again')
    atomic_write_json(run_dir / OUTCOME_FILE, outcome)


def _tta_key(mode: str) -> str:
    return f"tta_{mode.replace('-', '_')}_top1"


def _tta_top1(run, run_dir: Path, mode: str) -> float:
    """The last epoch's weights (the EMA's when kept, as for the plain figure; a finished run holds its best
    epoch's, for export) on the run's held-out images, with TTA."""
    from ..training import evaluate, load_checkpoint_file
    checkpoint = load_checkpoint_file(run_dir / LAST_CHECKPOINT)
    model = run.model_ema.module if run.model_ema is not None else run.model
    model.load_state_dict(checkpoint['state_dict_ema' if run.model_ema is not None else 'state_dict'])
    return evaluate(model, run.eval_loader, run.ctx, run.amp_dtype, tta=mode)['tta_top1']


def mean_std(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    """Mean and seed-to-seed standard deviation of one group's runs; no std from a single run (not 0: one run
    says nothing about the spread)."""
    values = [float(v) for v in values]
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None


def pooled_std(groups: Sequence[Sequence[float]]) -> Optional[float]:
    """Seed-to-seed standard deviation pooled over groups (configurations) of two or more seeds."""
    groups = [np.asarray(g, dtype=float) for g in groups if len(g) > 1]
    dof = sum(len(g) - 1 for g in groups)
    if not dof:
        return None
    return float(np.sqrt(sum(((g - g.mean()) ** 2).sum() for g in groups) / dof))


# ----------------------------------------------------------------------------------------------
# Command-line flags shared by stability and sweep

def add_recipe_arguments(parser, cpu_defaults: Dict[str, Any], cuda_defaults: Dict[str, Any]) -> None:
    """Flags that set train.py's recipe for every run; those left out take the defaults below."""
    def default(key):
        return f"(default: {cpu_defaults[key]} on CPU, {cuda_defaults[key]} with --device cuda)"
    parser.add_argument('--device', default='cpu', help='cpu or cuda (default: %(default)s); cuda grows the defaults')
    parser.add_argument('--epochs', type=int, default=None, help='epochs of every run ' + default('epochs'))
    parser.add_argument('--train-subset', type=int, default=None,
                        help='training images, a stratified subset of the training split less the held-out part '
                             '(default: all of them)')
    parser.add_argument('--held-out', type=int, default=5000,
                        help='images held out from the training split for accuracy (default: %(default)s)')
    parser.add_argument('--eval-subset', type=int, default=None,
                        help='how many held-out images to evaluate (default: all of them)')
    parser.add_argument('--held-out-seed', type=int, default=42, help='seed of the held-out split (default: %(default)s)')
    parser.add_argument('--batch-size', type=int, default=None, help="training batch size (default: the recipe's)")
    parser.add_argument('--data-dir', default=None, help='CIFAR-10 folder (default: the usual places, see wt_zoo.data)')
    parser.add_argument('--data-cache', default=None, help='decoded-image cache folder')
    parser.add_argument('--train-args', default='', metavar='"FLAGS"',
                        help='further train.py flags for every run, e.g. "--img-size 16 --cutout 8"')
    parser.add_argument('--stop-after', type=float, default=None, metavar='MINUTES',
                        help='start no new run after this many minutes (the one under way finishes) and write the '
                             'results so far, marked partial; rerunning the same command goes on from there '
                             '(default: run to the end)')


def fill_defaults(args, cpu_defaults: Dict[str, Any], cuda_defaults: Dict[str, Any]) -> None:
    """Fill flags left at None from the CPU or CUDA defaults."""
    import torch
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise SystemExit(f'--device {args.device}: CUDA is not available on this machine')
    defaults = cuda_defaults if args.device.startswith('cuda') else cpu_defaults
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def recipe_overrides(args) -> List[str]:
    """train.py flags every run of the bench shares, after the recipe file's own lines (which name the dataset)."""
    flags = ['--epochs', str(args.epochs), '--val-split-size', str(args.held_out),
             '--val-split-seed', str(args.held_out_seed), '--device', args.device]
    for flag, value in (('--train-subset', args.train_subset), ('--eval-subset', args.eval_subset),
                        ('--batch-size', args.batch_size)):
        if value is not None:
            flags += [flag, str(value)]
    return flags + shlex.split(args.train_args)


def data_flags(args) -> List[str]:
    """Where the data lies, for every run (not part of a run's definition)."""
    return [f for flag, value in (('--data-dir', args.data_dir), ('--data-cache', args.data_cache))
            if value is not None for f in (flag, str(value))]


def default_recipe(name: str) -> str:
    """A recipe in the repository's configs/, as the command line shows it."""
    return os.path.relpath(REPO_ROOT / 'configs' / name)


# ----------------------------------------------------------------------------------------------
# The regime a results folder was measured in, in words (for the claims table and the guidelines)

def _count(n: Any) -> str:
    return f'{int(n):,}' if isinstance(n, (int, float)) else str(n)


def _data_regime(settings: Dict[str, Any]) -> str:
    """Training and held-out images; no subset means the whole training split less the held-out part."""
    held_out = settings.get('held_out') or 5000
    train = _count(settings['train_subset']) if settings.get('train_subset') else f'all {_count(50000 - held_out)}'
    evaluated = _count(settings['eval_subset']) if settings.get('eval_subset') else _count(held_out)
    return f'{train} CIFAR-10 training images; held-out top-1 on {evaluated} images'


def _recipes(settings: Dict[str, Any], key: str) -> str:
    recipes = settings.get(key)
    recipes = [recipes] if isinstance(recipes, str) else recipes
    return f" of {', '.join(f'`{Path(r).name}`' for r in recipes)}" if recipes else ''


def stability_regime(settings: Dict[str, Any]) -> str:
    lrs = ', '.join(f'{lr:g}' for lr in settings.get('lrs', []))
    return (f"{settings.get('epochs', '?')} epochs{_recipes(settings, 'recipes')} on {_data_regime(settings)}, "
            f"{len(settings.get('seeds', []))} seeds x peak lr {lrs}")


def sweep_regime(settings: Dict[str, Any], runs: Sequence[Dict[str, Any]] = ()) -> str:
    """``runs`` (the sweep's runs table) give the lr it trained at when it kept the recipe's: recipes change later."""
    seeds = settings.get('seeds') or [settings.get('seed', '?')]
    recipe_lrs = sorted({r['lr'] for r in runs if r.get('lr') is not None})
    if settings.get('lr') is not None:
        lr = f"peak lr {settings['lr']}"
    elif recipe_lrs:
        lr = f"the recipe's peak lr at the time ({', '.join(f'{x:g}' for x in recipe_lrs)})"
    else:
        lr = "the recipe's peak lr"
    return (f"{settings.get('epochs', '?')} epochs{_recipes(settings, 'recipe')} on {_data_regime(settings)}, "
            f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))}), {lr}, "
            f"`{settings.get('size', '?')}` architecture")
