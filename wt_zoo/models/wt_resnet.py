"""Weight-tied ResNets: one shared residual block per stage, unrolled ``depth`` times, trained by backprop."""
from functools import partial

from timm.models import register_model

from .implicit_resnet import ImplicitResNet, UnrolledImplicit, create_implicit_resnet, family_default_cfgs

__all__ = ['WTResNet']


class WTResNet(ImplicitResNet):
    """Dense weight-tied model. ``depth`` iterations per stage share one block's weights."""
    unrolled = True

    def __init__(self, depth: int = 4, **kwargs):
        self.depth = depth
        super().__init__(implicit_layer=lambda block, stage_index, device: UnrolledImplicit(block, depth), **kwargs)


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
