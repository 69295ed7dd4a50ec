"""wt-zoo: weight-tied implicit vision models as timm models.

``import wt_zoo`` registers every family with timm, so that ``timm.create_model('wt_resnet_small')``
works afterwards.
"""
from .models import DEQResNet, ImplicitResNet, WTResNet, WTSMResNet, MODEL_SIZES

__version__ = '0.1.0'

FAMILIES = ('wt', 'wtsm', 'deq')


def list_zoo_models(pattern: str = '*', include_tags: bool = False):
    """Names of the zoo's registered models (not timm's own)."""
    import timm
    return [name for name in timm.list_models(pattern, include_tags=include_tags)
            if name.split('_', 1)[0] in FAMILIES and '_resnet_' in name]
