"""Hub folders end to end: export, card, verify, install-cache, offline loading through timm, push --dry-run.

The checkpoints are made here (seeded random weights and results files in train.py's and
validate.py's formats), exported into a temporary hub_configs, installed into a temporary
Hugging Face cache, and loaded by subprocesses that see them the way a user would: WT_ZOO_HUB_CONFIGS
publishes the folders, HF_HUB_OFFLINE=1 and HF_HUB_CACHE point huggingface_hub at the cache.
"""
import csv
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import timm
import torch
import yaml
from huggingface_hub import scan_cache_dir, try_to_load_from_cache
from huggingface_hub.utils.sha import git_hash
from safetensors.torch import load_file, save_file

import wt_zoo
from wt_zoo import cards, hub
from wt_zoo.cards import SLICE_RESULTS, HubFolderError
from wt_zoo.hub_ids import HUB_CONFIGS_ENV, REPO_HUB_CONFIGS, published_hub_ids

REPO = Path(__file__).resolve().parents[1]
# One tag per family, both datasets; the sparse-mask one with non-default masks (mask_seed).
TAGS = {'wt_resnet_tiny.c10': {}, 'wtsm_resnet_tiny.fmnist': {'mask_seed': 7}, 'deq_resnet_tiny.c10': {}}
EPOCH_SECONDS = (1200.0, 1200.5, 1322.5)  # 3723 s: "1 h 02 min"


def make_run(root: Path, name: str, seed: int = 0, hardware='CPU, 2 cores (test)', weights_from: str = '',
             **model_kwargs) -> Path:
    """A train.py output folder (args.yaml, summary.csv, model.safetensors) and validate.py results.json."""
    arch, tag = name.split('.')
    run = root / f'run-{name}-{seed}'
    run.mkdir(parents=True)
    model = timm.create_model(weights_from or name, **model_kwargs)
    gen = torch.Generator().manual_seed(seed)
    weights = {k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()
               for k, v in model.state_dict().items()}
    save_file(weights, run / 'model.safetensors')
    dataset = 'cifar10' if tag == 'c10' else 'fashion_mnist'
    args = dict(model=arch, dataset=dataset, epochs=3, batch_size=128, opt='sgd', lr=0.15, momentum=0.9,
                weight_decay=5e-4, sched='onecycle', smoothing=0.1, seed=seed, model_kwargs=model_kwargs,
                num_classes=None, device=None, val_split_size=5000)
    if hardware:
        args['hardware'] = hardware
    (run / 'args.yaml').write_text(yaml.safe_dump(args, sort_keys=True))
    rows = [dict(epoch=e, train_loss=2.0 - 0.25 * e, train_top1=30.0 + e, eval_loss=1.8 - 0.25 * e,
                 eval_top1=40.0 + 5 * e, eval_top5=80.0 + e, lr=0.1, epoch_seconds=s, images_per_s=400.0 + e,
                 peak_memory_mb=900.0, world_size=1) for e, s in enumerate(EPOCH_SECONDS)]
    with open(run / 'summary.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cfg = model.pretrained_cfg
    results = [dict(model=name, checkpoint=str(run / 'model.safetensors'), top1=71.2345, top5=97.5, loss=0.912345,
                    images_per_s=974.25, params=sum(p.numel() for p in model.parameters()), gflops=0.0888,
                    dataset=dataset, split='test', samples=10000, device='cpu',
                    input_size='x'.join(str(s) for s in cfg['input_size']), batch_size=256, amp=False)]
    if arch.startswith('deq'):
        results[0].update(deq_iterations=11.5, solver_nstep=11.5, solver_rel_residual=0.0421,
                          solver_rel_residual_max=0.0873)
    (run / 'results.json').write_text(json.dumps(results, indent=2))
    return run


@pytest.fixture(scope='module')
def published(tmp_path_factory):
    """Runs for TAGS exported into a temporary hub_configs: {'hub_configs': dir, 'runs': {name: run_dir}}."""
    root = tmp_path_factory.mktemp('hub')
    hub_configs = root / 'hub_configs'
    runs = {}
    for seed, (name, kwargs) in enumerate(TAGS.items()):
        runs[name] = make_run(root / 'runs', name, seed=seed, **kwargs)
        assert hub.main(['export', str(runs[name]), str(runs[name] / 'results.json'),
                         '--hub-configs', str(hub_configs)]) == 0
    return dict(root=root, hub_configs=hub_configs, runs=runs)


@pytest.fixture(scope='module')
def seeded_cache(published):
    cache = published['root'] / 'hf-cache'
    hub.install_cache(cache_dir=cache, hub_configs=published['hub_configs'])
    return cache


def copy_folder(published, name, tmp_path) -> Path:
    dst = tmp_path / 'hub_configs' / name
    shutil.copytree(published['hub_configs'] / name, dst)
    return dst


def offline_env(cache: Path, hub_configs=None) -> dict:
    """A user's offline environment: weights only from ``cache``; ``hub_configs`` published (None: the repo's)."""
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(cache), PYTHONWARNINGS='ignore')
    env.pop('HF_HOME', None)
    env.pop(HUB_CONFIGS_ENV, None)
    if hub_configs is not None:
        env[HUB_CONFIGS_ENV] = str(hub_configs)
    return env


REPO_TAGS = sorted(p.name for p in REPO_HUB_CONFIGS.glob('*.*') if (p / 'config.json').is_file())


@pytest.fixture(scope='module')
def repo_cache(tmp_path_factory):
    """The repository's own published folders, installed by `install-cache` into a fresh cache (None: none yet).

    Kept apart from the test-made folders: a real tag may share a name with one of TAGS.
    """
    if not REPO_TAGS:
        return None
    cache = tmp_path_factory.mktemp('repo-hf-cache')
    env = dict(os.environ)
    env.pop(HUB_CONFIGS_ENV, None)
    result = subprocess.run([sys.executable, '-m', 'wt_zoo.hub', 'install-cache', '--cache-dir', str(cache)], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return cache


# ----------------------------------------------------------------------------------------------
# export and the card


def test_export_writes_save_for_hf_folder_with_manifest(published):
    for name, kwargs in TAGS.items():
        folder = published['hub_configs'] / name
        assert sorted(p.name for p in folder.iterdir()) == sorted(hub.HUB_FILES)
        config = json.loads((folder / 'config.json').read_text())
        assert {'architecture', 'num_classes', 'num_features', 'global_pool', 'model_args',
                'pretrained_cfg'} <= set(config)
        assert config['architecture'] == name.split('.')[0] and config['num_classes'] == 10
        registered = timm.get_pretrained_cfg(name).to_dict()
        assert config['pretrained_cfg']['input_size'] == list(registered['input_size'])
        assert config['pretrained_cfg']['mean'] == list(registered['mean'])
        for key, value in kwargs.items():
            assert config['model_args'][key] == value
        exported = load_file(folder / 'model.safetensors')
        trained = load_file(published['runs'][name] / 'model.safetensors')
        assert exported.keys() == trained.keys()
        assert all(torch.equal(exported[k], trained[k]) and exported[k].dtype == trained[k].dtype for k in trained)
        sums = dict(reversed(line.split('  ')) for line in (folder / 'SHA256SUMS').read_text().splitlines())
        assert sums == {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in folder.iterdir() if p.name != 'SHA256SUMS'}
        assert hub.verify_folder(folder, check_registration=False) == []
    # train.py's args are kept verbatim, the validate.py row as JSON
    kept = published['hub_configs'] / 'wt_resnet_tiny.c10' / 'train_args.yaml'
    assert kept.read_text() == (published['runs']['wt_resnet_tiny.c10'] / 'args.yaml').read_text()


def test_export_leaves_training_only_model_args_out_of_the_published_config(tmp_path):
    """Jacobian regularisation (a loss term) and the gradient (the backward pass) do not change what the weights
    compute: loading by name and by config.json must build the same DEQ, and the card says how it trained."""
    run = make_run(tmp_path / 'runs', 'deq_resnet_tiny.c10', jac_reg_weight=0.5, grad_mode='implicit', b_max_iter=20)
    assert hub.main(['export', str(run), str(run / 'results.json'), '--hub-configs', str(tmp_path / 'hub')]) == 0
    folder = tmp_path / 'hub' / 'deq_resnet_tiny.c10'
    model_args = json.loads((folder / 'config.json').read_text())['model_args']
    assert not {'jac_reg_weight', 'grad_mode', 'b_max_iter'} & set(model_args)
    assert yaml.safe_load((folder / 'train_args.yaml').read_text())['model_kwargs']['grad_mode'] == 'implicit'
    assert hub.verify_folder(folder, check_registration=False) == []
    card = (folder / 'README.md').read_text()
    iteration = next(line for line in card.splitlines() if line.startswith('- Iteration:'))
    solved, trained = iteration.split('; trained with ')
    assert 'f_solver=anderson' in solved and 'grad_mode' not in solved
    # the run's settings, the model's default where the run named none; phantom_steps only for phantom gradients
    assert trained.startswith('jac_reg_weight=0.5, grad_mode=implicit, b_solver=fixed_point_iter, b_max_iter=20 ')
    assert 'phantom_steps' not in trained
    # a folder whose config.json still names one (as an older export wrote) fails verify, naming it
    config = json.loads((folder / 'config.json').read_text())
    config['model_args'].update(grad_mode='phantom', phantom_steps=2)
    (folder / 'config.json').write_text(json.dumps(config))
    hub.write_manifest(folder)
    problems = hub.verify_folder(folder, check_registration=False)
    assert len(problems) == 1 and "training-only arguments ['grad_mode', 'phantom_steps']" in problems[0]


def test_export_writes_the_tags_own_model_arguments_and_verify_ties_them_to_the_name(tmp_path, monkeypatch):
    """A test-time solver cap chosen for a tag is in its config.json, so ``hf-hub:`` and the name build one model;
    a folder whose config.json says otherwise than the name fails verify."""
    from wt_zoo.models.implicit_resnet import TAG_MODEL_ARGS
    monkeypatch.setitem(TAG_MODEL_ARGS, 'deq_resnet_tiny.c10', dict(eval_f_max_iter=24))
    run = make_run(tmp_path / 'runs', 'deq_resnet_tiny.c10')
    solver = tmp_path / 'deq_solver'  # what `bench deq-solver` writes: cap 24 best on the held-out split
    solver.mkdir()
    (solver / 'run.json').write_text(json.dumps(dict(command='python -m wt_zoo.bench deq-solver deq_resnet_tiny.c10',
                                                     git_commit='0123456789abcdef', machine=dict(cpu_model='test'))))
    caps = [dict(model='deq_resnet_tiny.c10', eval_f_max_iter=cap, solver_cap=cap or 12, top1=top1, solver_nstep=nstep,
                 solver_rel_residual=residual, samples=2000, split='val')
            for cap, top1, nstep, residual in ((0, 70.1, 12.0, 0.07), (24, 70.6, 23.5, 0.03), (48, 70.6, 40.2, 0.02))]
    (solver / 'solver.json').write_text(json.dumps(caps + [dict(caps[0], model='mdeq_tiny.c10', top1=99.0)]))
    export = ['export', str(run), str(run / 'results.json'), '--hub-configs', str(tmp_path / 'hub'),
              '--solver-choices', str(solver)]
    assert hub.main(export) == 0
    folder = tmp_path / 'hub' / 'deq_resnet_tiny.c10'
    assert json.loads((folder / 'config.json').read_text())['model_args']['eval_f_max_iter'] == 24
    assert hub.verify_folder(folder, check_registration=False) == []
    card = (folder / 'README.md').read_text()
    iteration = next(line for line in card.splitlines() if line.startswith('- Iteration:'))
    assert 'eval_f_max_iter=24' in iteration
    assert 'solves with **eval_f_max_iter=24**' in card and '| **24** | 24 | 70.60 | 23.5 | 0.030 |' in card
    assert '99.00' not in card  # another tag's rows stay out
    monkeypatch.setitem(TAG_MODEL_ARGS, 'deq_resnet_tiny.c10', dict(eval_f_max_iter=48))  # not what was chosen
    with pytest.raises(HubFolderError, match='chose eval_f_max_iter=24 .* builds eval_f_max_iter=48'):
        hub.export_checkpoint(run, run / 'results.json', hub_configs=tmp_path / 'hub', overwrite=True,
                              solver_choices_dir=solver)
    # solvers compared too: the chosen one is named, bold in its row, and the tag must build it
    compared = [dict(row, f_solver='anderson') for row in caps] + [dict(caps[1], f_solver='broyden', top1=70.9)]
    (solver / 'solver.json').write_text(json.dumps(compared))
    monkeypatch.setitem(TAG_MODEL_ARGS, 'deq_resnet_tiny.c10', dict(eval_f_max_iter=24))
    with pytest.raises(HubFolderError, match='chose eval_f_max_iter=24, f_solver=broyden .* builds eval_f_max_iter=24, '
                                             'f_solver=anderson: set it in TAG_MODEL_ARGS'):
        hub.export_checkpoint(run, run / 'results.json', hub_configs=tmp_path / 'hub', overwrite=True,
                              solver_choices_dir=solver)
    monkeypatch.setitem(TAG_MODEL_ARGS, 'deq_resnet_tiny.c10', dict(eval_f_max_iter=24, f_solver='broyden'))
    hub.export_checkpoint(run, run / 'results.json', hub_configs=tmp_path / 'hub', overwrite=True,
                          solver_choices_dir=solver)
    card = (folder / 'README.md').read_text()
    assert 'solves with **broyden, eval_f_max_iter=24**' in card
    assert '| broyden | **24** | 24 | 70.90 | 23.5 | 0.030 |' in card and '| anderson | 24 | 24 | 70.60 |' in card
    monkeypatch.setitem(TAG_MODEL_ARGS, 'deq_resnet_tiny.c10', dict(eval_f_max_iter=24))
    (solver / 'solver.json').write_text(json.dumps(caps))
    hub.export_checkpoint(run, run / 'results.json', hub_configs=tmp_path / 'hub', overwrite=True,
                          solver_choices_dir=solver)
    # a run that recorded the cap its epochs were evaluated at, before this one was chosen: published at the
    # chosen cap, while train_args.yaml keeps the run's, so a retrain evaluates its epochs as the run did
    pinned = make_run(tmp_path / 'runs', 'deq_resnet_tiny.c10', seed=1, eval_f_max_iter=12)
    hub.export_checkpoint(pinned, pinned / 'results.json', hub_configs=tmp_path / 'hub', overwrite=True,
                          solver_choices_dir=solver)
    assert json.loads((folder / 'config.json').read_text())['model_args']['eval_f_max_iter'] == 24
    assert yaml.safe_load((folder / 'train_args.yaml').read_text())['model_kwargs'] == {'eval_f_max_iter': 12}
    assert hub.verify_folder(folder, check_registration=False) == []
    monkeypatch.delitem(TAG_MODEL_ARGS, 'deq_resnet_tiny.c10')  # the name now builds the training cap only
    assert any('build a different model' in p and 'eval_f_max_iter' in p
               for p in hub.verify_folder(folder, check_registration=False))


@pytest.mark.slow
def test_rechoose_solver_rewrites_choice_figures_slice_and_card_but_not_the_weights(published, tmp_path, monkeypatch):
    """A published DEQ's solver chosen again (convergence first) without retraining: the new choice, test figures,
    slice record and card land together, the weights stay; a choice the tag does not build changes nothing."""
    from wt_zoo.models.implicit_resnet import TAG_MODEL_ARGS
    name = 'deq_resnet_tiny.c10'
    folder = copy_folder(published, name, tmp_path)
    torch.manual_seed(0)  # the model's own initialisation: the fixture's N(0, 1) weights make the solver diverge
    save_file(timm.create_model(name).state_dict(), folder / hub.WEIGHTS)
    hub.write_manifest(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    solver = tmp_path / 'deq_solver'
    solver.mkdir()
    (solver / 'run.json').write_text(json.dumps(dict(command=f'python -m wt_zoo.bench deq-solver {name}',
                                                     git_commit='0123456789abcdef', machine=dict(cpu_model='test'))))
    caps = [dict(model=name, f_solver='anderson', eval_f_max_iter=cap, solver_cap=cap or 12, top1=top1,
                 solver_nstep=nstep, solver_rel_residual=residual, samples=5000, split='val')
            for cap, top1, nstep, residual in ((0, 70.9, 12.0, 0.07), (24, 70.6, 23.5, 0.03), (48, 70.5, 40.2, 0.02))]
    (solver / 'solver.json').write_text(json.dumps(caps))
    assert TAG_MODEL_ARGS[name]['eval_f_max_iter'] == 24  # the cap the rule picks, which validate.py's process builds
    row = json.loads((folder / 'validation_results.json').read_text())[0]
    results = tmp_path / 'results.json'
    results.write_text(json.dumps([dict(row, top1=68.5, solver_nstep=23.9, solver_rel_residual=0.031)]))

    monkeypatch.setitem(TAG_MODEL_ARGS, name, dict(eval_f_max_iter=48))
    with pytest.raises(HubFolderError, match='chose eval_f_max_iter=24, f_solver=anderson .* builds eval_f_max_iter=48'):
        hub.rechoose_solver(name, solver, results, hub_configs=folder.parent)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    monkeypatch.undo()

    assert hub.main(['rechoose-solver', name, '--solver-choices', str(solver), '--results-file', str(results),
                     '--hub-configs', str(folder.parent)]) == 0
    assert [p.name for p in folder.parent.iterdir()] == [name]  # the staging folder is gone
    assert (folder / hub.WEIGHTS).read_bytes() == before[hub.WEIGHTS]
    assert json.loads((folder / 'config.json').read_text())['model_args']['eval_f_max_iter'] == 24
    assert json.loads((folder / 'solver_choices.json').read_text())['chosen'] == 24
    assert json.loads((folder / 'validation_results.json').read_text())[0]['top1'] == 68.5
    recorded = json.loads((folder / SLICE_RESULTS).read_text())
    assert recorded['samples'] == 500 and recorded['validate_args'] == hub.validate_args(name, folder, on_slice=True)
    card = (folder / 'README.md').read_text()
    assert 'solves with **anderson, eval_f_max_iter=24**' in card and 'below 0.05 (the solver reaches' in card
    assert '| 68.50 | ' in card  # the figures table
    assert hub.verify_folder(folder, check_registration=False) == []


def test_card_figures_come_from_the_results_files(published):
    for name in TAGS:
        folder = published['hub_configs'] / name
        card = (folder / 'README.md').read_text()
        _, front, body = card.split('---\n', 2)
        meta = yaml.safe_load(front)
        result = json.loads((folder / 'validation_results.json').read_text())[0]
        assert meta['library_name'] == 'timm' and meta['license'] == 'apache-2.0'
        assert {'image-classification', 'timm'} <= set(meta['tags'])
        assert meta['datasets'] == (['uoft-cs/cifar10'] if name.endswith('c10') else ['zalando-datasets/fashion_mnist'])
        metrics = meta['model-index'][0]['results'][0]['metrics']
        assert meta['model-index'][0]['name'] == name
        assert [m['value'] for m in metrics] == [result['top1'], result['top5']]
        row = f"| {result['top1']:.2f} | {result['top5']:.2f} | {result['loss']:.4f} | {result['params'] / 1e6:.3f} | " \
              f"{result['gflops']:.4f} | {result['images_per_s']:,.0f} |"
        assert row in body
        assert f"{result['params']:,}" in body
        assert 'Hardware: CPU, 2 cores (test).' in body
        assert 'wall time 1 h 02 min' in body  # sum of summary.csv's epoch_seconds
        assert 'evaluation top-1 50.00 %' in body  # the last summary row
        assert ('JPEG' in body) == name.endswith('.c10')
        usage = body[body.index('## Usage'):]
        assert usage.index('import wt_zoo') < usage.index(f"timm.create_model('{name}', pretrained=True)")
        assert f"hf-hub:wt-zoo/{name}" in usage
        assert '2307.08013' in body and '@article{' in body
    deq = (published['hub_configs'] / 'deq_resnet_tiny.c10' / 'README.md').read_text()
    assert "f_solver=anderson" in deq and '11.5 iterations per stage' in deq
    assert 'mean relative residual ||f(z) - z|| / ||f(z)|| of 0.042 (worst batch 0.087)' in deq
    assert 'relative residual' not in (published['hub_configs'] / 'wt_resnet_tiny.c10' / 'README.md').read_text()
    wtsm = (published['hub_configs'] / 'wtsm_resnet_tiny.fmnist' / 'README.md').read_text()
    assert 'unstructured masks at density 0.5' in wtsm


def test_card_shows_progressive_resizing_only_for_runs_that_used_it(tmp_path):
    for min_size in (0, 24):
        run = make_run(tmp_path / f'runs{min_size}', 'wt_resnet_tiny.c10')
        args = yaml.safe_load((run / 'args.yaml').read_text())
        args.update(progressive_min_size=min_size, progressive_end=0.75)
        (run / 'args.yaml').write_text(yaml.safe_dump(args, sort_keys=True))
        out = tmp_path / f'hub{min_size}'
        hub.export_checkpoint(run, run / 'results.json', hub_configs=out)
        card = (out / 'wt_resnet_tiny.c10' / 'README.md').read_text()
        assert f'| progressive_min_size | {min_size} |' in card
        assert ('| progressive_end | 0.75 |' in card) == bool(min_size)


def test_card_says_which_epoch_the_published_weights_are(tmp_path):
    """train.py exports its best epoch (the EMA's when kept), so the card must not pass the last epoch off as them."""
    cards = {}
    for label, ema in (('ema', (61.0, 63.5, 63.5)), ('raw', None)):
        run = make_run(tmp_path / label, 'wt_resnet_tiny.c10')
        with open(run / 'summary.csv', newline='') as f:
            rows = list(csv.DictReader(f))
        for row, ema_top1 in zip(rows, ema or [''] * len(rows)):
            row.update(ema_eval_loss='' if ema is None else 1.0, ema_eval_top1=ema_top1,
                       ema_eval_top5='' if ema is None else 99.0)
        with open(run / 'summary.csv', 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        hub.export_checkpoint(run, run / 'results.json', hub_configs=tmp_path / label / 'hub')
        cards[label] = (tmp_path / label / 'hub' / 'wt_resnet_tiny.c10' / 'README.md').read_text()
    # the EMA's best score is first reached at epoch 2 and only tied at epoch 3: the trainer kept epoch 2
    assert '- Last epoch: train loss 1.5000, evaluation top-1 50.00 % (EMA weights 63.50 %)' in cards['ema']
    assert ('- Published weights: the EMA weights of epoch 2, the best evaluation top-1 (63.50 %); '
            'train.py exports its best epoch, not its last.') in cards['ema']
    assert '- Last epoch: train loss 1.5000, evaluation top-1 50.00 % on' in cards['raw']
    assert '- Published weights: the weights of epoch 3, the best evaluation top-1 (50.00 %)' in cards['raw']


def test_card_says_which_sittings_trained_a_resumed_run(tmp_path):
    xeon, epyc = 'CPU (Intel Xeon, 2 threads)', 'CPU (AMD EPYC, 2 threads)'
    first = dict(first_epoch=1, date='2026-12-06T07:54:10+00:00', git_commit='a' * 40, hardware=xeon,
                 load_average_1min=0.1)
    cards = {}
    for label, sittings in (('none', None), ('one', [first]),
                            ('same', [first, dict(first, first_epoch=3, git_commit='b' * 40)]),
                            ('moved', [first, dict(first, first_epoch=2, hardware=epyc)]),
                            ('unfinished', [first, dict(first, first_epoch=len(EPOCH_SECONDS) + 1, hardware=epyc)])):
        run = make_run(tmp_path / label, 'wt_resnet_tiny.c10', hardware=xeon)
        if sittings:  # as train.py writes a resumed run's args.yaml
            args = dict(yaml.safe_load((run / 'args.yaml').read_text()), sittings=sittings, resume=str(run),
                        fast_path_timings=[dict(amp=True, channels_last=False, images_per_s=500.0)])
            (run / 'args.yaml').write_text(yaml.safe_dump(args, sort_keys=True))
        hub.export_checkpoint(run, run / 'results.json', hub_configs=tmp_path / label / 'hub')
        cards[label] = (tmp_path / label / 'hub' / 'wt_resnet_tiny.c10' / 'README.md').read_text()
    assert 'sitting' not in cards['none'] and f'- Hardware: {xeon}.' in cards['none']
    assert '- Trained in one sitting from 2026-12-06 07:54 UTC at commit `aaaaaaaaaa`.' in cards['one']
    assert ('- Trained over 2 sittings (`--resume`): epochs 1-2 from 2026-12-06 07:54 UTC at commit `aaaaaaaaaa`; '
            'epoch 3 from 2026-12-06 07:54 UTC at commit `bbbbbbbbbb`.') in cards['same']
    assert f'- Hardware: {xeon}.' in cards['same']
    # resumed on another machine: the card names both, with the epochs each trained
    assert f'- Hardware: {xeon} (epoch 1), {epyc} (epochs 2-3).' in cards['moved']
    # a last sitting that had not finished an epoch trained nothing the card reports
    assert cards['unfinished'] == cards['one']
    # the card's promise: `train.py --config train_args.yaml` trains the recipe again, from scratch
    from wt_zoo.trainer import parse_train_args
    replay = parse_train_args(['--config', str(tmp_path / 'moved' / 'hub' / 'wt_resnet_tiny.c10' / 'train_args.yaml')])
    assert (replay.model, replay.lr, replay.resume) == ('wt_resnet_tiny', 0.15, '')
    assert not hasattr(replay, 'sittings') and not hasattr(replay, 'hardware')


def test_every_published_recipe_trains_again_from_its_train_args():
    from wt_zoo.trainer import parse_train_args
    for name in REPO_TAGS:
        path = REPO_HUB_CONFIGS / name / 'train_args.yaml'
        replay = parse_train_args(['--config', str(path)])
        recorded = yaml.safe_load(path.read_text())
        assert (replay.model, replay.lr, replay.epochs) == (recorded['model'], recorded['lr'], recorded['epochs']), name
        assert replay.resume == '', f'{name}: train_args.yaml resumes {replay.resume!r}, not a run from scratch'


def test_export_refuses_inconsistent_inputs(published, tmp_path):
    out = tmp_path / 'hub_configs'
    other = make_run(tmp_path, 'wt_resnet_tiny.c10', seed=3, hardware=None)
    with pytest.raises(HubFolderError, match=r'records no hardware.*--hardware'):
        hub.export_checkpoint(other, other / 'results.json', hub_configs=out)
    # results of another model: the parameter count gives it away
    small = make_run(tmp_path, 'wt_resnet_small.c10', seed=4)
    with pytest.raises(HubFolderError, match=r'results\.json: params \d+, but wt_resnet_tiny\.c10 has'):
        hub.export_checkpoint(other, small / 'results.json', hub_configs=out, hardware='CPU')
    # a Fashion-MNIST run cannot become a .c10 checkpoint
    fm = published['runs']['wtsm_resnet_tiny.fmnist']
    with pytest.raises(HubFolderError, match=r"args\.yaml: the run trained on 'fashion_mnist', but tag 'c10' is "):
        hub.export_checkpoint(fm, fm / 'results.json', name='wtsm_resnet_tiny.c10', hub_configs=out)
    # weights of another architecture
    misfit = make_run(tmp_path, 'wt_resnet_tiny.c10', seed=6, weights_from='wt_resnet_small')
    with pytest.raises(HubFolderError) as err:
        hub.export_checkpoint(misfit, misfit / 'results.json', hub_configs=out)
    assert f'{misfit / "model.safetensors"} does not fit wt_resnet_tiny.c10: unexpected keys: stages.2.' in str(err.value)
    assert 'shape mismatch: stem.conv.weight' not in str(err.value)
    # same weights shapes, different iteration count: loading by name would not reproduce it
    deep = make_run(tmp_path, 'wt_resnet_tiny.c10', seed=5, depth=6)
    with pytest.raises(HubFolderError, match=r"build a different model than timm.create_model\('wt_resnet_tiny.c10'\)"):
        hub.export_checkpoint(deep, deep / 'results.json', hub_configs=out)
    with pytest.raises(HubFolderError, match="architecture 'foo_resnet' is not a registered zoo model"):
        hub.export_checkpoint(other, other / 'results.json', name='foo_resnet.c10', hub_configs=out, hardware='CPU')
    assert not out.exists() or list(out.iterdir()) == []  # nothing exported, no staging leftovers
    run = published['runs']['wt_resnet_tiny.c10']
    with pytest.raises(HubFolderError, match='exists; pass --overwrite'):
        hub.export_checkpoint(run, run / 'results.json', hub_configs=published['hub_configs'])
    # --overwrite replaces the folder; export is deterministic, so the files come back byte for byte
    before = copy_folder(published, 'wt_resnet_tiny.c10', tmp_path)
    files = {p.name: p.read_bytes() for p in before.iterdir()}
    (before / 'README.md').write_text('hand-written')
    hub.export_checkpoint(run, run / 'results.json', hub_configs=before.parent, overwrite=True)
    assert {p.name: p.read_bytes() for p in before.iterdir()} == files
    assert [p.name for p in before.parent.iterdir()] == ['wt_resnet_tiny.c10']


def ablation_folder(root: Path) -> Path:
    """A `bench ablation` results folder (run.json, variants.json, runs.json) over the DEQ tiny recipe."""
    folder = root / 'ablation'
    folder.mkdir(parents=True)
    variants = [('v1', '', 70.16), ('no_jac', '--model-kwargs jac_reg_weight=0', 70.9),
                ('implicit', '--model-kwargs grad_mode=implicit', 66.5)]
    (folder / 'run.json').write_text(json.dumps(dict(
        command='python -m wt_zoo.bench ablation --recipe configs/deq_resnet_tiny.c10.yaml --epochs 10',
        git_commit='a' * 40, date='2026-11-29T00:00:00+00:00', resolution=None,
        settings=dict(recipe='configs/deq_resnet_tiny.c10.yaml', epochs=10, seeds=[0]))))
    (folder / 'variants.json').write_text(json.dumps([
        dict(variant=name, flags=flags, seeds=1, diverged=0, top1_mean=top1, top1_std=None,
             delta=None if i == 0 else round(top1 - 70.16, 2), verdict=None, train_minutes=38.9 + i)
        for i, (name, flags, top1) in enumerate(variants)]))
    (folder / 'runs.json').write_text(json.dumps([
        dict(variant=name, seed=0, status='ok', train_images=45000, heldout_images=5000, hardware='CPU (test)',
             lr=0.15, held_out_top1=top1, nstep_last=11.9 - i, residual_last=0.078 - 0.01 * i)
        for i, (name, flags, top1) in enumerate(variants)]))
    return folder


def test_export_keeps_how_the_recipe_was_chosen_and_checks_the_run_trained_with_it(tmp_path):
    choices = ablation_folder(tmp_path)
    run = make_run(tmp_path / 'runs', 'deq_resnet_tiny.c10', jac_reg_weight=0.5)  # the recipe's own setting
    out = tmp_path / 'hub'
    # the run kept the recipe's Jacobian weight, so it did not train with the no_jac variant
    with pytest.raises(HubFolderError, match=r"did not train with the chosen variant: model_kwargs.jac_reg_weight is "
                                             r"0.5, variant 'no_jac' \(--model-kwargs jac_reg_weight=0\) sets 0"):
        hub.export_checkpoint(run, run / 'results.json', hub_configs=out, choices=choices, chosen='no_jac')
    with pytest.raises(HubFolderError, match="has no variant 'v2'; its variants are v1, no_jac, implicit"):
        hub.export_checkpoint(run, run / 'results.json', hub_configs=out, choices=choices, chosen='v2')
    with pytest.raises(HubFolderError, match='--choices .* and --chosen .* go together'):
        hub.export_checkpoint(run, run / 'results.json', hub_configs=out, choices=choices)
    unfinished = tmp_path / 'unfinished'  # an ablation still running has written its runs table only
    unfinished.mkdir()
    shutil.copyfile(choices / 'runs.json', unfinished / 'runs.json')
    with pytest.raises(HubFolderError, match=r'not a finished .*bench ablation.* \(run.json missing\)'):
        hub.export_checkpoint(run, run / 'results.json', hub_configs=out, choices=unfinished, chosen='v1')
    assert not out.exists() or list(out.iterdir()) == []

    assert hub.main(['export', str(run), str(run / 'results.json'), '--hub-configs', str(out),
                     '--choices', str(choices), '--chosen', 'v1']) == 0
    folder = out / 'deq_resnet_tiny.c10'
    kept = json.loads((folder / 'recipe_choices.json').read_text())
    assert kept['chosen'] == 'v1' and [v['variant'] for v in kept['variants']] == ['v1', 'no_jac', 'implicit']
    assert kept['heldout_images'] == 5000 and kept['variants'][2]['solver_rel_residual'] == pytest.approx(0.058)
    card = (folder / 'README.md').read_text()
    section = card[card.index('## How the recipe was chosen'):card.index('## Data')]
    assert 'This checkpoint trained with **v1**.' in section and 'With one seed there is no measured resolution' in section
    assert 'carried over' not in section  # the ablation trained this model's own recipe
    assert kept['lr'] == 0.15 and 'for 10 epochs at peak lr 0.15 on 45,000 training images' in section
    # the recipe's lr moved after its ablation (the tiny trio's v2): the card says the checkpoint's is not the ablation's
    moved = '\n'.join(cards._choices_lines(kept, 'deq_resnet_tiny.c10', 0.5))
    assert 'This checkpoint trained with **v1** at peak lr 0.5, not the ablation\'s 0.15.' in moved
    assert 'This checkpoint trained with **v1**.' in '\n'.join(cards._choices_lines(dict(kept, lr=None), 'x.c10', 0.5))
    # a twin that takes another model's ablation (mdeq_tiny.c10 from deq_resnet_tiny's) says so
    carried = '\n'.join(cards._choices_lines(kept, 'mdeq_tiny.c10'))
    assert ("The ablation trained `deq_resnet_tiny.c10`'s recipe, not this model's: its choice is carried over to "
            'mdeq_tiny.c10 without an ablation of its own.') in carried
    assert '| **v1** |  | 70.16 |' in section
    assert '| no_jac | `--model-kwargs jac_reg_weight=0` | 70.90 | +0.74 |' in section
    assert hub.verify_folder(folder, check_registration=False) == []
    (folder / 'recipe_choices.json').write_text(json.dumps(dict(kept, chosen='implicit')))
    assert any('recipe_choices.json: sha256' in p for p in hub.verify_folder(folder, check_registration=False))

    no_jac = make_run(tmp_path / 'runs', 'deq_resnet_tiny.c10', seed=1, jac_reg_weight=0)
    hub.export_checkpoint(no_jac, no_jac / 'results.json', hub_configs=out, overwrite=True, choices=choices,
                          chosen='no_jac')
    assert '| **no_jac** |' in (folder / 'README.md').read_text()


def test_export_reads_validate_csv_results_the_same(published, tmp_path):
    run = published['runs']['wt_resnet_tiny.c10']
    rows = json.loads((run / 'results.json').read_text())
    other = dict(rows[0], model='wt_resnet_small.c10', params=1)  # a second model in the same file
    with open(tmp_path / 'results.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([other, rows[0]])
    folder = hub.export_checkpoint(run, tmp_path / 'results.csv', hub_configs=tmp_path / 'hub_configs')
    assert (folder / 'README.md').read_text() == (published['hub_configs'] / folder.name / 'README.md').read_text()
    assert hub.verify_folder(folder, check_registration=False) == []


# ----------------------------------------------------------------------------------------------
# bad folders: clear errors naming the file, nothing pickled ever loaded


def test_truncated_or_missing_weights_are_named(published, tmp_path):
    folder = copy_folder(published, 'wt_resnet_tiny.c10', tmp_path)
    weights = folder / 'model.safetensors'
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    problems = '\n'.join(hub.verify_folder(folder, check_registration=False))
    assert f'{weights}: not a complete safetensors file, it is truncated or corrupt' in problems
    assert f'{weights}: sha256 ' in problems and 'does not match SHA256SUMS' in problems
    with pytest.raises(HubFolderError, match='truncated or corrupt') as err:
        hub.install_cache(cache_dir=tmp_path / 'cache', hub_configs=folder.parent)
    assert str(weights) in str(err.value)
    assert not (tmp_path / 'cache').exists()  # nothing installed
    weights.unlink()
    assert f'{weights}: missing' in hub.verify_folder(folder, check_registration=False)
    with pytest.raises(HubFolderError, match=r'model\.safetensors: missing'):
        hub.install_cache(cache_dir=tmp_path / 'cache', hub_configs=folder.parent)


class _Tripwire:
    """Unpickling this creates a file: proof that something loaded the pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, 'w')


def test_pickled_weights_are_refused_never_loaded(published, tmp_path, monkeypatch, capsys):
    folder = copy_folder(published, 'wt_resnet_tiny.c10', tmp_path)
    marker = tmp_path / 'pickle-was-loaded'
    (folder / 'pytorch_model.bin').write_bytes(pickle.dumps(_Tripwire(marker)))
    hub.write_manifest(folder)  # even when listed in the manifest
    (folder / 'model.safetensors').unlink()  # and when timm would fall back to it
    problems = hub.verify_folder(folder, check_registration=False)
    assert any(p.startswith(f'{folder / "pytorch_model.bin"}: refused, a pickle-format file') for p in problems)
    with pytest.raises(HubFolderError, match='refused, a pickle-format file'):
        hub.install_cache(cache_dir=tmp_path / 'cache', hub_configs=folder.parent)
    monkeypatch.setenv('HF_TOKEN', 'hf_not_a_real_token')
    assert hub.main(['push', '--hub-configs', str(folder.parent)]) == 2
    assert 'refused, a pickle-format file' in capsys.readouterr().err
    assert not marker.exists()
    with pytest.raises(HubFolderError, match='must be a .safetensors file'):
        hub.load_weights(folder / 'pytorch_model.bin')


def test_unknown_architecture_and_misfit_weights_are_named(published, tmp_path):
    folder = copy_folder(published, 'wt_resnet_tiny.c10', tmp_path)
    config_path = folder / 'config.json'
    config = json.loads(config_path.read_text())
    unknown = folder.parent / 'foo_resnet_tiny.c10'
    folder.rename(unknown)
    (unknown / 'config.json').write_text(json.dumps(dict(config, architecture='foo_resnet_tiny')))
    hub.write_manifest(unknown)
    problems = hub.verify_folder(unknown, check_registration=False)
    assert problems == [f"{unknown / 'config.json'}: architecture 'foo_resnet_tiny' is not a registered zoo model "
                        f"(zoo models: {', '.join(wt_zoo.list_zoo_models())})"]
    unknown.rename(folder)
    (folder / 'config.json').write_text(json.dumps(config))
    # 1-channel weights in a 3-channel checkpoint
    one_chan = make_run(tmp_path, 'wt_resnet_tiny.c10', seed=9, in_chans=1)
    shutil.copyfile(one_chan / 'model.safetensors', folder / 'model.safetensors')
    hub.write_manifest(folder)
    problems = hub.verify_folder(folder, check_registration=False)
    assert problems == [f'{folder / "model.safetensors"} does not fit wt_resnet_tiny: shape mismatch: '
                        'stem.conv.weight (48, 1, 3, 3) in the file vs (48, 3, 3, 3) in the model']
    # a key missing and an extra one
    weights = load_file(folder / 'model.safetensors')
    weights['stem.conv.weight'] = torch.zeros(48, 3, 3, 3)
    weights['extra.weight'] = weights.pop('head.fc.bias')
    save_file(weights, folder / 'model.safetensors')
    hub.write_manifest(folder)
    problems = '\n'.join(hub.verify_folder(folder, check_registration=False))
    assert 'does not fit wt_resnet_tiny: missing keys: head.fc.bias' in problems
    assert 'unexpected keys: extra.weight' in problems


def test_edited_card_or_results_fail_verify(published, tmp_path):
    folder = copy_folder(published, 'wt_resnet_tiny.c10', tmp_path)
    card = folder / 'README.md'
    card.write_text(card.read_text().replace('| 71.23 |', '| 75.00 |'))
    problems = hub.verify_folder(folder, check_registration=False)
    assert any(p.startswith(f'{card}: sha256 ') for p in problems)
    hub.write_manifest(folder)
    assert hub.verify_folder(folder, check_registration=False) == [
        f'{card}: differs from the card its results files generate; cards are never edited by hand '
        '(python -m wt_zoo.hub card wt_resnet_tiny.c10 regenerates it)']
    assert hub.main(['card', 'wt_resnet_tiny.c10', '--hub-configs', str(folder.parent)]) == 0
    assert hub.verify_folder(folder, check_registration=False) == []
    assert card.read_text() == (published['hub_configs'] / 'wt_resnet_tiny.c10' / 'README.md').read_text()
    # results edited: the card follows them, but only after the manifest is deliberately redone
    results = folder / 'validation_results.json'
    results.write_text(results.read_text().replace('71.2345', '72.5'))
    with pytest.raises(HubFolderError, match=r'card not regenerated:\n.*validation_results\.json: sha256'):
        hub.regenerate_card(folder)
    hub.write_manifest(folder)
    assert any(p.startswith(f'{card}: differs') for p in hub.verify_folder(folder, check_registration=False))
    hub.regenerate_card(folder)
    assert '| 72.50 |' in card.read_text() and hub.verify_folder(folder, check_registration=False) == []


# ----------------------------------------------------------------------------------------------
# the Hugging Face cache


def test_install_cache_builds_the_huggingface_cache_layout(published, seeded_cache):
    info = scan_cache_dir(seeded_cache)
    assert not info.warnings
    repos = {repo.repo_id: repo for repo in info.repos}
    assert set(repos) == {f'wt-zoo/{name}' for name in TAGS}
    for name in TAGS:
        folder = published['hub_configs'] / name
        repo = repos[f'wt-zoo/{name}']
        (revision,) = repo.revisions
        assert revision.commit_hash == hub.cache_revision(folder) and len(revision.commit_hash) == 40
        assert revision.refs == {'main'}
        assert {f.file_name for f in revision.files} == set(hub.HUB_FILES)
        for f in revision.files:
            data = (folder / f.file_name).read_bytes()
            expected_blob = hashlib.sha256(data).hexdigest() if f.file_name.endswith('.safetensors') else git_hash(data)
            assert f.blob_path.name == expected_blob and f.blob_path.read_bytes() == data
            assert f.file_path.is_symlink()
        cached = try_to_load_from_cache(f'wt-zoo/{name}', 'model.safetensors', cache_dir=seeded_cache)
        assert Path(cached).read_bytes() == (folder / 'model.safetensors').read_bytes()
    # again: same revisions, nothing duplicated
    hub.install_cache(cache_dir=seeded_cache, hub_configs=published['hub_configs'])
    again = scan_cache_dir(seeded_cache)
    assert again.size_on_disk == info.size_on_disk
    assert {r.repo_id: {v.commit_hash for v in r.revisions} for r in again.repos} == \
        {r.repo_id: {v.commit_hash for v in r.revisions} for r in info.repos}


def test_hub_ids_follow_the_folders(published, tmp_path, monkeypatch):
    monkeypatch.setenv(HUB_CONFIGS_ENV, str(published['hub_configs']))
    assert published_hub_ids() == {name: f'wt-zoo/{name}' for name in TAGS}
    (tmp_path / 'wt_resnet_small.c10').mkdir()  # no config.json: not published
    monkeypatch.setenv(HUB_CONFIGS_ENV, os.pathsep.join([str(tmp_path), str(published['hub_configs'])]))
    assert set(published_hub_ids()) == set(TAGS)


CHILD = r'''
import json, sys, torch, timm, wt_zoo
from safetensors.torch import load_file
from wt_zoo import hub
runs, names, empty_cache = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
out = {'pretrained': timm.list_pretrained('*_resnet_tiny*'), 'verify': hub.main(['verify']),
       'demo': hub.main(['demo'])}

def same(model, ref):
    sd = model.state_dict()
    return sd.keys() == ref.keys() and all(torch.equal(sd[k], v) and sd[k].dtype == v.dtype for k, v in ref.items())

for name in names:
    ref = load_file(runs[name] + '/model.safetensors')
    r = out[name] = {'hf_hub_id': timm.get_pretrained_cfg(name).hf_hub_id}
    r['by_name'] = same(timm.create_model(name, pretrained=True), ref)
    r['hf_hub'] = same(timm.create_model('hf-hub:wt-zoo/' + name, pretrained=True), ref)
    for how in (name, 'hf-hub:wt-zoo/' + name):
        m = timm.create_model(how, pretrained=True, in_chans=1, num_classes=5)
        sd = m.state_dict()
        stem = ref['stem.conv.weight']
        expected_stem = stem if stem.shape[1] == 1 else stem.sum(1, keepdim=True)
        r[how + ' overrides'] = dict(
            stem=list(sd['stem.conv.weight'].shape), head=list(sd['head.fc.weight'].shape),
            stem_adapted=bool(torch.allclose(sd['stem.conv.weight'], expected_stem)),
            rest_identical=all(torch.equal(sd[k], v) for k, v in ref.items()
                               if not k.startswith(('stem.conv', 'head.fc'))),
            out=list(m.eval()(torch.randn(2, 1, 32, 32)).shape) if not name.startswith('deq') else [2, 5])
# nothing cached: an hf-hub: name needs the Hub; a name falls back to its published folder
for how in (names[0], 'hf-hub:wt-zoo/' + names[0]):
    try:
        model = timm.create_model(how, pretrained=True, cache_dir=empty_cache)
        out['empty_cache ' + how] = same(model, load_file(runs[names[0]] + '/model.safetensors'))
    except Exception as e:
        out['empty_cache ' + how] = type(e).__name__
print('RESULT ' + json.dumps(out))
'''


def test_offline_pretrained_loading_by_name_and_hf_hub(published, seeded_cache, tmp_path):
    env = offline_env(seeded_cache, published['hub_configs'])
    runs = {name: str(run) for name, run in published['runs'].items()}
    result = subprocess.run([sys.executable, '-c', CHILD, json.dumps(runs), json.dumps(list(TAGS)),
                             str(tmp_path / 'empty-cache')], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = json.loads(result.stdout.split('RESULT ', 1)[1])
    assert out['verify'] == 0 and out['demo'] == 0, result.stdout
    for name in TAGS:
        assert f'| {name} | 71.23 |' in result.stdout and f'{name}: ok' in result.stdout
    assert set(TAGS) <= set(out['pretrained'])
    for name in TAGS:
        r = out[name]
        assert r['hf_hub_id'] == f'wt-zoo/{name}'
        assert r['by_name'] and r['hf_hub'], r  # bit-identical to the trained weights, both ways
        for how in (name, f'hf-hub:wt-zoo/{name}'):
            assert r[how + ' overrides'] == dict(stem=[48, 1, 3, 3], head=[5, 96], stem_adapted=True,
                                                 rest_identical=True, out=[2, 5]), (how, r)
    first = next(iter(TAGS))
    assert out[f'empty_cache hf-hub:wt-zoo/{first}'] == 'LocalEntryNotFoundError'
    assert out[f'empty_cache {first}'] is True
    # only the load with nothing cached used the folder, and said so once
    assert result.stderr.count('is not in the Hugging Face cache') == 1, result.stderr[-3000:]
    assert f'loading its weights from {published["hub_configs"] / first / "model.safetensors"}' in result.stderr


def test_repository_hub_configs_verify_and_load_offline(repo_cache):
    """What `make demo` runs: install-cache, then verify and demo (both ways of loading) with HF_HUB_OFFLINE=1."""
    if repo_cache is None:
        pytest.skip('no published checkpoints in hub_configs/ yet (they come with the checkpoints issue)')
    for command in ('verify', 'demo'):
        result = subprocess.run([sys.executable, '-m', 'wt_zoo.hub', command], env=offline_env(repo_cache),
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        assert all(f'{name}: ok' in result.stdout or f'| {name} |' in result.stdout for name in REPO_TAGS)


@pytest.fixture(scope='module')
def slice_reproduction(repo_cache):
    """Every published tag re-validated on the CI slice by `hub reproduce --slice`: validate.py --pretrained
    from the offline cache, one process per dataset. The full test split is `make reproduce`'s job."""
    if repo_cache is None:
        return {}
    rows = hub.reproduce(REPO_TAGS, hub_configs=REPO_HUB_CONFIGS, on_slice=True, cache_dir=repo_cache)
    return {row['name']: row for row in rows}


@pytest.mark.slow
@pytest.mark.parametrize('name', REPO_TAGS)
def test_published_checkpoints_reproduce_their_cards_top1(name, slice_reproduction):
    """The CI slice (500 test images, stratified, seeded; 200 for the 5M-parameter base trio) gives the top-1
    recorded for it in the tag's folder, with its card, to within one image: float sums differ across CPUs enough
    to move an image whose best logits tie."""
    folder = REPO_HUB_CONFIGS / name
    assert (folder / SLICE_RESULTS).is_file(), \
        f'{folder / SLICE_RESULTS} missing: run `make record-slice` after publishing or replacing a checkpoint'
    recorded = json.loads((folder / SLICE_RESULTS).read_text())
    assert recorded['validate_args'] == hub.validate_args(name, folder, on_slice=True), \
        'the slice changed since it was recorded: make record-slice'
    assert recorded['weights_sha256'] == hashlib.sha256((folder / hub.WEIGHTS).read_bytes()).hexdigest()
    assert f"top-1 {recorded['top1']:.2f} %" in (folder / 'README.md').read_text()
    row = slice_reproduction[name]
    measured = row['measured']
    assert measured is not None and measured['model'] == name, row['problem']
    params = hub.folder_validation(folder, name)['params']
    assert measured['samples'] == recorded['samples'] == (200 if params > 2_000_000 else 500)
    assert recorded['slice']['eval_subset'] == measured['samples']
    correct = round(measured['top1'] * measured['samples'] / 100)
    assert abs(correct - recorded['correct']) <= 1, (measured['top1'], recorded['top1'])
    assert row['problem'] is None, row['problem']


@pytest.mark.slow
def test_record_slice_writes_the_figure_card_and_manifest_and_reruns_identically(published, tmp_path):
    """record-slice measures with validate.py into slice_results.json; the card and SHA256SUMS follow, verify stays
    clean, a rerun rewrites the same bytes, and replaced weights make verify ask for a new record."""
    name = 'wt_resnet_tiny.c10'
    folder = copy_folder(published, name, tmp_path)
    assert hub.main(['record-slice', '--hub-configs', str(folder.parent)]) == 0
    record = json.loads((folder / SLICE_RESULTS).read_text())
    assert record['validate_args'] == hub.validate_args(name, folder, on_slice=True)
    assert record['command'] == 'HF_HUB_OFFLINE=1 python validate.py ' + ' '.join(record['validate_args'])
    assert '--eval-subset 500' in record['command'] and '--pretrained' in record['command']
    assert record['samples'] == 500 and record['correct'] == round(record['top1'] * 5)
    assert record['weights_sha256'] == hashlib.sha256((folder / hub.WEIGHTS).read_bytes()).hexdigest()
    assert record['torch'] == torch.__version__ and record['hardware'].startswith('CPU')
    assert SLICE_RESULTS in hub.read_manifest(folder) and hub.verify_folder(folder, check_registration=False) == []
    assert f"top-1 {record['top1']:.2f} %, top-5 {record['top5']:.2f} % ({record['correct']} of 500 images right)" \
        in (folder / 'README.md').read_text()
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert hub.main(['record-slice', name, '--hub-configs', str(folder.parent)]) == 0
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files
    other = make_run(tmp_path / 'other', name, seed=11)
    shutil.copyfile(other / hub.WEIGHTS, folder / hub.WEIGHTS)
    hub.write_manifest(folder)
    problems = hub.verify_folder(folder, check_registration=False)
    assert len(problems) == 1 and problems[0].startswith(f'{folder / SLICE_RESULTS}: recorded for other weights'), \
        problems
    assert f'record-slice {name}' in problems[0]


def test_reproduce_compares_in_images_within_a_tenth_of_a_percent_and_at_least_one(published, tmp_path,
                                                                                     monkeypatch, capsys):
    """The card's full-split top-1 (10,000 images) may move by 10 images, a 500-image slice's by one; a folder
    without a slice record fails `reproduce --slice` without validating anything."""
    folder = copy_folder(published, 'wt_resnet_tiny.c10', tmp_path)
    card = json.loads((folder / 'validation_results.json').read_text())[0]  # top-1 71.2345 % of 10,000
    measured = {}

    def fake_revalidate(folders, hub_configs, cache_dir, on_slice):
        assert list(folders) == ['wt_resnet_tiny.c10'] and not on_slice
        return {'wt_resnet_tiny.c10': dict(model='wt_resnet_tiny.c10', **measured)}

    monkeypatch.setattr(hub, '_revalidate', fake_revalidate)
    for top1, samples, ok in ((card['top1'] + 0.1, 10000, True), (card['top1'] - 0.1, 10000, True),
                              (card['top1'] + 0.11, 10000, False), (card['top1'], 9999, False)):
        measured.update(top1=round(top1, 4), samples=samples)
        (row,) = hub.reproduce(hub_configs=folder.parent)
        assert (row['problem'] is None) == ok, (top1, samples, row['problem'])
    assert hub.tolerance_images(10000) == 10 and hub.tolerance_images(500) == 1 and hub.tolerance_images(50) == 1
    measured.update(top1=round(card['top1'] + 0.11, 4), samples=10000)
    assert hub.main(['reproduce', '--hub-configs', str(folder.parent)]) == 1
    assert '+11 of 10000 images (tolerance 10)' in capsys.readouterr().out
    monkeypatch.setattr(hub, '_revalidate', lambda *a: pytest.fail('validated a folder with no slice record'))
    (row,) = hub.reproduce(hub_configs=folder.parent, on_slice=True)
    assert row['measured'] is None and f'{folder / SLICE_RESULTS}: no slice recorded' in row['problem']


# ----------------------------------------------------------------------------------------------
# loading as a user would: the clone's own folders when offline; damaged weights named in one line

TINY = 'wt_resnet_tiny.c10'
# What safetensors reports for each kind of damage (see damage()).
DAMAGE = {'truncated': 'incomplete metadata, file not fully covered', 'garbage': 'header too large'}


def damage(path: Path, kind: str) -> Path:
    """A safetensors file cut in half ('truncated'), or replaced by bytes that never were one ('garbage')."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if kind == 'truncated' else bytes(range(256)) * 16)
    return path


def tiny_folder(root: Path) -> Path:
    """config.json, model.safetensors (an untrained TINY) and SHA256SUMS: enough of a Hub folder to publish
    through WT_ZOO_HUB_CONFIGS and to install into a cache."""
    from timm.models import save_for_hf
    folder = root / TINY
    save_for_hf(timm.create_model(TINY), folder, safe_serialization=True)
    hub.write_manifest(folder)
    return folder


def assert_names_damage(message: str, path: Path, kind: str, prefix: str = '') -> None:
    assert message.startswith(f'{prefix}{path}: not a complete safetensors file, it is truncated or corrupt ('), message
    assert DAMAGE[kind] in message and '\n' not in message, message


OFFLINE_CHILD = r"""
import json, sys, torch, timm, wt_zoo
from safetensors.torch import load_file
name, seeded_cache, folder_weights, cached_weights = sys.argv[1:]

def same(kwargs, path):
    sd, ref = timm.create_model(name, pretrained=True, **kwargs).state_dict(), load_file(path)
    return sd.keys() == ref.keys() and all(torch.equal(sd[k], v) for k, v in ref.items())

print('RESULT ' + json.dumps(dict(folder=[same({}, folder_weights), same({}, folder_weights)],
                                  cache=same(dict(cache_dir=seeded_cache), cached_weights))))
"""


def test_clone_loads_its_own_hub_configs_offline_with_an_empty_cache(tmp_path):
    """No network, nothing cached: a tag loads by name from the repository's hub_configs/, said once;
    a cache holding the tag (here with other weights) keeps priority."""
    if TINY not in REPO_TAGS:
        pytest.skip(f'{TINY} is not published in hub_configs/')
    folder = REPO_HUB_CONFIGS / TINY
    other = tmp_path / 'other' / TINY
    shutil.copytree(folder, other)
    save_file({k: v + 1 if v.is_floating_point() else v for k, v in load_file(other / 'model.safetensors').items()},
              other / 'model.safetensors')
    hub.write_manifest(other)
    hub.install_folder(other, tmp_path / 'seeded-cache', f'wt-zoo/{TINY}')
    (tmp_path / 'empty-cache').mkdir()
    result = subprocess.run([sys.executable, '-c', OFFLINE_CHILD, TINY, str(tmp_path / 'seeded-cache'),
                             str(folder / 'model.safetensors'), str(other / 'model.safetensors')],
                            env=offline_env(tmp_path / 'empty-cache'), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert json.loads(result.stdout.split('RESULT ', 1)[1]) == dict(folder=[True, True], cache=True)
    said = (f'wt-zoo/{TINY} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: loading its weights from '
            f'{folder / "model.safetensors"}')
    assert said in result.stderr.splitlines(), result.stderr[-3000:]
    assert result.stderr.count(str(folder)) == 1, result.stderr[-3000:]
    assert list((tmp_path / 'empty-cache').iterdir()) == []  # nothing copied into the cache


@pytest.mark.parametrize('kind', list(DAMAGE))
def test_damaged_weights_given_to_the_clis_are_one_line_errors(kind, tmp_path):
    import train
    import validate
    folder = tiny_folder(tmp_path)
    weights = damage(folder / 'model.safetensors', kind)
    data = ['--dataset', 'cifar10', '--data-dir', str(tmp_path / 'no-data'), '--num-classes', '10']
    common = ['--model', 'wt_resnet_tiny', *data]
    out = ['--output', str(tmp_path / 'out')]
    calls = {'validate.py --checkpoint': (validate.main, [*common, '--checkpoint', str(weights)]),
             'validate.py local-dir:': (validate.main, ['--model', f'local-dir:{folder}', '--pretrained', *data]),
             'train.py --initial-checkpoint': (train.main, [*common, *out, '--initial-checkpoint', str(weights)]),
             'train.py --pretrained-path': (train.main, [*common, *out, '--pretrained-path', str(weights)])}
    for what, (main, argv) in calls.items():
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert_names_damage(str(stop.value), weights, kind, prefix='error: ')
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('kind', list(DAMAGE))
def test_damaged_weights_in_the_cache_or_hub_configs_are_one_line_errors(kind, tmp_path, monkeypatch):
    import validate
    from huggingface_hub import constants as hf_constants
    if TINY not in REPO_TAGS:
        pytest.skip(f'{TINY} is not published in hub_configs/ (no hf_hub_id to load it by)')
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)
    folder = tiny_folder(tmp_path / 'hub_configs')
    damage(folder / 'model.safetensors', kind)
    hub.write_manifest(folder)
    cached = hub.install_folder(folder, tmp_path / 'cache', f'wt-zoo/{TINY}').resolve() / 'model.safetensors'
    with pytest.raises(HubFolderError) as err:
        timm.create_model(TINY, pretrained=True, cache_dir=tmp_path / 'cache')
    assert_names_damage(str(err.value), cached, kind)
    monkeypatch.setattr(hf_constants, 'HF_HUB_CACHE', str(tmp_path / 'cache'))  # the cache validate.py reads
    with pytest.raises(SystemExit) as stop:
        validate.main(['--model', TINY, '--pretrained', '--dataset', 'cifar10', '--data-dir', str(tmp_path / 'x')])
    assert_names_damage(str(stop.value), cached, kind, prefix='error: ')
    # nothing cached: the published folder stands in, checked the same way
    monkeypatch.setenv(HUB_CONFIGS_ENV, str(folder.parent))
    with pytest.raises(HubFolderError) as err:
        timm.create_model(TINY, pretrained=True, cache_dir=tmp_path / 'empty-cache')
    assert_names_damage(str(err.value), folder / 'model.safetensors', kind)


# ----------------------------------------------------------------------------------------------
# push


def test_results_table_is_read_from_the_folders_results_files(published, monkeypatch):
    monkeypatch.setenv(HUB_CONFIGS_ENV, str(published['hub_configs']))
    rows = hub.results_rows()
    assert len(rows) == len(TAGS)
    for row in rows:
        folder = published['hub_configs'] / f'{row["model"]}.{row["tag"]}'
        validation = json.loads((folder / 'validation_results.json').read_text())[0]
        assert row['top1'] == pytest.approx(float(validation['top1']))
        assert row['params'] == int(validation['params'])
        assert row['trained_on'] == yaml.safe_load((folder / 'train_args.yaml').read_text())['hardware']
    table = hub.results_table().splitlines()
    assert table[0].startswith('| model | tag | top-1 |') and len(table) == 2 + len(rows)


def test_card_and_table_name_the_machine_that_measured_inference_speed(tmp_path, monkeypatch):
    """Tags are validated on different machines, so images/s names the one validate.py recorded; rows from before
    it recorded one keep naming the device."""
    out = tmp_path / 'hub_configs'
    measured = {}
    for name, machine in (('wt_resnet_tiny.c10', 'CPU (Xeon under test, 2 threads)'), ('wtsm_resnet_tiny.c10', None)):
        run = make_run(tmp_path, name)
        if machine:
            results = json.loads((run / 'results.json').read_text())
            results[0]['hardware'] = machine
            (run / 'results.json').write_text(json.dumps(results))
        measured[name] = hub.export_checkpoint(run, run / 'results.json', hub_configs=out)
    card = (measured['wt_resnet_tiny.c10'] / 'README.md').read_text()
    assert '- images/s: inference throughput on CPU (Xeon under test, 2 threads) at batch size 256.' in card
    assert '- images/s: inference throughput on `cpu` at batch size 256.' in (
        measured['wtsm_resnet_tiny.c10'] / 'README.md').read_text()
    monkeypatch.setenv(HUB_CONFIGS_ENV, str(out))
    rows = {f'{row["model"]}.{row["tag"]}': row for row in hub.results_rows()}
    assert rows['wt_resnet_tiny.c10']['eval_machine'] == 'CPU (Xeon under test, 2 threads)'
    assert rows['wtsm_resnet_tiny.c10']['eval_machine'] == 'cpu'
    assert '| 974 (CPU (Xeon under test, 2 threads)) |' in hub.results_table()


def test_push_dry_run_lists_every_file_and_needs_no_token(published, monkeypatch, capsys):
    monkeypatch.delenv('HF_TOKEN', raising=False)
    assert hub.main(['push', '--dry-run', '--hub-configs', str(published['hub_configs'])]) == 0
    out = capsys.readouterr().out
    for name in TAGS:
        assert f'wt-zoo/{name}: would upload {len(hub.HUB_FILES)} files from {published["hub_configs"] / name}' in out
        for file in hub.HUB_FILES:
            url = f'https://huggingface.co/wt-zoo/{name}/blob/main/{file}'
            assert f'{published["hub_configs"] / name / file} -> {url}' in out
    assert hub.main(['push', '--hub-configs', str(published['hub_configs'])]) == 2
    assert 'HF_TOKEN' in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# timm's own pretrained tests, against the offline cache


def run_timm_pretrained_tests(work: Path, env: dict, names) -> None:
    """timm's two pretrained tests in a subprocess; each must have run and passed for every one of ``names``."""
    env = dict(env, PYTHONPATH=os.pathsep.join([str(work), os.environ.get('PYTHONPATH', '')]))
    env.pop('GITHUB_ACTIONS', None)  # timm defines the pretrained tests only off GitHub Actions
    report = work / f'junit-{len(list(work.glob("junit-*")))}.xml'
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', 'test_models.py', '-p', 'pretrained_plugin', '-q', '-p', 'no:cacheprovider',
         '-W', 'ignore', '--rootdir', str(work), f'--junitxml={report}'],
        cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    cases = {case.get('name'): [child.tag for child in case] for case in ET.parse(report).iter('testcase')}
    for name in names:
        for test in ('test_model_load_pretrained', 'test_model_features_pretrained'):
            assert cases.get(f'{test}[1-{name}]') == [], (test, name, sorted(cases))  # ran, no failure/skip
    assert len(cases) == 2 * len(names), sorted(cases)


@pytest.mark.slow
def test_timm_generic_pretrained_tests_pass_offline(published, seeded_cache, repo_cache, tmp_path):
    from timm_sdist import fetch_timm_tests
    tests_dir = fetch_timm_tests(REPO / '.cache' / 'timm-sdist')
    work = tmp_path / 'timm_tests'
    work.mkdir()
    shutil.copy(tests_dir / 'test_models.py', work / 'test_models.py')
    shutil.copy(REPO / 'tests' / 'timm_suite' / 'zoo_conftest.py', work / 'conftest.py')
    shutil.copy(REPO / 'tests' / 'timm_suite' / 'pretrained_plugin.py', work / 'pretrained_plugin.py')
    run_timm_pretrained_tests(work, offline_env(seeded_cache, published['hub_configs']), list(TAGS))
    if repo_cache is not None:  # every tag the repository publishes, from a cache seeded by install-cache
        run_timm_pretrained_tests(work, offline_env(repo_cache), REPO_TAGS)
