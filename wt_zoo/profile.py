"""Parameter and FLOP counts of zoo models, computed by fvcore.

fvcore counts one multiply-add as one flop. Shared weights are counted once (masks are buffers,
not parameters). Every unrolled iteration is counted, because fvcore traces the unrolled loop.
For the sparse-mask family the effective count scales each masked conv by its mask's density;
for the DEQ family the count is given per solver iteration and at an iteration count (by default
the mean the solver used on a batch), since the solver's loop length depends on the data. Every zoo
architecture is counted the same way (a multi-resolution model has one implicit layer, whose
state is a list with one tensor per branch).

    python -m wt_zoo.profile [MODEL ...] [--json]
"""
import argparse
import copy
import fnmatch
import json
import sys
import warnings
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
from torch import nn

with warnings.catch_warnings():  # fvcore.nn scripts its focal loss at import; torch's deprecation notice is not ours
    warnings.filterwarnings('ignore', message=r'`torch\.jit\.script` is deprecated', category=FutureWarning)
    from fvcore.nn import FlopCountAnalysis, parameter_count

from .solvers import State

__all__ = ['profile_model', 'profile_models', 'format_table', 'main']

HEADER = 'FLOPs from fvcore, which counts one multiply-add as one flop; per image, at the default input size.'


def _flops(module: nn.Module, inputs) -> FlopCountAnalysis:
    analysis = FlopCountAnalysis(module, inputs)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return analysis


def _each(fn: Callable[[torch.Tensor], torch.Tensor], state: State) -> State:
    """``fn`` applied to a state: a tensor, or a list of them (one per branch)."""
    return fn(state) if torch.is_tensor(state) else [fn(t) for t in state]


class _Passthrough(nn.Module):
    """Stands in for an implicit layer to count everything outside the iteration."""

    def forward(self, x):
        return x


def _without_implicit_layers(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose implicit layers pass their input through."""
    outside = copy.deepcopy(model)
    layers = {id(layer) for layer in outside.implicit_layers()}
    for name, module in list(outside.named_modules()):
        if id(module) in layers:
            parent, _, attr = name.rpartition('.')
            setattr(outside.get_submodule(parent), attr, _Passthrough())
    return outside


def _stage_inputs(model: nn.Module, images: torch.Tensor) -> List[State]:
    """What each implicit layer receives (its injected input: a tensor, or a list with one per branch)."""
    captured: List[State] = []
    hooks = [layer.register_forward_pre_hook(lambda _m, args: captured.append(_each(torch.Tensor.detach, args[0])))
             for layer in model.implicit_layers()]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def _block_flops(model: nn.Module, stage_inputs: Sequence[State]) -> List[Dict[str, float]]:
    """Per implicit layer, the FLOPs of one application of the shared block on one image: total and convs."""
    out = []
    for layer, x in zip(model.implicit_layers(), stage_inputs):
        x = _each(lambda t: t[:1], x)
        analysis = _flops(layer.block, (_each(torch.zeros_like, x), x))
        out.append(dict(total=float(analysis.total()), conv=float(analysis.by_operator().get('conv', 0))))
    return out


_CFG_DATASETS = {'c10': 'cifar10', 'fmnist': 'fashion_mnist'}


def real_batch(pretrained_cfg: Dict[str, object], count: int = 64) -> Optional[torch.Tensor]:
    """The first ``count`` test images of the cfg's dataset, normalised as the cfg says; None if absent."""
    from .data import DatasetNotFoundError, load_image_arrays
    dataset = _CFG_DATASETS.get(pretrained_cfg.get('tag') or '', 'cifar10')
    try:
        arrays = load_image_arrays(dataset, 'test')
    except DatasetNotFoundError:
        return None
    images = torch.from_numpy(arrays.images[:count]).permute(0, 3, 1, 2).float().div(255)
    mean = torch.tensor(pretrained_cfg['mean']).view(1, -1, 1, 1)
    std = torch.tensor(pretrained_cfg['std']).view(1, -1, 1, 1)
    return (images - mean) / std


def profile_model(model: nn.Module, input_size: Optional[Sequence[int]] = None, deq_iterations: Optional[float] = None,
                  images: Optional[torch.Tensor] = None) -> Dict[str, object]:
    """One row of the profile table for ``model`` (a zoo model).

    ``images`` is the batch on which a DEQ's solver iterations are measured (when
    ``deq_iterations`` is not given); by default 64 test images of the cfg's dataset, or a
    seeded random batch where that dataset is not on this machine.
    """
    model = model.eval()
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    input_size = tuple(input_size or cfg.get('input_size') or (model.in_chans, 32, 32))
    device = next(model.parameters()).device
    example = torch.randn((1, *input_size), generator=torch.Generator().manual_seed(0)).to(device)
    row: Dict[str, object] = dict(
        model=cfg.get('architecture', type(model).__name__), input_size='x'.join(str(s) for s in input_size),
        params=int(parameter_count(model)['']),
    )
    stage_inputs = _stage_inputs(model, example)
    blocks = _block_flops(model, stage_inputs)
    if getattr(model, 'unrolled', True):
        total = float(_flops(model, example).total())
        row['gflops'] = total / 1e9
        masks = [layer.masks for layer in model.implicit_layers()]
        if any(m is not None for m in masks):
            saved = 0.0
            for layer_masks, block in zip(masks, blocks):
                for iteration in range(layer_masks.depth):
                    density = float(torch.stack([layer_masks.mask(i, iteration).float().mean()
                                                 for i in range(len(layer_masks.numels))]).mean())
                    saved += block['conv'] * (1.0 - density)
            row['effective_gflops'] = (total - saved) / 1e9
        return row

    outside = float(_flops(_without_implicit_layers(model), example).total())
    per_iteration = sum(block['total'] for block in blocks)
    if deq_iterations is None:
        source = 'measured on the given batch'
        if images is None and cfg.get('mean') and len(cfg['mean']) == input_size[0] and cfg['input_size'] == input_size:
            images = real_batch(cfg)
            source = 'measured on 64 test images'
        if images is None:
            images = torch.randn((64, *input_size), generator=torch.Generator().manual_seed(0))
            source = 'measured on a random batch (dataset not found)'
        with torch.no_grad():
            model(images.to(device))
        stage_iterations = [stats['nstep'] for stats in model.solver_stats.values()]
    else:
        stage_iterations = [float(deq_iterations)] * len(blocks)
        source = 'given'
    row['gflops_per_iteration'] = per_iteration / 1e9
    row['deq_iterations'] = sum(stage_iterations) / len(stage_iterations)
    row['deq_iterations_source'] = source
    row['gflops'] = (outside + sum(n * b['total'] for n, b in zip(stage_iterations, blocks))) / 1e9
    return row


def resolve_model_names(patterns: Iterable[str]) -> List[str]:
    """Zoo model names matching the given names or wildcards (all zoo models for none)."""
    from . import list_zoo_models
    available = list_zoo_models()
    patterns = list(patterns) or ['*']
    names: List[str] = []
    for pattern in patterns:
        matched = [n for n in available if fnmatch.fnmatch(n, pattern.split('.')[0])]
        if not matched:
            raise ValueError(f'no zoo model matches {pattern!r}; available: {", ".join(available)}')
        names.extend(n for n in matched if n not in names)
    return names


def profile_models(patterns: Iterable[str] = (), deq_iterations: Optional[float] = None,
                   images: Optional[torch.Tensor] = None) -> List[Dict[str, object]]:
    """The profile table as a list of rows, one per matching zoo model."""
    import timm
    rows = []
    for name in resolve_model_names(patterns):
        torch.manual_seed(0)
        rows.append(profile_model(timm.create_model(name), deq_iterations=deq_iterations, images=images))
    return rows


COLUMNS = (
    ('model', 'model', '{}'), ('input_size', 'input', '{}'), ('params', 'params (M)', None),
    ('gflops', 'GFLOPs', '{:.4f}'), ('effective_gflops', 'effective GFLOPs (masked)', '{:.4f}'),
    ('gflops_per_iteration', 'GFLOPs / solver iteration', '{:.4f}'), ('deq_iterations', 'solver iterations', '{:.1f}'),
)


def format_table(rows: Sequence[Dict[str, object]]) -> str:
    """Markdown table of profile rows, with fvcore's flop convention in the header line."""
    lines = [HEADER, '', '| ' + ' | '.join(title for _, title, _ in COLUMNS) + ' |',
             '|' + '---|' * len(COLUMNS)]
    for row in rows:
        cells = []
        for key, _, fmt in COLUMNS:
            value = row.get(key)
            if value is None:
                cells.append('')
            elif key == 'params':
                cells.append(f'{value / 1e6:.3f}')
            else:
                cells.append(fmt.format(value))
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m wt_zoo.profile', description=__doc__.split('\n\n')[0])
    parser.add_argument('models', nargs='*', help='model names or wildcards (default: every zoo model)')
    parser.add_argument('--json', action='store_true', help='print JSON rows instead of a table')
    parser.add_argument('--deq-iterations', type=float, default=None,
                        help='count DEQ FLOPs at this many solver iterations (default: measured on a batch)')
    args = parser.parse_args(argv)
    import wt_zoo  # noqa: F401  (registers the models)
    try:
        rows = profile_models(args.models, deq_iterations=args.deq_iterations)
    except ValueError as err:
        parser.error(str(err))
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


if __name__ == '__main__':
    sys.exit(main())
