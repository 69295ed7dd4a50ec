"""pytest plugin: timm's generic pretrained-weight tests on the zoo's published tags, offline only.

tests/test_hub.py copies this file beside the sdist's test_models.py and the zoo conftest and runs
``pytest -p pretrained_plugin``, with WT_ZOO_HUB_CONFIGS naming the Hub folders (which gives their
tags an hf_hub_id) and HF_HUB_CACHE the cache that ``python -m wt_zoo.hub install-cache`` seeded.
It refuses to run without HF_HUB_OFFLINE=1, so the weights can only come from that cache, and keeps
just test_model_load_pretrained and test_model_features_pretrained.
"""
import os

import pytest

PRETRAINED_TESTS = ('test_model_load_pretrained', 'test_model_features_pretrained')


def pytest_configure(config):
    if os.environ.get('HF_HUB_OFFLINE') != '1' or not os.environ.get('HF_HUB_CACHE'):
        raise pytest.UsageError('pretrained_plugin runs offline only: set HF_HUB_OFFLINE=1 and HF_HUB_CACHE to the '
                                'cache that `python -m wt_zoo.hub install-cache` seeded')


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    keep = [item for item in items if getattr(item, 'originalname', None) in PRETRAINED_TESTS]
    config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    items[:] = keep
