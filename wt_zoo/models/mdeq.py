"""Multi-resolution implicit models in the style of MDEQ (Bai, Koltun, Kolter 2020).

One block holds a residual branch per resolution (strides 1, 2, 4 of the stem output), each with
its own injected input, and fuses the branches after every application: stride-2 3x3 convs take a
finer branch down, a 1x1 conv and nearest upsampling bring a coarser one up. The three families
run that one block exactly as the ResNet families run their stages, with the same drivers:
``depth`` times with shared weights (``wt_mdeq_*``), through a fixed sparse mask per iteration
(``wtsm_mdeq_*``), or to its fixed point with torchdeq (``mdeq_*``). For every size the three have
exactly the same parameters. The head follows MDEQ's: every branch is brought down to the coarsest
resolution and summed, widened by a 1x1 conv, then pooled.
"""
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from timm.models import register_model
from timm.models._features import feature_take_indices

from .deq_resnet import EquilibriumMixin
from .implicit_resnet import (ImplicitBlock, ImplicitNet, UnrolledImplicit, check_depth, create_implicit_model,
                              implicit_default_cfgs)
from .wt_resnet import WeightTiedMixin
from .wtsm_resnet import SparseMaskMixin

__all__ = ['MultiResolutionBlock', 'UnrolledBranches', 'ImplicitMDEQ', 'WTMDEQ', 'WTSMMDEQ', 'MDEQ', 'MDEQ_SIZES']

# Sizes shared by the three families (wt_mdeq_X, wtsm_mdeq_X and mdeq_X are twins). Branch i has
# ``width * 2**i`` channels at stride ``stem_stride * 2**i``; ``depth`` is the unrolled iterations.
MDEQ_SIZES: Dict[str, Dict[str, int]] = {
    'tiny': dict(width=16, num_branches=3, stem_stride=1, depth=4),    # 0.19M params, 81 MFLOPs at 32px; branches at 32, 16, 8 px
    'small': dict(width=40, num_branches=3, stem_stride=1, depth=6),   # 1.19M params, 0.72 GFLOPs at 32px; branches at 32, 16, 8 px
}


class ConvNorm(nn.Module):
    """A bias-free conv then GroupNorm, run with a weight the caller passes (a masked copy or the conv's own)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int, norm_groups: int,
                 device=None, dtype=None):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2, bias=False,
                              device=device, dtype=dtype)
        self.norm = nn.GroupNorm(norm_groups, out_chs, device=device, dtype=dtype)
        self.stride = stride
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self.norm(F.conv2d(x, weight, None, self.stride, self.padding))


class FusionPath(nn.Module):
    """MDEQ's fuse layer from branch ``source`` into a branch ``steps`` resolutions away.

    Down (``steps > 0``): ``steps`` stride-2 3x3 convs with ReLU between them, the last one into the
    target's channels. Up (``steps < 0``): a 1x1 conv into the target's channels, then nearest
    upsampling to the target's size (exact for odd sizes, whose strided convs rounded up).
    """

    def __init__(self, source: int, in_chs: int, out_chs: int, steps: int, norm_groups: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.source = source
        self.upsample = steps < 0
        if self.upsample:
            layers = [ConvNorm(in_chs, out_chs, 1, 1, norm_groups, **dd)]
        else:
            layers = [ConvNorm(in_chs, out_chs if k == steps - 1 else in_chs, 3, 2, norm_groups, **dd)
                      for k in range(steps)]
        self.layers = nn.ModuleList(layers)
        self.num_convs = len(layers)

    def conv_weights(self) -> List[torch.Tensor]:
        return [layer.conv.weight for layer in self.layers]

    def forward(self, y: torch.Tensor, size: List[int], weights: List[torch.Tensor]) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            if index > 0:
                y = F.relu(y)
            y = layer(y, weights[index])
        if self.upsample:
            y = F.interpolate(y, size=size, mode='nearest')
        return y


class BranchFusion(nn.Module):
    """Branch ``target``'s new state: norm(relu(its own block output + every other branch resampled to it))."""

    def __init__(self, target: int, channels: List[int], norm_groups: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.target = target
        self.paths = nn.ModuleList([
            FusionPath(source, channels[source], channels[target], target - source, norm_groups, **dd)
            for source in range(len(channels)) if source != target
        ])
        self.norm = nn.GroupNorm(norm_groups, channels[target], **dd)
        self.num_convs = sum(path.num_convs for path in self.paths)

    def conv_weights(self) -> List[torch.Tensor]:
        weights: List[torch.Tensor] = []
        for path in self.paths:
            weights.extend(path.conv_weights())
        return weights

    def forward(self, y: List[torch.Tensor], weights: List[torch.Tensor]) -> torch.Tensor:
        out = y[self.target]
        size = out.shape[-2:]
        offset = 0
        for path in self.paths:
            out = out + path(y[path.source], size, weights[offset:offset + path.num_convs])
            offset += path.num_convs
        return self.norm(F.relu(out))


class MultiResolutionBlock(nn.Module):
    """The multi-resolution f(z, x): a residual block per branch, then multiscale fusion.

    ``z`` and ``x`` are lists with one tensor per branch (finest first). Branch i runs the zoo's
    :class:`ImplicitBlock` (GroupNorm, its injection ``x[i]`` added inside), then every branch
    receives all the others (:class:`BranchFusion`). ``weights`` substitutes every conv weight, in
    :meth:`conv_weights` order, for one call (the sparse-mask family's masked copies).
    """

    def __init__(self, channels: List[int], norm_groups: int = 8, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.branches = nn.ModuleList([ImplicitBlock(chs, norm_groups, **dd) for chs in channels])
        self.fusions = nn.ModuleList([BranchFusion(i, channels, norm_groups, **dd) for i in range(len(channels))])

    def conv_weights(self) -> List[torch.Tensor]:
        weights: List[torch.Tensor] = []
        for branch in self.branches:
            weights.extend(branch.conv_weights())
        for fusion in self.fusions:
            weights.extend(fusion.conv_weights())
        return weights

    def forward(self, z: List[torch.Tensor], x: List[torch.Tensor],
                weights: Optional[List[torch.Tensor]] = None) -> List[torch.Tensor]:
        if weights is None:
            weights = self.conv_weights()
        y: List[torch.Tensor] = []
        offset = 0
        for i, branch in enumerate(self.branches):
            y.append(branch(z[i], x[i], weights[offset:offset + 2]))
            offset += 2
        out: List[torch.Tensor] = []
        for fusion in self.fusions:
            out.append(fusion(y, weights[offset:offset + fusion.num_convs]))
            offset += fusion.num_convs
        return out


class UnrolledBranches(UnrolledImplicit):
    """The shared weight-tied driver on a multi-resolution state (one tensor per branch).

    Only the types differ from :class:`UnrolledImplicit`, whose loop, masks and checkpointing this
    runs: TorchScript types a method by its annotations, so the list-in, list-out entry is spelt here.
    """

    def step(self, z: List[torch.Tensor], x: List[torch.Tensor], iteration: int) -> List[torch.Tensor]:
        return self.block(z, x, self.iteration_weights(iteration))

    def forward(self, x: List[torch.Tensor]) -> List[torch.Tensor]:
        return self.iterate(x)


class FuseToCoarsest(nn.Module):
    """MDEQ's classification head up to pooling: each branch, finest first, goes down one resolution
    (stride-2 3x3 conv) and is added to the next; a 1x1 conv widens the sum to ``out_chs``."""

    def __init__(self, channels: List[int], out_chs: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.downsamples = nn.ModuleList([
            nn.Sequential(
                nn.Conv2d(in_chs, next_chs, 3, stride=2, padding=1, bias=False, **dd),
                nn.BatchNorm2d(next_chs, **dd),
                nn.ReLU(inplace=True),
            )
            for in_chs, next_chs in zip(channels[:-1], channels[1:])
        ])
        self.final = nn.Sequential(
            nn.Conv2d(channels[-1], out_chs, 1, bias=False, **dd),
            nn.BatchNorm2d(out_chs, **dd),
            nn.ReLU(inplace=True),
        )

    def forward(self, z: List[torch.Tensor]) -> torch.Tensor:
        y = z[0]
        for i, downsample in enumerate(self.downsamples):
            y = downsample(y) + z[i + 1]
        return self.final(y)


class ImplicitMDEQ(ImplicitNet):
    """Stem, one injected input per branch, ONE implicit multi-resolution layer, MDEQ's fusing head.

    The injection of branch i > 0 is branch i-1's, taken down by a stride-2 3x3 conv. Features
    (``features_only``, ``forward_intermediates``) are the branch states, one map per branch.
    ``implicit_layer(block, stage_index, device)`` builds the iteration; the family mixins supply it.
    """
    unrolled_layer_cls = UnrolledBranches

    def __init__(
            self,
            implicit_layer,
            width: int = 16,
            num_branches: int = 3,
            stem_stride: int = 1,
            norm_groups: int = 8,
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        check_depth(num_branches, 'num_branches')
        super().__init__(width, stem_stride, norm_groups, num_classes, in_chans, drop_rate, device=device, dtype=dtype)
        dd = dict(device=device, dtype=dtype)
        channels = [width * 2 ** i for i in range(num_branches)]
        self.downsamples = nn.ModuleList([
            nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 3, stride=2, padding=1, bias=False, **dd),
                nn.BatchNorm2d(out_chs, **dd),
                nn.ReLU(inplace=True),
            )
            for in_chs, out_chs in zip(channels[:-1], channels[1:])
        ])
        self.implicit = implicit_layer(MultiResolutionBlock(channels, norm_groups, **dd), stage_index=0, device=device)
        # Branches come out of the implicit layer together, as one list; a parameter-free tap per branch
        # gives each map a module name, so fx feature extraction (feature_cls='fx') can return it.
        self.branch_taps = nn.ModuleList([nn.Identity() for _ in channels])
        self.feature_info = [dict(num_chs=chs, reduction=stem_stride * 2 ** i, module=f'branch_taps.{i}')
                             for i, chs in enumerate(channels)]
        self.head_fuse: Optional[FuseToCoarsest] = FuseToCoarsest(channels, 2 * channels[-1], **dd)
        self.output_branch = num_branches - 1  # forward_features' map once prune_intermediate_layers drops head_fuse
        self.init_head(2 * channels[-1], global_pool, **dd)

    @torch.jit.ignore
    def named_implicit_layers(self) -> List[Tuple[str, nn.Module]]:
        return [('implicit', self.implicit)]

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^stem|^downsamples', blocks=[(r'^implicit\.', (0,)), (r'^head_fuse\.', (1,))])

    def forward_branches(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The implicit layer's branch states, finest first."""
        injections = [self.forward_stem(x)]
        for downsample in self.downsamples:
            injections.append(downsample(injections[-1]))
        z = self.implicit(injections)
        return [tap(z[i]) for i, tap in enumerate(self.branch_taps)]

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Branch states (index i: stride ``stem_stride * 2**i``); they come out of one layer together,
        so ``stop_early`` saves nothing but the head."""
        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, _ = feature_take_indices(len(self.feature_info), indices)
        z = self.forward_branches(x)
        intermediates = [z[i] for i in take_indices]
        if intermediates_only:
            return intermediates
        return self.fuse_branches(z), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Branches iterate together and cannot be dropped; the fusing head goes with the classifier,
        or when features end before the coarsest branch, and forward_features then ends at the last
        wanted branch."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        if prune_head or max_index < len(self.feature_info) - 1:
            self.head_fuse = None
            self.output_branch = max_index
            self.num_features = self.feature_info[max_index]['num_chs']
            self.reset_classifier(0, '')
        return take_indices

    def fuse_branches(self, z: List[torch.Tensor]) -> torch.Tensor:
        if self.head_fuse is None:
            return z[self.output_branch]
        return self.head_fuse(z)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse_branches(self.forward_branches(x))


class WTMDEQ(WeightTiedMixin, ImplicitMDEQ):
    """Dense weight-tied multi-resolution model: ``depth`` applications of the one block."""


class WTSMMDEQ(SparseMaskMixin, ImplicitMDEQ):
    """Sparse-mask weight-tied multi-resolution model: every conv of the block masked per iteration."""


class MDEQ(EquilibriumMixin, ImplicitMDEQ):
    """Multiscale deep equilibrium model: the block solved for its fixed point, twin of :class:`WTMDEQ`."""


def _create_mdeq(model_cls: type, variant: str, pretrained: bool = False, **kwargs) -> ImplicitMDEQ:
    """Build a ``*mdeq_<size>`` model: one feature map per branch."""
    size = variant.rsplit('_', 1)[-1]
    return create_implicit_model(model_cls, variant, pretrained, MDEQ_SIZES[size],
                                 lambda model_args: model_args['num_branches'], **kwargs)


default_cfgs = implicit_default_cfgs(
    ['wt_mdeq', 'wtsm_mdeq', 'mdeq'],
    {size: arch['stem_stride'] * 2 ** (arch['num_branches'] - 1) for size, arch in MDEQ_SIZES.items()},
)


@register_model
def wt_mdeq_tiny(pretrained=False, **kwargs) -> WTMDEQ:
    return _create_mdeq(WTMDEQ, 'wt_mdeq_tiny', pretrained, **kwargs)


@register_model
def wt_mdeq_small(pretrained=False, **kwargs) -> WTMDEQ:
    return _create_mdeq(WTMDEQ, 'wt_mdeq_small', pretrained, **kwargs)


@register_model
def wtsm_mdeq_tiny(pretrained=False, **kwargs) -> WTSMMDEQ:
    return _create_mdeq(WTSMMDEQ, 'wtsm_mdeq_tiny', pretrained, **kwargs)


@register_model
def wtsm_mdeq_small(pretrained=False, **kwargs) -> WTSMMDEQ:
    return _create_mdeq(WTSMMDEQ, 'wtsm_mdeq_small', pretrained, **kwargs)


@register_model
def mdeq_tiny(pretrained=False, **kwargs) -> MDEQ:
    return _create_mdeq(MDEQ, 'mdeq_tiny', pretrained, **kwargs)


@register_model
def mdeq_small(pretrained=False, **kwargs) -> MDEQ:
    return _create_mdeq(MDEQ, 'mdeq_small', pretrained, **kwargs)
