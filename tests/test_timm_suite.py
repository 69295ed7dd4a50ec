"""timm's own generic model tests, run on the zoo.

The tests come from the timm sdist of the installed timm version (downloaded at test time, never
vendored). ``tests/timm_suite/conftest.py`` narrows them to the zoo's models.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import timm

import wt_zoo
from timm_sdist import fetch_timm_tests

HARNESS = Path(__file__).parent / 'timm_suite' / 'zoo_conftest.py'
REPO = Path(__file__).resolve().parent.parent


def run_timm_tests(tmp_path, *pytest_args):
    tests_dir = fetch_timm_tests(REPO / '.cache' / 'timm-sdist')
    work = tmp_path / 'timm_tests'
    work.mkdir()
    shutil.copy(tests_dir / 'test_models.py', work / 'test_models.py')
    shutil.copy(HARNESS, work / 'conftest.py')
    # offline: the pretrained-weight tests run in tests/test_hub.py against a cache seeded by install-cache
    env = dict(os.environ, PYTHONWARNINGS='ignore', HF_HUB_OFFLINE='1')
    env.pop('GITHUB_ACTIONS', None)
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', str(work / 'test_models.py'), '-q', '-p', 'no:cacheprovider',
         '-W', 'ignore', '--rootdir', str(work), *pytest_args],
        cwd=work, env=env, capture_output=True, text=True, timeout=900,
    )
    return result


def test_timm_generic_model_tests_pass_for_every_zoo_model(tmp_path):
    result = run_timm_tests(tmp_path, '-rfEs', '-k', 'not pretrained')
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ''
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert not re.search(r'\d+ (failed|error|skipped)', summary), summary
    passed = int(re.search(r'(\d+) passed', summary).group(1))
    models = len(wt_zoo.list_zoo_models())
    # forward, backward, default cfgs (both tags), features_only, forward_intermediates (x2),
    # prune contract, fx forward and backward for every model; torchscript for the unrolled families
    assert passed >= 10 * models, summary
    print(f'timm {timm.__version__} generic model tests on the zoo: {summary}')
