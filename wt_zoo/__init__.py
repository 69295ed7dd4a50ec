"""wt-zoo: weight-tied implicit vision models as timm models.

``import wt_zoo`` registers every family with timm, so that ``timm.create_model('wt_resnet_small')``
works afterwards.
"""
from typing import Optional, Tuple

from .models import DEQResNet, ImplicitResNet, WTResNet, WTSMResNet, MODEL_SIZES, MDEQ, WTMDEQ, WTSMMDEQ, MDEQ_SIZES

__version__ = '0.1.0'

# How an implicit layer runs (unrolled; unrolled through sparse masks; solved), and what it is built of.
FAMILIES = ('wt', 'wtsm', 'deq')
ARCHITECTURES = ('resnet', 'mdeq')

# A zoo model's name without its size and tag -> (family, architecture). MDEQ is itself a DEQ, so
# the multi-resolution family's DEQ member is plain ``mdeq_<size>``.
_NAME_PREFIXES = {
    **{f'{family}_resnet': (family, 'resnet') for family in FAMILIES},
    'wt_mdeq': ('wt', 'mdeq'), 'wtsm_mdeq': ('wtsm', 'mdeq'), 'mdeq': ('deq', 'mdeq'),
}


def zoo_family(name: str) -> Optional[Tuple[str, str]]:
    """(family, architecture) of a zoo model name, e.g. ``('wtsm', 'mdeq')`` for ``wtsm_mdeq_tiny.c10``;
    None for a name outside the zoo."""
    return _NAME_PREFIXES.get(name.split('.', 1)[0].rsplit('_', 1)[0])


def list_zoo_models(pattern: str = '*', include_tags: bool = False):
    """Names of the zoo's registered models (not timm's own)."""
    import timm
    return [name for name in timm.list_models(pattern, include_tags=include_tags) if zoo_family(name) is not None]
