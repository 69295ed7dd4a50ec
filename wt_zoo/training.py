"""Library pieces behind train.py and validate.py, so the scripts stay thin.

Checkpoints are written atomically (temp file in the same folder, then ``os.replace``), hold only
tensors and plain Python values (so ``torch.load(weights_only=True)`` reads them), and carry the
full training state plus the per-epoch history, so ``--resume`` continues exactly where a run
stopped. The epoch loops keep running sums on the device and synchronise only at log points.
"""
import argparse
import csv
import datetime
import io
import json
import logging
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn

_logger = logging.getLogger(__name__)

LAST_CHECKPOINT = 'last.pth.tar'
BEST_CHECKPOINT = 'best.pth.tar'
SUMMARY_FILE = 'summary.csv'
ARGS_FILE = 'args.yaml'
WEIGHTS_FILE = 'model.safetensors'
# What args.yaml records about the run beside its flags; a --config of an args.yaml (a replay) skips them.
RUN_RECORD_KEYS = ('hardware', 'fast_path_timings', 'sittings')
REPO_ROOT = Path(__file__).resolve().parents[1]
_TMP_SUFFIX = '.tmp'


def _file_mode() -> int:
    """The mode a plain open() would give (mkstemp's temp files are 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()

__all__ = [
    'LAST_CHECKPOINT', 'BEST_CHECKPOINT', 'SUMMARY_FILE', 'ARGS_FILE', 'WEIGHTS_FILE', 'RUN_RECORD_KEYS',
    'NonFiniteLossError',
    'DistContext', 'init_distributed', 'plain', 'atomic_write_bytes', 'atomic_write_text', 'atomic_torch_save',
    'find_checkpoint', 'load_checkpoint_file', 'save_training_checkpoint', 'restore_training_state',
    'ParseKwargs', 'parse_args_with_config', 'load_model_weights', 'write_summary_csv', 'write_args_yaml',
    'cpu_model', 'describe_hardware', 'git_commit', 'this_sitting', 'record_sitting', 'sitting_epochs',
    'write_results', 'seed_everything',
    'create_model_from_args', 'unwrap', 'peak_memory_mb', 'reset_peak_memory', 'mean_solver_steps',
    'rank_weight_max_diff', 'train_one_epoch', 'evaluate', 'export_weights', 'parse_kwargs_value',
]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; carries where, so the caller can say it and stop."""

    def __init__(self, epoch: int, step: int, steps_per_epoch: int, value: float):
        self.epoch, self.step, self.steps_per_epoch, self.value = epoch, step, steps_per_epoch, value
        super().__init__(f'non-finite loss ({value}) at epoch {epoch} step {step} (of {steps_per_epoch} steps per epoch)')


# ----------------------------------------------------------------------------------------------
# Plain values and atomic files


def plain(value: Any) -> Any:
    """Args and metrics as plain dicts/lists/str/numbers, so YAML and weights_only loading accept them."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, (Path, torch.device, torch.dtype)):
        return str(value)
    if hasattr(value, '__dict__') and not callable(value):
        return plain(vars(value))
    return str(value)


def _atomic_write(path: Union[str, Path], write: Callable[[io.BufferedWriter], None]) -> None:
    """Write to a uniquely named temp file in the same folder, fsync, then rename over ``path``.

    A kill at any moment leaves either the old file or the new one; a stray ``*.tmp`` may remain,
    which :func:`find_checkpoint` never picks up.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> None:
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Union[str, Path], text: str) -> None:
    atomic_write_bytes(path, text.encode('utf-8'))


def atomic_write_json(path: Union[str, Path], value: Any) -> None:
    """``value`` (made :func:`plain`) as indented JSON, written atomically: results and plans survive a kill."""
    atomic_write_text(path, json.dumps(plain(value), indent=2) + '\n')


def atomic_torch_save(obj: Any, path: Union[str, Path]) -> None:
    _atomic_write(path, lambda f: torch.save(obj, f))


def find_checkpoint(path: Union[str, Path]) -> Path:
    """A checkpoint file, or a run folder's last.pth.tar (temp files from an interrupted save are ignored)."""
    path = Path(path)
    if path.is_dir():
        candidate = path / LAST_CHECKPOINT
        if not candidate.is_file():
            raise FileNotFoundError(f'no {LAST_CHECKPOINT} in {path}; expected a run folder written by train.py '
                                    'or a checkpoint file')
        return candidate
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    if path.name.endswith(_TMP_SUFFIX):
        raise ValueError(f'{path} is a temp file of an interrupted save, not a checkpoint; '
                         f'use {path.parent / LAST_CHECKPOINT}')
    return path


def load_checkpoint_file(path: Union[str, Path], map_location='cpu') -> Dict[str, Any]:
    """torch.load with weights_only=True: a checkpoint can never run code."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f'cannot load {path} as a checkpoint with weights_only=True: {e}') from e


# ----------------------------------------------------------------------------------------------
# Model creation and weights


def parse_kwargs_value(text: str) -> Any:
    """'k=v' values as YAML scalars/lists (0.5, true, [1, 2], anderson); '2:4' stays a string (YAML 1.1 would
    read it as the base-60 integer 124, and a mask kind is written that way)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, (int, float)) and not isinstance(value, bool) and ':' in text:
        return text
    return value


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP, torch.compile and timm EMA wrappers."""
    from timm.utils import ModelEmaV3
    while True:
        if hasattr(model, 'module') and isinstance(model, (nn.parallel.DistributedDataParallel, ModelEmaV3)):
            model = model.module
        elif hasattr(model, '_orig_mod'):
            model = model._orig_mod
        else:
            return model


def _checkpoint_state_dict(checkpoint: Dict[str, Any], use_ema: bool, path) -> Dict[str, torch.Tensor]:
    if use_ema:
        for key in ('state_dict_ema', 'model_ema'):
            if isinstance(checkpoint.get(key), dict):
                return checkpoint[key]
        raise ValueError(f'{path} holds no EMA weights (no state_dict_ema); drop --use-ema')
    for key in ('state_dict', 'model', 'state_dict_ema'):
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    if all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    raise ValueError(f'{path}: no state_dict found (keys {sorted(checkpoint)[:8]})')


def load_model_weights(model: nn.Module, path: Union[str, Path], use_ema: bool = False, strict: bool = True) -> None:
    """Weights from model.safetensors or a .pth/.pth.tar checkpoint (weights_only) into ``model``."""
    path = Path(path)
    if path.is_dir():
        path = path / 'model.safetensors'
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    if path.suffix == '.safetensors':
        from .hub import load_weights  # a truncated or corrupt file fails naming it, not with safetensors' error
        state_dict = load_weights(path)
    else:
        state_dict = _checkpoint_state_dict(load_checkpoint_file(path), use_ema, path)
    state_dict = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state_dict.items()}
    try:
        unwrap(model).load_state_dict(state_dict, strict=strict)
    except RuntimeError as e:
        raise ValueError(f'{path} does not fit {type(unwrap(model)).__name__}: {e}. Check --num-classes, --in-chans '
                         'and --model-kwargs against the run that wrote it.') from e


def create_model_from_args(args, pretrained: Optional[bool] = None) -> nn.Module:
    """timm.create_model from the scripts' flags; timm adapts the first conv and head for pretrained weights."""
    import timm
    from timm.models import resolve_model_input_args
    import wt_zoo  # noqa: F401  registers the zoo's models

    pretrained = bool(getattr(args, 'pretrained', False)) if pretrained is None else pretrained
    pretrained_path = getattr(args, 'pretrained_path', None)
    input_args = {k: getattr(args, k, None) for k in ('input_size', 'img_size', 'in_chans')}
    model_kwargs = dict(getattr(args, 'model_kwargs', None) or {})
    extra = dict(num_classes=getattr(args, 'num_classes', None), drop_rate=getattr(args, 'drop', None),
                 drop_path_rate=getattr(args, 'drop_path', None))
    extra.update(model_kwargs)
    try:
        kwargs = resolve_model_input_args(args.model, args=input_args, **extra)
        overlay = dict(file=str(pretrained_path)) if pretrained_path else None
        model = timm.create_model(pretrained=pretrained or bool(pretrained_path), pretrained_cfg_overlay=overlay,
                                  **kwargs)
    except RuntimeError as e:
        if 'Unknown model' in str(e):
            raise ValueError(f'unknown model {args.model!r}; zoo models: {", ".join(wt_zoo.list_zoo_models())} '
                             '(any timm model name works too)') from e
        raise
    if pretrained and not pretrained_path:
        cfg = getattr(model, 'pretrained_cfg', {}) or {}
        if not any(cfg.get(k) for k in ('hf_hub_id', 'url', 'file', 'state_dict')):
            raise ValueError(f'{args.model} has no published weights yet (its pretrained cfg names no hf_hub_id, url '
                             'or file); drop --pretrained, or load weights with --pretrained-path / --initial-checkpoint')
    initial = getattr(args, 'initial_checkpoint', None)
    if initial:
        load_model_weights(model, initial)
    return model


def export_weights(model: nn.Module, out_dir: Union[str, Path], data_config: Optional[dict] = None,
                   label_names: Optional[Sequence[str]] = None) -> Path:
    """model.safetensors + timm's config.json (atomically), so ``local-dir:``/``hf-hub:`` load the folder."""
    from timm.models import save_for_hf
    out_dir = Path(out_dir)
    model.to(memory_format=torch.contiguous_format)  # safetensors stores dense tensors only (not channels_last)
    model_config = {}
    if label_names and len(label_names) == getattr(model, 'num_classes', -1):
        model_config['label_names'] = list(label_names)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix='.export-') as tmp:
        data_args = None
        if data_config:
            data_args = {k: data_config[k] for k in ('input_size', 'mean', 'std', 'interpolation', 'crop_pct',
                                                      'crop_mode') if k in data_config}
        save_for_hf(model, tmp, model_config=model_config, safe_serialization=True, data_config=data_args)
        for name in (WEIGHTS_FILE, 'config.json'):
            os.replace(os.path.join(tmp, name), out_dir / name)
    return out_dir / WEIGHTS_FILE


# ----------------------------------------------------------------------------------------------
# Checkpoints with the full training state


def save_training_checkpoint(
        path: Union[str, Path], *, model: nn.Module, optimizer, scheduler, epoch: int, args, history: List[dict],
        best: Optional[dict], model_ema: Optional[nn.Module] = None, scaler=None, num_updates: int = 0,
        sittings: Sequence[Dict[str, Any]] = ()) -> None:
    """Everything --resume needs, as tensors and plain values, written atomically; ``sittings`` (see
    :func:`record_sitting`) travel with the epochs they trained."""
    state = dict(
        epoch=epoch,
        arch=getattr(args, 'model', ''),
        state_dict=unwrap(model).state_dict(),
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict() if scheduler is not None else None,
        num_updates=num_updates,
        args=plain(vars(args)),
        history=plain(history),
        best=plain(best),
        sittings=plain(list(sittings)),
        version=1,
    )
    if model_ema is not None:
        state['state_dict_ema'] = unwrap(model_ema.module if hasattr(model_ema, 'module') else model_ema).state_dict()
    if scaler is not None:
        state['scaler'] = scaler.state_dict()
    atomic_torch_save(state, path)


def restore_training_state(checkpoint: Dict[str, Any], *, model: nn.Module, optimizer=None, scheduler=None,
                           model_ema=None, scaler=None) -> int:
    """Load a training checkpoint's state into the live objects; returns the epoch to start from."""
    unwrap(model).load_state_dict(checkpoint['state_dict'])
    if optimizer is not None and checkpoint.get('optimizer') is not None:
        optimizer.load_state_dict(checkpoint['optimizer'])
    if scheduler is not None and checkpoint.get('scheduler') is not None:
        scheduler.load_state_dict(checkpoint['scheduler'])
    if model_ema is not None:
        if checkpoint.get('state_dict_ema') is None:
            _logger.warning('resumed checkpoint has no EMA weights; EMA restarts from the model weights')
            model_ema.set(unwrap(model))
        else:
            model_ema.module.load_state_dict(checkpoint['state_dict_ema'])
    if scaler is not None and checkpoint.get('scaler') is not None:
        scaler.load_state_dict(checkpoint['scaler'])
    return int(checkpoint['epoch']) + 1



# ----------------------------------------------------------------------------------------------
# Command lines (shared by train.py and validate.py)


class ParseKwargs(argparse.Action):
    """--model-kwargs k=v k2=v2: values parsed as YAML scalars; adds to (not replaces) a --config dict."""

    def __call__(self, parser, namespace, values, option_string=None):
        kwargs = dict(getattr(namespace, self.dest, None) or {})
        for item in values:
            key, sep, value = item.partition('=')
            if not sep or not key:
                parser.error(f'{option_string} expects key=value pairs, got {item!r}')
            kwargs[key] = parse_kwargs_value(value)
        setattr(namespace, self.dest, kwargs)


def parse_args_with_config(parser: argparse.ArgumentParser, argv=None, skip_unknown_keys: bool = False):
    """timm-style: a ``--config`` YAML file sets defaults, the command line overrides them.

    Keys are flag names. Unknown keys are an error, or skipped with ``skip_unknown_keys`` (so that
    validate.py can read a train.py recipe); a run's own records in its args.yaml (:data:`RUN_RECORD_KEYS`)
    are skipped, so that a run's args.yaml trains its recipe again.
    """
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument('-c', '--config', default='')
    pre, remaining = config_parser.parse_known_args(argv)
    if pre.config:
        try:
            with open(pre.config) as f:
                cfg = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as e:
            parser.error(f'cannot read --config {pre.config}: {e}')
        if not isinstance(cfg, dict):
            parser.error(f'--config {pre.config}: expected a mapping of flag names to values')
        known = {a.dest for a in parser._actions}
        cfg = {k.replace('-', '_'): v for k, v in cfg.items() if k not in RUN_RECORD_KEYS}
        unknown = sorted(set(cfg) - known)
        if unknown and not skip_unknown_keys:
            parser.error(f'--config {pre.config}: unknown keys {unknown}; keys are flag names, e.g. batch_size, lr')
        parser.set_defaults(**{k: v for k, v in cfg.items() if k in known})
    args = parser.parse_args(remaining)
    args.config = pre.config
    return args


# ----------------------------------------------------------------------------------------------
# Output files


def _csv_text(rows: List[Dict[str, Any]]) -> str:
    """CSV of rows whose keys may differ: the columns are every key, in order of first appearance; a cell holding a
    mapping or a list is written as JSON."""
    columns: List[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()} for row in rows)
    return buf.getvalue()


def write_summary_csv(path: Union[str, Path], rows: List[Dict[str, Any]]) -> None:
    """The whole per-epoch history, rewritten atomically (a resumed run rewrites it from the checkpoint)."""
    atomic_write_text(path, _csv_text([{k: _format_number(v) for k, v in row.items()} for row in rows]))


def _format_number(value):
    if isinstance(value, float):
        return f'{value:.6g}' if abs(value) >= 1e-3 or value == 0 else f'{value:.6e}'
    return value


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.lower().startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_hardware(device: torch.device, world_size: int = 1) -> str:
    """What a run trained on, for args.yaml and the model card: GPU model, or CPU model and threads."""
    if device.type == 'cuda':
        what = torch.cuda.get_device_name(device)
    else:
        what = f'CPU ({cpu_model()}, {torch.get_num_threads()} threads)'
    return what if world_size == 1 else f'{world_size} x {what}'


def git_commit(repo: Path = REPO_ROOT) -> str:
    """HEAD's commit, with ``+dirty`` when a tracked file outside results/ differs from it (so results say what
    code made them; a bench spanning sittings rewrites its own results files, which is not a change of code);
    'unknown' outside a git checkout (a package installed into another project's tree is not that project)."""
    if not (Path(repo) / '.git').exists():
        return 'unknown'
    try:
        head = subprocess.run(['git', '-C', str(repo), 'rev-parse', 'HEAD'], capture_output=True, text=True,
                              timeout=20).stdout.strip()
        status = subprocess.run(['git', '-C', str(repo), 'status', '--porcelain', '--untracked-files=no', '--',
                                 '.', ':(exclude)results'], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return 'unknown'
    if not head:
        return 'unknown'
    return head + ('+dirty' if status else '')


def this_sitting(device: torch.device, world_size: int = 1) -> Dict[str, Any]:
    """When, with which code, on what and beside how much load this process trains: one sitting of a run
    that ``--resume`` may spread over several (the load first, before this process adds its own)."""
    load = round(os.getloadavg()[0], 2) if hasattr(os, 'getloadavg') else None
    return dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
                git_commit=git_commit(), hardware=describe_hardware(device, world_size), load_average_1min=load)


def record_sitting(sittings: Sequence[Dict[str, Any]], first_epoch: int,
                   sitting: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The sittings with this one (training from 1-based ``first_epoch`` on) added; one that trained nothing
    past it (stopped before its first checkpoint, or its epochs redone) is replaced."""
    kept = [s for s in sittings if s['first_epoch'] < first_epoch]
    return [*kept, dict(sitting, first_epoch=first_epoch)]


def sitting_epochs(sittings: Sequence[Dict[str, Any]], epochs: int) -> List[Dict[str, Any]]:
    """Each sitting with the epochs it trained (``first_epoch``..``last_epoch``) of the first ``epochs``; epochs
    before the first recorded sitting (trained by code that did not record them) as one sitting of unknown
    commit, and a last sitting that had trained nothing yet left out."""
    sittings = sorted((s for s in sittings if s['first_epoch'] <= epochs), key=lambda s: s['first_epoch'])
    if epochs and (not sittings or sittings[0]['first_epoch'] > 1):
        sittings = [dict(first_epoch=1, date=None, git_commit=None, load_average_1min=None), *sittings]
    ends = [s['first_epoch'] - 1 for s in sittings[1:]] + [epochs]
    return [dict(s, last_epoch=end) for s, end in zip(sittings, ends)]


def write_args_yaml(path: Union[str, Path], args, hardware: Optional[str] = None,
                    sittings: Sequence[Dict[str, Any]] = ()) -> None:
    values = plain(vars(args))
    if hardware:
        values['hardware'] = hardware
    if sittings:
        values['sittings'] = plain(list(sittings))
    atomic_write_text(path, yaml.safe_dump(values, sort_keys=True))


def write_results(path: Union[str, Path], rows: List[Dict[str, Any]]) -> None:
    """CSV or JSON by the file's extension, one row per model."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext == '.json':
        atomic_write_json(path, rows)
    elif ext == '.csv':
        atomic_write_text(path, _csv_text(plain(rows)))
    else:
        raise ValueError(f'--results-file {path}: expected a .csv or .json extension, got {ext or "none"!r}')


# ----------------------------------------------------------------------------------------------
# Distributed


@dataclass
class DistContext:
    """Where this process sits: device, rank, world size."""
    device: torch.device
    distributed: bool = False
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_primary(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_reduce_min(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return tensor

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def init_distributed(device: Optional[str] = None, backend: Optional[str] = None) -> DistContext:
    """timm's setup: DDP when launched by torchrun (NCCL on CUDA, gloo on CPU), else one process."""
    from timm.utils.distributed import init_distributed_device_so
    if not device:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise ValueError(f'--device {device}: CUDA is not available on this machine; use --device cpu')
    info = init_distributed_device_so(device=device, dist_backend=backend)
    return DistContext(device=torch.device(info['device']), distributed=info['distributed'],
                       world_size=info['world_size'], rank=info['global_rank'], local_rank=info['local_rank'])


def rank_weight_max_diff(model: nn.Module, ctx: DistContext) -> float:
    """Largest difference between ranks of per-tensor fingerprints (sum, sum of squares) of weights and buffers."""
    if not ctx.distributed:
        return 0.0
    tensors = [t for t in unwrap(model).state_dict().values() if t.is_floating_point()]
    fp = torch.stack([torch.stack([t.double().sum(), t.double().square().sum()]) for t in tensors]).flatten()
    gathered = [torch.zeros_like(fp) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, fp)
    stacked = torch.stack(gathered)
    return float((stacked - stacked[0:1]).abs().max())


# ----------------------------------------------------------------------------------------------
# Small utilities


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch RNGs; train.py reseeds per epoch so a resumed run draws the same numbers."""
    seed = int(seed) % (2 ** 32)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (int(seed) * 1_000_003 + epoch * 1009 + rank) % (2 ** 32)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated since the last reset; on CPU the process's peak resident set size."""
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    try:
        import resource
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 1024 if sys.platform != 'darwin' else rss / 2 ** 20
    except ImportError:  # Windows
        return float('nan')


def mean_solver_steps(model: nn.Module) -> Optional[float]:
    """Mean solver iterations over stages of the last forward, for DEQ models exposing solver_stats."""
    stats = getattr(unwrap(model), 'solver_stats', None)
    if not stats:
        return None
    steps = [s['nstep'] for s in stats.values() if isinstance(s, dict) and 'nstep' in s]
    return float(np.mean([float(s) for s in steps])) if steps else None


class SolverTally:
    """What a DEQ's solvers did over the batches of an evaluation (nothing for other models).

    Per batch, the mean iterations over stages and the worst stage's relative residual (the worst
    over the batch's images, as torchdeq reports it); the summary averages both over batches and
    keeps the largest residual.
    """

    def __init__(self):
        self.nsteps: List[float] = []
        self.residuals: List[float] = []

    def add(self, model: nn.Module) -> None:
        stats = getattr(unwrap(model), 'solver_stats', None)
        if stats:
            self.nsteps.append(float(np.mean([s['nstep'] for s in stats.values()])))
            self.residuals.append(max(s['rel_residual'] for s in stats.values()))

    def summary(self) -> Dict[str, float]:
        if not self.nsteps:
            return {}
        return dict(solver_nstep=float(np.mean(self.nsteps)), solver_rel_residual=float(np.mean(self.residuals)),
                    solver_rel_residual_max=float(np.max(self.residuals)))


def _topk_correct(output: torch.Tensor, target: torch.Tensor, ks: Tuple[int, ...]) -> List[torch.Tensor]:
    maxk = min(max(ks), output.shape[1])
    pred = output.topk(maxk, dim=1).indices
    hits = pred.eq(target[:, None])
    return [hits[:, :min(k, maxk)].any(dim=1).sum() for k in ks]


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, leave=True, dynamic_ncols=True, mininterval=1.0, file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# Epoch loops


def train_one_epoch(
        model: nn.Module,
        loader,
        optimizer: torch.optim.Optimizer,
        loss_fn: nn.Module,
        *,
        epoch: int,
        ctx: DistContext,
        scheduler=None,
        num_updates: int = 0,
        mixup_fn=None,
        model_ema=None,
        amp_dtype: Optional[torch.dtype] = None,
        scaler=None,
        clip_grad: Optional[float] = None,
        clip_mode: str = 'norm',
        log_interval: int = 50,
        progress: bool = True,
) -> Tuple[Dict[str, float], int]:
    """One pass over ``loader``; returns (metrics reduced over ranks, updated step count).

    Loss and accuracy (against the un-mixed labels) accumulate on the device; the loss is checked
    for NaN/Inf at every log point and at the end, and a bad one raises NonFiniteLossError naming
    the first bad step.
    """
    device = ctx.device
    model.train()
    bare = unwrap(model)
    has_aux = callable(getattr(bare, 'aux_loss', None))
    steps = len(loader)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.float64)
    seen = 0
    first_bad = torch.full((), steps, device=device, dtype=torch.long)
    bad_value = torch.zeros((), device=device)
    solver_steps: List[float] = []
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype is not None else nullcontext
    show = progress and ctx.is_primary
    bar = _progress(loader, steps, f'train {epoch}', show)
    reset_peak_memory(device)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    last_step = -1
    for step, (x, y) in enumerate(bar):
        last_step = step
        target = y
        if mixup_fn is not None:
            x, target = mixup_fn(x, y)
        with autocast():
            output = model(x)
            loss = loss_fn(output, target)
            if has_aux:
                loss = loss + bare.aux_loss()
        value = loss.detach()
        bad = ~torch.isfinite(value)
        first_bad = torch.where(bad & (first_bad == steps), torch.full_like(first_bad, step), first_bad)
        bad_value = torch.where(bad & (first_bad == step), value.float(), bad_value)

        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if clip_grad:
                scaler.unscale_(optimizer)
                _clip(model, clip_grad, clip_mode)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip_grad:
                _clip(model, clip_grad, clip_mode)
            optimizer.step()
        num_updates += 1
        if model_ema is not None:
            model_ema.update(bare, step=num_updates)

        b = y.shape[0]
        seen += b
        loss_sum += value.double() * b
        correct += (output.detach().argmax(dim=1) == y).sum()
        nstep = mean_solver_steps(bare)
        if nstep is not None:
            solver_steps.append(nstep)
        if scheduler is not None:
            scheduler.step_update(num_updates=num_updates)

        if (step + 1) % log_interval == 0 or step + 1 == steps:
            _raise_if_non_finite(first_bad, bad_value, steps, epoch, ctx)
            if show or (ctx.is_primary and (step + 1) % log_interval == 0):
                elapsed = time.perf_counter() - start
                stats = dict(loss=f'{loss_sum.item() / seen:.4f}', acc=f'{100 * correct.item() / seen:.2f}',
                             img_s=f'{seen * ctx.world_size / max(elapsed, 1e-9):.0f}',
                             lr=f'{optimizer.param_groups[0]["lr"]:.3g}')
                if show:
                    bar.set_postfix(stats, refresh=False)
                else:
                    _logger.info(f'train {epoch} [{step + 1}/{steps}] ' + ' '.join(f'{k} {v}' for k, v in stats.items()))
    if last_step + 1 != steps:  # an empty loader would otherwise pass silently
        raise RuntimeError(f'training loader yielded {last_step + 1} of {steps} batches')
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    if show:
        bar.close()
    totals = torch.tensor([loss_sum.item(), correct.item(), float(seen)], dtype=torch.float64, device=device)
    ctx.all_reduce_sum(totals)
    elapsed_t = torch.tensor([elapsed], dtype=torch.float64, device=device)
    if ctx.distributed:
        dist.all_reduce(elapsed_t, op=dist.ReduceOp.MAX)
    elapsed = float(elapsed_t)
    total_seen = int(totals[2])
    metrics = dict(
        loss=float(totals[0] / total_seen), top1=float(100 * totals[1] / total_seen), samples=total_seen,
        steps=steps, seconds=elapsed, images_per_s=total_seen / elapsed, peak_memory_mb=peak_memory_mb(device),
    )
    if solver_steps:
        metrics['solver_nstep'] = float(np.mean(solver_steps))
    return metrics, num_updates


def _raise_if_non_finite(first_bad: torch.Tensor, bad_value: torch.Tensor, steps: int, epoch: int,
                         ctx: DistContext) -> None:
    flag = torch.stack([first_bad.double(), bad_value.double()]) if not ctx.distributed else None
    if ctx.distributed:  # every rank stops together, naming the earliest bad step on any rank
        earliest = ctx.all_reduce_min(first_bad.clone())
        if int(earliest) < steps:
            mine = bad_value if int(first_bad) == int(earliest) else torch.full_like(bad_value, float('nan'))
            raise NonFiniteLossError(epoch, int(earliest), steps, float(mine))
        return
    if int(flag[0]) < steps:
        raise NonFiniteLossError(epoch, int(flag[0]), steps, float(flag[1]))


def _clip(model: nn.Module, value: float, mode: str) -> None:
    from timm.utils import dispatch_clip_grad
    dispatch_clip_grad(unwrap(model).parameters(), value=value, mode=mode)


@torch.no_grad()
def evaluate(
        model: nn.Module,
        loader,
        ctx: DistContext,
        amp_dtype: Optional[torch.dtype] = None,
        progress: bool = False,
        desc: str = 'eval',
        tta: str = 'none',
) -> Dict[str, float]:
    """Cross-entropy loss, top-1 and top-5 (%) and images/s over ``loader``, summed exactly over ranks.

    ``tta`` (see :mod:`wt_zoo.tta`) adds ``tta_loss``/``tta_top1``/``tta_top5`` from the views' mean
    softmax beside the plain figures, which stay those of the plain pass, as do the DEQ solver statistics
    and ``images_per_s`` (the extra views are timed apart, as ``tta_images_per_s``).
    """
    from .tta import check_tta_mode, tta_probabilities
    check_tta_mode(tta)
    device = ctx.device
    model.eval()
    sums = torch.zeros(7, dtype=torch.float64, device=device)  # loss, top1, top5, count, tta loss, tta top1, top5
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype is not None else nullcontext
    bar = _progress(loader, len(loader), desc, progress and ctx.is_primary)
    start, timed, tta_seconds = time.perf_counter(), 0, 0.
    solver = SolverTally()
    zero = torch.zeros(3, dtype=torch.float64, device=device)

    def forward(batch):
        with autocast():
            return model(batch)

    for i, (x, y) in enumerate(bar):
        output = forward(x)
        solver.add(model)  # the plain pass's solver statistics, before the TTA views overwrite them
        output = output.float()
        top1, top5 = _topk_correct(output, y, (1, 5))
        tta_sums = zero
        if tta != 'none':
            _synchronize(device)
            tta_start = time.perf_counter()
            probs = tta_probabilities(forward, x, output, tta)
            tta_top1, tta_top5 = _topk_correct(probs, y, (1, 5))
            tta_loss = F.nll_loss(probs.clamp_min(1e-12).log(), y, reduction='sum')
            tta_sums = torch.stack([tta_loss.double(), tta_top1.double(), tta_top5.double()])
            _synchronize(device)
            if i > 0 or len(loader) == 1:
                tta_seconds += time.perf_counter() - tta_start
        sums += torch.cat([torch.stack([F.cross_entropy(output, y, reduction='sum').double(), top1.double(),
                                        top5.double(), torch.tensor(float(y.shape[0]), dtype=torch.float64,
                                                                    device=device)]), tta_sums])
        if i == 0 and len(loader) > 1:  # the first batch warms up (allocations, autotuning): not timed
            _synchronize(device)
            start = time.perf_counter()
        else:
            timed += y.shape[0]
    _synchronize(device)
    elapsed = time.perf_counter() - start
    ctx.all_reduce_sum(sums)
    count = float(sums[3])
    if count == 0:
        raise RuntimeError('evaluation loader yielded no images')
    metrics = dict(loss=float(sums[0]) / count, top1=100 * float(sums[1]) / count, top5=100 * float(sums[2]) / count,
                   samples=int(count), seconds=elapsed - tta_seconds,
                   images_per_s=timed * ctx.world_size / max(elapsed - tta_seconds, 1e-9), **solver.summary())
    if tta != 'none':
        metrics.update(tta=tta, tta_loss=float(sums[4]) / count, tta_top1=100 * float(sums[5]) / count,
                       tta_top5=100 * float(sums[6]) / count,
                       tta_images_per_s=timed * ctx.world_size / max(elapsed, 1e-9))
    return metrics


def _synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
