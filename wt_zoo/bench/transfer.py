"""transfer: the published .c10 checkpoints fine-tuned on Fashion-MNIST against the same architecture from scratch.

For each checkpoint (``--models``, published folders ``hub_configs/<arch>.<tag>/``), two runs of one
recipe (``--recipe``, default configs/finetune_fmnist.yaml) under one budget: the same epochs, the
same training images (``--train-subset N``: a stratified, seeded subset of the training split less
the held-out part), the same input (1x28x28), model arguments (the checkpoint's ``model_kwargs``
from its train_args.yaml) and numeric path (the first run's ``amp``/``channels_last`` choice is
pinned for the second). The only difference is the initial weights:

- ``pretrained``: the checkpoint's ``model.safetensors`` through timm's loader (``--pretrained-path``:
  the stem conv summed from 3 channels to 1 by ``adapt_input_conv``), with a fresh classifier head:
  the scratch run's own initial head (Fashion-MNIST's classes are not CIFAR-10's);
- ``scratch``: the recipe's seeded random initialisation.

Both train as train.py would (:class:`wt_zoo.trainer.TrainingRun`; run folders
``--runs/<arch>.<tag>-<E>ep-<N|full>/{pretrained,scratch}``), monitor the held-out split after each
epoch, and are evaluated once, after training, on the Fashion-MNIST test split (the best epoch's
weights by held-out top-1, as train.py exports them). Resumable: a finished run is read back from
its folder, not retrained; an interrupted one resumes from its last checkpoint; a folder made for
other settings (recipe, checkpoint, flags) is refused.

Results (``--out``, default results/transfer): runs.{csv,json} (one row per run: model, init,
epochs, training images, training minutes, held-out and test top-1, the source checkpoint and its
sha256, command, commit, hardware), pairs.{csv,json} (pretrained minus scratch per model and
budget), README.md, run.json. Rows are merged by (model, init, epochs, training images), so budgets
measured in separate sittings share one folder.

    python -m wt_zoo.bench transfer --epochs 3 --train-subset 10000
"""
import copy
import dataclasses
import json
import shlex
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..training import atomic_write_json
from .common import REPO_ROOT, Column, ResultsFolder, log, markdown_table, warn_if_busy
from .recipe import model_kwargs_flags, open_run

__all__ = ['add_arguments', 'run', 'source_checkpoint', 'fresh_head', 'pair_rows', 'readme_section',
           'DEFAULT_MODELS', 'INITS']

DEFAULT_MODELS = ('wt_resnet_small.c10', 'wtsm_resnet_small.c10', 'deq_resnet_small.c10')
DEFAULT_RECIPE = REPO_ROOT / 'configs' / 'finetune_fmnist.yaml'
INITS = ('pretrained', 'scratch')
PLAN_FILE = 'transfer_plan.json'
RESULT_FILE = 'transfer_result.json'
# Settings that must match for a run folder to be resumed or reused.
_PLAN_KEYS = ('model', 'epochs', 'train_subset', 'test_subset', 'recipe_sha256', 'source_sha256', 'model_kwargs',
              'train_args')


def add_arguments(parser) -> None:
    parser.add_argument('--models', nargs='+', default=list(DEFAULT_MODELS), metavar='ARCH.TAG',
                        help='published checkpoints (hub_configs/<arch>.<tag>/) to fine-tune')
    parser.add_argument('--epochs', type=int, default=3, help='epochs of both runs (pretrained and scratch)')
    parser.add_argument('--train-subset', type=int, default=None, metavar='N',
                        help='train both runs on these N images only (stratified, seeded; default: the whole '
                             'training split less the held-out part)')
    parser.add_argument('--recipe', default=str(DEFAULT_RECIPE), metavar='CONFIG.yaml',
                        help='train.py recipe shared by both runs')
    parser.add_argument('--test-subset', type=int, default=None, metavar='N',
                        help='evaluate on N test images only (smoke runs; default: the whole test split)')
    parser.add_argument('--runs', default='output/transfer', help='parent folder of the run folders')
    parser.add_argument('--out', default=str(REPO_ROOT / 'results' / 'transfer'), help='results folder')
    parser.add_argument('--train-args', default='', metavar='"FLAGS"',
                        help='train.py flags for every run, one string: --train-args="--device cuda"')


# ----------------------------------------------------------------------------------------------
# The checkpoint and the pretrained run's head


def source_checkpoint(name: str) -> Dict[str, Any]:
    """A published checkpoint's weights file, its sha256 (checked against SHA256SUMS) and model_kwargs."""
    import yaml
    from ..cards import sha256_file
    from ..hub import MANIFEST, read_manifest
    from ..hub_ids import hub_configs_dirs, published_folders
    folders = published_folders()
    if name not in folders:
        where = ', '.join(str(d) for d in hub_configs_dirs())
        raise SystemExit(f'error: {name} is not a published checkpoint (no {name}/config.json in {where}); '
                         f'published: {", ".join(sorted(folders)) or "none"}')
    folder = folders[name]
    weights = folder / 'model.safetensors'
    if not weights.is_file():
        raise SystemExit(f'error: {weights} not found')
    digest = sha256_file(weights)
    if (folder / MANIFEST).is_file():
        listed = read_manifest(folder).get(weights.name)
        if listed is not None and listed != digest:
            raise SystemExit(f'error: {weights} has sha256 {digest}, but {folder / MANIFEST} lists {listed}')
    model_kwargs: Dict[str, Any] = {}
    train_args = folder / 'train_args.yaml'
    if train_args.is_file():
        model_kwargs = dict((yaml.safe_load(train_args.read_text()) or {}).get('model_kwargs') or {})
    return dict(name=name, folder=folder, weights=weights, sha256=digest, model_kwargs=model_kwargs)


def fresh_head(run) -> None:
    """Give a pretrained run the classifier head its scratch twin starts with.

    timm drops a checkpoint's head only when the class counts differ; CIFAR-10 and Fashion-MNIST both
    have 10, so the CIFAR head would be kept, its classes mapped to unrelated ones. The head is
    rebuilt the way the scratch run builds its model (same args, same seed, rank 0's stream) and
    copied in place, so the optimizer (and an EMA copy) keep their tensors; the two runs then differ
    in the weights below the head only.
    """
    from ..training import create_model_from_args, epoch_seed, seed_everything, unwrap
    args = copy.copy(run.args)
    args.pretrained, args.pretrained_path, args.initial_checkpoint = False, None, ''
    rng = torch.random.get_rng_state()
    try:
        seed_everything(epoch_seed(args.seed, 0, 0))
        scratch_head = dict(create_model_from_args(args).get_classifier().named_parameters())
    finally:
        torch.random.set_rng_state(rng)
    targets = [unwrap(run.model)] + ([run.model_ema.module] if run.model_ema is not None else [])
    with torch.no_grad():
        for model in targets:
            for name, param in model.get_classifier().named_parameters():
                param.copy_(scratch_head[name])


# ----------------------------------------------------------------------------------------------
# Plans and runs


def _subset_tag(train_subset: Optional[int]) -> str:
    return f'n{train_subset}' if train_subset else 'full'


def _common_flags(plan: Dict[str, Any], init: str) -> List[str]:
    """train.py flags of one run, less its folder; the two inits differ only in --pretrained-path."""
    flags = ['--config', plan['recipe'], '--model', plan['model'], '--epochs', str(plan['epochs']),
             *model_kwargs_flags(plan['model_kwargs'])]
    if plan['train_subset']:
        flags += ['--train-subset', str(plan['train_subset'])]
    if init == 'pretrained':
        flags += ['--pretrained-path', plan['source']]
    flags += plan['train_args']
    if plan.get('amp') is not None:  # the first run's choice, so both runs take the same numeric path
        for name in ('amp', 'channels_last'):
            flag = '--' + name.replace('_', '-')
            if flag not in plan['train_args']:
                flags += [flag, plan[name]]
    return flags


def _shown(path) -> str:
    """A path as the results show it: relative to the repository when inside it (commands run from its root)."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _load_plan(budget_dir: Path, plan: Dict[str, Any]) -> Dict[str, Any]:
    path = budget_dir / PLAN_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        changed = [k for k in _PLAN_KEYS if saved.get(k) != plan.get(k)]
        if changed:
            raise SystemExit(f'error: {budget_dir} holds runs made with other settings ({", ".join(changed)} '
                             'differ); use another --runs folder, or remove that one to retrain')
        return dict(plan, amp=saved.get('amp'), channels_last=saved.get('channels_last'))
    budget_dir.mkdir(parents=True, exist_ok=True)
    _write_plan(budget_dir, plan)
    return plan


def _write_plan(budget_dir: Path, plan: Dict[str, Any]) -> None:
    atomic_write_json(budget_dir / PLAN_FILE, plan)


def _test_metrics(run, test_subset: Optional[int]) -> Dict[str, Any]:
    """The trained weights (best epoch, as exported; the EMA's when kept) on the test split, once."""
    from ..data import create_eval_loader
    from ..training import evaluate
    spec = dataclasses.replace(run.spec, eval_subset=test_subset)
    loader = create_eval_loader(spec, 'test', run.data_config, run.args.validation_batch_size or run.args.batch_size,
                                run.ctx.device, channels_last=run.args.channels_last == 'on')
    model = run.model_ema.module if run.model_ema is not None else run.model
    metrics = evaluate(model, loader, run.ctx, run.amp_dtype)
    metrics['images'] = loader.dataset_size
    return metrics


def _train(init: str, plan: Dict[str, Any], budget_dir: Path, test_subset: Optional[int],
           provenance: Dict[str, Any]) -> Dict[str, Any]:
    """One run to its end (or read back when finished); returns its results row."""
    from ..training import describe_hardware
    run_dir = budget_dir / init
    result_path = run_dir / RESULT_FILE
    if result_path.is_file():
        log(f'{plan["model"]} {init}: finished in {run_dir}, not retrained')
        return json.loads(result_path.read_text())
    run = open_run(run_dir, _common_flags(plan, init))
    try:
        if plan.get('amp') is None:
            plan.update(amp=run.args.amp, channels_last=run.args.channels_last)
            _write_plan(budget_dir, plan)
        # what ran, as train.py flags (the numeric path as chosen, so a rerun takes the same one)
        shown = dict(plan, recipe=_shown(plan['recipe']), source=_shown(plan['source']))
        train_py = 'python train.py ' + shlex.join([*_common_flags(shown, init), '--output', _shown(budget_dir),
                                                    '--experiment', init])
        if init == 'pretrained' and run.resumed_from is None:
            fresh_head(run)
        run.run()
        test = _test_metrics(run, test_subset)
    finally:
        run.close()
    history = run.history
    last = history[-1]
    row = dict(
        model=plan['model'], init=init, epochs=plan['epochs'], train_images=run.train_loader.dataset_size,
        images_seen=sum(int(h['train_samples']) for h in history),
        train_minutes=round(sum(float(h["epoch_seconds"]) for h in history) / 60, 5),
        heldout_images=run.eval_loader.dataset_size,
        heldout_top1=round(float(last.get('ema_eval_top1', last['eval_top1'])), 3),
        best_epoch=int(run.best['epoch']) + 1 if run.best else None,
        test_images=test['images'], test_top1=round(test['top1'], 3), test_top5=round(test['top5'], 3),
        test_loss=round(test['loss'], 4))
    if 'solver_nstep' in test:
        row['test_solver_nstep'] = round(float(test['solver_nstep']), 2)
    row.update(
        weights_loaded=init == 'pretrained', source_checkpoint=plan['source_name'],
        source_file=_shown(plan['source']), source_sha256=plan['source_sha256'], recipe=_shown(plan['recipe']),
        model_kwargs=json.dumps(plan['model_kwargs']), input_size='x'.join(str(v) for v in run.args.input_size),
        amp=run.args.amp, channels_last=run.args.channels_last,
        hardware=describe_hardware(run.ctx.device, run.ctx.world_size), run_folder=str(run_dir),
        train_command=train_py, **provenance)
    atomic_write_json(result_path, row)
    return row


# ----------------------------------------------------------------------------------------------
# Tables


def _row_key(row: Dict[str, Any]):
    return row['model'], row['init'], row['epochs'], row['train_images']


def _merge(old: List[Dict[str, Any]], new: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    replaced = {_row_key(row) for row in new}
    return [row for row in old if _row_key(row) not in replaced] + new


def pair_rows(runs: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Pretrained against scratch for each model and budget (epochs, training images) that has both."""
    by_key = {_row_key(row): row for row in runs}
    pairs = []
    for (model, init, epochs, images), pre in by_key.items():
        scratch = by_key.get((model, 'scratch', epochs, images))
        if init != 'pretrained' or scratch is None:
            continue
        pairs.append(dict(
            model=model, epochs=epochs, train_images=images, test_images=pre['test_images'],
            scratch_test_top1=scratch['test_top1'], pretrained_test_top1=pre['test_top1'],
            test_top1_gain=round(pre['test_top1'] - scratch['test_top1'], 3),
            scratch_heldout_top1=scratch['heldout_top1'], pretrained_heldout_top1=pre['heldout_top1'],
            heldout_top1_gain=round(pre['heldout_top1'] - scratch['heldout_top1'], 3),
            scratch_train_minutes=scratch['train_minutes'], pretrained_train_minutes=pre['train_minutes'],
            source_sha256=pre['source_sha256'], hardware=pre['hardware'], git_commit=pre['git_commit']))
    return pairs


def _verdict(pair: Dict[str, Any]) -> str:
    gain = pair['test_top1_gain']
    if gain > 0:
        return f'pretrained better by {gain:.2f} points'
    if gain == 0:
        return 'no difference'
    return f'**pretrained worse by {-gain:.2f} points**'


def _epochs(n: int) -> str:
    return f'{n} epoch' + ('' if n == 1 else 's')


def _verdict_line(pair: Dict[str, Any]) -> str:
    return f'- `{pair["model"]}`, {pair["train_images"]:,} images x {_epochs(pair["epochs"])}: {_verdict(pair)}'


PAIR_COLUMNS = [
    Column('model', 'checkpoint', lambda v: f'`{v}`'), Column('train_images', 'training images', '{:,}'),
    Column('epochs', 'epochs'), Column('scratch_test_top1', 'scratch test top-1', '{:.2f}'),
    Column('pretrained_test_top1', 'fine-tuned test top-1', '{:.2f}'),
    Column('test_top1_gain', 'fine-tuned − scratch', '{:+.2f}'),
    Column('scratch_heldout_top1', 'scratch held-out', '{:.2f}'),
    Column('pretrained_heldout_top1', 'fine-tuned held-out', '{:.2f}'),
    Column('minutes', 'training min (scratch / fine-tuned)'),
]


def _pairs_table(pairs: Sequence[Dict[str, Any]]) -> str:
    rows = [dict(p, minutes=f'{p["scratch_train_minutes"]:.1f} / {p["pretrained_train_minutes"]:.1f}') for p in pairs]
    return markdown_table(rows, PAIR_COLUMNS)


def readme_section(folder: Path = REPO_ROOT / 'results' / 'transfer') -> str:
    """The project README's transfer table (scripts/update_readme.py embeds it)."""
    path = Path(folder) / 'pairs.json'
    pairs = json.loads(path.read_text()) if path.is_file() else []
    if not pairs:
        return 'Not measured yet: run `python -m wt_zoo.bench transfer --epochs E [--train-subset N]`.'
    hardware = sorted({p['hardware'] for p in pairs})
    lines = [f'Fashion-MNIST test top-1 ({pairs[0]["test_images"]:,} test images), each `.c10` checkpoint fine-tuned '
             'under `configs/finetune_fmnist.yaml` against the same architecture trained from scratch under the same '
             'recipe, epochs and training images, on ' + '; '.join(hardware)
             + ' ([results/transfer](results/transfer/README.md), made by `python -m wt_zoo.bench transfer`):', '',
             _pairs_table(pairs), '']
    lines += [_verdict_line(p) for p in pairs]
    return '\n'.join(lines)


def _read(folder: Path, name: str) -> List[Dict[str, Any]]:
    path = folder / f'{name}.json'
    return json.loads(path.read_text()) if path.is_file() else []


RUN_COLUMNS = [
    Column('model', 'checkpoint'), Column('init', 'init'), Column('epochs', 'epochs'),
    Column('train_images', 'training images', '{:,}'), Column('input_size', 'input'),
    Column('train_minutes', 'training min', '{:.1f}'), Column('heldout_top1', 'held-out top-1', '{:.2f}'),
    Column('best_epoch', 'best epoch'),
    Column('test_top1', 'test top-1', '{:.2f}'), Column('test_solver_nstep', 'DEQ solver its (test)', '{:.1f}'),
    Column('amp', 'amp'), Column('channels_last', 'channels_last'), Column('hardware', 'hardware'),
    Column('source_sha256', 'checkpoint sha256', lambda v: f'`{v[:12]}`'),
    Column('git_commit', 'commit', lambda c: f'`{c[:10]}`'),
]


def run(args, argv) -> int:
    if args.epochs < 1:
        raise SystemExit(f'error: --epochs must be >= 1, got {args.epochs}')
    if args.train_subset is not None and args.train_subset < 1:
        raise SystemExit(f'error: --train-subset must be >= 1, got {args.train_subset}')
    recipe = Path(args.recipe)
    if not recipe.is_file():
        raise SystemExit(f'error: --recipe {recipe} not found')
    sources = [source_checkpoint(name) for name in args.models]
    out, runs_root = Path(args.out), Path(args.runs)
    load = warn_if_busy('training minutes')
    folder = ResultsFolder(out, 'transfer', argv, settings=vars(args))
    provenance = dict(load_average_1min=load, command=folder.provenance['command'],
                      git_commit=folder.provenance['git_commit'], date=folder.provenance['date'])
    from ..cards import sha256_file
    runs = _read(out, 'runs')
    train_args = shlex.split(args.train_args)
    for source in sources:
        plan = dict(model=source['name'], epochs=args.epochs, train_subset=args.train_subset,
                    test_subset=args.test_subset, recipe=str(recipe),
                    recipe_sha256=sha256_file(recipe), source_name=source['name'], source=str(source['weights']),
                    source_sha256=source['sha256'], model_kwargs=source['model_kwargs'], train_args=train_args)
        budget_dir = runs_root / f'{source["name"]}-{args.epochs}ep-{_subset_tag(args.train_subset)}'
        plan = _load_plan(budget_dir, plan)
        new = []
        for init in INITS:
            log(f'{source["name"]} {init}: {_epochs(args.epochs)} on '
                f'{args.train_subset or "all"} training images ({budget_dir / init})')
            row = _train(init, plan, budget_dir, args.test_subset, provenance)
            log(f'{source["name"]} {init}: test top-1 {row["test_top1"]:.2f} % (held-out {row["heldout_top1"]:.2f} %) '
                f'after {row["train_minutes"]:.1f} training min')
            new.append(row)
        if new[0]['images_seen'] != new[1]['images_seen']:  # the same budget, or the comparison means nothing
            raise SystemExit(f'error: {source["name"]}: the runs saw {new[0]["images_seen"]} and '
                             f'{new[1]["images_seen"]} training images; the budgets differ')
        runs = _merge(runs, new)
        folder.write_table('runs', runs)
        folder.write_table('pairs', pair_rows(runs))
    pairs = pair_rows(runs)
    folder.finish('Transfer: CIFAR-10 checkpoints fine-tuned on Fashion-MNIST', [
        'Each published `.c10` checkpoint is fine-tuned on Fashion-MNIST (1 channel; timm sums the stem conv\'s 3 '
        'input channels into 1) with a fresh classifier head, and the same architecture is trained from scratch '
        'under the same recipe, epochs, training images, input size and numeric path. Held-out top-1 is the last '
        'epoch on the images held out of the training split (monitoring only); test top-1 is the best '
        'epoch\'s weights (by held-out top-1, as train.py exports them) on the test split, measured once. A '
        'negative difference is a finding: at this budget the CIFAR-10 weights did not help.',
        '## Fine-tuned against scratch\n\n' + (_pairs_table(pairs) if pairs else 'No pair measured yet.')
        + ('\n\n' + '\n'.join(_verdict_line(p) for p in pairs) if pairs else ''),
        '## Runs\n\n' + markdown_table(runs, RUN_COLUMNS)
        + '\n\nEach run\'s train.py command is in runs.csv (`train_command`); its folder holds args.yaml and '
          'summary.csv.'])
    return 0
