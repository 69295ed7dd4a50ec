"""Shared fixtures: where the real datasets are, small learnable datasets the tests write themselves."""
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # train.py / validate.py are top-level scripts, imported by the tests
    sys.path.insert(0, str(REPO_ROOT))


def real_cifar10_dir() -> Path:
    """The CIFAR-10 JPEG copy: $WT_ZOO_CIFAR10 or <repo>/../shared/datasets/cifar10-jpeg."""
    return Path(os.environ.get('WT_ZOO_CIFAR10') or REPO_ROOT.parent / 'shared' / 'datasets' / 'cifar10-jpeg')


def real_fashion_mnist_dir() -> Path:
    """Debian's dataset-fashion-mnist files: $WT_ZOO_FASHION_MNIST or /usr/share/datasets/fashion-mnist."""
    return Path(os.environ.get('WT_ZOO_FASHION_MNIST') or '/usr/share/datasets/fashion-mnist')


def learnable_images(num: int, num_classes: int, seed: int, size: int = 32, chans: int = 3):
    """uint8 (N, size, size, chans) images whose class shows as a colour and a stripe direction, plus noise,
    so a tiny model learns them in a few steps; labels cycle through the classes."""
    rng = np.random.default_rng(seed)
    labels = np.arange(num) % num_classes
    rng.shuffle(labels)
    palette = np.random.default_rng(1234).integers(40, 216, size=(num_classes, chans))
    yy, xx = np.mgrid[:size, :size]
    images = np.empty((num, size, size, chans), dtype=np.uint8)
    for i, c in enumerate(labels):
        stripes = ((yy if c % 2 else xx) // (2 + c % 3)) % 2
        img = palette[c][None, None, :] + 40 * stripes[..., None] + rng.normal(0, 20, (size, size, chans))
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def write_cifar10_pickles(root: Path, per_batch: int = 64, test: int = 128, seed: int = 0) -> Path:
    """torchvision's cifar-10-batches-py layout (5 train batches, test_batch, batches.meta)."""
    from wt_zoo.data import CIFAR10_CLASSES
    base = root / 'cifar-10-batches-py'
    base.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate([per_batch] * 5 + [test]):
        images, labels = learnable_images(n, 10, seed + i)
        name = f'data_batch_{i + 1}' if i < 5 else 'test_batch'
        rows = images.transpose(0, 3, 1, 2).reshape(n, -1)
        with open(base / name, 'wb') as f:
            pickle.dump({'batch_label': name, 'labels': labels.tolist(), 'data': rows,
                         'filenames': [f'{j}.png' for j in range(n)]}, f)
    with open(base / 'batches.meta', 'wb') as f:
        pickle.dump({'label_names': list(CIFAR10_CLASSES), 'num_cases_per_batch': per_batch, 'num_vis': 3072}, f)
    return root


@pytest.fixture(scope='session')
def fake_cifar10(tmp_path_factory) -> Path:
    """A small learnable CIFAR-10 in torchvision's layout: 320 train, 128 test images."""
    return write_cifar10_pickles(tmp_path_factory.mktemp('fake-cifar10'))


@pytest.fixture(scope='session')
def data_cache(tmp_path_factory) -> Path:
    """Decoded-image cache for the tests' session, so they never write to ~/.cache."""
    return tmp_path_factory.mktemp('wt-zoo-cache')


@pytest.fixture(scope='session')
def cifar10_jpeg_dir() -> Path:
    path = real_cifar10_dir()
    assert (path / 'test.tar.gz').is_file(), (
        f'real CIFAR-10 JPEG copy not found at {path}: set WT_ZOO_CIFAR10 or provide ../shared/datasets/cifar10-jpeg')
    return path


@pytest.fixture(scope='session')
def fashion_mnist_dir() -> Path:
    path = real_fashion_mnist_dir()
    assert (path / 't10k-images-idx3-ubyte.gz').is_file(), (
        f'Fashion-MNIST not found at {path}: apt-get install dataset-fashion-mnist or set WT_ZOO_FASHION_MNIST')
    return path
