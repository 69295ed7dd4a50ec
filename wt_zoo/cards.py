"""Model cards for ``hub_configs/<arch>.<tag>/`` folders, generated from the results files beside them.

A card is never written by hand: :func:`render_card` builds ``README.md`` from the folder's own
``config.json``, the training run's ``train_args.yaml`` and ``train_summary.csv`` (train.py's
args.yaml and summary.csv, copied by ``python -m wt_zoo.hub export``) and
``validation_results.json`` (validate.py's row for this checkpoint), and ``slice_results.json`` (the
figure of the fixed slice CI re-validates, recorded by ``python -m wt_zoo.hub record-slice``) and
``recipe_choices.json`` (the held-out ablation the recipe's settings were chosen from, ``hub export
--choices``) where they exist. ``hub verify`` renders the card again and fails on any difference, so the figures in a card
are always those of the files beside it.
"""
import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

from .data import CIFAR10_CLASSES, FASHION_MNIST_CLASSES, canonical_dataset_name
from .hub_ids import hub_repo_id
from .training import sitting_epochs

__all__ = [
    'HubFolderError', 'DatasetInfo', 'TAG_DATASETS', 'TRAIN_ARGS', 'TRAIN_SUMMARY', 'VALIDATION_RESULTS', 'CARD',
    'PAPER_BIBTEX', 'SLICE_RESULTS', 'RECIPE_CHOICES', 'SOLVER_CHOICES', 'RESIDUAL_AIM', 'recipe_choices',
    'choose_solver_cap', 'solver_choices', 'read_args', 'read_summary', 'read_result_rows', 'select_result_row',
    'validation_figures', 'folder_validation', 'folder_slice', 'sha256_file', 'training_figures', 'build_from_config',
    'render_card',
]

TRAIN_ARGS = 'train_args.yaml'
TRAIN_SUMMARY = 'train_summary.csv'
VALIDATION_RESULTS = 'validation_results.json'
SLICE_RESULTS = 'slice_results.json'
RECIPE_CHOICES = 'recipe_choices.json'
SOLVER_CHOICES = 'solver_choices.json'
# The checkpoints issue's aim for a DEQ's mean relative residual at test time; choose_solver_cap puts it first.
RESIDUAL_AIM = 0.05
CARD = 'README.md'
# Model arguments that shape only training (a loss term, a DEQ's backward pass), not the function the weights
# compute: evaluation returns the solver's fixed point whatever gradient trained it. They stay in train_args.yaml
# and leave the published config, so loading by name and by config.json build one model; the card says them.
TRAINING_ONLY_MODEL_ARGS = ('jac_reg_weight', 'grad_mode', 'phantom_steps', 'b_solver', 'b_max_iter')

PAPER_TITLE = 'Revisiting Implicit Models: Sparsity Trade-offs Capability in Weight-tied Model for Vision Tasks'
PAPER_URL = 'https://arxiv.org/abs/2307.08013'
PAPER_BIBTEX = """@article{song2023revisiting,
  title={Revisiting Implicit Models: Sparsity Trade-offs Capability in Weight-tied Model for Vision Tasks},
  author={Song, Haobo and Majumder, Soumajit and Lin, Tao},
  journal={arXiv preprint arXiv:2307.08013},
  year={2023}
}"""


class HubFolderError(ValueError):
    """A Hub folder, or what export reads, is unusable; the message names the file and the mismatch."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a tag was trained on, as the card and the Hub's metadata name it."""
    canonical: str  # wt_zoo.data's name
    title: str
    hub_dataset: str  # the dataset's Hugging Face Hub id, for the card's metadata
    classes: Sequence[str]
    caveat: str = ''


TAG_DATASETS: Dict[str, DatasetInfo] = {
    'c10': DatasetInfo(
        'cifar10', 'CIFAR-10', 'uoft-cs/cifar10', CIFAR10_CLASSES,
        caveat=('The CIFAR-10 figures on this card were measured on a JPEG re-encoding of CIFAR-10 (every image '
                'saved as a baseline JPEG at libjpeg quality 75; same 50,000 / 10,000 split and labels), not on '
                'the original lossless dataset. JPEG removes some detail, so accuracy on the original CIFAR-10 '
                'is expected to be slightly higher than the numbers here.')),
    'fmnist': DatasetInfo('fashion_mnist', 'Fashion-MNIST', 'zalando-datasets/fashion_mnist', FASHION_MNIST_CLASSES),
}

# Keyed by the model name without size and tag (the architecture timm registers, less its size).
FAMILIES = {
    'wt_resnet': ('weight-tied implicit ResNet',
           'Each stage holds one residual block, applied `depth` times with the stage input injected at every '
           'iteration (weights shared across iterations), trained by plain backpropagation.'),
    'wtsm_resnet': ('weight-tied implicit ResNet with sparse masks',
             'Each stage holds one residual block applied `depth` times; iteration k convolves with the shared '
             'weights times its own fixed sparse mask (drawn once from a seed, stored in the weights file), so '
             'capacity grows with the number of distinct masks at the same parameter count.'),
    'deq_resnet': ('deep equilibrium (DEQ) ResNet',
            'The same block as the weight-tied family, solved for its fixed point z* = f(z*, x) with torchdeq '
            'instead of being unrolled a fixed number of times.'),
    'wt_mdeq': ('weight-tied multi-resolution implicit model (MDEQ-style)',
                'One block holds a residual branch per resolution, each with its own injected input, and fuses '
                'the branches after every application; it is applied `depth` times with weights shared across '
                'iterations, trained by plain backpropagation.'),
    'wtsm_mdeq': ('weight-tied multi-resolution implicit model (MDEQ-style) with sparse masks',
                  'The multi-resolution block applied `depth` times; iteration k convolves with the shared weights '
                  'times its own fixed sparse mask (drawn once from a seed, stored in the weights file).'),
    'mdeq': ('multiscale deep equilibrium model (MDEQ)',
             'The same multi-resolution block as the weight-tied family, solved for its fixed point '
             'z* = f(z*, x) with torchdeq instead of being unrolled a fixed number of times.'),
}


def _name_prefix(name: str) -> str:
    """``wt_resnet`` for ``wt_resnet_tiny.c10``: the key of :data:`FAMILIES`."""
    return name.split('.', 1)[0].rsplit('_', 1)[0]


# Names the results files use for each figure, first match wins (validate.py / train.py first).
_RESULT_KEYS = {
    'top1': ('top1',), 'top5': ('top5',), 'loss': ('loss',), 'images_per_s': ('images_per_s', 'img_per_sec'),
    'params': ('params', 'param_count'), 'gflops': ('gflops',), 'effective_gflops': ('effective_gflops',),
    'deq_iterations': ('deq_iterations',), 'solver_nstep': ('solver_nstep',),
    'solver_rel_residual': ('solver_rel_residual',), 'solver_rel_residual_max': ('solver_rel_residual_max',),
    'dataset': ('dataset',), 'split': ('split',), 'device': ('device',), 'hardware': ('hardware',),
    'input_size': ('input_size', 'img_size'), 'batch_size': ('batch_size',), 'samples': ('samples',),
    'model': ('model', 'model_name'),
}
_REQUIRED_RESULTS = ('top1', 'top5', 'images_per_s', 'params', 'gflops', 'dataset', 'split', 'device', 'input_size')

# Training flags shown in the card's recipe table, in this order, when args.yaml has them.
_RECIPE_KEYS = (
    'model', 'model_kwargs', 'dataset', 'val_split_size', 'epochs', 'batch_size', 'opt', 'lr', 'momentum',
    'weight_decay', 'sched', 'warmup_epochs', 'warmup_lr', 'min_lr', 'smoothing', 'mixup', 'cutmix', 'crop_padding',
    'hflip', 'hflip_mode', 'cutout', 'progressive_min_size', 'progressive_end', 'drop', 'clip_grad', 'model_ema',
    'model_ema_decay', 'unrolled_warmup_epochs', 'opt_impl', 'amp', 'amp_dtype', 'channels_last', 'grad_checkpointing',
    'seed',
)


def read_args(path: Path) -> Dict[str, Any]:
    """train.py's args.yaml as a dict."""
    try:
        args = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise HubFolderError(f'{path}: training args file not found') from None
    except yaml.YAMLError as e:
        raise HubFolderError(f'{path}: not valid YAML ({e})') from None
    if not isinstance(args, dict):
        raise HubFolderError(f'{path}: expected a mapping of training flags, got {type(args).__name__}')
    return args


def read_summary(path: Path) -> List[Dict[str, str]]:
    """train.py's summary.csv rows; a resumed run's redone epochs keep their last row."""
    try:
        with open(path, newline='') as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise HubFolderError(f'{path}: training summary not found') from None
    if not rows or 'epoch' not in rows[0]:
        raise HubFolderError(f'{path}: expected per-epoch rows with an "epoch" column, got {len(rows)} rows')
    by_epoch = {int(float(row['epoch'])): row for row in rows}
    return [by_epoch[e] for e in sorted(by_epoch)]


def read_result_rows(path: Path) -> List[Dict[str, Any]]:
    """validate.py's results file (.json list of rows, or .csv), one row per model."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise HubFolderError(f'{path}: validation results file not found') from None
    if path.suffix.lower() == '.json':
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise HubFolderError(f'{path}: not valid JSON ({e})') from None
        rows = data if isinstance(data, list) else [data]
    elif path.suffix.lower() == '.csv':
        rows = list(csv.DictReader(text.splitlines()))
    else:
        raise HubFolderError(f'{path}: expected validate.py results as .json or .csv')
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise HubFolderError(f'{path}: expected one row per model, found none')
    return rows


def _get(row: Dict[str, Any], field: str) -> Any:
    for key in _RESULT_KEYS[field]:
        if row.get(key) not in (None, ''):
            return row[key]
    return None


def select_result_row(rows: List[Dict[str, Any]], name: str, path: Path) -> Dict[str, Any]:
    """The row for ``arch.tag``: the only row, or the one whose model names it (plain, tagged or hf-hub)."""
    if len(rows) == 1:
        return rows[0]
    arch = name.split('.')[0]
    matches = [r for r in rows if str(_get(r, 'model') or '').replace('hf-hub:', '').split('/')[-1] in (name, arch)]
    if len(matches) != 1:
        models = ', '.join(str(_get(r, 'model')) for r in rows)
        raise HubFolderError(f'{path}: {len(matches)} rows match {name} among models [{models}]; pass a results '
                             'file with the one row for this checkpoint')
    return matches[0]


def _number(value: Any, what: str, path: Path) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise HubFolderError(f'{path}: {what} is {value!r}, expected a number') from None


def validation_figures(row: Dict[str, Any], path: Path) -> Dict[str, Any]:
    """The card's figures from one validate.py row; a missing figure is an error naming it."""
    missing = [f for f in _REQUIRED_RESULTS if _get(row, f) is None]
    if missing:
        raise HubFolderError(f'{path}: validation row lacks {", ".join(missing)} (validate.py writes them; '
                             'GFLOPs need a run without --no-flops)')
    out: Dict[str, Any] = {}
    for field in _RESULT_KEYS:
        value = _get(row, field)
        if value is None:
            continue
        if field in ('dataset', 'split', 'device', 'hardware', 'input_size', 'model'):
            out[field] = str(value)
        elif field in ('params', 'batch_size', 'samples'):
            out[field] = int(_number(value, field, path))
        else:
            out[field] = _number(value, field, path)
    out['dataset'] = canonical_dataset_name(out['dataset'])
    return out


def folder_validation(folder: Path, name: str) -> Dict[str, Any]:
    """The card's figures from a Hub folder's validation results file."""
    results = folder / VALIDATION_RESULTS
    return validation_figures(select_result_row(read_result_rows(results), name, results), results)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (weights files need not fit in memory twice)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


_SLICE_KEYS = ('slice', 'validate_args', 'command', 'weights_sha256', 'top1', 'top5', 'samples', 'correct')


def folder_slice(folder: Path) -> Optional[Dict[str, Any]]:
    """The CI slice figures recorded in a Hub folder (None: none recorded yet).

    Refused when they were recorded for other weights than the folder's: replaced weights must be
    measured again before the card may state a slice figure.
    """
    folder = Path(folder)
    path = folder / SLICE_RESULTS
    if not path.is_file():
        return None
    redo = f'python -m wt_zoo.hub record-slice {folder.name} records it again'
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise HubFolderError(f'{path}: not valid JSON ({e}); {redo}') from None
    missing = [k for k in _SLICE_KEYS if k not in record] if isinstance(record, dict) else list(_SLICE_KEYS)
    if missing:
        raise HubFolderError(f'{path}: lacks {", ".join(missing)}; {redo}')
    weights = folder / 'model.safetensors'
    if weights.is_file():
        digest = sha256_file(weights)
        if digest != record['weights_sha256']:
            raise HubFolderError(f'{path}: recorded for other weights than {weights} (sha256 {digest}); {redo}')
    return record


def _float_col(rows: List[Dict[str, str]], column: str) -> Optional[List[float]]:
    if not all(row.get(column) not in (None, '') for row in rows):
        return None
    return [float(row[column]) for row in rows]


def amp_dtype_used(args: Dict[str, Any]) -> Optional[str]:
    """The autocast dtype a run trained in (None: fp32); train.py autocasts to bfloat16 on CPU whatever
    --amp-dtype says, and older args.yaml files recorded the flag, not the dtype."""
    if not args.get('amp'):
        return None
    return 'bfloat16' if str(args.get('hardware', '')).startswith('CPU') else args.get('amp_dtype', 'float16')


def training_figures(args: Dict[str, Any], summary: List[Dict[str, str]]) -> Dict[str, Any]:
    """Epochs, wall time, hardware and last-epoch metrics of the training run."""
    last = summary[-1]
    seconds = _float_col(summary, 'epoch_seconds')
    images = _float_col(summary, 'images_per_s')
    peak = _float_col(summary, 'peak_memory_mb')
    return dict(
        epochs_run=len(summary),
        epochs_planned=args.get('epochs'),
        wall_seconds=sum(seconds) if seconds else None,
        train_images_per_s=sum(images) / len(images) if images else None,
        peak_memory_mb=max(peak) if peak else None,
        hardware=args.get('hardware'),
        sittings=sitting_epochs(args['sittings'], len(summary)) if args.get('sittings') else [],
        amp_dtype=amp_dtype_used(args),
        world_size=int(float(last['world_size'])) if last.get('world_size') else 1,
        last=last,
        published=published_epoch(args, summary),
    )


def published_epoch(args: Dict[str, Any], summary: List[Dict[str, str]]) -> Optional[Dict[str, Any]]:
    """The epoch whose weights train.py exported: its best evaluation score (the EMA's when kept), the first
    epoch that reached it, as the trainer keeps it. None where the summary holds no evaluation figures."""
    metric = args.get('eval_metric') or 'top1'
    ema = all(row.get(f'ema_eval_{metric}') not in (None, '') for row in summary)
    column = f'ema_eval_{metric}' if ema else f'eval_{metric}'
    scores = _float_col(summary, column)
    if not scores:
        return None
    pick = min if metric == 'loss' else max
    index = scores.index(pick(scores))
    return dict(epoch=index + 1, score=scores[index], metric=metric, ema=ema)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f'{hours} h {minutes:02d} min'
    return f'{minutes} min {secs:02d} s' if minutes else f'{secs} s'


def _sittings_line(sittings: Sequence[Dict[str, Any]]) -> str:
    """Which code trained which epochs, and when: one line, each sitting of a run resumed over several."""
    def when(s):
        if not s.get('git_commit'):
            return '(not recorded)'
        return f'from {s["date"][:16].replace("T", " ")} UTC at commit `{s["git_commit"][:10]}`'
    if len(sittings) == 1:
        return f'- Trained in one sitting {when(sittings[0])}.'
    return (f'- Trained over {len(sittings)} sittings (`--resume`): '
            + '; '.join(f'{_epoch_span(s)} {when(s)}' for s in sittings) + '.')


def _epoch_span(sitting: Dict[str, Any]) -> str:
    first, last = sitting['first_epoch'], sitting['last_epoch']
    return f'epoch {first}' if first == last else f'epochs {first}-{last}'


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f'{value:g}'
    if isinstance(value, (dict, list)):
        return '`' + json.dumps(value, sort_keys=True) + '`'
    return f'`{value}`' if isinstance(value, str) else str(value)


def _front_matter(name: str, config: Dict[str, Any], data: DatasetInfo, val: Dict[str, Any]) -> str:
    split = val['split']
    meta = {
        'library_name': 'timm',
        'license': config['pretrained_cfg'].get('license', 'apache-2.0'),
        'pipeline_tag': 'image-classification',
        'tags': ['image-classification', 'timm', 'wt-zoo', 'implicit-model', _name_prefix(name)],
        'datasets': [data.hub_dataset],
        'metrics': ['accuracy'],
        'model-index': [{
            'name': name,
            'results': [{
                'task': {'type': 'image-classification', 'name': 'Image Classification'},
                'dataset': {'type': data.hub_dataset, 'name': data.title + (' (JPEG copy)' if data.caveat else ''),
                            'split': split},
                'metrics': [
                    {'type': 'accuracy', 'name': 'Top-1 accuracy', 'value': val['top1']},
                    {'type': 'top_5_accuracy', 'name': 'Top-5 accuracy', 'value': val['top5']},
                ],
            }],
        }],
    }
    return '---\n' + yaml.safe_dump(meta, sort_keys=False, width=1000) + '---\n'


def _iteration_text(model, args: Dict[str, Any]) -> str:
    """How each implicit layer iterates, read off the model config.json builds (so the card states the solver);
    for a DEQ also the training-only settings the run used (its flags, else the model's defaults)."""
    if getattr(model, 'deq_args', None):
        shown = {k: v for k, v in model.deq_args.items() if k not in TRAINING_ONLY_MODEL_ARGS}
        if not shown.get('eval_f_max_iter'):
            shown.pop('eval_f_max_iter', None)  # 0: evaluation solves with the training cap, said by f_max_iter
        run_kwargs = args.get('model_kwargs') or {}
        trained = {k: run_kwargs.get(k, model.deq_args[k]) for k in TRAINING_ONLY_MODEL_ARGS if k in model.deq_args}
        if trained.get('grad_mode') != 'phantom':
            trained.pop('phantom_steps', None)
        return ('solved to a fixed point with torchdeq, ' + ', '.join(f'{k}={v}' for k, v in shown.items())
                + '; trained with ' + ', '.join(f'{k}={v}' for k, v in trained.items())
                + ' (training-only settings, not in config.json: pass them to fine-tune the same way)')
    per_stage = hasattr(model, 'stages')  # a ResNet; a multi-resolution model has one implicit layer
    text = (f'{model.depth} unrolled iterations {"per stage" if per_stage else "of the block"}, '
            'weights shared across iterations')
    masks = getattr(model.implicit_layers()[0], 'masks', None)
    if masks is not None:
        text += (f'; {masks.mask_kind} masks at density {masks.mask_density:g}, {masks.num_masks} distinct '
                 f'mask(s){" per stage" if per_stage else ""} ({masks.mask_mode})')
    return text


def _layout_text(model) -> str:
    """The maps the model computes: per stage (ResNets, after the stem) or per branch (multi-resolution)."""
    maps = ', '.join(f'{info["num_chs"]} channels at 1/{info["reduction"]} resolution'
                     for info in model.feature_info if info['module'] != 'stem')
    return ('- Stages: ' if hasattr(model, 'stages') else '- Branches: ') + maps + '.'


def build_from_config(config: Dict[str, Any]):
    """The model config.json describes, as ``hf-hub:`` loading builds it (random weights)."""
    import timm
    # hf-hub: passes the folder's pretrained cfg, whose tag picks the tag's own model arguments (TAG_MODEL_ARGS)
    return timm.create_model(config['architecture'], pretrained=False, pretrained_cfg=config.get('pretrained_cfg'),
                             **config.get('model_args', {}))


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    values = [float(v) for v in values if v is not None and v == v]
    return round(sum(values) / len(values), 4) if values else None


def recipe_choices(ablation_dir: Path, chosen: str) -> Dict[str, Any]:
    """What a ``bench ablation`` folder tried, and which of its variants a checkpoint trained with: the card's
    account of how its recipe was chosen (held-out figures only), kept beside the weights."""
    folder = Path(ablation_dir)
    try:
        run = json.loads((folder / 'run.json').read_text())
        variants = json.loads((folder / 'variants.json').read_text())
        runs = json.loads((folder / 'runs.json').read_text())
    except FileNotFoundError as e:
        raise HubFolderError(f'{folder}: not a finished `python -m wt_zoo.bench ablation` results folder '
                             f'({Path(e.filename).name} missing)') from None
    names = [row['variant'] for row in variants]
    if chosen not in names:
        raise HubFolderError(f'{folder}: has no variant {chosen!r}; its variants are {", ".join(names)}')
    settings = run.get('settings', {})
    rows = []
    for row in variants:
        done = [r for r in runs if r['variant'] == row['variant'] and r.get('status') == 'ok']
        rows.append(dict(variant=row['variant'], flags=row.get('flags') or '', seeds=row.get('seeds'),
                         diverged=row.get('diverged'), heldout_top1=row.get('top1_mean'),
                         heldout_top1_std=row.get('top1_std'), delta=row.get('delta'), verdict=row.get('verdict'),
                         train_minutes=row.get('train_minutes'),
                         solver_nstep=_mean([r.get('nstep_last') for r in done]),
                         solver_rel_residual=_mean([r.get('residual_last') for r in done])))
    heldout = {r.get('heldout_images') for r in runs} - {None}
    trained = {r.get('train_images') for r in runs} - {None}
    lrs = {r.get('lr') for r in runs} - {None}  # the recipe's at the ablation's commit: a recipe's lr can move later
    return dict(command=run['command'], git_commit=run['git_commit'], date=run.get('date'),
                recipe=settings.get('recipe'), epochs=settings.get('epochs'),
                lr=lrs.pop() if len(lrs) == 1 else None, seeds=settings.get('seeds'),
                train_images=trained.pop() if len(trained) == 1 else None,
                heldout_images=heldout.pop() if len(heldout) == 1 else None,
                hardware=next((r['hardware'] for r in runs if r.get('hardware')), None),
                resolution=run.get('resolution'), chosen=chosen, variants=rows)


def choose_solver_cap(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """One tag's ``bench deq-solver`` rows -> the solver and cap: among those whose held-out mean relative
    residual is below :data:`RESIDUAL_AIM`, the best held-out top-1, the fewer iterations on a tie; when none
    converges that far, the best top-1 of all.

    Convergence comes first because a DEQ stopped well short of its fixed point is a truncated unrolled
    network, not the equilibrium model its card describes; the held-out top-1 it costs is in the card's table.
    """
    converged = [r for r in rows if r['solver_rel_residual'] < RESIDUAL_AIM]
    return max(converged or rows, key=lambda r: (r['top1'], -r['solver_nstep']))


def solver_choices(results_dir: Path, name: str) -> Dict[str, Any]:
    """What a ``bench deq-solver`` folder measured for one tag on its held-out split, and the cap it chose: the
    card's account of the test-time solver cap, kept beside the weights."""
    folder = Path(results_dir)
    try:
        run = json.loads((folder / 'run.json').read_text())
        rows = json.loads((folder / 'solver.json').read_text())
    except FileNotFoundError as e:
        raise HubFolderError(f'{folder}: not a finished `python -m wt_zoo.bench deq-solver` results folder '
                             f'({Path(e.filename).name} missing)') from None
    rows = [r for r in rows if r.get('model') == name]
    if not rows:
        raise HubFolderError(f'{folder}: measured no solver cap for {name}')
    machine = run.get('machine') or {}
    best = choose_solver_cap(rows)
    record = dict(command=run['command'], git_commit=run['git_commit'], date=run.get('date'),
                  cpu=machine.get('cpu_model'), residual_aim=RESIDUAL_AIM, chosen=best['eval_f_max_iter'], caps=rows)
    if 'f_solver' in best:  # folders measured before solvers were compared tried the trained one only
        record['chosen_solver'] = best['f_solver']
    return record


def _solver_rule_text(choices: Dict[str, Any], compared: bool) -> str:
    tie = 'the fewer iterations' if compared else 'the cheaper cap'
    if 'residual_aim' not in choices:  # recorded before convergence came first
        return f'the best held-out top-1 wins, {tie} on a tie.'
    return (f'among the settings whose mean relative residual there is below {choices["residual_aim"]:g} (the '
            f'solver reaches its fixed point), the best held-out top-1 wins, {tie} on a tie; when none gets that '
            'far, the best top-1 of all.')


def _solver_choice_lines(choices: Dict[str, Any]) -> List[str]:
    caps, solver = choices['caps'], choices.get('chosen_solver')
    compared = solver is not None  # folders measured before solvers were compared tried the trained one only
    chosen = f'{solver}, eval_f_max_iter={choices["chosen"]}' if compared else f'eval_f_max_iter={choices["chosen"]}'
    lines = [
        f'## How the test-time solver{"" if compared else " cap"} was chosen', '',
        f'On the held-out split only: `{choices["command"]}` (commit `{choices["git_commit"][:10]}`) validated '
        f'these weights on {caps[0]["samples"]:,} images held out of the training split once per '
        + ('forward solver and cap' if compared else 'cap')
        + ' (`eval_f_max_iter`, 0 = the training cap); ' + _solver_rule_text(choices, compared)
        + f' This checkpoint solves with **{chosen}**.',
        '',
        ('| solver ' if compared else '') + '| eval_f_max_iter | solver cap | held-out top-1 (%) | mean iterations | '
        'mean rel. residual |',
        ('|---' if compared else '') + '|---|---|---|---|---|',
    ]
    for row in caps:
        chosen = row['eval_f_max_iter'] == choices['chosen'] and row.get('f_solver') == solver
        cap = f'**{row["eval_f_max_iter"]}**' if chosen else row['eval_f_max_iter']
        lines.append(('' if solver is None else f'| {row["f_solver"]} ')
                     + f'| {cap} | {row["solver_cap"]} | {row["top1"]:.2f} | {row["solver_nstep"]:.1f} | '
                     f'{row["solver_rel_residual"]:.3f} |')
    return lines + ['']


def _choices_lines(choices: Dict[str, Any], name: str, trained_lr: Optional[float] = None) -> List[str]:
    def cell(value, spec='{:.2f}'):
        return '' if value is None else spec.format(value)
    ablated = Path(choices['recipe']).stem if choices.get('recipe') else ''  # configs/<name>.yaml, as time-to-accuracy
    carried = (f' The ablation trained `{ablated}`\'s recipe, not this model\'s: its choice is carried over to '
               f'{name} without an ablation of its own.' if ablated and ablated != name else '')
    ablation_lr = choices.get('lr')
    other_lr = (f' at peak lr {trained_lr:g}, not the ablation\'s {ablation_lr:g}'
                if None not in (ablation_lr, trained_lr) and float(trained_lr) != float(ablation_lr) else '')
    seeds = choices.get('seeds') or []
    resolution = choices.get('resolution')
    lines = [
        '## How the recipe was chosen', '',
        f'On the held-out split only: `{choices["command"]}` (commit `{choices["git_commit"][:10]}`'
        + (f', {choices["hardware"]}' if choices.get('hardware') else '') + ') trained each variant of '
        f'`{choices["recipe"]}` for {choices["epochs"]} epochs'
        + (f' at peak lr {ablation_lr:g}' if ablation_lr is not None else '')
        + (f' on {choices["train_images"]:,} training images' if choices.get('train_images') else '')
        + (f', {len(seeds)} seed' + ('s' if len(seeds) != 1 else '') if seeds else '')
        + (f', and scored the last epoch\'s weights on {choices["heldout_images"]:,} images held out of the training '
           'split' if choices.get('heldout_images') else '') + '. '
        + (f'Resolution {resolution:.2f} points (twice the seed-to-seed standard deviation): a variant differs from the '
           'first only outside it.' if resolution is not None else
           'With one seed there is no measured resolution: small differences may be seed noise.'),
        '', f'This checkpoint trained with **{choices["chosen"]}**{other_lr}.{carried}', '',
        '| variant | flags over the recipe | held-out top-1 (%) | vs first | verdict | diverged | solver iterations '
        '| relative residual | training min |',
        '|---|---|---|---|---|---|---|---|---|',
    ]
    for row in choices['variants']:
        name = f'**{row["variant"]}**' if row['variant'] == choices['chosen'] else row['variant']
        flags = f'`{row["flags"]}`' if row['flags'] else ''
        lines.append(f'| {name} | {flags} | {cell(row["heldout_top1"])} | {cell(row["delta"], "{:+.2f}")} | '
                     f'{row["verdict"] or ""} | {cell(row["diverged"], "{}")} | {cell(row["solver_nstep"], "{:.1f}")} | '
                     f'{cell(row["solver_rel_residual"], "{:.3f}")} | {cell(row["train_minutes"], "{:.1f}")} |')
    return lines + ['', 'Solver figures are the last epoch\'s on the held-out split, mean over seeds.', '']


def render_card(folder: Path, name: Optional[str] = None, model=None) -> str:
    """README.md for a hub_configs folder, from its config.json and results files only.

    ``name`` (``arch.tag``) defaults to the folder's name (export renders into a staging folder);
    ``model``, the model config.json builds, saves building it again.
    """
    folder = Path(folder)
    name = name or folder.name
    arch, tag = name.split('.')
    data = TAG_DATASETS[tag]
    config = json.loads((folder / 'config.json').read_text())
    model = model if model is not None else build_from_config(config)
    args = read_args(folder / TRAIN_ARGS)
    summary = read_summary(folder / TRAIN_SUMMARY)
    val = folder_validation(folder, name)
    ci_slice = folder_slice(folder)
    train = training_figures(args, summary)
    pcfg = config['pretrained_cfg']
    family_title, family_text = FAMILIES[_name_prefix(name)]
    repo = hub_repo_id(name)

    lines = [_front_matter(name, config, data, val)]
    lines += [
        f'# {name}', '',
        f'A {family_title} from wt-zoo, trained on {data.title}. '
        f'{family_text}', '',
        'This card is generated by `python -m wt_zoo.hub export` from the files in this repository '
        f'(`config.json`, `{TRAIN_ARGS}`, `{TRAIN_SUMMARY}`, `{VALIDATION_RESULTS}`); '
        '`python -m wt_zoo.hub verify` regenerates it and fails on any difference.', '',
        '## Results', '',
        f'Measured by `validate.py` on the {data.title} {val["split"]} split'
        + (f' ({val["samples"]:,} images)' if 'samples' in val else '') + f', input {val["input_size"]}.', '',
        '| top-1 (%) | top-5 (%) | loss | params (M) | GFLOPs / image | images/s |',
        '|---|---|---|---|---|---|',
        f'| {val["top1"]:.2f} | {val["top5"]:.2f} | ' + (f'{val["loss"]:.4f}' if 'loss' in val else 'n/a')
        + f' | {val["params"] / 1e6:.3f} | {val["gflops"]:.4f} | {val["images_per_s"]:,.0f} |', '',
        f'- Parameters: {val["params"]:,} (shared weights counted once).',
        '- GFLOPs: fvcore, which counts one multiply-add as one flop, per image at the input size above'
        + (f'; with the sparse masks applied, {val["effective_gflops"]:.4f} effective GFLOPs'
           if 'effective_gflops' in val else '')
        + (f'; the DEQ solver used {val["deq_iterations"]:.1f} iterations per stage on average, and the count is '
           'taken at that many iterations' if 'deq_iterations' in val else '') + '.',
        # the machine where validate.py recorded it (it differs from tag to tag), else the device
        '- images/s: inference throughput on ' + (val['hardware'] if 'hardware' in val else f'`{val["device"]}`')
        + (f' at batch size {val["batch_size"]}' if 'batch_size' in val else '') + '.',
    ]
    if 'solver_rel_residual' in val:
        lines.append('- Convergence on this split: the solver stopped'
                     + (f' after {val["solver_nstep"]:.1f} iterations on average,' if 'solver_nstep' in val else '')
                     + f' at a mean relative residual ||f(z) - z|| / ||f(z)|| of {val["solver_rel_residual"]:.3f}'
                     + (f' (worst batch {val["solver_rel_residual_max"]:.3f})' if 'solver_rel_residual_max' in val
                        else '') + '.')
    if ci_slice:
        lines.append(f'- Fixed slice re-validated by wt-zoo\'s CI: {ci_slice["slice"]["description"]}; top-1 '
                     f'{ci_slice["top1"]:.2f} %, top-5 {ci_slice["top5"]:.2f} % ({ci_slice["correct"]} of '
                     f'{ci_slice["samples"]} images right), recorded in `{SLICE_RESULTS}` with the command that '
                     'measured it.')
    lines += [
        '',
        '## Model details', '',
        f'- timm name: `{name}` (architecture `{arch}`, pretrained tag `{tag}`); Hub repository `{repo}`.',
        f'- Model arguments (config.json): {_fmt(config.get("model_args", {}))}.',
        _layout_text(model),
        f'- Iteration: {_iteration_text(model, args)}.',
        f'- Input: {"x".join(str(s) for s in pcfg["input_size"])}, mean {_fmt(list(pcfg["mean"]))}, '
        f'std {_fmt(list(pcfg["std"]))}, {pcfg.get("interpolation", "bilinear")} interpolation, '
        f'crop_pct {pcfg.get("crop_pct", 1.0)}.',
        f'- Classes ({config["num_classes"]}): ' + ', '.join(config.get('label_names') or data.classes) + '.',
        '',
        '## Training', '',
    ]
    hardware = train['hardware'] or 'not recorded'
    machines = {s['hardware'] for s in train['sittings'] if s.get('hardware')}
    if len(machines) > 1:  # resumed on another machine: its wall time adds up epochs of both
        hardware = ', '.join(f'{s.get("hardware") or "not recorded"} ({_epoch_span(s)})' for s in train['sittings'])
    wall = _duration(train['wall_seconds']) if train['wall_seconds'] is not None else 'not recorded'
    planned = train['epochs_planned']
    planned = f' of {planned} planned' if planned not in (None, train['epochs_run']) else ''
    if hardware.startswith('CPU'):
        # No GPU was available: say so up front, as the zoo's promise is CUDA-trained weights.
        epochs = f'{train["epochs_run"]} epoch' + ('s' if train['epochs_run'] != 1 else '')
        lines += [f'**CPU-trained, short schedule**: {epochs}, {wall} of training on {hardware}. '
                  'A CUDA run with a full schedule should score higher; these weights are a first, honest baseline.', '']
    lines += [
        f'- Hardware: {hardware}' + (f', {train["world_size"]} processes' if train['world_size'] > 1 else '') + '.',
        f'- Epochs: {train["epochs_run"]}{planned}; wall time {wall} (sum of the training epochs in '
        f'`{TRAIN_SUMMARY}`, evaluation excluded)'
        + (f'; {train["train_images_per_s"]:,.0f} training images/s on average' if train['train_images_per_s'] else '')
        + (f'; peak memory {train["peak_memory_mb"]:,.0f} MB' if train['peak_memory_mb'] else '') + '.',
    ]
    if train['sittings']:
        lines.append(_sittings_line(train['sittings']))
    last, published = train['last'], train['published']
    split = ('the held-out part of the training split' if args.get('val_split_size') else
             f'the evaluation split train.py used (see `{TRAIN_ARGS}`)')
    if last.get('eval_top1'):
        ema = f' (EMA weights {float(last["ema_eval_top1"]):.2f} %)' if last.get('ema_eval_top1') else ''
        lines.append(f'- Last epoch: train loss {float(last["train_loss"]):.4f}, evaluation top-1 '
                     f'{float(last["eval_top1"]):.2f} %{ema} on {split}.')
    if published:
        score = (f'evaluation loss ({published["score"]:.4f})' if published['metric'] == 'loss' else
                 f'evaluation {published["metric"].replace("top", "top-")} ({published["score"]:.2f} %)')
        lines.append('- Published weights: ' + ('the EMA weights' if published['ema'] else 'the weights')
                     + f' of epoch {published["epoch"]}, the best {score}; train.py exports its best epoch, '
                     'not its last.')
    lines += ['', '| setting | value |', '|---|---|']
    shown = dict(args, amp_dtype=train['amp_dtype']) if train['amp_dtype'] else dict(args)
    if not shown.get('progressive_min_size'):  # off: its end fraction is only the flag's default
        shown.pop('progressive_end', None)
    lines += [f'| {key} | {_fmt(shown[key])} |' for key in _RECIPE_KEYS if shown.get(key) not in (None, '', {}, [])]
    lines += [
        '',
        f'The complete flags are in `{TRAIN_ARGS}`; with the wt-zoo repository, '
        f'`python train.py --config {TRAIN_ARGS}` trains this recipe again.', '',
    ]
    if (folder / RECIPE_CHOICES).is_file():
        lines += _choices_lines(json.loads((folder / RECIPE_CHOICES).read_text()), name, args.get('lr'))
    if (folder / SOLVER_CHOICES).is_file():
        lines += _solver_choice_lines(json.loads((folder / SOLVER_CHOICES).read_text()))
    lines += [
        '## Data', '',
        data.caveat or f'Trained and evaluated on {data.title} (original files).', '',
        '## Usage', '',
        'Import `wt_zoo` before creating the model: it registers the zoo\'s architectures with timm '
        '(`hf-hub:` names need it too).', '',
        '```python',
        'import timm',
        'import torch',
        'import wt_zoo  # registers the zoo models with timm',
        '',
        f"model = timm.create_model('{name}', pretrained=True).eval()",
        f"# or straight from this repository: timm.create_model('hf-hub:{repo}', pretrained=True)",
        'config = timm.data.resolve_data_config({}, model=model)',
        'transform = timm.data.create_transform(**config)',
        'with torch.no_grad():',
        '    probabilities = model(transform(image).unsqueeze(0)).softmax(-1)  # image: a PIL image',
        '',
        '# fine-tuning: timm adapts the first conv and replaces the head',
        f"model = timm.create_model('{name}', pretrained=True, num_classes=5, in_chans=1)",
        '```', '',
        '## Citation', '',
        f'The models follow [{PAPER_TITLE}]({PAPER_URL}):', '',
        '```bibtex', PAPER_BIBTEX, '```', '',
    ]
    return '\n'.join(lines)
