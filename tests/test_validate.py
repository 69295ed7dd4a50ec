"""validate.py: figures equal to an evaluation done by hand, CSV/JSON results, many models, checkpoint kinds."""
import csv
import json
import logging
import os
import subprocess
import sys
from argparse import Namespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import validate
from wt_zoo import data as wt_data
from wt_zoo import training as wt_training
from conftest import REPO_ROOT


def normalised(images, mean, std):
    """uint8 (N, H, W, C) images as the model's normalised (N, C, H, W) input."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def evaluate_by_hand(model, arrays, mean, std):
    """Top-1 (%) and mean cross-entropy of ``model`` on uint8 arrays, normalised with mean/std."""
    x = normalised(arrays.images, mean, std)
    y = torch.from_numpy(arrays.labels)
    with torch.no_grad():
        logits = model.eval()(x)
    return 100 * (logits.argmax(1) == y).double().mean().item(), F.cross_entropy(logits, y).item()


@pytest.fixture(scope='module')
def exported_tiny(tmp_path_factory):
    """A wt_resnet_tiny.c10 with random weights, exported like train.py's final weights."""
    import timm
    torch.manual_seed(0)
    model = timm.create_model('wt_resnet_tiny.c10')
    folder = tmp_path_factory.mktemp('exported')
    wt_training.export_weights(model, folder)
    return model, folder


def test_results_csv_and_json_hold_the_figures_of_a_hand_evaluation(exported_tiny, fake_cifar10, tmp_path):
    model, folder = exported_tiny
    common = ['--model', 'wt_resnet_tiny', '--checkpoint', str(folder / 'model.safetensors'), '--dataset', 'cifar10',
              '--data-dir', str(fake_cifar10), '--split', 'test', '-b', '50']
    validate.main([*common, '--results-file', str(tmp_path / 'r.csv')])
    validate.main([*common, '--results-file', str(tmp_path / 'r.json')])
    with open(tmp_path / 'r.csv') as f:
        csv_rows = list(csv.DictReader(f))
    json_rows = json.loads((tmp_path / 'r.json').read_text())
    assert len(csv_rows) == len(json_rows) == 1
    row = json_rows[0]

    arrays = wt_data.load_image_arrays('cifar10', 'test', fake_cifar10)
    cfg = model.pretrained_cfg
    top1, loss = evaluate_by_hand(model, arrays, cfg['mean'], cfg['std'])
    assert row['top1'] == pytest.approx(top1, abs=1e-3) and row['loss'] == pytest.approx(loss, abs=1e-4)
    assert row['top1'] <= row['top5'] <= 100 and row['samples'] == 128
    assert row['params'] == sum(p.numel() for p in model.parameters())
    from wt_zoo.profile import profile_model
    assert row['gflops'] == pytest.approx(profile_model(model, (3, 32, 32))['gflops'], rel=1e-6)
    assert row['images_per_s'] > 0
    assert (row['model'], row['dataset'], row['split'], row['device'], row['input_size']) == (
        'wt_resnet_tiny', 'cifar10', 'test', 'cpu', '3x32x32')
    assert row['hardware'] == wt_training.describe_hardware(torch.device('cpu'))  # cards name the machine
    # the CSV holds the same figures as the JSON
    for key in ('top1', 'top5', 'loss', 'params', 'gflops', 'samples'):
        assert float(csv_rows[0][key]) == pytest.approx(float(row[key]), rel=1e-9), key
    for key in ('model', 'dataset', 'split', 'device', 'input_size'):
        assert csv_rows[0][key] == row[key]


def test_many_models_and_wildcards_give_one_row_each(fake_cifar10, tmp_path):
    validate.main(['--model', 'wt_resnet_t*', 'wtsm_resnet_tiny', 'wt_resnet_tiny', '--dataset', 'cifar10',
                   '--data-dir', str(fake_cifar10), '--eval-subset', '20', '--img-size', '16', '--no-flops',
                   '--results-file', str(tmp_path / 'many.json')])
    rows = json.loads((tmp_path / 'many.json').read_text())
    assert [r['model'] for r in rows] == ['wt_resnet_tiny', 'wtsm_resnet_tiny']
    assert all(r['samples'] == 20 and r['input_size'] == '3x16x16' and 'gflops' not in r for r in rows)


def test_validate_reads_train_checkpoints_with_their_args_and_ema(fashion_mnist_dir, tmp_path):
    """A .pth.tar written by train.py: num_classes/in_chans/input size come from its args; --use-ema picks EMA."""
    args = Namespace(model='wt_resnet_tiny', num_classes=10, in_chans=1, input_size=[1, 28, 28], model_kwargs={},
                     pretrained=False)
    torch.manual_seed(1)
    model = wt_training.create_model_from_args(args)
    torch.manual_seed(2)
    ema = wt_training.create_model_from_args(args)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / 'last.pth.tar'
    wt_training.save_training_checkpoint(path, model=model, optimizer=optimizer, scheduler=None, epoch=3, args=args,
                                         history=[], best=None, model_ema=ema)
    arrays = wt_data.load_split_arrays('fashion_mnist', 'test', fashion_mnist_dir, subset=64, subset_seed=43)
    cfg = model.pretrained_cfg
    mean, std = (sum(cfg['mean']) / 3,), (sum(cfg['std']) / 3,)  # timm's 3 -> 1 channel normalisation
    for use_ema, reference in ((False, model), (True, ema)):
        out = tmp_path / f'ema{use_ema}.json'
        validate.main(['--model', 'wt_resnet_tiny', '--checkpoint', str(path), '--dataset', 'fashion_mnist',
                       '--data-dir', str(fashion_mnist_dir), '--eval-subset', '64', '--no-flops',
                       '--results-file', str(out)] + (['--use-ema'] if use_ema else []))
        row = json.loads(out.read_text())[0]
        top1, loss = evaluate_by_hand(reference, arrays, mean, std)
        assert row['input_size'] == '1x28x28'
        assert row['loss'] == pytest.approx(loss, abs=1e-4) and row['top1'] == pytest.approx(top1, abs=1e-3)


@pytest.mark.slow
def test_local_dir_and_hf_hub_load_the_exported_folder(exported_tiny, fake_cifar10, tmp_path):
    model, folder = exported_tiny
    arrays = wt_data.load_image_arrays('cifar10', 'test', fake_cifar10)
    top1, loss = evaluate_by_hand(model, arrays, model.pretrained_cfg['mean'], model.pretrained_cfg['std'])

    validate.main(['--model', f'local-dir:{folder}', '--pretrained', '--dataset', 'cifar10', '--data-dir',
                   str(fake_cifar10), '--no-flops', '--results-file', str(tmp_path / 'local.json')])
    assert json.loads((tmp_path / 'local.json').read_text())[0]['loss'] == pytest.approx(loss, abs=1e-4)

    # the same files as a Hub repository in an offline Hugging Face cache
    commit = '0123456789abcdef0123456789abcdef01234567'
    repo = tmp_path / 'hub' / 'models--wt-zoo-test--wt_resnet_tiny.c10'
    (repo / 'refs').mkdir(parents=True)
    (repo / 'refs' / 'main').write_text(commit)
    snapshot = repo / 'snapshots' / commit
    snapshot.mkdir(parents=True)
    for name in ('config.json', 'model.safetensors'):
        (snapshot / name).write_bytes((folder / name).read_bytes())
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'HF_HUB_CACHE': str(tmp_path / 'hub'), 'OMP_NUM_THREADS': '1'}
    proc = subprocess.run(
        [sys.executable, 'validate.py', '--model', 'hf-hub:wt-zoo-test/wt_resnet_tiny.c10', '--pretrained',
         '--dataset', 'cifar10', '--data-dir', str(fake_cifar10), '--results-file', str(tmp_path / 'hub.csv')],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(tmp_path / 'hub.csv') as f:
        row = next(csv.DictReader(f))
    assert row['model'] == 'hf-hub:wt-zoo-test/wt_resnet_tiny.c10' and row['checkpoint'] == 'pretrained'
    assert float(row['top1']) == pytest.approx(top1, abs=1e-3) and float(row['loss']) == pytest.approx(loss, abs=1e-4)
    assert float(row['gflops']) > 0


def test_held_out_split_can_be_validated(exported_tiny, fake_cifar10, tmp_path):
    _, folder = exported_tiny
    validate.main(['--model', 'wt_resnet_tiny', '--checkpoint', str(folder / 'model.safetensors'), '--dataset',
                   'cifar10', '--data-dir', str(fake_cifar10), '--split', 'val', '--val-split-size', '0.2', '--no-flops', '--results-file',
                   str(tmp_path / 'val.json')])
    row = json.loads((tmp_path / 'val.json').read_text())[0]
    assert row['split'] == 'val' and row['samples'] == 64  # 20% of the 320 training images


def tta_by_hand(model, arrays, mean, std, translate: bool):
    """Top-1 (%) and cross-entropy of the mean softmax over the mirror and, with ``translate``, 2-pixel shifts
    up/down/left/right with reflected borders, built on the uint8 images with numpy (normalising commutes)."""
    shifts = [(0, 0)] + ([(2, 0), (-2, 0), (0, 2), (0, -2)] if translate else [])
    h, w = arrays.images.shape[1:3]
    probs = 0
    with torch.no_grad():
        for images in (arrays.images, arrays.images[:, :, ::-1]):
            padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), mode='reflect')
            for dy, dx in shifts:
                view = padded[:, 2 - dy:2 - dy + h, 2 - dx:2 - dx + w]
                probs = probs + model.eval()(normalised(view, mean, std)).softmax(1)
    probs = probs / (2 * len(shifts))
    y = torch.from_numpy(arrays.labels)
    return 100 * (probs.argmax(1) == y).double().mean().item(), F.nll_loss(probs.log(), y).item()


class MirrorSymmetric(nn.Module):
    """g(x) + g(mirror of x): exactly the same logits for an image and its mirror (float addition commutes)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) + self.inner(x.flip(3))


def test_flip_tta_of_a_mirror_symmetric_model_gives_the_plain_figures(fake_cifar10):
    import timm
    torch.manual_seed(0)
    model = MirrorSymmetric(timm.create_model('wt_resnet_tiny', width=16, num_classes=10))
    arrays = wt_data.load_image_arrays('cifar10', 'test', fake_cifar10)
    loader = wt_data.DeviceImageLoader(arrays, 50, (0.5,) * 3, (0.25,) * 3)
    ctx = wt_training.DistContext(device=torch.device('cpu'))
    plain = wt_training.evaluate(model, loader, ctx)
    flip = wt_training.evaluate(model, loader, ctx, tta='flip')
    assert 'tta_top1' not in plain and flip['tta'] == 'flip'
    assert (flip['top1'], flip['top5']) == (plain['top1'], plain['top5'])
    assert (flip['tta_top1'], flip['tta_top5']) == (plain['top1'], plain['top5'])
    assert flip['tta_loss'] == pytest.approx(plain['loss'], rel=1e-5)
    # shifts are not a symmetry of the model: flip-translate moves the figures
    translated = wt_training.evaluate(model, loader, ctx, tta='flip-translate')
    assert translated['tta_loss'] != pytest.approx(plain['loss'], rel=1e-5)
    with pytest.raises(ValueError, match='--tta expects one of none, flip, flip-translate'):
        wt_training.evaluate(model, loader, ctx, tta='rotate')


@pytest.mark.parametrize('tta', ['flip', 'flip-translate'])
def test_tta_is_reported_beside_the_plain_figures(tta, exported_tiny, fake_cifar10, tmp_path, caplog):
    model, folder = exported_tiny
    common = ['--model', 'wt_resnet_tiny', '--checkpoint', str(folder / 'model.safetensors'), '--dataset', 'cifar10',
              '--data-dir', str(fake_cifar10), '--split', 'test', '-b', '50', '--no-flops']
    caplog.set_level(logging.INFO, logger='validate')
    validate.main([*common, '--tta', tta, '--results-file', str(tmp_path / 'tta.json')])
    row = json.loads((tmp_path / 'tta.json').read_text())[0]
    arrays = wt_data.load_image_arrays('cifar10', 'test', fake_cifar10)
    cfg = model.pretrained_cfg
    top1, loss = evaluate_by_hand(model, arrays, cfg['mean'], cfg['std'])
    tta_top1, tta_loss = tta_by_hand(model, arrays, cfg['mean'], cfg['std'], translate=tta == 'flip-translate')
    # top1/top5/loss stay the plain pass's; the TTA figures come beside them
    assert row['top1'] == pytest.approx(top1, abs=1e-3) and row['loss'] == pytest.approx(loss, abs=1e-4)
    assert row['tta'] == tta and row['tta_views'] == (2 if tta == 'flip' else 10)
    assert row['tta_top1'] == pytest.approx(tta_top1, abs=1e-3) and row['tta_loss'] == pytest.approx(tta_loss, abs=1e-4)
    assert row['tta_top1'] <= row['tta_top5'] <= 100 and row['images_per_s'] > row['tta_images_per_s'] > 0
    validate.main([*common, '--results-file', str(tmp_path / 'plain.json')])
    plain_row = json.loads((tmp_path / 'plain.json').read_text())[0]
    assert not any(k.startswith('tta') for k in plain_row)
    assert (plain_row['top1'], plain_row['top5'], plain_row['loss']) == (row['top1'], row['top5'], row['loss'])
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith('wt_resnet_tiny: top1')][0]
    assert f'top1 {row["top1"]:.2f}' in summary and f'{tta} TTA' in summary and f'top1 {row["tta_top1"]:.2f}' in summary


def test_tta_keeps_the_solver_statistics_of_the_plain_pass_for_deq(fake_cifar10, tmp_path):
    rows = {}
    for tta in ('none', 'flip'):
        validate.main(['--model', 'deq_resnet_tiny', '--model-kwargs', 'width=16', 'f_max_iter=4',
                       '--dataset', 'cifar10', '--data-dir', str(fake_cifar10), '--eval-subset', '20', '--img-size',
                       '16', '--no-flops', '--tta', tta, '--results-file', str(tmp_path / f'{tta}.json')])
        rows[tta] = json.loads((tmp_path / f'{tta}.json').read_text())[0]
    keys = ('top1', 'top5', 'loss', 'solver_nstep', 'solver_rel_residual', 'solver_rel_residual_max')
    assert all(k in rows['none'] for k in keys)
    assert [rows['flip'][k] for k in keys] == [rows['none'][k] for k in keys]
    assert 0 <= rows['flip']['tta_top1'] <= 100


@pytest.mark.parametrize('argv,expected', [
    (['--results-file', 'r.txt'], 'expected a .csv or .json extension'),
    (['--tta', 'rotate'], "argument --tta: invalid choice: 'rotate'"),
    (['--model', 'wt_resnet_*', '--checkpoint', 'x.safetensors'], '--checkpoint fits one model'),
    (['--model', 'nope_resnet_*'], "no model matches 'nope_resnet_*'"),
    (['--model', 'no_such_model'], "unknown model 'no_such_model'"),
    (['--checkpoint', 'missing.safetensors'], 'missing.safetensors does not exist'),
])
def test_bad_requests_get_clear_errors(argv, expected, fake_cifar10, capsys):
    with pytest.raises(SystemExit) as stop:
        validate.main(['--dataset', 'cifar10', '--data-dir', str(fake_cifar10), '--no-flops', *argv])
    assert expected in str(stop.value) + capsys.readouterr().err


def test_bad_tta_in_a_config_file_is_a_clear_error(tmp_path, capsys):
    (tmp_path / 'c.yaml').write_text('tta: rotate\n')
    with pytest.raises(SystemExit):
        validate.main(['--config', str(tmp_path / 'c.yaml')])
    assert "--tta: expected one of none, flip, flip-translate, got 'rotate'" in capsys.readouterr().err
