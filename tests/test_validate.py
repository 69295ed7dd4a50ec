"""validate.py: figures equal to an evaluation done by hand, CSV/JSON results, many models, checkpoint kinds."""
import csv
import json
import os
import subprocess
import sys
from argparse import Namespace

import pytest
import torch
import torch.nn.functional as F

import validate
from wt_zoo import data as wt_data
from wt_zoo import training as wt_training
from conftest import REPO_ROOT


def evaluate_by_hand(model, arrays, mean, std):
    """Top-1 (%) and mean cross-entropy of ``model`` on uint8 arrays, normalised with mean/std."""
    x = torch.from_numpy(arrays.images).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
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


@pytest.mark.parametrize('argv,expected', [
    (['--results-file', 'r.txt'], 'expected a .csv or .json extension'),
    (['--model', 'wt_resnet_*', '--checkpoint', 'x.safetensors'], '--checkpoint fits one model'),
    (['--model', 'nope_resnet_*'], "no model matches 'nope_resnet_*'"),
    (['--model', 'no_such_model'], "unknown model 'no_such_model'"),
    (['--checkpoint', 'missing.safetensors'], 'missing.safetensors does not exist'),
])
def test_bad_requests_get_clear_errors(argv, expected, fake_cifar10, capsys):
    with pytest.raises(SystemExit) as stop:
        validate.main(['--dataset', 'cifar10', '--data-dir', str(fake_cifar10), '--no-flops', *argv])
    assert expected in str(stop.value) + capsys.readouterr().err
