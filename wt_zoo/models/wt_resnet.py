"""Weight-tied ResNets: one shared residual block per stage, unrolled ``depth`` times, trained by backprop."""
from timm.models import register_model

from .implicit_resnet import ImplicitResNet, create_implicit_resnet, family_default_cfgs

__all__ = ['WeightTiedMixin', 'WTResNet']


class WeightTiedMixin:
    """Dense weight tying for any zoo architecture: each implicit layer unrolls its block ``depth`` times.

    Put it before the architecture class (``class WTResNet(WeightTiedMixin, ImplicitResNet)``); it
    consumes ``depth`` and hands the architecture its ``implicit_layer`` factory.
    """
    unrolled = True

    def __init__(self, depth: int = 4, **kwargs):
        self.depth = depth
        super().__init__(
            implicit_layer=lambda block, stage_index, device: self.unrolled_layer_cls(block, depth), **kwargs)


class WTResNet(WeightTiedMixin, ImplicitResNet):
    """Dense weight-tied model. ``depth`` iterations per stage share one block's weights."""


default_cfgs = family_default_cfgs('wt')


@register_model
def wt_resnet_tiny(pretrained=False, **kwargs) -> WTResNet:
    return create_implicit_resnet(WTResNet, 'wt_resnet_tiny', pretrained, **kwargs)


@register_model
def wt_resnet_small(pretrained=False, **kwargs) -> WTResNet:
    return create_implicit_resnet(WTResNet, 'wt_resnet_small', pretrained, **kwargs)


@register_model
def wt_resnet_base(pretrained=False, **kwargs) -> WTResNet:
    return create_implicit_resnet(WTResNet, 'wt_resnet_base', pretrained, **kwargs)
