"""Dataset layouts, the held-out split, and the on-device loader's batches."""
import gzip
import io
import os
import pickle
import struct
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wt_zoo import data as wt_data
from conftest import learnable_images, write_cifar10_pickles


# ---------------------------------------------------------------------------------------------
# CIFAR-10: the JPEG copy and torchvision's layout


def test_real_cifar10_jpeg_test_split_decodes_and_matches_its_readme(cifar10_jpeg_dir, data_cache):
    arrays = wt_data.load_image_arrays('cifar10', 'test', cifar10_jpeg_dir, cache_dir=data_cache)
    assert arrays.images.shape == (10000, 32, 32, 3) and arrays.images.dtype == np.uint8
    assert np.bincount(arrays.labels, minlength=10).tolist() == [1000] * 10
    assert arrays.classes == wt_data.CIFAR10_CLASSES
    pixels = torch.from_numpy(arrays.images).reshape(-1, 3).double() / 255
    # the copy's README: test mean (0.4941, 0.4851, 0.4504), std (0.2448, 0.2422, 0.2606)
    np.testing.assert_allclose(pixels.mean(0).numpy(), [0.4941, 0.4851, 0.4504], atol=6e-4)
    np.testing.assert_allclose(pixels.std(0).numpy(), [0.2448, 0.2422, 0.2606], atol=6e-4)
    # the first image of each class is its archive's NNNN=0000 member, decoded exactly
    with tarfile.open(cifar10_jpeg_dir / 'test.tar.gz') as tar:
        raw = tar.extractfile('test/cat/0000.jpg').read()
    first_cat = np.flatnonzero(arrays.labels == 3)[0]
    np.testing.assert_array_equal(arrays.images[first_cat], np.asarray(Image.open(io.BytesIO(raw)).convert('RGB')))

    # decoded once: the cache answers the second call with identical arrays
    cached = list(data_cache.glob('cifar10-jpeg-test-*.npz'))
    assert len(cached) == 1
    start = time.perf_counter()
    again = wt_data.load_image_arrays('cifar10', 'test', cifar10_jpeg_dir, cache_dir=data_cache)
    assert time.perf_counter() - start < 1.0
    np.testing.assert_array_equal(again.images, arrays.images)
    np.testing.assert_array_equal(again.labels, arrays.labels)


def _write_jpeg_archive(path: Path, split: str, images, labels, names=None):
    with tarfile.open(path, 'w:gz') as tar:
        for i, (img, label) in enumerate(zip(images, labels)):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format='JPEG', quality=100, subsampling=0)
            info = tarfile.TarInfo(f'{split}/{wt_data.CIFAR10_CLASSES[label]}/{(names or {}).get(i, f"{i:04d}")}.jpg')
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)


def test_jpeg_archive_order_labels_and_cache_invalidation(tmp_path):
    images, labels = learnable_images(30, 10, seed=3)
    _write_jpeg_archive(tmp_path / 'train.tar.gz', 'train', images, labels)
    cache = tmp_path / 'cache'
    arrays = wt_data.load_image_arrays('cifar10', 'train', tmp_path, cache_dir=cache)
    order = np.lexsort((np.arange(30), labels))  # sorted by (label, member name)
    assert arrays.labels.tolist() == labels[order].tolist()
    assert np.abs(arrays.images.astype(int) - images[order].astype(int)).mean() < 2  # JPEG q100 4:4:4 round trip

    # a new archive (other size/mtime) is decoded again, never served from the stale cache
    images2, labels2 = learnable_images(20, 10, seed=4)
    _write_jpeg_archive(tmp_path / 'train.tar.gz', 'train', images2, labels2)
    os.utime(tmp_path / 'train.tar.gz', ns=(1, 10 ** 18))
    fresh = wt_data.load_image_arrays('cifar10', 'train', tmp_path, cache_dir=cache)
    assert len(fresh) == 20 and sorted(fresh.labels.tolist()) == sorted(labels2.tolist())
    assert len(list(cache.glob('*.npz'))) == 2 and not list(cache.glob('*.tmp'))


def test_jpeg_archive_with_unknown_class_is_rejected(tmp_path):
    with tarfile.open(tmp_path / 'test.tar.gz', 'w:gz') as tar:
        buf = io.BytesIO()
        Image.new('RGB', (32, 32)).save(buf, format='JPEG')
        info = tarfile.TarInfo('test/unicorn/0000.jpg')
        info.size = buf.tell()
        buf.seek(0)
        tar.addfile(info, buf)
    with pytest.raises(ValueError, match="unexpected class folder 'unicorn'.*expected one of"):
        wt_data.load_image_arrays('cifar10', 'test', tmp_path, cache_dir=tmp_path / 'cache')


def test_torchvision_cifar10_layout_reads_pickles_exactly(tmp_path):
    root = write_cifar10_pickles(tmp_path, per_batch=8, test=12, seed=5)
    train = wt_data.load_image_arrays('torch/cifar10', 'train', root)
    test = wt_data.load_image_arrays('cifar10', 'test', root / 'cifar-10-batches-py')  # the inner folder works too
    assert train.images.shape == (40, 32, 32, 3) and test.images.shape == (12, 32, 32, 3)
    expected_images, expected_labels = learnable_images(8, 10, seed=5 + 2)  # data_batch_3
    np.testing.assert_array_equal(train.images[16:24], expected_images)
    assert train.labels[16:24].tolist() == expected_labels.tolist()
    assert train.classes == wt_data.CIFAR10_CLASSES


def test_torchvision_cifar100_layout_uses_fine_labels(tmp_path):
    base = tmp_path / 'cifar-100-python'
    base.mkdir()
    images, _ = learnable_images(6, 3, seed=0)
    rows = images.transpose(0, 3, 1, 2).reshape(6, -1)
    for split in ('train', 'test'):
        with open(base / split, 'wb') as f:
            pickle.dump({'data': rows, 'fine_labels': [0, 99, 5, 7, 42, 1], 'coarse_labels': [0] * 6}, f)
    with open(base / 'meta', 'wb') as f:
        pickle.dump({'fine_label_names': [f'c{i}' for i in range(100)], 'coarse_label_names': ['x'] * 20}, f)
    arrays = wt_data.load_image_arrays('cifar100', 'test', tmp_path)
    assert arrays.labels.tolist() == [0, 99, 5, 7, 42, 1] and len(arrays.classes) == 100
    np.testing.assert_array_equal(arrays.images, images)


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST: Debian's files and torchvision's layout


def test_real_fashion_mnist_debian_files(fashion_mnist_dir):
    train = wt_data.load_image_arrays('fashion_mnist', 'train', fashion_mnist_dir)
    test = wt_data.load_image_arrays('fashion-mnist', 'test', fashion_mnist_dir)
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert np.bincount(train.labels).tolist() == [6000] * 10 and np.bincount(test.labels).tolist() == [1000] * 10
    assert abs(train.images.mean() / 255 - 0.2860) < 1e-3  # the cfg's Fashion-MNIST mean


def _write_idx(path: Path, array: np.ndarray, compress: bool):
    header = struct.pack('>HBB', 0, 0x08, array.ndim) + struct.pack('>' + 'I' * array.ndim, *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, 'wb').write(data)


def test_fashion_mnist_torchvision_layout_uncompressed(tmp_path):
    raw = tmp_path / 'FashionMNIST' / 'raw'
    raw.mkdir(parents=True)
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 4, 5, 9])
    _write_idx(raw / 't10k-images-idx3-ubyte', images, compress=False)
    _write_idx(raw / 't10k-labels-idx1-ubyte', labels, compress=False)
    arrays = wt_data.load_image_arrays('fashion_mnist', 'test', tmp_path)
    np.testing.assert_array_equal(arrays.images[..., 0], images)
    assert arrays.labels.tolist() == labels.tolist()


def test_fashion_mnist_bad_idx_file_says_what_was_expected(tmp_path):
    _write_idx(tmp_path / 't10k-images-idx3-ubyte.gz', np.zeros((2, 4), dtype=np.uint8), compress=True)  # 2-D
    _write_idx(tmp_path / 't10k-labels-idx1-ubyte.gz', np.zeros(2, dtype=np.uint8), compress=True)
    with pytest.raises(ValueError, match='not an idx file of unsigned bytes with 3 dimensions'):
        wt_data.load_image_arrays('fashion_mnist', 'test', tmp_path)


# ---------------------------------------------------------------------------------------------
# Missing data


@pytest.mark.parametrize('name,hint', [('cifar10', 'train.tar.gz'), ('cifar100', 'cifar-100-python'),
                                       ('fashion_mnist', 'dataset-fashion-mnist')])
def test_missing_data_lists_where_it_looked_and_downloads_nothing(tmp_path, name, hint):
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(wt_data.DatasetNotFoundError) as err:
        wt_data.load_image_arrays(name, 'train', empty, cache_dir=tmp_path / 'cache')
    message = str(err.value)
    assert str(empty) in message and '--data-dir' in message and '--dataset-download' in message and hint in message
    assert list(empty.iterdir()) == [] and not (tmp_path / 'cache').exists()


def test_missing_data_without_data_dir_lists_env_default_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('WT_ZOO_CIFAR100', str(tmp_path / 'nowhere'))
    with pytest.raises(wt_data.DatasetNotFoundError) as err:
        wt_data.load_image_arrays('cifar100', 'test', cache_dir=tmp_path / 'cache')
    message = str(err.value)
    assert f'{tmp_path / "nowhere"} (WT_ZOO_CIFAR100): no such folder' in message
    assert str(tmp_path / 'cache' / 'datasets') in message


# ---------------------------------------------------------------------------------------------
# Held-out split and subsets


def test_held_out_split_is_disjoint_stratified_and_seeded():
    labels = np.repeat(np.arange(10), 50)
    keep, held = wt_data.held_out_split(labels, 0.1, seed=7)
    assert len(held) == 50 and len(keep) == 450
    assert np.intersect1d(keep, held).size == 0 and np.union1d(keep, held).tolist() == list(range(500))
    assert np.bincount(labels[held]).tolist() == [5] * 10
    keep2, held2 = wt_data.held_out_split(labels, 50, seed=7)  # a count gives the same split as the fraction
    assert held2.tolist() == held.tolist()
    _, held3 = wt_data.held_out_split(labels, 0.1, seed=8)
    assert held3.tolist() != held.tolist()


def test_held_out_split_through_the_loader_matches_and_ignores_training_seed(fake_cifar10):
    train = wt_data.load_split_arrays('cifar10', 'train', fake_cifar10, val_split_size=0.25, val_split_seed=3)
    val = wt_data.load_split_arrays('cifar10', 'val', fake_cifar10, val_split_size=0.25, val_split_seed=3)
    full = wt_data.load_image_arrays('cifar10', 'train', fake_cifar10)
    assert len(train) == 240 and len(val) == 80
    merged = np.concatenate([train.images, val.images]).reshape(320, -1)
    assert sorted(map(bytes, merged)) == sorted(map(bytes, full.images.reshape(320, -1)))

    spec = dict(dataset='cifar10', data_dir=str(fake_cifar10), val_split_size=0.25, val_split_seed=3)
    config = dict(input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)
    loaders = [wt_data.create_eval_loader(wt_data.DataSpec(seed=seed, **spec), 'val', config, 32, torch.device('cpu'))
               for seed in (0, 99)]
    assert [y.tolist() for _, y in loaders[0]] == [y.tolist() for _, y in loaders[1]]


def test_bad_split_requests_say_what_is_expected(fake_cifar10):
    with pytest.raises(ValueError, match='pass --val-split-size'):
        wt_data.load_split_arrays('cifar10', 'val', fake_cifar10)
    with pytest.raises(ValueError, match='fraction in \\(0, 1\\) or a count'):
        wt_data.load_split_arrays('cifar10', 'train', fake_cifar10, val_split_size=-0.5)
    with pytest.raises(ValueError, match='at least one on each side'):
        wt_data.load_split_arrays('cifar10', 'train', fake_cifar10, val_split_size=320)
    with pytest.raises(ValueError, match='unknown split'):
        wt_data.load_split_arrays('cifar10', 'dev', fake_cifar10)


def test_stratified_subset_keeps_class_balance():
    labels = np.repeat(np.arange(4), [100, 100, 50, 50])
    idx = wt_data.stratified_indices(labels, 60, seed=0)
    assert len(np.unique(idx)) == 60 and np.bincount(labels[idx]).tolist() == [20, 20, 10, 10]


def test_adapt_image_arrays_channels_and_size():
    gray = wt_data.ImageArrays(np.full((2, 28, 28, 1), 100, np.uint8), np.array([0, 1]), ('a', 'b'))
    rgb = wt_data.adapt_image_arrays(gray, (3, 32, 32))
    assert rgb.images.shape == (2, 32, 32, 3) and (rgb.images == 100).all()
    back = wt_data.adapt_image_arrays(rgb, (1, 32, 32))
    assert back.images.shape == (2, 32, 32, 1) and (back.images == 100).all()


# ---------------------------------------------------------------------------------------------
# The on-device loader


def _arrays(n=40, size=8):
    rng = np.random.default_rng(0)
    return wt_data.ImageArrays(rng.integers(1, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n) % 10,
                               tuple('abcdefghij'))


def test_device_loader_eval_is_ordered_complete_and_normalised():
    arrays = _arrays(45)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    loader = wt_data.DeviceImageLoader(arrays, 16, mean, std, is_training=False)
    batches = list(loader)
    assert len(loader) == len(batches) == 3 and [len(y) for _, y in batches] == [16, 16, 13]
    x = torch.cat([b[0] for b in batches])
    restored = (x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)) * 255
    np.testing.assert_allclose(restored.permute(0, 2, 3, 1).numpy(), arrays.images, atol=1e-3)
    assert torch.cat([b[1] for b in batches]).tolist() == arrays.labels.tolist()


def _crop_offsets(out: np.ndarray, src: np.ndarray, pad: int):
    """All (dy, dx, flipped) for which ``out`` is a window of zero-padded ``src``."""
    padded = np.pad(src, ((pad, pad), (pad, pad), (0, 0)))
    h, w = src.shape[:2]
    found = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            window = padded[dy:dy + h, dx:dx + w]
            for flipped, candidate in ((False, window), (True, window[:, ::-1])):
                if np.array_equal(candidate, out):
                    found.append((dy, dx, flipped))
    return found


def test_device_loader_training_crops_flips_shuffles_and_is_seeded():
    arrays = _arrays(40)
    ident = dict(mean=(0., 0., 0.), std=(1 / 255,) * 3)  # normalisation that leaves raw pixel values
    loader = wt_data.DeviceImageLoader(arrays, 8, is_training=True, seed=5, **ident)
    loader.set_epoch(0)
    batches = list(loader)
    assert len(batches) == 5
    # labels here are i % 10, so recover each image's index from its label and the pixel content
    flips, offsets = 0, set()
    for x, y in batches:
        for img, label in zip(x.permute(0, 2, 3, 1).round().to(torch.uint8).numpy(), y.tolist()):
            matches = [(i, m) for i in np.flatnonzero(arrays.labels == label)
                       for m in _crop_offsets(img, arrays.images[i], 4)]
            assert matches, 'every training image is a padded crop (maybe flipped) of a source image'
            flips += matches[0][1][2]
            offsets.add(matches[0][1][:2])
    assert 5 < flips < 35 and len(offsets) > 10
    order0 = torch.cat([y for _, y in batches]).tolist()
    assert sorted(order0) == sorted(arrays.labels.tolist())

    again = wt_data.DeviceImageLoader(arrays, 8, is_training=True, seed=5, **ident)
    again.set_epoch(0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    again.set_epoch(1)
    assert [y.tolist() for _, y in again] != [y.tolist() for _, y in batches]


def test_device_loader_shards_across_ranks_like_a_distributed_sampler():
    arrays = _arrays(42)
    arrays.labels = np.arange(42)  # labels as indices, to see which images each rank gets
    kwargs = dict(mean=(0.,) * 3, std=(1.,) * 3, is_training=True, seed=1, world_size=2, crop_padding=0, hflip=0.)
    shards = []
    for rank in range(2):
        loader = wt_data.DeviceImageLoader(arrays, 7, rank=rank, **kwargs)
        loader.set_epoch(3)
        shards.append(torch.cat([y for _, y in loader]).tolist())
    assert len(shards[0]) == len(shards[1]) == 21
    assert not set(shards[0]) & set(shards[1]) and set(shards[0]) | set(shards[1]) == set(range(42))
    evals = [torch.cat([y for _, y in wt_data.DeviceImageLoader(arrays, 5, (0.,) * 3, (1.,) * 3, rank=r,
                                                                  world_size=2)]).tolist() for r in range(2)]
    assert sorted(evals[0] + evals[1]) == list(range(42))


def test_device_loader_cutout_zeroes_one_square_per_image():
    arrays = _arrays(16, size=12)
    loader = wt_data.DeviceImageLoader(arrays, 16, (0.,) * 3, (1 / 255,) * 3, is_training=True, crop_padding=0,
                                       hflip=0., cutout=4)
    x, _ = next(iter(loader))
    zero = (x == 0).all(dim=1)  # source pixels are >= 1, so zeros are cutout
    for mask in zero:
        rows, cols = torch.nonzero(mask, as_tuple=True)
        assert 4 <= len(rows) <= 16
        assert rows.max() - rows.min() < 4 and cols.max() - cols.min() < 4


def _flips_by_image(loader, epoch, n):
    """{image index: flipped?} for one epoch of a loader whose labels are the image indices (no crop)."""
    loader.set_epoch(epoch)
    flipped = {}
    for x, y in loader:
        for img, i in zip(x.round().to(torch.uint8), y.tolist()):
            src = loader.images[i]
            assert torch.equal(img, src) != torch.equal(img, src.flip(2)), 'each image is itself or its mirror'
            flipped[i] = torch.equal(img, src.flip(2))
    assert len(flipped) == n
    return flipped


def test_alternate_flips_show_each_image_both_ways_over_two_epochs_and_follow_seed_and_epoch():
    arrays = _arrays(42)
    arrays.labels = np.arange(42)  # labels as indices, to tell the images apart
    kwargs = dict(mean=(0.,) * 3, std=(1 / 255,) * 3, is_training=True, crop_padding=0, hflip_mode='alternate')

    def flips(epoch, seed=3, world_size=1):
        loaders = [wt_data.DeviceImageLoader(arrays, 7, seed=seed, rank=r, world_size=world_size, **kwargs)
                   for r in range(world_size)]
        merged = {}
        for loader in loaders:
            loader.set_epoch(epoch)
            merged.update(_flips_by_image(loader, epoch, 42 // world_size))
        return merged

    epochs = [flips(e) for e in range(4)]
    for a, b in zip(epochs, epochs[1:]):  # any two consecutive epochs: each image once flipped, once not
        assert all(a[i] != b[i] for i in range(42))
    assert 8 < sum(epochs[0].values()) < 34  # a fair coin per image at epoch 0, not all one way
    assert epochs[2] == epochs[0] and epochs[3] == epochs[1]
    # the flips follow from seed and epoch alone: a fresh loader at epoch 3 (a resumed run), sharded or not
    assert flips(3) == epochs[3] and flips(3, world_size=2) == epochs[3]
    assert flips(0, seed=4) != epochs[0]
    # random mode keeps drawing independent coins: some image shows the same way in epochs 0 and 1
    random_mode = dict(kwargs, hflip_mode='random')
    loader = wt_data.DeviceImageLoader(arrays, 7, seed=3, **random_mode)
    first, second = _flips_by_image(loader, 0, 42), _flips_by_image(loader, 1, 42)
    assert any(first[i] == second[i] for i in range(42))


def test_alternate_flips_need_the_default_flip_probability_and_the_on_device_loader(tmp_path):
    with pytest.raises(ValueError, match='--hflip must be 0.5'):
        wt_data.DeviceImageLoader(_arrays(), 4, (0.,) * 3, (1.,) * 3, is_training=True, hflip=0.3,
                                  hflip_mode='alternate')
    with pytest.raises(ValueError, match='hflip mode must be one of random, alternate'):
        wt_data.DeviceImageLoader(_arrays(), 4, (0.,) * 3, (1.,) * 3, is_training=True, hflip_mode='sometimes')
    spec = wt_data.DataSpec(dataset='', data_dir=str(tmp_path), hflip_mode='alternate')
    cfg = dict(input_size=(3, 8, 8), mean=(0.,) * 3, std=(1.,) * 3)
    with pytest.raises(ValueError, match='--hflip-mode alternate needs the on-device loader'):
        wt_data.create_train_loader(spec, cfg, 4, torch.device('cpu'))


def test_progressive_sizes_grow_in_steps_to_the_full_size_and_reject_bad_settings():
    sizes = [wt_data.progressive_image_size(epoch, 20, 32, 24, 0.75) for epoch in range(20)]
    assert sizes[0] == 24 and 28 in sizes and sizes == sorted(sizes)
    assert all(size % wt_data.PROGRESSIVE_SIZE_STEP == 0 for size in sizes)
    assert sizes[15:] == [32] * 5 and sizes[14] < 32  # full size from 75 % of the epochs on, not before
    assert [wt_data.progressive_image_size(e, 4, 28, 18, 1.0) for e in range(4)] == [18, 20, 20, 24]
    for bad in (32, 40, 4, 24.0, True):
        with pytest.raises(ValueError, match=r'smallest training size must be an integer in \[8, 32\)'):
            wt_data.progressive_image_size(0, 20, 32, bad, 0.75)
    for bad in (0., -0.5, 1.5):
        with pytest.raises(ValueError, match=r'must be in \(0, 1\]'):
            wt_data.progressive_image_size(0, 20, 32, 24, bad)


def test_device_loader_downscales_training_batches_to_the_set_size_and_not_eval():
    arrays = _arrays(16, size=12)
    arrays.images[:] = np.arange(16, dtype=np.uint8)[:, None, None, None] * 10 + 5  # one grey level per image
    arrays.labels = np.arange(16)
    loader = wt_data.DeviceImageLoader(arrays, 8, (0.,) * 3, (1 / 255,) * 3, is_training=True, crop_padding=0)
    assert next(iter(loader))[0].shape[-2:] == (12, 12)
    loader.set_image_size(8)
    for x, y in loader:
        assert x.shape == (8, 3, 8, 8)
        # a flat image stays flat at any size: downscaling only resamples, it does not mix images
        assert torch.allclose(x, (y * 10 + 5).float()[:, None, None, None].expand_as(x), atol=1e-3)
    for bad in (13, 0, 8.0):
        with pytest.raises(ValueError, match=r'image size must be an integer in \[1, 12\]'):
            loader.set_image_size(bad)
    evaluation = wt_data.DeviceImageLoader(arrays, 8, (0.,) * 3, (1 / 255,) * 3)
    assert next(iter(evaluation))[0].shape[-2:] == (12, 12)


def test_device_loader_rejects_bad_settings():
    with pytest.raises(ValueError, match='mean/std need 3 values'):
        wt_data.DeviceImageLoader(_arrays(), 4, (0.5,), (0.5,))
    with pytest.raises(ValueError, match='do not fill one batch of 64'):
        wt_data.DeviceImageLoader(_arrays(40), 64, (0.,) * 3, (1.,) * 3, is_training=True)


# ---------------------------------------------------------------------------------------------
# Image folders through timm


def write_image_folder(root: Path, splits=('train', 'validation'), per_class=6, size=20):
    classes = ['ants', 'bees', 'wasps']
    for split in splits:
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            images, _ = learnable_images(per_class, 3, seed=c)
            for i, img in enumerate(images[:, :size, :size]):
                Image.fromarray(img).save(root / split / name / f'{i}.png')
    return classes


def test_image_folder_goes_through_timm_with_held_out_split(tmp_path):
    classes = write_image_folder(tmp_path)
    spec = wt_data.DataSpec(dataset='', data_dir=str(tmp_path), workers=0, val_split_size=6)
    assert wt_data.dataset_num_classes(spec) == 3
    config = dict(input_size=(3, 16, 16), mean=(0.5,) * 3, std=(0.5,) * 3, interpolation='bilinear', crop_pct=1.0,
                  crop_mode='center')
    train = wt_data.create_train_loader(spec, config, 4, torch.device('cpu'))
    held = wt_data.create_eval_loader(spec, 'val', config, 4, torch.device('cpu'))
    test = wt_data.create_eval_loader(spec, 'test', config, 4, torch.device('cpu'))  # the folder's validation/
    assert train.dataset_size == 12 and held.dataset_size == 6 and test.dataset_size == 18
    x, y = next(iter(train))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32
    assert sorted(torch.cat([y for _, y in held]).tolist()) == [0, 0, 1, 1, 2, 2]
    assert held.classes == tuple(classes)


def test_image_folder_without_data_dir_says_so():
    with pytest.raises(ValueError, match='pass --data-dir'):
        wt_data.create_eval_loader(wt_data.DataSpec(dataset=''), 'validation', {'input_size': (3, 8, 8)}, 4,
                                   torch.device('cpu'))
