"""Implicit ResNet: the architecture shared by the weight-tied, sparse-mask and DEQ families.

A stem conv, then implicit stages. Each stage holds ONE residual block ``f`` and reaches its
output ``z`` by iterating ``z = f(z, x)`` with the stage input ``x`` injected at every step.
How the iteration runs is the only thing that differs between the families (unrolled a fixed
number of times, unrolled through per-iteration sparse masks, or solved to a fixed point), so
the block, stem, downsampling and head here are the same code for all of them and twins have
exactly the same parameters.

The weight-tied driver (:class:`UnrolledImplicit`), the model plumbing every zoo architecture
shares (:class:`ImplicitNet`) and the cfg/size helpers serve the multi-resolution family
(:mod:`.mdeq`) as well.
"""
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import ClassifierHead, get_device_dtype, register_notrace_function
from timm.models import build_model_with_cfg, checkpoint, generate_default_cfgs, resolve_pretrained_cfg
from timm.models._features import feature_take_indices

from ..hub_ids import published_hub_ids

__all__ = [
    'ImplicitBlock', 'ImplicitStage', 'UnrolledImplicit', 'check_depth', 'check_input', 'ImplicitNet', 'ImplicitResNet',
    'MODEL_SIZES', 'CIFAR10_MEAN', 'CIFAR10_STD', 'TAG_MODEL_ARGS', 'implicit_default_cfgs', 'family_default_cfgs',
    'tag_model_args', 'built_tag_model_args', 'create_implicit_model', 'create_implicit_resnet',
]

# Per-channel statistics of the CIFAR-10 training split (original dataset); Fashion-MNIST likewise.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
MIN_INPUT_SIZE = 16

# Sizes shared by the three families, so that wt_X, wtsm_X and deq_X are twins. ``depth`` is the
# number of unrolled iterations per stage (the DEQ family solves instead of unrolling).
MODEL_SIZES: Dict[str, Dict[str, int]] = {
    'tiny': dict(width=48, num_stages=2, stem_stride=2, depth=4),    # 0.25M params, 32px -> 16 -> 8
    'small': dict(width=48, num_stages=3, stem_stride=1, depth=6),   # 1.1M params, 32px -> 32 -> 16 -> 8
    'base': dict(width=104, num_stages=3, stem_stride=1, depth=8),   # 5.1M params, half MDEQ's 10M
}


@register_notrace_function
def check_input(x: torch.Tensor, in_chans: int, min_size: int) -> None:
    """Fail with the expected shape instead of deep inside a conv."""
    if x.dim() != 4 or x.shape[1] != in_chans or x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(
            'expected an image batch of shape (N, ' + str(in_chans) + ', H, W) with H, W >= ' + str(min_size)
            + ', got shape ' + str(list(x.shape)))


def check_depth(depth: int, name: str = 'depth') -> None:
    """A count the architecture is built from (iterations, stages, branches): checked before anything is
    built from it (masks, stages); a bool is not a count."""
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f'{name} must be a positive integer, got {depth!r}')


class ImplicitBlock(nn.Module):
    """The shared residual block f(z, x) = norm3(relu(z + norm2(conv2(relu(norm1(conv1(z))))) + x)).

    GroupNorm rather than BatchNorm, so that f is the same function at every iteration and in
    every batch, which a fixed-point solver needs. ``weights`` lets a caller substitute masked
    versions of the two conv weights for one call.
    """

    def __init__(self, channels: int, norm_groups: int = 8, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False, **dd)
        self.norm1 = nn.GroupNorm(norm_groups, channels, **dd)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False, **dd)
        self.norm2 = nn.GroupNorm(norm_groups, channels, **dd)
        self.norm3 = nn.GroupNorm(norm_groups, channels, **dd)

    def conv_weights(self) -> List[torch.Tensor]:
        return [self.conv1.weight, self.conv2.weight]

    def forward(self, z: torch.Tensor, x: torch.Tensor, weights: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        if weights is None:
            weights = self.conv_weights()
        y = F.relu(self.norm1(F.conv2d(z, weights[0], None, 1, 1)))
        y = self.norm2(F.conv2d(y, weights[1], None, 1, 1))
        return self.norm3(F.relu(z + y + x))


class UnrolledImplicit(nn.Module):
    """Weight-tied iteration: ``depth`` applications of the one block, trained by plain backprop.

    With ``masks`` (an :class:`wt_zoo.masks.IterationMasks`), iteration k convolves with the shared
    weights times its own fixed mask; without, it is the dense weight-tied model.

    The loop (:meth:`iterate`) runs on a list of states, one per resolution, so that one driver
    serves a single-resolution block (this class: tensor in, tensor out) and a multi-resolution one
    (:class:`wt_zoo.models.mdeq.UnrolledBranches`, which only retypes ``step`` and ``forward``).
    """

    def __init__(self, block: ImplicitBlock, depth: int, masks: Optional[nn.Module] = None):
        super().__init__()
        check_depth(depth)
        self.block = block
        self.depth = depth
        self.masks = masks
        self.grad_checkpointing = False

    def iteration_weights(self, iteration: int) -> Optional[List[torch.Tensor]]:
        """The block's conv weights at ``iteration``: masked copies, or None for the block's own."""
        if self.masks is None:
            return None
        return self.masks(self.block.conv_weights(), iteration)

    def step(self, z: List[torch.Tensor], x: List[torch.Tensor], iteration: int) -> List[torch.Tensor]:
        return [self.block(z[0], x[0], self.iteration_weights(iteration))]

    def iterate(self, x: List[torch.Tensor]) -> List[torch.Tensor]:
        z = x  # start from the injected input, so the first iteration's convs see real features
        for iteration in range(self.depth):
            if self.grad_checkpointing and not torch.jit.is_scripting() and torch.is_grad_enabled():
                z = checkpoint(self.step, z, x, iteration)
            else:
                z = self.step(z, x, iteration)
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.iterate([x])[0]


class ImplicitStage(nn.Module):
    """Optional stride-2 downsampling into the stage width, then the implicit layer."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, implicit: nn.Module, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if stride == 1 and in_chs == out_chs:
            self.downsample = nn.Identity()
        else:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False, **dd),
                nn.BatchNorm2d(out_chs, **dd),
                nn.ReLU(inplace=True),
            )
        self.implicit = implicit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.implicit(self.downsample(x))


class ImplicitNet(nn.Module):
    """What every zoo architecture shares around its implicit layers: stem, timm head plumbing, switches.

    Subclasses build their implicit layers between :meth:`__init__` (argument checks, stem) and
    :meth:`init_head`, and say where the layers are in :meth:`named_implicit_layers`. The family
    mixins (:class:`wt_zoo.models.wt_resnet.WeightTiedMixin` and its siblings) supply the
    ``implicit_layer(block, stage_index, device)`` factory; ``unrolled_layer_cls`` is the
    weight-tied driver that fits the architecture's block.
    """
    unrolled_layer_cls = UnrolledImplicit

    def __init__(
            self,
            width: int,
            stem_stride: int,
            norm_groups: int,
            num_classes: int,
            in_chans: int,
            drop_rate: float,
            device=None,
            dtype=None,
    ):
        super().__init__()
        if not isinstance(width, int) or width < 1 or width % norm_groups:
            raise ValueError(f'width must be a positive multiple of norm_groups={norm_groups}, got {width!r}')
        if stem_stride not in (1, 2):
            raise ValueError(f'stem_stride must be 1 or 2, got {stem_stride!r}')
        dd = dict(device=device, dtype=dtype)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.min_input_size = MIN_INPUT_SIZE
        self.grad_checkpointing = False

        self.stem = nn.Sequential()
        self.stem.add_module('conv', nn.Conv2d(in_chans, width, 3, stride=stem_stride, padding=1, bias=False, **dd))
        self.stem.add_module('norm', nn.BatchNorm2d(width, **dd))
        self.stem.add_module('act', nn.ReLU(inplace=True))

    def init_head(self, num_features: int, global_pool: str, device=None, dtype=None) -> None:
        """timm's classifier head on the ``num_features`` channels forward_features returns."""
        self.num_features = num_features
        self.head = ClassifierHead(num_features, self.num_classes, pool_type=global_pool, drop_rate=self.drop_rate,
                                   device=device, dtype=dtype)
        self.head_hidden_size = self.head.num_features

    @torch.jit.ignore
    def named_implicit_layers(self) -> List[Tuple[str, nn.Module]]:
        """(name, driver) of every implicit layer; the name keys ``solver_stats``."""
        raise NotImplementedError

    @torch.jit.ignore
    def implicit_layers(self) -> List[nn.Module]:
        return [layer for _, layer in self.named_implicit_layers()]

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint each unrolled iteration, so training memory stops growing with depth."""
        self.grad_checkpointing = enable
        for layer in self.implicit_layers():
            layer.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool, in_features=self.num_features, **get_device_dtype(self))
        self.head_hidden_size = self.head.num_features

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """The input checked (fx keeps the check out of the graph: it is called from this module), then the stem."""
        check_input(x, self.in_chans, self.min_input_size)
        return self.stem(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class ImplicitResNet(ImplicitNet):
    """Stem, implicit stages (width doubling, stride 2 after the first), timm classifier head.

    ``implicit_layer(block, stage_index, device)`` builds the iteration of each stage; the family
    classes (WTResNet, WTSMResNet, DEQResNet) supply it and keep their own keyword arguments.
    """

    def __init__(
            self,
            implicit_layer: Callable[..., nn.Module],
            width: int = 48,
            num_stages: int = 2,
            stem_stride: int = 2,
            norm_groups: int = 8,
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        check_depth(num_stages, 'num_stages')
        super().__init__(width, stem_stride, norm_groups, num_classes, in_chans, drop_rate, device=device, dtype=dtype)
        dd = dict(device=device, dtype=dtype)
        self.feature_info = [dict(num_chs=width, reduction=stem_stride, module='stem')]

        stages = []
        in_chs, reduction = width, stem_stride
        for stage_index in range(num_stages):
            out_chs = width * 2 ** stage_index
            stride = 1 if stage_index == 0 else 2
            reduction *= stride
            block = ImplicitBlock(out_chs, norm_groups, **dd)
            implicit = implicit_layer(block, stage_index=stage_index, device=device)
            stages.append(ImplicitStage(in_chs, out_chs, stride, implicit, **dd))
            self.feature_info.append(dict(num_chs=out_chs, reduction=reduction, module=f'stages.{stage_index}'))
            in_chs = out_chs
        self.stages = nn.Sequential(*stages)
        self.init_head(in_chs, global_pool, **dd)

    @torch.jit.ignore
    def named_implicit_layers(self) -> List[Tuple[str, nn.Module]]:
        return [(f'stages.{i}', stage.implicit) for i, stage in enumerate(self.stages)]

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^stem', blocks=r'^stages\.(\d+)')

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Features after the stem (index 0) and after each stage's iteration (1..num_stages)."""
        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)
        intermediates: List[torch.Tensor] = []
        x = self.forward_stem(x)
        if 0 in take_indices:
            intermediates.append(x)
        num_run = max_index if stop_early else len(self.stages)
        for stage_index, stage in enumerate(self.stages):
            if stage_index >= num_run:
                break
            x = stage(x)
            if stage_index + 1 in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages after the last wanted feature; the head goes too when features end early."""
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)
        prune_end = max_index < len(self.stages)
        self.stages = self.stages[:max_index]
        if prune_end:
            self.num_features = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.forward_stem(x))


def _cfg(dataset: str = 'c10', **kwargs) -> Dict[str, Any]:
    """Pretrained cfg for a CIFAR-10 (``c10``) or Fashion-MNIST (``fmnist``) checkpoint."""
    if dataset == 'c10':
        data = dict(num_classes=10, input_size=(3, 32, 32), min_input_size=(3, MIN_INPUT_SIZE, MIN_INPUT_SIZE),
                    mean=CIFAR10_MEAN, std=CIFAR10_STD)
    elif dataset == 'fmnist':
        data = dict(num_classes=10, input_size=(1, 28, 28), min_input_size=(1, MIN_INPUT_SIZE, MIN_INPUT_SIZE),
                    mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD)
    else:
        raise ValueError(f"dataset must be 'c10' or 'fmnist', got {dataset!r}")
    return dict(
        url='', crop_pct=1.0, crop_mode='center', interpolation='bilinear', fixed_input_size=False,
        first_conv='stem.conv', classifier='head.fc', license='apache-2.0', **data, **kwargs,
    )


def implicit_default_cfgs(
        prefixes: Sequence[str],
        reductions: Dict[str, int],
        hub_ids: Optional[Dict[str, str]] = None,
) -> Dict[str, Any]:
    """``default_cfgs`` for ``<prefix>_<size>`` models: every size with a ``.c10`` and an ``.fmnist`` tag.

    ``reductions`` maps each size to the stride of the map forward_features returns (it sets
    ``pool_size``). ``hub_ids`` maps ``'arch.tag'`` to the Hub repository of a published checkpoint;
    by default every ``hub_configs/<arch>.<tag>/`` folder is published (see :mod:`wt_zoo.hub_ids`).
    """
    hub_ids = published_hub_ids() if hub_ids is None else hub_ids
    cfgs = {}
    for prefix in prefixes:
        for size, reduction in reductions.items():
            for tag, input_px in (('c10', 32), ('fmnist', 28)):
                name = f'{prefix}_{size}.{tag}'
                side = -(-input_px // reduction)
                extra = dict(hf_hub_id=hub_ids[name]) if name in hub_ids else {}
                cfgs[name] = _cfg(tag, pool_size=(side, side), **extra)
    return generate_default_cfgs(cfgs)


def family_default_cfgs(family: str, hub_ids: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """``default_cfgs`` of the ``<family>_resnet_*`` models (see :func:`implicit_default_cfgs`)."""
    reductions = {size: arch['stem_stride'] * 2 ** (arch['num_stages'] - 1) for size, arch in MODEL_SIZES.items()}
    return implicit_default_cfgs([f'{family}_resnet'], reductions, hub_ids)


# ``arch.tag`` -> model arguments a pretrained tag needs beyond its architecture's defaults, e.g. a DEQ's
# test-time solver cap chosen for those weights. timm's pretrained cfgs carry no model arguments, so each family
# file fills this beside its ``default_cfgs``; the tag's published config.json repeats them (export writes them,
# verify checks that loading by name and by config.json build one model).
TAG_MODEL_ARGS: Dict[str, Dict[str, Any]] = {}


def tag_model_args(variant: str, tag: Optional[str]) -> Dict[str, Any]:
    """The :data:`TAG_MODEL_ARGS` of ``variant.tag`` ({} without a tag)."""
    return dict(TAG_MODEL_ARGS.get(f'{variant}.{tag}', {})) if tag else {}


def built_tag_model_args(model: nn.Module) -> Dict[str, Any]:
    """The :data:`TAG_MODEL_ARGS` of a built model's tag (its ``pretrained_cfg``), which the caller's kwargs may
    have overridden: what a run must record to be rebuilt the same way after a tag's arguments change."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return tag_model_args(cfg.get('architecture'), cfg.get('tag'))


def create_implicit_model(
        model_cls: type,
        variant: str,
        pretrained: bool,
        size_args: Dict[str, int],
        num_feature_maps: Callable[[Dict[str, Any]], int],
        **kwargs,
) -> nn.Module:
    """Build through timm, with ``size_args`` and the tag's :data:`TAG_MODEL_ARGS` as defaults the caller's
    kwargs override.

    ``num_feature_maps(model_args)`` is how many maps ``features_only`` returns by default.
    """
    model_args = dict(size_args)
    if not model_cls.unrolled:
        model_args['warmup_depth'] = model_args.pop('depth')  # a DEQ's unrolled warm-up runs as its WT twin
    # the tag named (timm's default tag when none) picks its own arguments
    cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    model_args.update(tag_model_args(variant, cfg.tag if cfg is not None else None))
    model_args.update(kwargs)
    if pretrained:  # the Hub's cache, else the clone's hub_configs/ when offline; a corrupt file named
        from ..hub import pretrained_cfg_overlay  # here, not at the top: wt_zoo.hub imports the models
        overlay = pretrained_cfg_overlay(cfg.to_dict(), model_args.get('cache_dir'))
        if overlay:
            model_args['pretrained_cfg_overlay'] = {**(model_args.get('pretrained_cfg_overlay') or {}), **overlay}
    return build_model_with_cfg(
        model_cls, variant, pretrained,
        feature_cfg=dict(feature_cls='getter', flatten_sequential=True,
                         out_indices=tuple(range(num_feature_maps(model_args)))),
        **model_args,
    )


def create_implicit_resnet(model_cls: type, variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build a ``<family>_resnet_<size>`` model: the stem's map and one per stage as features."""
    size = variant.rsplit('_', 1)[-1]
    return create_implicit_model(model_cls, variant, pretrained, MODEL_SIZES[size],
                                 lambda model_args: model_args['num_stages'] + 1, **kwargs)
