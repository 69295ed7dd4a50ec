"""train.py end to end on small data: outputs, resume after a kill, atomic checkpoints, NaN stop,
fine-tuning with one input channel, recipes, and two gloo ranks under torchrun."""
import csv
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import train
from wt_zoo import training as wt_training
from conftest import REPO_ROOT

# recipe columns that must match between runs; timings and memory legitimately differ
TIMING_COLUMNS = {'epoch_seconds', 'images_per_s', 'eval_images_per_s', 'peak_memory_mb'}


def read_summary(run_dir: Path):
    with open(run_dir / 'summary.csv') as f:
        return list(csv.DictReader(f))


def assert_same_run(straight: Path, resumed: Path, epochs: int) -> None:
    """Two run folders with the same per-epoch records (timings aside) and bit-identical final weights."""
    rows_straight, rows_resumed = read_summary(straight), read_summary(resumed)
    assert len(rows_straight) == len(rows_resumed) == epochs
    for a, b in zip(rows_straight, rows_resumed):
        assert {k: v for k, v in a.items() if k not in TIMING_COLUMNS} == \
               {k: v for k, v in b.items() if k not in TIMING_COLUMNS}
    w_straight = load_file(str(straight / 'model.safetensors'))
    w_resumed = load_file(str(resumed / 'model.safetensors'))
    assert all(torch.equal(w_straight[k], w_resumed[k]) for k in w_straight)


def fake_cifar_args(data_dir, out, name, *extra):
    return ['--dataset', 'cifar10', '--data-dir', str(data_dir), '--output', str(out), '--experiment', name,
            '--img-size', '16', '-b', '32', '--lr', '0.05', '--seed', '3', '--no-progress', *extra]


def run_script(args, timeout=240, env=None, check=True):
    proc = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, 'OMP_NUM_THREADS': '1', **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f'{args[:3]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}')
    return proc


@pytest.mark.slow
def test_train_writes_summary_args_checkpoints_and_weights(fake_cifar10, tmp_path):
    train.main(fake_cifar_args(fake_cifar10, tmp_path, 'run', '--epochs', '2', '--val-split-size', '64',
                               '--model-ema', '--model-ema-decay', '0.5'))
    run = tmp_path / 'run'
    rows = read_summary(run)
    assert [r['epoch'] for r in rows] == ['0', '1']
    for column in ('train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'lr', 'epoch_seconds', 'images_per_s',
                   'peak_memory_mb', 'ema_eval_top1'):
        assert column in rows[0], column
    # 320 training images less the 64 held out, in full batches of 32
    assert rows[0]['train_samples'] == '256' and rows[0]['train_steps'] == '8' and rows[0]['world_size'] == '1'
    assert float(rows[1]['images_per_s']) > 0 and float(rows[1]['peak_memory_mb']) > 0
    assert float(rows[1]['eval_top1']) > 40, 'the learnable fake data is learnt within two epochs'

    saved_args = yaml.safe_load((run / 'args.yaml').read_text())
    assert saved_args['model'] == 'wt_resnet_tiny' and saved_args['input_size'] == [3, 16, 16]
    assert saved_args['val_split_size'] == 64 and saved_args['seed'] == 3

    last = torch.load(run / 'last.pth.tar', weights_only=True)
    best = torch.load(run / 'best.pth.tar', weights_only=True)
    assert last['epoch'] == 1 and {'optimizer', 'scheduler', 'state_dict_ema', 'history', 'args'} <= set(last)
    assert [round(r['eval_top1'], 3) for r in last['history']] == [round(float(r['eval_top1']), 3) for r in rows]
    # exported weights are the best epoch's EMA weights (EMA on: best is chosen by and exported from the EMA)
    weights = load_file(str(run / 'model.safetensors'))
    assert best['best']['ema'] is True
    assert weights.keys() == best['state_dict_ema'].keys()
    assert all(torch.equal(weights[k], best['state_dict_ema'][k]) for k in weights)
    assert not list(run.glob('*.tmp')) and not list(run.glob('.export-*'))


@pytest.mark.slow
def test_cpu_amp_records_bfloat16_and_fractional_warmup_steps_per_update(fake_cifar10, tmp_path):
    """The CPU short-schedule recipes: --amp autocasts to bfloat16 on CPU (args.yaml must say so, not the
    float16 default) and a 1-epoch schedule warms up for a fraction of an epoch, per update."""
    train.main(fake_cifar_args(fake_cifar10, tmp_path, 'amp', '--epochs', '1', '--amp', '--sched-on-updates',
                               '--warmup-epochs', '0.5', '--warmup-lr', '0.001', '--train-subset', '128',
                               '--eval-subset', '64'))
    run = tmp_path / 'amp'
    saved_args = yaml.safe_load((run / 'args.yaml').read_text())
    assert saved_args['amp'] is True and saved_args['amp_dtype'] == 'bfloat16'
    assert saved_args['warmup_epochs'] == 0.5
    rows = read_summary(run)
    assert len(rows) == 1 and math.isfinite(float(rows[0]['train_loss']))
    # 4 updates, 2 of warm-up: the cosine has run its course by the last update, far below the base lr
    assert float(rows[0]['lr']) < 0.05 / 2


@pytest.mark.slow
def test_auto_switches_time_every_combination_and_keep_the_fastest(fake_cifar10, tmp_path, monkeypatch):
    """--amp auto / --channels-last auto: timed steps on a copy pick the path; args.yaml records what ran."""
    from wt_zoo.trainer import TrainingRun
    timed = []

    def fake_seconds(self, amp=None, channels_last=None, steps=3, warmup=2, give_up_after=None):
        timed.append((amp, channels_last))
        return 0.1 if (amp, channels_last) == (False, True) else 0.2  # fp32 + channels_last is fastest here

    monkeypatch.setattr(TrainingRun, 'seconds_per_step', fake_seconds)
    train.main(fake_cifar_args(fake_cifar10, tmp_path, 'auto', '--epochs', '1', '--amp', 'auto', '--channels-last',
                               'auto', '--train-subset', '64', '--eval-subset', '32'))
    assert sorted(timed) == [(False, False), (False, True), (True, False), (True, True)]
    saved = yaml.safe_load((tmp_path / 'auto' / 'args.yaml').read_text())
    assert saved['amp'] is False and saved['channels_last'] is True
    assert len(saved['fast_path_timings']) == 4
    assert max(saved['fast_path_timings'], key=lambda r: r['images_per_s']) == dict(amp=False, channels_last=True,
                                                                                   images_per_s=320.0)
    # a resumed run keeps the interrupted run's choice (and does not time again), so it ends as it would have
    timed.clear()
    train.main(fake_cifar_args(fake_cifar10, tmp_path, 'auto', '--epochs', '2', '--amp', 'auto', '--channels-last',
                               'auto', '--train-subset', '64', '--eval-subset', '32', '--resume',
                               str(tmp_path / 'auto')))
    assert timed == [] and len(read_summary(tmp_path / 'auto')) == 2
    saved = yaml.safe_load((tmp_path / 'auto' / 'args.yaml').read_text())
    assert saved['amp'] is False and saved['channels_last'] is True and len(saved['fast_path_timings']) == 4
    with pytest.raises(SystemExit, match='--amp expects on, off or auto'):
        train.main(fake_cifar_args(fake_cifar10, tmp_path, 'bad', '--amp', 'sometimes'))


def test_seconds_per_step_leaves_the_run_untouched(fake_cifar10, tmp_path):
    from wt_zoo.trainer import TrainingRun
    run = TrainingRun(train.parse_args(fake_cifar_args(fake_cifar10, tmp_path, 'probe', '--train-subset', '64')))
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    rng = torch.random.get_rng_state()
    assert run.seconds_per_step(steps=1, warmup=1) > 0
    assert all(torch.equal(before[k], v) for k, v in run.model.state_dict().items())
    assert torch.equal(rng, torch.random.get_rng_state()) and not run.optimizer.state


def test_args_yaml_pins_the_tags_own_model_arguments(fake_cifar10, tmp_path, monkeypatch):
    """A run records the test-time cap its tag gave it, so a retrain from its args.yaml evaluates its epochs at
    that cap after the tag's is chosen again; a cap the run named, and a model without tag arguments, stay as given."""
    from wt_zoo.models.implicit_resnet import TAG_MODEL_ARGS
    from wt_zoo.trainer import TrainingRun
    monkeypatch.setitem(TAG_MODEL_ARGS, 'deq_resnet_tiny.c10', dict(eval_f_max_iter=20))
    runs = {}
    for name, model, extra in (('tagged', 'deq_resnet_tiny', ()),
                               ('named', 'deq_resnet_tiny', ('--model-kwargs', 'eval_f_max_iter=0', 'f_tol=0.01')),
                               ('wt', 'wt_resnet_tiny', ())):
        runs[name] = TrainingRun(train.parse_args(fake_cifar_args(fake_cifar10, tmp_path, name, '--model', model,
                                                                  '--train-subset', '64', *extra)))
        runs[name].prepare_output()
    saved = {name: yaml.safe_load((tmp_path / name / 'args.yaml').read_text())['model_kwargs'] for name in runs}
    assert saved == {'tagged': {'eval_f_max_iter': 20}, 'named': {'eval_f_max_iter': 0, 'f_tol': 0.01}, 'wt': {}}
    assert runs['tagged'].model.deq_args['eval_f_max_iter'] == 20 and runs['named'].model.deq_args['eval_f_max_iter'] == 0
    monkeypatch.setitem(TAG_MODEL_ARGS, 'deq_resnet_tiny.c10', dict(eval_f_max_iter=30))  # the cap chosen again
    again = TrainingRun(train.parse_args(['--config', str(tmp_path / 'tagged' / 'args.yaml'), '--experiment', 'again']))
    assert again.model.deq_args['eval_f_max_iter'] == 20


def test_seconds_per_step_gives_up_after_one_slow_step(fake_cifar10, tmp_path, monkeypatch):
    """With a limit, a step on 1/8 of the batch (scaled) comes first; over the limit, nothing more is timed."""
    from wt_zoo import trainer
    run = trainer.TrainingRun(train.parse_args(fake_cifar_args(fake_cifar10, tmp_path, 'probe', '--train-subset', '64')))
    batches = []
    loss_fn = run.train_loss_fn
    run.train_loss_fn = lambda logits, target: batches.append(len(logits)) or loss_fn(logits, target)
    seconds = run.seconds_per_step(steps=2, warmup=2, give_up_after=1e-9)
    assert batches == [4] and seconds > 1e-9  # the probe, 32 // 8 images, was over the limit
    batches.clear()
    run.seconds_per_step(steps=2, warmup=2, give_up_after=1e9)
    assert batches == [4, 32, 32, 32, 32]
    batches.clear()
    run.seconds_per_step(steps=2, warmup=2)
    assert batches == [32] * 4  # no limit, no probe
    # a probe under the limit but a first full step over it: given up after that step
    clock = iter([0.0, 1.0, 10.0, 100.0])
    monkeypatch.setattr(trainer.time, 'perf_counter', lambda: next(clock))
    batches.clear()
    assert run.seconds_per_step(steps=2, warmup=2, give_up_after=50.0) == 90.0
    assert batches == [4, 32]


def test_auto_switches_give_up_on_a_hopeless_option(fake_cifar10, tmp_path, monkeypatch):
    """bf16 without native support can take minutes a step: once an option is 3x the fastest, stop timing it."""
    from wt_zoo.trainer import GIVE_UP_FACTOR, TrainingRun
    limits = {}

    def fake_seconds(self, amp=None, channels_last=None, steps=3, warmup=2, give_up_after=None):
        limits[(amp, channels_last)] = give_up_after
        if amp:  # what a real step returns when its first warm-up step is over the limit
            return give_up_after * 1.5 if give_up_after is not None else 50.0
        return 0.1 if channels_last else 0.2

    monkeypatch.setattr(TrainingRun, 'seconds_per_step', fake_seconds)
    run = TrainingRun(train.parse_args(fake_cifar_args(fake_cifar10, tmp_path, 'auto', '--train-subset', '64',
                                                       '--amp', 'auto', '--channels-last', 'auto')))
    fastest_fp32 = pytest.approx(GIVE_UP_FACTOR * 0.1)
    assert limits == {(False, False): None, (False, True): pytest.approx(GIVE_UP_FACTOR * 0.2),
                      (True, False): fastest_fp32, (True, True): fastest_fp32}
    assert [('timed' in row) for row in run.fast_path_timings] == [False, False, True, True]
    assert run.args.amp == 'off' and run.args.channels_last == 'on'


@pytest.mark.slow
def test_deq_unrolled_warmup_epochs_then_solving(fake_cifar10, tmp_path):
    train.main(fake_cifar_args(fake_cifar10, tmp_path, 'warm', '--model', 'deq_resnet_tiny', '--epochs', '2',
                               '--unrolled-warmup-epochs', '1', '--train-subset', '64', '--eval-subset', '32',
                               '--model-kwargs', 'f_max_iter=3', 'eval_f_max_iter=0'))  # not the c10 tag's 24
    first, second = read_summary(tmp_path / 'warm')
    assert first['solver_nstep'] == ''  # the warm-up epoch ran unrolled, no solver
    assert 1 <= float(second['solver_nstep']) <= 3
    assert 1 <= float(first['eval_solver_nstep']) <= 3 and float(second['eval_solver_rel_residual']) > 0
    with pytest.raises(SystemExit, match='has no unrolled warm-up'):
        train.main(fake_cifar_args(fake_cifar10, tmp_path, 'wt', '--unrolled-warmup-epochs', '1'))


@pytest.mark.slow
def test_image_folder_is_the_default_dataset_as_in_timm(tmp_path):
    """A timm user leaves --dataset out for an image folder (DIR/train/<class>/, DIR/validation/<class>/)."""
    from test_data import write_image_folder
    write_image_folder(tmp_path / 'data', per_class=8, size=16)
    argv = ['--model', 'wt_resnet_tiny', '--data-dir', str(tmp_path / 'data'), '--img-size', '16', '-b', '8',
            '--epochs', '1', '--workers', '0', '--output', str(tmp_path), '--experiment', 'folder', '--no-progress']
    train.main(argv)
    row, = read_summary(tmp_path / 'folder')
    assert row['train_samples'] == '24' and float(row['eval_top1']) >= 0
    assert yaml.safe_load((tmp_path / 'folder' / 'args.yaml').read_text())['num_classes'] == 3
    # the same command again (a recipe names its --experiment) leaves the finished run as it is
    files = {p.name: p.read_bytes() for p in (tmp_path / 'folder').iterdir()}
    with pytest.raises(SystemExit, match=r'folder holds another run \(last.pth.tar\), which this run would '
                                         r'overwrite; continue it with --resume .*folder, or name another'):
        train.main(argv)
    assert {p.name: p.read_bytes() for p in (tmp_path / 'folder').iterdir()} == files


KILL_DURING_SECOND_EPOCH_SAVE = textwrap.dedent('''
    import io, os, signal, sys, torch
    real_save = torch.save
    calls = []

    def save_then_die(obj, f, *args, **kwargs):
        """Epoch 0 writes last + best; epoch 1's last dies with half its bytes on disk."""
        calls.append(1)
        if len(calls) == 3:
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            f.write(buf.getvalue()[:len(buf.getvalue()) // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)

    torch.save = save_then_die
    sys.argv = ['train.py'] + sys.argv[1:]
    sys.path.insert(0, os.getcwd())
    import train
    sys.exit(train.main())
''')


@pytest.mark.slow
def test_resume_after_kill_mid_checkpoint_equals_uninterrupted_run(fake_cifar10, tmp_path):
    recipe = ['--epochs', '2', '--train-subset', '128', '--eval-subset', '64', '--mixup', '0.2', '--smoothing', '0.1',
              '--warmup-epochs', '1']
    run_script(['train.py', *fake_cifar_args(fake_cifar10, tmp_path, 'straight', *recipe)])

    killer = tmp_path / 'kill_during_save.py'
    killer.write_text(KILL_DURING_SECOND_EPOCH_SAVE)
    killed = run_script([str(killer), *fake_cifar_args(fake_cifar10, tmp_path, 'killed', *recipe)], check=False)
    assert killed.returncode == -9, killed.stderr[-3000:]
    run = tmp_path / 'killed'
    partial = list(run.glob('.last.pth.tar.*.tmp'))
    assert len(partial) == 1, 'the kill left a half-written temp file'
    assert torch.load(run / 'last.pth.tar', weights_only=True)['epoch'] == 0, 'last.pth.tar is the intact epoch 0'
    with pytest.raises(ValueError, match='temp file of an interrupted save'):
        wt_training.find_checkpoint(partial[0])
    assert wt_training.find_checkpoint(run) == run / 'last.pth.tar'

    run_script(['train.py', *fake_cifar_args(fake_cifar10, tmp_path, 'killed', *recipe), '--resume', str(run)])
    assert_same_run(tmp_path / 'straight', run, epochs=2)
    # each sitting is recorded with the epochs it trained: the straight run one, the killed run two
    straight, = yaml.safe_load((tmp_path / 'straight' / 'args.yaml').read_text())['sittings']
    assert straight['first_epoch'] == 1 and straight['git_commit'] == wt_training.git_commit()
    assert straight['hardware'] == yaml.safe_load((tmp_path / 'straight' / 'args.yaml').read_text())['hardware']
    sittings = yaml.safe_load((run / 'args.yaml').read_text())['sittings']
    assert [s['first_epoch'] for s in sittings] == [1, 2] and sittings[0]['date'] <= sittings[1]['date']
    assert torch.load(run / 'last.pth.tar', weights_only=True)['sittings'] == sittings


def test_alternate_flips_and_fused_sgd_resume_exactly(fake_cifar10, tmp_path, caplog, capsys):
    """--hflip-mode alternate and --opt-impl: a run stopped after epoch 1 and resumed ends bit-identical to an
    uninterrupted one; resuming with another --opt-impl uses the new one (and warns), not the checkpoint's."""
    from wt_zoo.trainer import TrainingRun
    recipe = ['--epochs', '3', '--train-subset', '64', '--eval-subset', '32', '--hflip-mode', 'alternate',
              '--opt-impl', 'fused']
    train.main(fake_cifar_args(fake_cifar10, tmp_path, 'straight', *recipe))
    stopped = TrainingRun(train.parse_args(fake_cifar_args(fake_cifar10, tmp_path, 'stopped', *recipe)))
    assert all(g['fused'] for g in stopped.optimizer.param_groups)
    stopped.prepare_output()
    for epoch in range(2):
        stopped.train_epoch(epoch)
    del stopped
    train.main(fake_cifar_args(fake_cifar10, tmp_path, 'stopped', *recipe, '--resume', str(tmp_path / 'stopped')))
    assert_same_run(tmp_path / 'straight', tmp_path / 'stopped', epochs=3)
    saved = yaml.safe_load((tmp_path / 'straight' / 'args.yaml').read_text())
    assert saved['hflip_mode'] == 'alternate' and saved['opt_impl'] == 'fused'

    other = [a if a != 'fused' else 'foreach' for a in recipe]
    run = TrainingRun(train.parse_args(fake_cifar_args(fake_cifar10, tmp_path, 'straight', *other, '--resume',
                                                       str(tmp_path / 'straight'))))
    assert all(g['foreach'] and not g['fused'] for g in run.optimizer.param_groups) and run.optimizer.state
    assert "opt_impl: 'fused' -> 'foreach'" in caplog.text
    with pytest.raises(SystemExit):
        train.parse_args(['--opt-impl', 'fast'])
    assert "argument --opt-impl: invalid choice: 'fast'" in capsys.readouterr().err


def test_planning_times_the_runs_own_epoch_loop_on_copies(fake_cifar10, tmp_path, monkeypatch):
    """A budget's step time pays what every step of an epoch pays (the batch draw at the scheduled size,
    gradient clipping, the EMA update), on copies: the run's model, EMA, optimizer, loader and RNG are untouched."""
    from timm.utils import ModelEmaV3
    import wt_zoo.training as wt_training
    from wt_zoo.trainer import TrainingRun
    run = TrainingRun(train.parse_args(fake_cifar_args(
        fake_cifar10, tmp_path, 'plan', '-b', '8', '--img-size', '32', '--epochs', '4', '--progressive-min-size', '16',
        '--model-ema', '--clip-grad', '1.0')))
    assert len(run.train_loader) == 40
    ema_updates, clips, sides = [], [], []
    update, clip = ModelEmaV3.update, wt_training._clip
    monkeypatch.setattr(ModelEmaV3, 'update', lambda self, *a, **k: (ema_updates.append(self), update(self, *a, **k)))
    monkeypatch.setattr(wt_training, '_clip', lambda *a, **k: (clips.append(a[1]), clip(*a, **k)))
    run.model.register_forward_pre_hook(lambda module, inputs: sides.append((module is run.model, inputs[0].shape[-1])))
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    ema_before = {k: v.clone() for k, v in run.model_ema.state_dict().items()}
    rng = torch.random.get_rng_state()

    assert run.seconds_per_loop_step(image_size=16, max_steps=5, timing_seconds=1e9) > 0  # 2 warm-up + 5 timed
    assert len(ema_updates) == len(clips) == len(sides) == 7 and set(clips) == {1.0}
    assert run.model_ema not in ema_updates and sides == [(False, 16)] * 7
    ema_updates.clear(), sides.clear()
    run.seconds_per_loop_step(max_steps=5, timing_seconds=0.)  # a slow step is still timed 3 times, at the stored size
    assert len(ema_updates) == 5 and sides == [(False, 32)] * 5

    assert run.train_loader.image_size == 32 and not run.optimizer.state
    assert torch.equal(rng, torch.random.get_rng_state())
    assert all(torch.equal(before[k], v) for k, v in run.model.state_dict().items())
    assert all(torch.equal(ema_before[k], v) for k, v in run.model_ema.state_dict().items())


def test_progressive_resizing_trains_small_first_ends_full_size_and_resumes_exactly(fake_cifar10, tmp_path):
    """Epoch sizes follow the schedule (summary column), the run resumes bit-identical mid-ramp, the export
    is evaluated at the full size, and a budget's seconds per epoch average the schedule's sizes."""
    from wt_zoo.trainer import TrainingRun
    recipe = ['--epochs', '3', '--train-subset', '64', '--eval-subset', '32', '--img-size', '32',
              '--progressive-min-size', '16', '--progressive-end', '0.6']
    train.main(fake_cifar_args(fake_cifar10, tmp_path, 'straight', *recipe))
    straight = read_summary(tmp_path / 'straight')
    assert [row['train_image_size'] for row in straight] == ['16', '24', '32']
    stopped = TrainingRun(train.parse_args(fake_cifar_args(fake_cifar10, tmp_path, 'stopped', *recipe)))
    stopped.prepare_output()
    stopped.train_epoch(0)
    del stopped
    train.main(fake_cifar_args(fake_cifar10, tmp_path, 'stopped', *recipe, '--resume', str(tmp_path / 'stopped')))
    assert_same_run(tmp_path / 'straight', tmp_path / 'stopped', epochs=3)
    saved = yaml.safe_load((tmp_path / 'straight' / 'args.yaml').read_text())
    assert saved['progressive_min_size'] == 16 and saved['input_size'] == [3, 32, 32]

    run = TrainingRun(train.parse_args(fake_cifar_args(fake_cifar10, tmp_path, 'plan', *recipe)))
    step_seconds = {16: 1., 24: 2., 32: 6.}
    run.seconds_per_loop_step = lambda image_size=None, *args, **kwargs: step_seconds[image_size]
    assert run.seconds_per_epoch() == pytest.approx((1. + 2. + 6.) / 3 * len(run.train_loader))
    x, _ = next(iter(run.eval_loader))
    assert x.shape[-2:] == (32, 32)


def test_progressive_resizing_rejects_sizes_it_cannot_serve(fake_cifar10, tmp_path):
    from test_data import write_image_folder
    with pytest.raises(SystemExit, match=r'smallest training size must be an integer in \[8, 16\)'):
        train.main(fake_cifar_args(fake_cifar10, tmp_path, 'big', '--epochs', '1', '--progressive-min-size', '16'))
    with pytest.raises(SystemExit, match='wt_resnet_tiny takes images of at least 16 pixels a side'):
        train.main(fake_cifar_args(fake_cifar10, tmp_path, 'small', '--img-size', '32', '--progressive-min-size', '12'))
    write_image_folder(tmp_path / 'data', per_class=4, size=16)
    with pytest.raises(SystemExit, match="--progressive-min-size needs the on-device loader .*serves one size"):
        train.main(['--data-dir', str(tmp_path / 'data'), '--img-size', '16', '--workers', '0', '--epochs', '1',
                    '--output', str(tmp_path), '--progressive-min-size', '8'])


def test_atomic_save_failure_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / 'last.pth.tar'
    wt_training.atomic_torch_save({'epoch': 0, 'w': torch.ones(3)}, path)

    def broken_save(obj, f, *args, **kwargs):
        f.write(b'PK\x03\x04 half a zip')
        raise OSError('disk full')

    monkeypatch.setattr(torch, 'save', broken_save)
    with pytest.raises(OSError, match='disk full'):
        wt_training.atomic_torch_save({'epoch': 1, 'w': torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)['epoch'] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ['last.pth.tar']


@pytest.mark.slow
def test_nan_loss_stops_naming_epoch_and_step_and_keeps_last_good_checkpoint(fake_cifar10, tmp_path, monkeypatch):
    real_create = wt_training.create_model_from_args
    steps_per_epoch, bad_step = 4, 2

    def diverging_model(args, **kwargs):
        """The model's output turns NaN at the third training step of epoch 1, as after a blow-up."""
        model = real_create(args, **kwargs)
        forward, calls = model.forward, []

        def forward_then_nan(x):
            out = forward(x)
            if model.training:
                calls.append(1)
                if len(calls) == steps_per_epoch + bad_step + 1:
                    out = out * float('nan')
            return out

        model.forward = forward_then_nan
        return model

    monkeypatch.setattr(wt_training, 'create_model_from_args', diverging_model)
    with pytest.raises(SystemExit) as stop:
        train.main(fake_cifar_args(fake_cifar10, tmp_path, 'nan', '--epochs', '3', '--train-subset', '128',
                                   '--eval-subset', '32'))
    message = str(stop.value)
    assert 'non-finite loss (nan) at epoch 1 step 2 (of 4 steps per epoch)' in message
    assert 'last good checkpoint kept' in message and 'epoch 0' in message
    run = tmp_path / 'nan'
    assert torch.load(run / 'last.pth.tar', weights_only=True)['epoch'] == 0
    assert [r['epoch'] for r in read_summary(run)] == ['0'] and not (run / 'model.safetensors').exists()


@pytest.mark.slow
def test_aux_loss_is_added_and_deq_solver_steps_are_logged(fake_cifar10, tmp_path, monkeypatch):
    train.main(fake_cifar_args(fake_cifar10, tmp_path, 'deq', '--model', 'deq_resnet_tiny', '--epochs', '1',
                               '--train-subset', '64', '--eval-subset', '32', '--smoothing', '0',
                               '--model-kwargs', 'f_max_iter=3', 'jac_reg_weight=0.1'))
    row = read_summary(tmp_path / 'deq')[0]
    assert 1 <= float(row['solver_nstep']) <= 3

    real_create = wt_training.create_model_from_args

    def with_big_aux(args, **kwargs):
        model = real_create(args, **kwargs)
        model.aux_loss = lambda: torch.tensor(100.)
        return model

    monkeypatch.setattr(wt_training, 'create_model_from_args', with_big_aux)
    train.main(fake_cifar_args(fake_cifar10, tmp_path, 'aux', '--epochs', '1', '--train-subset', '64',
                               '--eval-subset', '32', '--smoothing', '0'))
    assert 100 < float(read_summary(tmp_path / 'aux')[0]['train_loss']) < 110


@pytest.mark.slow
def test_finetune_cifar_weights_on_fashion_mnist_with_one_input_channel(fake_cifar10, fashion_mnist_dir, tmp_path):
    import timm
    source = timm.create_model('wt_resnet_tiny.c10')
    source_dir = tmp_path / 'source'
    source_dir.mkdir()
    weights = wt_training.export_weights(source, source_dir)

    # timm adapts the first conv (3 -> 1 channel: summed) and resets the head, as for --pretrained
    args = train.parse_args(['--model', 'wt_resnet_tiny.c10', '--pretrained-path', str(weights), '--in-chans', '1',
                             '--num-classes', '5'])
    adapted = wt_training.create_model_from_args(args)
    assert adapted.stem.conv.weight.shape[1] == 1 and adapted.num_classes == 5
    torch.testing.assert_close(adapted.stem.conv.weight, source.stem.conv.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(adapted.stages[0].implicit.block.conv1.weight,
                               source.stages[0].implicit.block.conv1.weight)

    train.main(['--model', 'wt_resnet_tiny.c10', '--pretrained-path', str(weights), '--in-chans', '1',
                '--dataset', 'fashion_mnist', '--data-dir', str(fashion_mnist_dir), '--output', str(tmp_path),
                '--experiment', 'ft', '--train-subset', '512', '--eval-subset', '256', '--epochs', '2', '-b', '64',
                '--lr', '0.05', '--img-size', '16', '--no-progress'])
    rows = read_summary(tmp_path / 'ft')
    assert float(rows[-1]['eval_top1']) > 40, 'Fashion-MNIST is learnt well above chance (10%) in two short epochs'
    saved = yaml.safe_load((tmp_path / 'ft' / 'args.yaml').read_text())
    assert saved['input_size'] == [1, 16, 16] and saved['num_classes'] == 10
    assert load_file(str(tmp_path / 'ft' / 'model.safetensors'))['stem.conv.weight'].shape[1] == 1


def test_config_yaml_sets_defaults_and_the_command_line_wins(tmp_path):
    cfg = tmp_path / 'recipe.yaml'
    cfg.write_text('model: wt_resnet_small\nlr: 0.3\nbatch_size: 64\nmodel_kwargs: {drop_rate: 0.1}\n')
    args = train.parse_args(['--config', str(cfg), '--lr', '0.01', '--model-kwargs', 'norm_groups=4'])
    assert (args.model, args.lr, args.batch_size) == ('wt_resnet_small', 0.01, 64)
    assert args.model_kwargs == {'drop_rate': 0.1, 'norm_groups': 4}


def test_a_recipe_switch_can_be_turned_off_from_the_command_line(tmp_path):
    cfg = tmp_path / 'recipe.yaml'
    cfg.write_text('model: wt_resnet_tiny\nmodel_ema: true\nmodel_ema_warmup: true\nsched_on_updates: true\n')
    args = train.parse_args(['--config', str(cfg), '--no-model-ema-warmup', '--no-sched-on-updates'])
    assert (args.model_ema, args.model_ema_warmup, args.sched_on_updates) == (True, False, False)
    assert train.parse_args(['--model', 'wt_resnet_tiny', '--model-ema']).model_ema is True


def test_model_kwargs_keep_an_n_m_mask_kind_a_string():
    args = train.parse_args(['--model', 'wtsm_resnet_tiny', '--model-kwargs', 'mask_kind=2:4', 'mask_density=0.5',
                             'depth=3', 'solver=anderson'])
    assert args.model_kwargs == {'mask_kind': '2:4', 'mask_density': 0.5, 'depth': 3, 'solver': 'anderson'}


def test_config_with_unknown_key_names_it(tmp_path, capsys):
    cfg = tmp_path / 'recipe.yaml'
    cfg.write_text('lr: 0.3\nbatchsize: 64\n')
    with pytest.raises(SystemExit):
        train.parse_args(['--config', str(cfg)])
    assert "unknown keys ['batchsize']" in capsys.readouterr().err


@pytest.mark.parametrize('recipe', sorted((REPO_ROOT / 'configs').glob('*.yaml')), ids=lambda p: p.name)
def test_recipes_parse_and_name_registered_models(recipe):
    import timm
    import wt_zoo  # noqa: F401
    args = train.parse_args(['--config', str(recipe)])
    assert timm.is_model(args.model.split('.')[0]), f'{recipe.name}: unknown model {args.model}'
    assert args.dataset in ('cifar10', 'fashion_mnist') and args.epochs > 0 and args.val_split_size
    model = wt_training.create_model_from_args(args)
    assert model.num_classes == 10


def test_missing_dataset_is_a_clear_error_and_downloads_nothing(tmp_path):
    with pytest.raises(SystemExit) as stop:
        train.main(['--dataset', 'cifar10', '--data-dir', str(tmp_path), '--output', str(tmp_path / 'out'),
                    '--epochs', '1'])
    assert 'not found. Looked in' in str(stop.value) and '--dataset-download' in str(stop.value)
    assert list(tmp_path.iterdir()) == []


DDP_KILL_AFTER_FIRST_EPOCH = textwrap.dedent('''
    import os, signal, sys, torch
    real_save, calls = torch.save, []

    def save_then_die(obj, f, *args, **kwargs):
        calls.append(1)
        result = real_save(obj, f, *args, **kwargs)
        if len(calls) == 2:  # rank 0 dies after epoch 0's last and best; torchrun then stops rank 1
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    torch.save = save_then_die
    sys.argv = ['train.py'] + sys.argv[1:]
    sys.path.insert(0, os.getcwd())
    import train
    sys.exit(train.main())
''')


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_stay_in_sync_and_resume(fake_cifar10, tmp_path):
    killer = tmp_path / 'ddp_kill.py'
    killer.write_text(DDP_KILL_AFTER_FIRST_EPOCH)
    common = fake_cifar_args(fake_cifar10, tmp_path, 'ddp', '--epochs', '2', '--train-subset', '128',
                             '--eval-subset', '40', '--device', 'cpu')
    launch = ['-m', 'torch.distributed.run', '--nproc_per_node', '2', '--standalone']
    first = run_script([*launch, str(killer), *common], check=False)
    assert first.returncode != 0
    run = tmp_path / 'ddp'
    killed_at = torch.load(run / 'last.pth.tar', weights_only=True)
    assert killed_at['epoch'] == 0 and not (run / 'summary.csv').exists()  # died before writing the summary

    run_script([*launch, 'train.py', *common, '--resume', str(run)])
    rows = read_summary(run)
    assert [r['epoch'] for r in rows] == ['0', '1']  # epoch 0's row comes back from the checkpoint's history
    assert float(rows[0]['eval_top1']) == pytest.approx(killed_at['history'][0]['eval_top1'], abs=1e-4)
    for row in rows:
        # each rank takes half of the 128 images: 2 steps of 32 per rank, 128 images per epoch in all
        assert row['world_size'] == '2' and row['train_steps'] == '2' and row['train_samples'] == '128'
        assert float(row['rank_weight_max_diff']) == 0.0, 'parameters and buffers are identical on both ranks'
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith('.')) == [
        'args.yaml', 'best.pth.tar', 'config.json', 'last.pth.tar', 'model.safetensors', 'summary.csv']
