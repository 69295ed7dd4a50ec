"""Weight-tied ResNets with sparse masks: iteration k convolves with W * M_k, M_k fixed at construction.

Capacity grows with the number of distinct masks while the parameter count stays that of the
dense twin: every masked copy trains the one shared weight.
"""
from timm.layers import register_notrace_module
from timm.models import register_model

from ..masks import IterationMasks, check_mask_args
from .implicit_resnet import ImplicitResNet, check_depth, create_implicit_resnet, family_default_cfgs

__all__ = ['SparseMaskMixin', 'WTSMResNet']

# fx treats the mask lookup as a leaf: its eval-mode cache is not traceable.
register_notrace_module(IterationMasks)


class SparseMaskMixin:
    """Sparse-mask weight tying for any zoo architecture; see :class:`wt_zoo.masks.IterationMasks`.

    Each implicit layer unrolls its block ``depth`` times, iteration k through its own fixed mask on
    every conv weight the block lists in ``conv_weights()``. Layer ``i`` draws from seed
    ``mask_seed * 1000 + i``.
    """
    unrolled = True

    def __init__(
            self,
            depth: int = 4,
            mask_density: float = 0.5,
            mask_kind: str = 'unstructured',
            mask_mode: str = 'distinct',
            mask_seed: int = 0,
            **kwargs,
    ):
        check_depth(depth)  # before the masks, whose count it sets
        check_mask_args(mask_density, mask_kind, mask_mode)
        self.depth = depth
        self.mask_density = mask_density

        def implicit_layer(block, stage_index, device):
            masks = IterationMasks(
                [tuple(w.shape) for w in block.conv_weights()], depth, mask_density=mask_density,
                mask_kind=mask_kind, mask_mode=mask_mode, mask_seed=mask_seed * 1000 + stage_index, device=device,
            )
            return self.unrolled_layer_cls(block, depth, masks=masks)

        super().__init__(implicit_layer=implicit_layer, **kwargs)


class WTSMResNet(SparseMaskMixin, ImplicitResNet):
    """Sparse-mask weight-tied ResNet; see :class:`SparseMaskMixin` for the arguments."""


default_cfgs = family_default_cfgs('wtsm')


@register_model
def wtsm_resnet_tiny(pretrained=False, **kwargs) -> WTSMResNet:
    return create_implicit_resnet(WTSMResNet, 'wtsm_resnet_tiny', pretrained, **kwargs)


@register_model
def wtsm_resnet_small(pretrained=False, **kwargs) -> WTSMResNet:
    return create_implicit_resnet(WTSMResNet, 'wtsm_resnet_small', pretrained, **kwargs)


@register_model
def wtsm_resnet_base(pretrained=False, **kwargs) -> WTSMResNet:
    return create_implicit_resnet(WTSMResNet, 'wtsm_resnet_base', pretrained, **kwargs)
