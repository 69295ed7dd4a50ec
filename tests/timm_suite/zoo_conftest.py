"""Runs timm's own generic model tests (tests/test_models.py from the timm sdist) on the zoo alone.

This file is copied, as conftest.py, next to the sdist's test_models.py by ``tests/test_timm_suite.py``. It
imports wt_zoo before the timm tests are collected, narrows timm's model listings to the zoo
(the parametrize lists are built from them at import time), and keeps only the tests that are
parametrised over models. TorchScript is deselected for the DEQ members (``deq_resnet_*``,
``mdeq_*``): torchdeq's solvers read tensor values on the host in their convergence loops (see
README). fx runs for them: the solver-driven layer is registered as an fx leaf.
"""
import fnmatch

import timm
import timm.models

import wt_zoo

_ZOO = set(wt_zoo.list_zoo_models())
_list_models = timm.list_models
_list_pretrained = timm.list_pretrained


def _zoo_only(names):
    return [name for name in names if name.split('.')[0] in _ZOO]


def zoo_list_models(filter='', module='', pretrained=False, exclude_filters='', name_matches_cfg=False,
                    include_tags=None):
    # ``module`` names timm's own files (e.g. the ones with forward_intermediates); every zoo
    # family implements that API, so the filter is dropped rather than matched against our files.
    return _zoo_only(_list_models(filter=filter, pretrained=pretrained, exclude_filters=exclude_filters,
                                  name_matches_cfg=name_matches_cfg, include_tags=include_tags))


def zoo_list_pretrained(filter='', exclude_filters=''):
    return _zoo_only(_list_pretrained(filter=filter, exclude_filters=exclude_filters))


timm.list_models = timm.models.list_models = zoo_list_models
timm.list_pretrained = timm.models.list_pretrained = zoo_list_pretrained

NO_SCRIPT_FAMILIES = ('deq_*', 'mdeq_*')


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, 'callspec', None), 'params', {})
        name = params.get('model_name')
        zoo_model = isinstance(name, str) and name.split('.')[0] in _ZOO
        scripted = 'torchscript' in item.name
        if zoo_model and not (scripted and any(fnmatch.fnmatch(name, p) for p in NO_SCRIPT_FAMILIES)):
            keep.append(item)
        else:
            drop.append(item)
    config.hook.pytest_deselected(items=drop)
    items[:] = keep
