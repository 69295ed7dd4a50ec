"""Datasets for training and evaluating zoo models, and an on-device loader for small images.

Small-image datasets (CIFAR-10, CIFAR-100, Fashion-MNIST) are decoded once into one uint8 array
and served by :class:`DeviceImageLoader`, which keeps every image on the training device and
augments whole batches there (random crop with padding, horizontal flip, optional cutout, and an
optional downscale for progressive resizing), so small models are not bound by a CPU data pipeline.
Flips are random per image and epoch (``hflip_mode='random'``) or alternate per image between epochs
(``'alternate'``: every image seen both ways over any two epochs). Any other dataset goes through
timm's ``create_dataset`` / ``create_loader`` (image folders for downstream tasks, ``hfds/``, ...).

Where the files are looked for, in order: ``--data-dir`` when given (nothing else then), else the
dataset's environment variable (``WT_ZOO_CIFAR10``, ``WT_ZOO_CIFAR100``, ``WT_ZOO_FASHION_MNIST``),
the project's default location, and the download folder under the data cache. Nothing is
downloaded unless ``download=True`` (``--dataset-download``).
"""
import gzip
import io
import logging
import math
import os
import pickle
import struct
import tarfile
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

_logger = logging.getLogger(__name__)

__all__ = [
    'CIFAR10_CLASSES', 'SMALL_IMAGE_DATASETS', 'DatasetNotFoundError', 'ImageArrays', 'DataSpec',
    'canonical_dataset_name', 'default_cache_dir', 'load_image_arrays', 'load_split_arrays', 'held_out_split',
    'stratified_indices', 'parse_split_size', 'adapt_image_arrays', 'DeviceImageLoader', 'TimmLoader',
    'create_train_loader', 'create_eval_loader', 'dataset_num_classes', 'NATIVE_INPUT_SIZE', 'NUM_CLASSES',
    'HFLIP_MODES', 'progressive_image_size', 'resize_batch',
]

REPO_ROOT = Path(__file__).resolve().parents[1]

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
                         'Ankle boot')
SMALL_IMAGE_DATASETS = ('cifar10', 'cifar100', 'fashion_mnist')
NATIVE_INPUT_SIZE = {'cifar10': (3, 32, 32), 'cifar100': (3, 32, 32), 'fashion_mnist': (1, 28, 28)}
NUM_CLASSES = {'cifar10': 10, 'cifar100': 100, 'fashion_mnist': 10}
_NAME_ALIASES = {
    'cifar10': 'cifar10', 'cifar-10': 'cifar10', 'cifar100': 'cifar100', 'cifar-100': 'cifar100',
    'fashion_mnist': 'fashion_mnist', 'fashion-mnist': 'fashion_mnist', 'fashionmnist': 'fashion_mnist',
    'fmnist': 'fashion_mnist',
}
_ENV_VARS = {'cifar10': 'WT_ZOO_CIFAR10', 'cifar100': 'WT_ZOO_CIFAR100', 'fashion_mnist': 'WT_ZOO_FASHION_MNIST'}
_DEFAULT_DIRS = {
    'cifar10': (REPO_ROOT.parent / 'shared' / 'datasets' / 'cifar10-jpeg',),
    'cifar100': (REPO_ROOT.parent / 'shared' / 'datasets' / 'cifar100',),
    'fashion_mnist': (Path('/usr/share/datasets/fashion-mnist'),),
}
_HOW_TO_GET = {
    'cifar10': (
        'point --data-dir (or WT_ZOO_CIFAR10) at a folder holding the JPEG archives train.tar.gz and test.tar.gz '
        '(members train/<class>/NNNN.jpg, as in ../shared/datasets/cifar10-jpeg, see its README.md), or at '
        "torchvision's CIFAR-10 layout (a folder containing cifar-10-batches-py/); or add --dataset-download to "
        "let torchvision download the original archive (needs internet)"),
    'cifar100': (
        "point --data-dir (or WT_ZOO_CIFAR100) at torchvision's CIFAR-100 layout (a folder containing "
        'cifar-100-python/); or add --dataset-download to let torchvision download it (needs internet)'),
    'fashion_mnist': (
        'point --data-dir (or WT_ZOO_FASHION_MNIST) at a folder with {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] '
        "(Debian: apt-get install dataset-fashion-mnist puts them in /usr/share/datasets/fashion-mnist) or at "
        "torchvision's layout (FashionMNIST/raw/); or add --dataset-download to let torchvision download it"),
}
# 'random': flip each image with probability --hflip, drawn afresh every epoch. 'alternate': each image's flip
# at epoch 0 is a fair coin drawn from the seed, and every later epoch flips it the other way, so any two
# consecutive epochs show it once each way (fewer near-repeats than independent coins; a fast-CIFAR trick).
HFLIP_MODES = ('random', 'alternate')
_ALTERNATE_FLIP_STREAM = 0x5EED_F11B  # keeps the alternate flips' coins apart from the crop/shuffle streams
# Progressive resizing grows the training images' side in steps of this many pixels, so that a schedule visits
# few distinct sizes (each one a fresh set of kernel shapes) and the zoo's stride-2 stages stay near whole.
PROGRESSIVE_SIZE_STEP = 4
_SPLIT_ALIASES = {'train': 'train', 'training': 'train', 'val': 'val', 'valid': 'val', 'validation': 'val',
                  'held_out': 'val', 'heldout': 'val', 'test': 'test', 'eval': 'test'}


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are nowhere it looked; the message lists where and how to get them."""


def canonical_dataset_name(name: str) -> str:
    """'cifar10', 'cifar100', 'fashion_mnist' for the small-image datasets (timm's ``torch/`` prefix accepted),
    else the name unchanged (an image folder or another timm dataset)."""
    name = name or ''
    low = name.lower()
    if low.startswith('torch/'):
        low = low[len('torch/'):]
    return _NAME_ALIASES.get(low, name)


def default_cache_dir() -> Path:
    """Where decoded arrays and downloads go unless --data-cache says otherwise."""
    env = os.environ.get('WT_ZOO_CACHE')
    if env:
        return Path(env)
    xdg = os.environ.get('XDG_CACHE_HOME')
    return (Path(xdg) if xdg else Path.home() / '.cache') / 'wt_zoo'


@dataclass
class ImageArrays:
    """A decoded split: uint8 images (N, H, W, C), int64 labels (N,), class names."""
    images: np.ndarray
    labels: np.ndarray
    classes: Tuple[str, ...]
    source: str = ''

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f'expected uint8 images of shape (N, H, W, C), got {self.images.dtype} {self.images.shape}')
        if self.labels.shape != (len(self.images),):
            raise ValueError(f'expected {len(self.images)} labels, got shape {self.labels.shape}')
        self.labels = self.labels.astype(np.int64, copy=False)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: np.ndarray, note: str = '') -> 'ImageArrays':
        return replace(self, images=self.images[indices], labels=self.labels[indices],
                       source=self.source + (f' [{note}]' if note else ''))


# ----------------------------------------------------------------------------------------------
# Finding and reading the files


def _candidate_dirs(name: str, data_dir: Optional[Union[str, Path]], cache_dir: Path) -> List[Tuple[Path, str]]:
    if data_dir:
        return [(Path(data_dir).expanduser(), '--data-dir')]
    found = []
    env = os.environ.get(_ENV_VARS[name])
    if env:
        found.append((Path(env).expanduser(), _ENV_VARS[name]))
    found += [(d, 'default') for d in _DEFAULT_DIRS[name]]
    found.append((cache_dir / 'datasets', 'download folder in the data cache'))
    return found


def _cifar10_layout(root: Path, split: str) -> Optional[Tuple[str, Path]]:
    archive = root / f'{split}.tar.gz'
    if archive.is_file():
        return 'jpeg-archive', archive
    folder = root / split
    if folder.is_dir() and any((folder / c).is_dir() for c in CIFAR10_CLASSES):
        return 'jpeg-folder', folder
    for base in (root / 'cifar-10-batches-py', root):
        if (base / 'batches.meta').is_file() and (base / 'test_batch').is_file():
            return 'torchvision', base
    return None


def _cifar100_layout(root: Path, split: str) -> Optional[Tuple[str, Path]]:
    for base in (root / 'cifar-100-python', root):
        if (base / 'meta').is_file() and (base / split).is_file():
            return 'torchvision', base
    return None


def _idx_file(folder: Path, stem: str) -> Optional[Path]:
    for name in (stem, stem + '.gz'):
        if (folder / name).is_file():
            return folder / name
    return None


def _fashion_mnist_layout(root: Path, split: str) -> Optional[Tuple[str, Path]]:
    prefix = 'train' if split == 'train' else 't10k'
    for folder in (root, root / 'FashionMNIST' / 'raw', root / 'raw'):
        if _idx_file(folder, f'{prefix}-images-idx3-ubyte') and _idx_file(folder, f'{prefix}-labels-idx1-ubyte'):
            return 'idx', folder
    return None


_LAYOUT_PROBES = {'cifar10': _cifar10_layout, 'cifar100': _cifar100_layout, 'fashion_mnist': _fashion_mnist_layout}


def _download(name: str, root: Path, split: str) -> None:
    """torchvision's downloader, only ever called for --dataset-download."""
    import torchvision.datasets as tvd
    root.mkdir(parents=True, exist_ok=True)
    cls = {'cifar10': tvd.CIFAR10, 'cifar100': tvd.CIFAR100, 'fashion_mnist': tvd.FashionMNIST}[name]
    _logger.info(f'Downloading {name} ({split}) into {root} with torchvision')
    cls(str(root), train=split == 'train', download=True)


def _decode_image(data: bytes, where: str) -> np.ndarray:
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert('RGB'))
    except Exception as e:  # PIL raises several types for bad files
        raise ValueError(f'cannot decode image {where}: {e}') from e


def _stack_decoded(items: List[Tuple[int, str, np.ndarray]], where: str) -> Tuple[np.ndarray, np.ndarray]:
    if not items:
        raise ValueError(f'no images found in {where}; expected members <split>/<class>/<name>.jpg')
    items.sort(key=lambda t: (t[0], t[1]))
    shapes = {img.shape for _, _, img in items}
    if len(shapes) != 1:
        raise ValueError(f'images in {where} differ in size ({sorted(shapes)[:4]}); expected one size, e.g. 32x32')
    return np.stack([img for _, _, img in items]), np.array([label for label, _, _ in items], dtype=np.int64)


def _class_index(class_name: str, where: str) -> int:
    try:
        return CIFAR10_CLASSES.index(class_name)
    except ValueError:
        raise ValueError(f'unexpected class folder {class_name!r} in {where}; expected one of {CIFAR10_CLASSES}') from None


def read_cifar10_jpeg_archive(archive: Path, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """Decode ``<split>/<class>/<name>.jpg`` members of a tar.gz, sorted by (label, name)."""
    items = []
    try:
        with tarfile.open(archive, 'r:gz') as tar:
            for member in tar:
                if not member.isfile():
                    continue
                parts = Path(member.name).parts
                if parts and parts[0] == '.':
                    parts = parts[1:]
                if len(parts) != 3 or parts[0] != split:
                    continue
                label = _class_index(parts[1], archive)
                items.append((label, parts[2], _decode_image(tar.extractfile(member).read(), f'{archive}:{member.name}')))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ValueError(f'cannot read {archive} as a tar.gz archive: {e}') from e
    return _stack_decoded(items, f'{archive} (members {split}/<class>/*.jpg)')


def read_cifar10_jpeg_folder(folder: Path) -> Tuple[np.ndarray, np.ndarray]:
    items = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        label = _class_index(class_dir.name, folder)
        for f in sorted(class_dir.iterdir()):
            if f.suffix.lower() in ('.jpg', '.jpeg', '.png'):
                items.append((label, f.name, _decode_image(f.read_bytes(), str(f))))
    return _stack_decoded(items, str(folder))


def _unpickle(path: Path) -> dict:
    try:
        with open(path, 'rb') as f:
            return pickle.load(f, encoding='latin1')
    except Exception as e:
        raise ValueError(f'cannot read {path} as a CIFAR python pickle: {e}') from e


def _cifar_rows_to_images(data: np.ndarray, path: Path) -> np.ndarray:
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: expected 'data' of shape (N, 3072), got {data.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def read_cifar_pickles(base: Path, name: str, split: str) -> Tuple[np.ndarray, np.ndarray, Tuple[str, ...]]:
    """torchvision's python-pickle layout (cifar-10-batches-py / cifar-100-python)."""
    if name == 'cifar10':
        files = [f'data_batch_{i}' for i in range(1, 6)] if split == 'train' else ['test_batch']
        meta, label_key, names_key = _unpickle(base / 'batches.meta'), 'labels', 'label_names'
    else:
        files = [split]
        meta, label_key, names_key = _unpickle(base / 'meta'), 'fine_labels', 'fine_label_names'
    images, labels = [], []
    for fname in files:
        path = base / fname
        if not path.is_file():
            raise DatasetNotFoundError(f'{path} is missing from the {name} layout in {base}')
        entry = _unpickle(path)
        if 'data' not in entry or label_key not in entry:
            raise ValueError(f"{path}: expected keys 'data' and {label_key!r}, got {sorted(entry)}")
        images.append(_cifar_rows_to_images(entry['data'], path))
        labels.append(np.asarray(entry[label_key], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels), tuple(meta[names_key])


def read_idx(path: Path, expected_dims: int) -> np.ndarray:
    """An MNIST-style idx file (optionally .gz) of unsigned bytes."""
    opener = gzip.open if path.suffix == '.gz' else open
    try:
        with opener(path, 'rb') as f:
            raw = f.read()
    except OSError as e:
        raise ValueError(f'cannot read {path}: {e}') from e
    if len(raw) < 4:
        raise ValueError(f'{path} is too short to be an idx file')
    zero, dtype_code, ndim = struct.unpack('>HBB', raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim != expected_dims:
        raise ValueError(
            f'{path} is not an idx file of unsigned bytes with {expected_dims} dimensions '
            f'(magic 0x0000 08 {expected_dims:02x} expected, got {raw[:4].hex()})')
    shape = struct.unpack('>' + 'I' * ndim, raw[4:4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f'{path}: header says shape {shape} but holds {body.size} bytes')
    return body.reshape(shape)


def read_fashion_mnist(folder: Path, split: str) -> Tuple[np.ndarray, np.ndarray]:
    prefix = 'train' if split == 'train' else 't10k'
    images = read_idx(_idx_file(folder, f'{prefix}-images-idx3-ubyte'), 3)
    labels = read_idx(_idx_file(folder, f'{prefix}-labels-idx1-ubyte'), 1).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f'{folder}: {len(images)} images but {len(labels)} labels for split {prefix}')
    return images[..., None].copy(), labels


def _cache_file(cache_dir: Path, source: Path, split: str) -> Path:
    st = source.stat()
    return cache_dir / f'cifar10-jpeg-{split}-{st.st_size}-{st.st_mtime_ns}.npz'


def _load_cached(path: Path) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return z['images'], z['labels']
    except Exception as e:  # a damaged cache is rebuilt, never trusted
        _logger.warning(f'ignoring unreadable cache {path}: {e}')
        return None


def _save_cached(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write via a temp file + rename, so a concurrent reader or a kill never sees half a cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + '.', suffix='.tmp')
        try:
            with os.fdopen(fd, 'wb') as f:
                np.savez(f, images=images, labels=labels)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as e:
        _logger.warning(f'could not write decoded-image cache {path}: {e}')


def load_image_arrays(
        name: str,
        split: str,
        data_dir: Optional[Union[str, Path]] = None,
        download: bool = False,
        cache_dir: Optional[Union[str, Path]] = None,
) -> ImageArrays:
    """The ``train`` or ``test`` split of a small-image dataset, decoded to uint8 arrays.

    CIFAR-10 JPEG archives are decoded once and cached (keyed by the archive's size and mtime).
    """
    name = canonical_dataset_name(name)
    if name not in SMALL_IMAGE_DATASETS:
        raise ValueError(f'{name!r} is not a small-image dataset; expected one of {SMALL_IMAGE_DATASETS}')
    if split not in ('train', 'test'):
        raise ValueError(f"split must be 'train' or 'test' here, got {split!r}")
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    candidates = _candidate_dirs(name, data_dir, cache_dir)
    probe = _LAYOUT_PROBES[name]
    found = None
    for root, _origin in candidates:
        layout = probe(root, split) if root.is_dir() else None
        if layout:
            found = (root, *layout)
            break
    if found is None and download:
        root = candidates[0][0] if data_dir else cache_dir / 'datasets'
        _download(name, root, split)
        layout = probe(root, split)
        if layout:
            found = (root, *layout)
    if found is None:
        looked = '\n'.join(
            f'  - {root} ({origin}): {"no such folder" if not root.is_dir() else "no known layout for split " + repr(split)}'
            for root, origin in candidates)
        raise DatasetNotFoundError(
            f'{name} ({split} split) not found. Looked in:\n{looked}\nTo get it: {_HOW_TO_GET[name]}.')
    root, kind, where = found
    classes: Tuple[str, ...] = CIFAR10_CLASSES if name == 'cifar10' else FASHION_MNIST_CLASSES
    if kind == 'jpeg-archive':
        cache = _cache_file(cache_dir, where, split)
        cached = _load_cached(cache)
        if cached is None:
            images, labels = read_cifar10_jpeg_archive(where, split)
            _save_cached(cache, images, labels)
        else:
            images, labels = cached
    elif kind == 'jpeg-folder':
        images, labels = read_cifar10_jpeg_folder(where)
    elif kind == 'torchvision':
        images, labels, classes = read_cifar_pickles(where, name, split)
    else:
        images, labels = read_fashion_mnist(where, split)
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(f'{where}: labels outside 0..{len(classes) - 1}')
    return ImageArrays(images, labels, tuple(classes), source=f'{name}/{split} from {where} ({kind})')


# ----------------------------------------------------------------------------------------------
# Splits and subsets


def parse_split_size(size: Optional[float], total: int, what: str = '--val-split-size') -> int:
    """A fraction in (0, 1) or a whole count; 0/None means none."""
    if not size:
        return 0
    if size < 0:
        raise ValueError(f'{what} must be a fraction in (0, 1) or a count >= 1, got {size}')
    count = int(round(size * total)) if size < 1 else int(size)
    if size >= 1 and size != int(size):
        raise ValueError(f'{what} above 1 must be a whole number of images, got {size}')
    if not 0 < count < total:
        raise ValueError(f'{what}={size} leaves {total - count} of {total} images; it must keep at least one on each side')
    return count


def stratified_indices(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` indices drawn from each class in proportion to its size, chosen by ``seed``; sorted ascending."""
    if count >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    # rank each sample within its class by a random permutation; take the lowest ranks first
    rank = np.empty(len(labels), dtype=np.float64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank[members] = rng.permutation(len(members)) / len(members)
    order = np.lexsort((rng.random(len(labels)), rank))
    return np.sort(order[:count])


def held_out_split(labels: np.ndarray, size: Optional[float], seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices) carved from one split, stratified and seeded.

    The seed is its own (``--val-split-seed``) so that changing the training seed never moves images
    between the two parts.
    """
    count = parse_split_size(size, len(labels))
    held = stratified_indices(labels, count, seed) if count else np.zeros(0, dtype=np.int64)
    keep = np.setdiff1d(np.arange(len(labels)), held, assume_unique=True)
    return keep, held


def load_split_arrays(
        name: str,
        split: str,
        data_dir: Optional[Union[str, Path]] = None,
        download: bool = False,
        cache_dir: Optional[Union[str, Path]] = None,
        val_split_size: Optional[float] = None,
        val_split_seed: int = 42,
        subset: Optional[int] = None,
        subset_seed: int = 0,
) -> ImageArrays:
    """'train' (less the held-out part), 'val' (the held-out part) or 'test', optionally a stratified subset."""
    kind = _SPLIT_ALIASES.get(split.lower())
    if kind is None:
        raise ValueError(f'unknown split {split!r}; expected train, val (held out from train) or test')
    if kind == 'val' and not val_split_size:
        raise ValueError(
            f"split {split!r} is the held-out part of the training split: pass --val-split-size "
            "(a fraction such as 0.1 or a count such as 5000), or use the 'test' split")
    arrays = load_image_arrays(name, 'test' if kind == 'test' else 'train', data_dir, download, cache_dir)
    if kind != 'test' and val_split_size:
        keep, held = held_out_split(arrays.labels, val_split_size, val_split_seed)
        arrays = arrays.subset(keep if kind == 'train' else held,
                               f'{"held-out" if kind == "val" else "minus held-out"} {len(held)}, seed {val_split_seed}')
    if subset:
        if subset < 1:
            raise ValueError(f'subset size must be >= 1, got {subset}')
        if subset < len(arrays):
            arrays = arrays.subset(stratified_indices(arrays.labels, subset, subset_seed), f'subset {subset}')
    return arrays


def adapt_image_arrays(arrays: ImageArrays, input_size: Sequence[int]) -> ImageArrays:
    """Match channels (1->3 repeat, 3->1 luminance) and size (one antialiased resize) to the model's input."""
    chans, height, width = input_size
    images = arrays.images
    have = images.shape[-1]
    if have != chans:
        if have == 1 and chans == 3:
            images = np.repeat(images, 3, axis=-1)
        elif have == 3 and chans == 1:
            lum = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            images = np.clip(np.rint(lum), 0, 255).astype(np.uint8)[..., None]
        else:
            raise ValueError(f'cannot adapt {have}-channel images to a model taking {chans} channels')
    if images.shape[1:3] != (height, width):
        t = torch.from_numpy(images).permute(0, 3, 1, 2).float()
        out = []
        for chunk in t.split(4096):
            out.append(F.interpolate(chunk, size=(height, width), mode='bilinear', antialias=True, align_corners=False))
        images = torch.cat(out).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    if images is arrays.images:
        return arrays
    return replace(arrays, images=np.ascontiguousarray(images))


# ----------------------------------------------------------------------------------------------
# Loaders


def progressive_image_size(epoch: int, epochs: int, full_size: int, min_size: int, end_fraction: float) -> int:
    """The training images' side at ``epoch`` under progressive resizing: ``min_size`` at the start, growing
    linearly (in steps of ``PROGRESSIVE_SIZE_STEP`` pixels) to ``full_size``, reached once ``end_fraction`` of
    the ``epochs`` have passed. Early epochs cost less per image; the last ones train at the size the model is
    evaluated at, so its BatchNorm statistics and filters end matched to it."""
    if isinstance(min_size, bool) or not isinstance(min_size, int) or not 8 <= min_size < full_size:
        raise ValueError(f'progressive resizing: the smallest training size must be an integer in [8, {full_size}) '
                         f'(the full image side is {full_size}), got {min_size!r}')
    if not 0. < end_fraction <= 1.:
        raise ValueError(f'progressive resizing: the fraction of epochs after which images are full size must be '
                         f'in (0, 1], got {end_fraction!r}')
    end_epoch = end_fraction * epochs
    if epoch >= end_epoch:
        return full_size
    target = min_size + (full_size - min_size) * epoch / end_epoch
    stepped = PROGRESSIVE_SIZE_STEP * math.floor(target / PROGRESSIVE_SIZE_STEP)
    return min(full_size, max(min_size, stepped))


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """A batch of square images downscaled to ``size`` pixels a side (bilinear with antialiasing)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode='bilinear', antialias=True, align_corners=False)


class DeviceImageLoader:
    """Batches of a uint8 image tensor kept on the device, augmented there in one go per batch.

    Training: a seeded permutation per epoch (``set_epoch``), sharded across ranks like
    torch's DistributedSampler, random crop from a zero-padded image, horizontal flip (random, or
    alternating per image between epochs, see ``HFLIP_MODES``), optional cutout, then normalisation, and
    a downscale to ``image_size`` when progressive resizing set one (:meth:`set_image_size`). Every draw
    follows from (seed, epoch, rank), so a resumed run sees the same batches. Evaluation:
    each rank takes every world_size-th image, in order, no padding, so summed metrics cover each
    image exactly once.
    """

    def __init__(
            self,
            arrays: ImageArrays,
            batch_size: int,
            mean: Sequence[float],
            std: Sequence[float],
            device: Union[str, torch.device] = 'cpu',
            is_training: bool = False,
            crop_padding: int = 4,
            hflip: float = 0.5,
            cutout: int = 0,
            seed: int = 0,
            hflip_mode: str = 'random',
            rank: int = 0,
            world_size: int = 1,
            drop_last: Optional[bool] = None,
            channels_last: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f'batch size must be >= 1, got {batch_size}')
        if hflip_mode not in HFLIP_MODES:
            raise ValueError(f'hflip mode must be one of {", ".join(HFLIP_MODES)}, got {hflip_mode!r}')
        if hflip_mode == 'alternate' and hflip not in (0, 0.5):
            raise ValueError(f'--hflip-mode alternate flips each image in every other epoch (a flip probability '
                             f'of 0.5); --hflip must be 0.5 (or 0 for no flips), got {hflip}')
        chans = arrays.images.shape[-1]
        if len(mean) != chans or len(std) != chans:
            raise ValueError(f'mean/std need {chans} values for {chans}-channel images, got {mean} / {std}')
        self.device = torch.device(device)
        self.images = torch.from_numpy(arrays.images).to(self.device).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.from_numpy(arrays.labels).to(self.device)
        self.classes = arrays.classes
        self.batch_size = batch_size
        self.is_training = is_training
        self.crop_padding = crop_padding if is_training else 0
        self.hflip = hflip if is_training else 0.
        self.hflip_mode = hflip_mode
        self.cutout = cutout if is_training else 0
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = is_training if drop_last is None else drop_last
        self.channels_last = channels_last
        self.epoch = 0
        self.image_size = self.images.shape[-1]  # the side training batches come out at
        self._scale = (1. / (255. * torch.tensor(std, device=self.device))).view(1, -1, 1, 1)
        self._shift = (-torch.tensor(mean, device=self.device) / torch.tensor(std, device=self.device)).view(1, -1, 1, 1)
        n = len(self.labels)
        self._first_flip = None  # alternate mode: each image's flip at even epochs, a function of the seed only
        if self.hflip > 0 and hflip_mode == 'alternate':
            coins = np.random.default_rng([int(seed) & 0xFFFF_FFFF_FFFF_FFFF, _ALTERNATE_FLIP_STREAM]).random(n)
            self._first_flip = torch.from_numpy(coins < 0.5).to(self.device)
        self.num_samples = math.ceil(n / world_size) if is_training else len(range(rank, n, world_size))
        if self.drop_last and self.num_samples < batch_size:
            raise ValueError(f'{self.num_samples} images per rank do not fill one batch of {batch_size}; '
                             'lower --batch-size or use more data')

    @property
    def dataset_size(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_image_size(self, size: int) -> None:
        """Serve batches downscaled to ``size`` pixels a side (progressive resizing); the full side restores them."""
        full = self.images.shape[-1]
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= full:
            raise ValueError(f'image size must be an integer in [1, {full}] (the stored images\' side), got {size!r}')
        self.image_size = size

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        return full if self.drop_last or not rest else full + 1

    def _indices(self) -> torch.Tensor:
        n = len(self.labels)
        if not self.is_training:
            return torch.arange(self.rank, n, self.world_size)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(n, generator=g)
        total = self.num_samples * self.world_size
        if total > n:  # pad like DistributedSampler so every rank does the same number of steps
            order = torch.cat([order, order[:total - n]])
        return order[self.rank:total:self.world_size]

    def flips(self, idx: torch.Tensor) -> Optional[torch.Tensor]:
        """Alternate mode: which of the images ``idx`` are flipped this epoch (None in random mode)."""
        if self._first_flip is None:
            return None
        return self._first_flip[idx] ^ bool(self.epoch % 2)

    def _augment(self, x: torch.Tensor, idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        dev = x.device
        if self.crop_padding:
            p = self.crop_padding
            padded = F.pad(x, (p, p, p, p))
            oy = torch.randint(0, 2 * p + 1, (b,), device=dev, generator=g)
            ox = torch.randint(0, 2 * p + 1, (b,), device=dev, generator=g)
            rows = (oy[:, None] + torch.arange(h, device=dev))[:, :, None]
            cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, :]
            x = padded[torch.arange(b, device=dev)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
        if self.hflip > 0:
            flip = self.flips(idx)
            if flip is None:
                flip = torch.rand(b, device=dev, generator=g) < self.hflip
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x

    def _cutout(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        dev = x.device
        cy = torch.randint(0, h, (b, 1), device=dev, generator=g) - self.cutout // 2
        cx = torch.randint(0, w, (b, 1), device=dev, generator=g) - self.cutout // 2
        ys, xs = torch.arange(h, device=dev)[None], torch.arange(w, device=dev)[None]
        in_y = (ys >= cy) & (ys < cy + self.cutout)
        in_x = (xs >= cx) & (xs < cx + self.cutout)
        return x.masked_fill((in_y[:, :, None] & in_x[:, None, :])[:, None], 0.)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        indices = self._indices().to(self.device)
        g = None
        if self.is_training:
            g = torch.Generator(device=self.device)
            g.manual_seed((self.seed * 1_000_003 + self.epoch) * 4099 + self.rank)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for i in range(len(self)):
            idx = indices[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[idx]
            if g is not None:
                x = self._augment(x, idx, g)
            x = x.float().mul_(self._scale).add_(self._shift)
            if self.cutout:
                x = self._cutout(x, g)
            x = resize_batch(x, self.image_size)
            yield x.contiguous(memory_format=memory_format), self.labels[idx]


class TimmLoader:
    """timm's loader over a timm dataset, with the same interface as DeviceImageLoader."""

    def __init__(self, loader, device: torch.device, dataset_size: int, classes: Tuple[str, ...], channels_last: bool):
        self.loader = loader
        self.device = device
        self._dataset_size = dataset_size
        self.classes = classes
        self.channels_last = channels_last
        self.batch_size = loader.batch_size if hasattr(loader, 'batch_size') else loader.loader.batch_size

    @property
    def dataset_size(self) -> int:
        return self._dataset_size

    @property
    def num_samples(self) -> int:
        sampler = self.loader.sampler
        return len(sampler) if sampler is not None else self._dataset_size

    def set_epoch(self, epoch: int) -> None:
        sampler = self.loader.sampler
        if hasattr(sampler, 'set_epoch'):
            sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=memory_format)
            yield x, y.to(self.device, non_blocking=True)


class _IndexedDataset(torch.utils.data.Dataset):
    """A subset of a timm ImageDataset whose ``transform`` (set by create_loader) reaches the base."""

    def __init__(self, base, indices: np.ndarray):
        self.base = base
        self.indices = [int(i) for i in indices]

    @property
    def transform(self):
        return self.base.transform

    @transform.setter
    def transform(self, value):
        self.base.transform = value

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.base[self.indices[i]]


@dataclass
class DataSpec:
    """What to load and how, as given on the command line; one object for train.py and validate.py."""
    dataset: str = 'cifar10'
    data_dir: Optional[str] = None
    download: bool = False
    cache_dir: Optional[str] = None
    train_split: str = 'train'
    val_split_size: Optional[float] = None
    val_split_seed: int = 42
    train_subset: Optional[int] = None
    eval_subset: Optional[int] = None
    seed: int = 0
    workers: int = 2
    pin_memory: bool = False
    # augmentation; crop/flip/cutout apply to the on-device path, the rest to timm's loader
    crop_padding: int = 4
    hflip: float = 0.5
    hflip_mode: str = 'random'
    cutout: int = 0
    no_aug: bool = False
    scale: Optional[Tuple[float, float]] = None
    ratio: Optional[Tuple[float, float]] = None
    color_jitter: float = 0.
    auto_augment: Optional[str] = None
    reprob: float = 0.
    class_map: str = ''

    @property
    def name(self) -> str:
        return canonical_dataset_name(self.dataset)

    @property
    def is_small_image(self) -> bool:
        return self.name in SMALL_IMAGE_DATASETS

    @classmethod
    def from_args(cls, args) -> 'DataSpec':
        get = lambda k, d=None: getattr(args, k, d)  # noqa: E731
        return cls(
            dataset=get('dataset', 'cifar10'), data_dir=get('data_dir'), download=bool(get('dataset_download', False)),
            cache_dir=get('data_cache'), train_split=get('train_split', 'train') or 'train',
            val_split_size=get('val_split_size'), val_split_seed=get('val_split_seed', 42),
            train_subset=get('train_subset'), eval_subset=get('eval_subset'), seed=get('seed', 0) or 0,
            workers=get('workers', 2), pin_memory=bool(get('pin_mem', False)), crop_padding=get('crop_padding', 4),
            hflip=get('hflip', 0.5), hflip_mode=get('hflip_mode', 'random') or 'random',
            cutout=get('cutout', 0) or 0, no_aug=bool(get('no_aug', False)),
            scale=get('scale'), ratio=get('ratio'), color_jitter=get('color_jitter', 0.) or 0.,
            auto_augment=get('aa'), reprob=get('reprob', 0.) or 0., class_map=get('class_map', '') or '',
        )


def _small_arrays(spec: DataSpec, split: str, subset: Optional[int], input_size) -> ImageArrays:
    arrays = load_split_arrays(
        spec.name, split, spec.data_dir, spec.download, spec.cache_dir, spec.val_split_size, spec.val_split_seed,
        subset=subset, subset_seed=spec.val_split_seed + 1)
    return adapt_image_arrays(arrays, input_size)


def _timm_dataset(spec: DataSpec, split: str, is_training: bool, input_chans: int, subset: Optional[int]):
    """A timm dataset for an image folder (or hfds/, tfds/, ...), held-out split applied."""
    from timm.data import create_dataset
    if not spec.data_dir:
        raise ValueError(f'dataset {spec.dataset!r} is read by timm from a folder: pass --data-dir '
                         '(an image folder with train/ and validation/ (or val/) subfolders of class folders)')
    if not Path(spec.data_dir).exists() and '/' not in spec.dataset:
        raise DatasetNotFoundError(f'--data-dir {spec.data_dir} does not exist (looked for an image folder there)')
    kind = _SPLIT_ALIASES.get(split.lower())
    carve = bool(spec.val_split_size) and kind in ('train', 'val')
    if kind == 'train' or carve:
        timm_split = spec.train_split
    elif kind == 'test':  # the folder's own evaluation split: test/ if it has one, else validation/ (or val/)
        timm_split = 'test' if (Path(spec.data_dir) / 'test').is_dir() else 'validation'
    elif kind == 'val':
        timm_split = 'validation'
    else:
        timm_split = split
    ds = create_dataset(
        spec.dataset, root=spec.data_dir, split=timm_split, is_training=is_training, download=spec.download,
        class_map=spec.class_map, seed=spec.seed, input_img_mode='RGB' if input_chans == 3 else 'L',
        batch_size=1)
    indices = None
    labels = _dataset_targets(ds)
    if carve:
        if labels is None:
            raise ValueError(f'--val-split-size needs a dataset with known labels; {spec.dataset!r} has none')
        keep, held = held_out_split(labels, spec.val_split_size, spec.val_split_seed)
        indices = keep if kind == 'train' else held
    if subset and labels is not None:
        base = np.arange(len(labels)) if indices is None else indices
        if subset < len(base):
            indices = base[stratified_indices(labels[base], subset, spec.val_split_seed + 1)]
    classes = _dataset_classes(ds)
    size = len(ds) if indices is None else len(indices)
    return (ds if indices is None else _IndexedDataset(ds, indices)), size, classes


def _dataset_targets(ds) -> Optional[np.ndarray]:
    reader = getattr(ds, 'reader', None)
    samples = getattr(reader, 'samples', None)
    if samples is not None:
        return np.array([t for _, t in samples], dtype=np.int64)
    targets = getattr(ds, 'targets', None)
    return None if targets is None else np.asarray(targets, dtype=np.int64)


def _dataset_classes(ds) -> Tuple[str, ...]:
    reader = getattr(ds, 'reader', None)
    class_to_idx = getattr(reader, 'class_to_idx', None) or getattr(ds, 'class_to_idx', None)
    if class_to_idx:
        return tuple(sorted(class_to_idx, key=class_to_idx.get))
    return ()


def _timm_loader(spec: DataSpec, ds, size: int, classes, data_config: dict, batch_size: int, is_training: bool,
                 device: torch.device, distributed: bool, channels_last: bool) -> TimmLoader:
    from timm.data import create_loader
    kwargs = dict(
        input_size=data_config['input_size'], batch_size=batch_size, is_training=is_training,
        interpolation=data_config['interpolation'], mean=data_config['mean'], std=data_config['std'],
        crop_pct=data_config['crop_pct'], crop_mode=data_config.get('crop_mode'), num_workers=spec.workers,
        distributed=distributed, pin_memory=spec.pin_memory, device=device,
        use_prefetcher=device.type == 'cuda', persistent_workers=False,
    )
    if is_training:
        kwargs.update(no_aug=spec.no_aug, scale=spec.scale, ratio=spec.ratio, hflip=spec.hflip,
                      color_jitter=spec.color_jitter, auto_augment=spec.auto_augment, re_prob=spec.reprob)
    loader = create_loader(ds, **kwargs)
    return TimmLoader(loader, device, size, classes, channels_last)


def create_train_loader(spec: DataSpec, data_config: dict, batch_size: int, device: torch.device, rank: int = 0,
                        world_size: int = 1, channels_last: bool = False):
    """The training loader: on-device for small-image datasets, timm's otherwise."""
    input_size = tuple(data_config['input_size'])
    if spec.is_small_image:
        arrays = _small_arrays(spec, spec.train_split, spec.train_subset, input_size)
        aug = not spec.no_aug
        return DeviceImageLoader(
            arrays, batch_size, data_config['mean'], data_config['std'], device, is_training=True,
            crop_padding=spec.crop_padding if aug else 0, hflip=spec.hflip if aug else 0.,
            cutout=spec.cutout if aug else 0, seed=spec.seed, hflip_mode=spec.hflip_mode, rank=rank,
            world_size=world_size, channels_last=channels_last)
    if spec.hflip_mode != 'random' and spec.hflip > 0 and not spec.no_aug:
        raise ValueError(f'--hflip-mode {spec.hflip_mode} needs the on-device loader '
                         f'({", ".join(SMALL_IMAGE_DATASETS)}); timm\'s loader for '
                         f'{spec.dataset or "an image folder"!r} flips at random only')
    ds, size, classes = _timm_dataset(spec, spec.train_split, True, input_size[0], spec.train_subset)
    return _timm_loader(spec, ds, size, classes, data_config, batch_size, True, device, world_size > 1, channels_last)


def create_eval_loader(spec: DataSpec, split: str, data_config: dict, batch_size: int, device: torch.device,
                       rank: int = 0, world_size: int = 1, channels_last: bool = False):
    """An evaluation loader over ``split`` ('val' = held out from train, 'test', or a folder split name)."""
    input_size = tuple(data_config['input_size'])
    if spec.is_small_image:
        arrays = _small_arrays(spec, split, spec.eval_subset, input_size)
        return DeviceImageLoader(arrays, batch_size, data_config['mean'], data_config['std'], device,
                                 is_training=False, rank=rank, world_size=world_size, channels_last=channels_last)
    ds, size, classes = _timm_dataset(spec, split, False, input_size[0], spec.eval_subset)
    return _timm_loader(spec, ds, size, classes, data_config, batch_size, False, device, world_size > 1, channels_last)


def dataset_num_classes(spec: DataSpec) -> Optional[int]:
    """How many classes the dataset has (an image folder's are counted from its training split)."""
    if spec.is_small_image:
        return NUM_CLASSES[spec.name]
    if not spec.data_dir:
        return None
    ds, _, classes = _timm_dataset(spec, spec.train_split, False, 3, None)
    return len(classes) or None
