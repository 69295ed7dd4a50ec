"""timm's own test files, from the sdist of the installed timm version (fetched once, never vendored).

Shared by tests/test_timm_suite.py and tests/test_hub.py: both call :func:`fetch_timm_tests` with the
same cache folder (``<repo>/.cache/timm-sdist``, gitignored), so the sdist is downloaded once.
"""
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

from filelock import FileLock

__all__ = ['fetch_timm_tests']


def fetch_timm_tests(dest) -> Path:
    """The extracted ``tests/`` folder of ``timm==<installed>``'s sdist under ``dest``.

    Downloads with ``pip download --no-deps --no-binary :all:`` when the archive is not in ``dest``
    yet, extracts it once (into a temp folder, then renamed, under a file lock, so concurrent test
    runs never see a half-extracted tree), and reuses both afterwards.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    timm_version = version('timm')
    root = dest / f'timm-{timm_version}'
    tests = root / 'tests'
    with FileLock(str(dest / '.fetch.lock')):
        if (tests / 'test_models.py').is_file():
            return tests
        archive = dest / f'timm-{timm_version}.tar.gz'
        if not archive.is_file():
            result = subprocess.run(
                [sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-binary', ':all:',
                 '--disable-pip-version-check', f'timm=={timm_version}', '-d', str(dest)],
                capture_output=True, text=True)
            if result.returncode != 0 or not archive.is_file():
                raise RuntimeError(f'could not download the timm {timm_version} sdist into {dest} (pip exit '
                                   f'{result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}')
        with tempfile.TemporaryDirectory(dir=dest, prefix='.extract-') as tmp:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter='data')
            extracted = Path(tmp) / f'timm-{timm_version}'
            if not (extracted / 'tests' / 'test_models.py').is_file():
                raise RuntimeError(f'{archive}: no tests/test_models.py in the sdist')
            if root.exists():  # an older, incomplete extraction
                shutil.rmtree(root)
            extracted.rename(root)
    return tests
