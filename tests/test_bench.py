"""python -m wt_zoo.bench on tiny models and a tiny grid: each subcommand runs and writes its tables (CSV, JSON,
README) with the right rows and columns, plus its provenance. The measured figures are not asserted."""
import argparse
import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from wt_zoo.bench import main as bench_main
from wt_zoo.bench import recipe as bench_recipe
from wt_zoo.bench.common import ModelSpec, parse_model_specs
from wt_zoo.trainer import GIVEN_UP


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: with the cores shared by other processes, OpenMP threads spin against each other
    and a tiny step takes 100x longer; the tests check behaviour, not speed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def read_csv(path: Path):
    with open(path) as f:
        return list(csv.DictReader(f))


def check_tables(folder: Path, *names):
    """Each table exists as CSV and JSON with the same rows; returns the JSON rows by name."""
    tables = {}
    for name in names:
        rows = json.loads((folder / f'{name}.json').read_text())
        assert len(read_csv(folder / f'{name}.csv')) == len(rows), name
        tables[name] = rows
    return tables


def check_provenance(folder: Path, subcommand: str):
    run = json.loads((folder / 'run.json').read_text())
    assert run['command'].startswith(f'python -m wt_zoo.bench {subcommand} ')
    assert run['date'] and run['git_commit']
    assert {'cpu_model', 'torch_threads', 'cuda_device', 'torch'} <= set(run['machine'])
    readme = (folder / 'README.md').read_text()
    assert run['command'] in readme and run['git_commit'] in readme
    return readme


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_model_specs_parse_overrides_and_name_their_dense_twin():
    specs = parse_model_specs(['wt*_resnet_tiny:depth=8,width=16', 'deq_resnet_tiny:width=16,f_max_iter=3'])
    assert [s.label for s in specs] == ['wt_resnet_tiny:depth=8,width=16', 'wtsm_resnet_tiny:depth=8,width=16',
                                        'deq_resnet_tiny:width=16,f_max_iter=3']
    assert specs[1].twin() == specs[0] and specs[0].twin() == specs[0]
    assert specs[2].twin() == ModelSpec('wt_resnet_tiny', (('width', 16),))  # solver settings do not carry over
    assert specs[0].depth() == 8 and specs[2].depth() is None
    with pytest.raises(ValueError, match='key=value'):
        parse_model_specs(['wt_resnet_tiny:depth'])
    # the multi-resolution family: its DEQ is plain mdeq_<size>, its twin the weight-tied MDEQ
    mdeq = parse_model_specs(['*mdeq_tiny'])
    assert [s.name for s in mdeq] == ['mdeq_tiny', 'wt_mdeq_tiny', 'wtsm_mdeq_tiny']
    assert [s.family for s in mdeq] == ['deq', 'wt', 'wtsm']
    assert all(s.twin() == ModelSpec('wt_mdeq_tiny') for s in mdeq)
    assert mdeq[0].depth() is None and mdeq[2].depth() == 4


def test_git_commit_marks_changed_code_dirty_but_not_rewritten_results(tmp_path):
    import subprocess
    from wt_zoo.bench.common import git_commit

    def git(*args):
        subprocess.run(['git', '-C', str(tmp_path), *args], check=True, capture_output=True)

    git('init', '-q')
    (tmp_path / 'results').mkdir()
    (tmp_path / 'results' / 'table.json').write_text('[]')
    (tmp_path / 'train.py').write_text('print(1)')
    git('add', '.')
    git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'first')
    head = subprocess.run(['git', '-C', str(tmp_path), 'rev-parse', 'HEAD'], capture_output=True,
                          text=True).stdout.strip()
    # a bench's own earlier sitting rewrote its results, and a chain script sits untracked: still the same code
    (tmp_path / 'results' / 'table.json').write_text('[1]')
    (tmp_path / 'chain.sh').write_text('')
    assert git_commit(tmp_path) == head
    (tmp_path / 'train.py').write_text('print(2)')
    assert git_commit(tmp_path) == head + '+dirty'


def test_efficiency_tables_ratios_and_bars(fake_cifar10, data_cache, tmp_path):
    out = tmp_path / 'efficiency'
    # the DEQ evaluates at its training cap 3 (eval_f_max_iter 0), not the c10 tag's 24 (timm's default tag)
    assert bench_main([
        'efficiency', 'wtsm_resnet_tiny:width=16,depth=2', 'deq_resnet_tiny:width=16,f_max_iter=3,eval_f_max_iter=0',
        'wt_resnet_tiny:width=16,depth=8', '--out', str(out), '--devices', 'cpu', '--infer-batches', '1', '8',
        '--train-batch', '8', '--min-run-time', '0.01', '--matmul-size', '64', '--threads', '1', '--data-dir', str(fake_cifar10),
        '--data-cache', str(data_cache)]) == 0
    tables = check_tables(out, 'efficiency', 'matmul_peak', 'bars')
    rows = {r['model']: r for r in tables['efficiency']}
    # each model follows its dense WT twin, which the bench adds when it was not asked for
    assert [r['model'] for r in tables['efficiency']] == [
        'wt_resnet_tiny:width=16,depth=2', 'wtsm_resnet_tiny:width=16,depth=2', 'wt_resnet_tiny:width=16',
        'deq_resnet_tiny:width=16,f_max_iter=3,eval_f_max_iter=0', 'wt_resnet_tiny:width=16,depth=8']
    common = {'params', 'gflops', 'infer_b1_img_s', 'infer_b8_img_s', 'train_img_s', 'train_mem_mb',
              'achieved_gflops_s', 'params_vs_wt', 'gflops_vs_wt', 'infer_b1_img_s_vs_wt', 'infer_b8_img_s_vs_wt',
              'train_img_s_vs_wt', 'train_mem_mb_vs_wt'}
    for row in rows.values():
        assert row['device'] == 'cpu'
        assert common <= set(row), common - set(row)
        assert all(positive(row[k]) for k in common), row
        assert row['params_vs_wt'] == 1.0  # twins share every parameter
    wt, wtsm, deq = (rows['wt_resnet_tiny:width=16,depth=2'], rows['wtsm_resnet_tiny:width=16,depth=2'],
                     rows['deq_resnet_tiny:width=16,f_max_iter=3,eval_f_max_iter=0'])
    assert wt['infer_b8_img_s_vs_wt'] == 1.0 and wt['twin'] == wt['model']
    assert {'train_mem_ckpt_mb', 'ckpt_memory_saving', 'conv_time_share', 'conv_flop_share'} <= set(wt)
    assert {'effective_gflops', 'effective_gflops_vs_wt', 'train_mem_ckpt_mb'} <= set(wtsm)
    assert deq['twin'] == 'wt_resnet_tiny:width=16'
    assert {'deq_iterations', 'deq_iterations_b8', 'train_deq_iterations', 'gflops_per_iteration'} <= set(deq)
    assert 'train_mem_ckpt_mb' not in deq and deq['deq_iterations_b8'] <= 3

    assert [(p['device'], p['when']) for p in tables['matmul_peak']] == [('cpu', 'start'), ('cpu', 'end')]
    assert all(positive(p['gmacs_per_s']) for p in tables['matmul_peak'])

    bars = tables['bars']
    by_bar = {}
    for bar in bars:
        by_bar.setdefault(bar['bar'][0], []).append(bar)
    assert sorted(by_bar) == ['1', '2', '3', '4']
    assert [b['subject'] for b in by_bar['1']] == ['wtsm_resnet_tiny:width=16,depth=2']
    assert [b['subject'] for b in by_bar['2']] == ['wt_resnet_tiny:width=16 vs deq_resnet_tiny:width=16,f_max_iter=3,eval_f_max_iter=0']
    assert [b['subject'] for b in by_bar['3']] == ['wt_resnet_tiny:width=16,depth=8 (depth 8)']
    assert len(by_bar['4']) == 3
    assert all(b['passed'] in (True, False) and b['figure'] for b in bars)
    assert all(b['note'] for b in bars if b['passed'] is False), 'a missed bar says what limits it'
    readme = check_provenance(out, 'efficiency')
    for heading in ('## Absolute figures', '## Ratios to the dense weight-tied twin', '## Machine fp32 matmul',
                    '## Performance bars', '## Where WT inference time goes'):
        assert heading in readme


def tiny_recipe(path: Path, model: str, **lines) -> str:
    """A train.py recipe like configs/*.yaml (fast recipe v1 lines), shrunk to run in seconds on the fake data."""
    recipe = dict(model=model, dataset='cifar10', batch_size=16, opt='sgd', lr=0.05, sched='poly', decay_rate=1.0,
                  min_lr=0.0, warmup_epochs=0, sched_on_updates=True, smoothing=0.1, model_ema=True,
                  model_ema_decay=0.9, amp='off', channels_last='off', img_size=16, log_interval=1, **lines)
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


TINY_DATA = ['--train-subset', '32', '--held-out', '32', '--eval-subset', '32']


def test_stability_records_divergence_accuracy_spread_and_solver_curves(fake_cifar10, data_cache, tmp_path,
                                                                         monkeypatch):
    out, runs_dir = tmp_path / 'stability', tmp_path / 'runs'
    recipes = [tiny_recipe(tmp_path / 'wt.yaml', 'wt_resnet_tiny', model_kwargs=dict(width=16, depth=2)),
               # eval_f_max_iter 0: evaluate at the training cap, not the c10 tag's test-time 24 (timm's default tag)
               tiny_recipe(tmp_path / 'deq.yaml', 'deq_resnet_tiny',
                           model_kwargs=dict(width=16, f_max_iter=3, eval_f_max_iter=0), unrolled_warmup_epochs=1)]
    command = ['stability', '--recipes', *recipes, '--seeds', '0', '1', '--lrs', '0.05', '1e30', '--epochs', '2',
               *TINY_DATA, '--out', str(out), '--runs', str(runs_dir), '--data-dir', str(fake_cifar10),
               '--data-cache', str(data_cache)]
    # a sitting too short for the bench stops after the run under way and says the results are partial
    assert bench_main([*command, '--stop-after', '0']) == 0
    assert len(check_tables(out, 'runs', 'summary')['runs']) == 1
    assert '**Partial: 1 of 8 runs finished**' in (out / 'README.md').read_text()
    assert json.loads((out / 'run.json').read_text())['runs_finished'] == 1
    # a second short sitting reads the finished run back without counting it, trains the next, keeps both
    assert bench_main([*command, '--stop-after', '0']) == 0
    assert len(check_tables(out, 'runs', 'summary')['runs']) == 2
    assert '**Partial: 2 of 8 runs finished**' in (out / 'README.md').read_text()
    # the same command again goes on from there
    assert bench_main(command) == 0
    tables = check_tables(out, 'runs', 'curves', 'summary')
    runs = tables['runs']
    assert len(runs) == 8
    assert 'Partial' not in (out / 'README.md').read_text()
    assert {(r['family'], r['lr'], r['seed']) for r in runs} == {
        (m, lr, s) for m in ('wt', 'deq') for lr in (0.05, 1e30) for s in (0, 1)}
    for r in runs:
        if r['lr'] == 0.05:
            assert r['status'] == 'ok' and 0 <= r['held_out_top1'] <= 100 and r['epochs_done'] == 2, r
        else:  # a huge learning rate makes the weights non-finite within the first epoch
            assert r['status'] == 'diverged' and r['diverged_epoch'] == 0 and r['held_out_top1'] is None, r
            assert r['error'], r
    deq_ok = [r for r in runs if r['family'] == 'deq' and r['status'] == 'ok']
    assert all(r['nstep_first'] == r['nstep_last'] == 3 and r['residual_last'] > 0 for r in deq_ok)  # at its cap
    curve = [c for c in tables['curves'] if c['model'] == 'deq_resnet_tiny' and c['lr'] == 0.05 and c['seed'] == 0]
    assert [c['epoch'] for c in curve] == [1, 2]
    # the unrolled warm-up epoch trains without solving, and its evaluation solves
    assert curve[0].get('train_nstep') is None and curve[0]['held_out_nstep'] == 3
    assert curve[1]['held_out_nstep'] == 3 and curve[1]['train_nstep'] == 3 and curve[1]['held_out_residual'] > 0
    summary = {(r['family'], r['lr']): r for r in tables['summary']}
    assert len(summary) == 4
    assert summary[('wt', 1e30)]['diverged'] == 2 and summary[('wt', 0.05)]['diverged'] == 0
    assert {'top1_mean', 'top1_std', 'top1_min', 'top1_max', 'nstep_last_mean'} <= set(summary[('deq', 0.05)])
    assert 'top1_mean' not in summary[('deq', 1e30)]
    assert (out / 'stability_accuracy.png').stat().st_size > 0 and (out / 'stability_solver.png').stat().st_size > 0
    readme = check_provenance(out, 'stability')
    assert '![stability_solver.png](stability_solver.png)' in readme
    # every run is a train.py run folder, exported like one
    assert (runs_dir / 'deq_resnet_tiny-lr0.05-seed1' / 'model.safetensors').is_file()

    # rerunning continues: finished runs (diverged ones too) are read back, never trained again
    def no_training(*args, **kwargs):
        raise AssertionError('a finished run was trained again')
    monkeypatch.setattr(bench_recipe, 'open_run', no_training)
    assert bench_main(command) == 0
    assert check_tables(out, 'runs')['runs'] == runs
    # a run folder holds one run: asking it for another recipe is refused, not spliced
    with pytest.raises(SystemExit, match='cannot continue'):
        bench_main([*command[:command.index('--epochs')], '--epochs', '3', *command[command.index('--epochs') + 2:]])
    # on a machine that was not kept the run folders are gone: the outcomes the results folder keeps stand for them
    shutil.rmtree(runs_dir)
    assert bench_main(command) == 0
    assert check_tables(out, 'runs', 'curves')['runs'] == runs
    assert len(list((out / 'outcomes').glob('*.json'))) == 8


def test_an_interrupted_bench_run_resumes_to_the_same_outcome(fake_cifar10, data_cache, tmp_path, monkeypatch):
    from wt_zoo.bench.recipe import OUTCOME_FILE, train_outcome
    recipe = tiny_recipe(tmp_path / 'wt.yaml', 'wt_resnet_tiny', model_kwargs=dict(width=16, depth=2))
    flags = ['--config', recipe, '--epochs', '2', '--val-split-size', '32', '--train-subset', '32', '--seed', '3']
    where = ['--data-dir', str(fake_cifar10), '--data-cache', str(data_cache)]
    whole = train_outcome(tmp_path / 'whole', flags, where)
    # the same run stopped after its first epoch (its checkpoint kept, no outcome), then resumed by the bench
    cut = bench_recipe.open_run(tmp_path / 'cut', [*flags, *where])
    cut.prepare_output()
    cut.train_epoch(0)
    cut.close()
    assert not (tmp_path / 'cut' / OUTCOME_FILE).exists()
    resumed = train_outcome(tmp_path / 'cut', flags, where)
    assert [h['epoch'] for h in resumed['history']] == [0, 1]
    assert resumed['held_out_top1'] == whole['held_out_top1']
    assert resumed['final_train_loss'] == whole['final_train_loss']
    # a comment in the recipe changes nothing; a setting does, and the folder refuses to continue
    Path(recipe).write_text(Path(recipe).read_text() + '# the same recipe\n')
    assert train_outcome(tmp_path / 'cut', flags, where) == resumed
    # a finished run's outcome is kept beside the results; its folder lost, the kept copy is read back, untrained
    assert train_outcome(tmp_path / 'whole', flags, where, keep_dir=tmp_path / 'kept') == whole
    shutil.rmtree(tmp_path / 'whole')
    monkeypatch.setattr(bench_recipe, 'open_run', lambda *a, **k: pytest.fail('a kept outcome was trained again'))
    assert train_outcome(tmp_path / 'whole', flags, where, keep_dir=tmp_path / 'kept') == whole
    assert json.loads((tmp_path / 'whole' / OUTCOME_FILE).read_text()) == whole
    # a kept outcome stands for its own run only
    shutil.rmtree(tmp_path / 'whole')
    with pytest.raises(SystemExit, match='keeps the outcome of'):
        train_outcome(tmp_path / 'whole', [*flags[:-1], '4'], where, keep_dir=tmp_path / 'kept')
    Path(recipe).write_text(Path(recipe).read_text().replace('smoothing: 0.1', 'smoothing: 0.2'))
    with pytest.raises(SystemExit, match='its recipe file changed'):
        train_outcome(tmp_path / 'cut', flags, where)


def test_pooled_std_weighs_groups_by_their_degrees_of_freedom():
    from wt_zoo.bench.recipe import pooled_std
    assert pooled_std([[1.0], [2.0]]) is None  # one seed each: no spread measured
    assert pooled_std([[0.0, 2.0], [5.0]]) == pytest.approx(math.sqrt(2.0))
    # sums of squares 2 (1 dof) and 8 (2 dof): sqrt(10 / 3)
    assert pooled_std([[0.0, 2.0], [1.0, 3.0, 5.0]]) == pytest.approx(math.sqrt(10 / 3))



def test_stability_rows_give_no_std_for_a_single_finished_run():
    from wt_zoo.bench.recipe import mean_std
    from wt_zoo.bench.stability import summarise
    assert mean_std([]) == (None, None) and mean_std([80.0]) == (80.0, None)
    assert mean_std([80.0, 82.0]) == (81.0, pytest.approx(math.sqrt(2.0)))
    runs = [dict(model='wt_resnet_tiny', family='wt', lr=0.2, status='ok', held_out_top1=80.0),
            dict(model='wt_resnet_tiny', family='wt', lr=0.2, status='diverged', held_out_top1=None)]
    row, = summarise(runs)
    assert row['runs'] == 2 and row['diverged'] == 1 and row['top1_mean'] == 80.0 and row['top1_std'] is None

def test_progress_paces_its_eta_by_the_runs_trained_in_this_sitting(monkeypatch, capsys):
    """A resumed bench reads finished runs back in no time; they must not make the ETA promise an end."""
    from wt_zoo.bench import common
    clock = [0.0]
    monkeypatch.setattr(common.time, 'perf_counter', lambda: clock[0])
    progress = common.Progress([1.0, 1.0, 2.0, 2.0], started=0.0)
    done = {'a', 'b'}
    seen = []
    for item in progress.within(['a', 'b', 'c', 'd'], stop_after_minutes=5, finished=lambda item: item in done):
        seen.append(item)
        progress.start(item)
        if item not in done:
            clock[0] += 240.0  # 4 minutes for a run of cost 2
        progress.finish(item)
    assert seen == ['a', 'b', 'c', 'd']
    lines = capsys.readouterr().err.splitlines()
    assert lines[1] == '[1/4] a (read back from an earlier sitting)'
    assert lines[5] == '[3/4] c (elapsed 4.0 min, ETA 4.0 min)'  # 2 cost units left at 2 min each
    # the minutes count from the sitting's start; read-backs start nothing, so the cut falls after 'c'
    clock[0] = 0.0
    progress = common.Progress([1.0, 1.0, 2.0, 2.0], started=0.0)
    seen = []
    for item in progress.within(['a', 'b', 'c', 'd'], stop_after_minutes=3, finished=lambda item: item in done):
        seen.append(item)
        clock[0] += 0.0 if item in done else 240.0
    assert seen == ['a', 'b', 'c']


SWEEP_GRID = ['--size', 'tiny', '--depths', '1', '2', '--widths', '16', '--dense-extra', '4x8', '--densities', '0.5',
              '--mask-depths', '2', '--mask-width', '16', '--mask-kinds', '2:4', '--mask-modes', 'shared',
              '--epochs', '1', '--seeds', '0', '1', *TINY_DATA]


def test_sweep_grid_tables_plots_resume_and_guidelines(fake_cifar10, data_cache, tmp_path, monkeypatch):
    out, runs_dir = tmp_path / 'results' / 'sweep', tmp_path / 'runs'
    recipe = tiny_recipe(tmp_path / 'recipe.yaml', 'wt_resnet_tiny')
    command = ['sweep', *SWEEP_GRID, '--recipe', recipe, '--out', str(out), '--runs', str(runs_dir),
               '--data-dir', str(fake_cifar10), '--data-cache', str(data_cache)]
    assert bench_main(command) == 0
    tables = check_tables(out, 'sweep', 'runs')
    rows = tables['sweep']
    assert [r['config'] for r in rows] == [
        'wt_d1_w16', 'wt_d2_w16', 'wt_d4_w8', 'wtsm_d2_w16_p0.5_unstructured_distinct',
        'wtsm_d2_w16_p0.5_2:4_distinct', 'wtsm_d2_w16_p0.5_unstructured_shared']
    columns = {'config', 'family', 'depth', 'width', 'mask_density', 'mask_kind', 'mask_mode', 'params', 'gflops',
               'effective_gflops', 'held_out_top1', 'held_out_top1_std', 'seeds', 'status', 'train_seconds'}
    for r in rows:
        assert columns <= set(r) and r['status'] == 'ok' and r['seeds'] == 2
        seeds = [x['held_out_top1'] for x in tables['runs'] if x['config'] == r['config']]
        assert len(seeds) == 2 and r['held_out_top1'] == pytest.approx(sum(seeds) / 2)
    masked = [r for r in rows if r['family'] == 'wtsm']
    assert all(r['params'] == rows[1]['params'] for r in masked)  # masks add no parameters
    assert all(r['effective_gflops'] < r['gflops'] for r in masked)
    # the 2:4 mask reached the model as a mask kind, not as YAML's base-60 number 124
    args = yaml.safe_load((runs_dir / 'wtsm_d2_w16_p0.5_2:4_distinct-seed1' / 'args.yaml').read_text())
    assert args['model'] == 'wtsm_resnet_tiny' and args['model_kwargs']['mask_kind'] == '2:4' and args['seed'] == 1
    for png in ('sweep_depth.png', 'sweep_width.png', 'sweep_density.png', 'sweep_params.png', 'sweep_flops.png'):
        assert (out / png).stat().st_size > 0, png
    readme = check_provenance(out, 'sweep')
    run_info = json.loads((out / 'run.json').read_text())
    assert run_info['resolution'] == pytest.approx(2 * run_info['seed_std_pooled'])
    assert f"**Resolution: {run_info['resolution']:.2f} points**" in readme

    # rerunning continues: a finished configuration is never trained again
    def no_training(*args, **kwargs):
        raise AssertionError('the sweep retrained a finished configuration')
    monkeypatch.setattr(bench_recipe, 'open_run', no_training)
    assert bench_main(command) == 0
    assert [r['config'] for r in check_tables(out, 'sweep')['sweep']] == [r['config'] for r in rows]

    doc = tmp_path / 'docs' / 'guidelines.md'
    assert bench_main(['guidelines', '--sweep-results', str(out), '--stability-results', str(tmp_path / 'none'),
                       '--efficiency-results', str(tmp_path / 'none'), '--out', str(doc)]) == 0
    text = doc.read_text()
    for heading in ('## Summary', '## Choosing for a parameter budget', '## Choosing for a FLOP budget',
                    '## Depth (at equal parameters)', '## Sparse masks', '## Figures', '## Every configuration'):
        assert heading in text, heading
    assert "pooled over the sweep's configurations (seeds 0, 1" in text  # the sweep's own seeds set the resolution
    assert '1 epochs of `recipe.yaml` on 32 CIFAR-10 training images' in text
    for png in ('sweep_depth.png', 'sweep_density.png', 'sweep_flops.png'):
        assert f'](../results/sweep/{png})' in text  # embedded, relative to the document
    assert '([Figure 1](#figure-1))' in text
    for r in rows:
        assert r['label'] in text


def test_ablation_compares_variants_to_the_baseline_over_seeds_with_tta_beside(fake_cifar10, data_cache, tmp_path):
    out, runs_dir = tmp_path / 'ablation', tmp_path / 'runs'
    recipe = tiny_recipe(tmp_path / 'wt.yaml', 'wt_resnet_tiny', model_kwargs=dict(width=16, depth=2))
    command = ['ablation', '--recipe', recipe, '--variant', 'base=', '--variant', 'cutout4=--cutout 4 --hflip 0',
               '--seeds', '0', '1', '--epochs', '2', *TINY_DATA, '--out', str(out), '--runs', str(runs_dir),
               '--data-dir', str(fake_cifar10), '--data-cache', str(data_cache)]
    assert bench_main([*command, '--tta', 'none']) == 0
    tables = check_tables(out, 'variants', 'runs')
    runs, rows = tables['runs'], tables['variants']
    assert [(r['variant'], r['seed']) for r in runs] == [('base', 0), ('cutout4', 0), ('base', 1), ('cutout4', 1)]
    args = yaml.safe_load((runs_dir / 'cutout4-seed1' / 'args.yaml').read_text())
    assert (args['cutout'], args['hflip'], args['seed'], args['epochs']) == (4, 0.0, 1, 2)
    assert yaml.safe_load((runs_dir / 'base-seed0' / 'args.yaml').read_text())['cutout'] == 0
    base, cutout = rows
    assert base['variant'] == 'base' and base['seeds'] == 2 and 'delta' not in base
    mean = {v: sum(r['held_out_top1'] for r in runs if r['variant'] == v) / 2 for v in ('base', 'cutout4')}
    assert cutout['delta'] == pytest.approx(mean['cutout4'] - mean['base'])
    resolution = json.loads((out / 'run.json').read_text())['resolution']
    assert cutout['verdict'] == ('within resolution' if abs(cutout['delta']) <= resolution
                                 else 'better' if cutout['delta'] > 0 else 'worse')
    assert cutout['flags'] == '--cutout 4 --hflip 0'
    check_provenance(out, 'ablation')
    assert json.loads((out / 'run.json').read_text())['recipe_settings'] == yaml.safe_load(Path(recipe).read_text())

    # asked again with TTA: the finished runs gain the TTA figure of their last weights, without training again
    epochs_before = (runs_dir / 'base-seed0' / 'summary.csv').read_text()
    assert bench_main([*command, '--tta', 'flip']) == 0
    runs = check_tables(out, 'runs')['runs']
    assert all(0 <= r['held_out_tta_flip_top1'] <= 100 for r in runs)
    assert (runs_dir / 'base-seed0' / 'summary.csv').read_text() == epochs_before
    assert check_tables(out, 'variants')['variants'][1]['tta_delta'] is not None
    assert 'with flip TTA (%)' in (out / 'README.md').read_text()


def test_ablation_tells_a_variant_whose_flags_changed_nothing():
    from wt_zoo.bench.ablation import IDENTICAL, learning_curve, summarise
    def run(variant, seed, top1):
        return dict(variant=variant, seed=seed, status='ok', held_out_top1=top1, train_seconds=60.0, train_img_s=900.0)
    history = [dict(epoch=0, train_loss=1.5, eval_loss=1.2, eval_top1=55.0, epoch_seconds=47.0)]
    moved = [dict(history[0], eval_top1=56.0)]
    runs = [run('base', 0, 55.0), run('noop', 0, 55.0), run('moved', 0, 55.0)]
    # a different timing is still the same run; a different accuracy anywhere on the curve is not
    curves = {('base', 0): learning_curve(history), ('noop', 0): learning_curve([dict(history[0], epoch_seconds=50.0)]),
              ('moved', 0): learning_curve(moved)}
    rows, _ = summarise(runs, [('base', []), ('noop', ['--model-ema-decay', '0.995']), ('moved', ['--cutout', '8'])],
                        'none', curves)
    assert rows[1]['verdict'] == IDENTICAL and rows[2].get('verdict') != IDENTICAL


def test_ablation_variants_are_named_words(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench_main(['ablation', '--recipe', 'configs/wt_resnet_tiny.c10.yaml', '--variant', '--cutout 8'])
    assert 'NAME="train.py flags"' in capsys.readouterr().err
    with pytest.raises(SystemExit, match='must differ'):
        bench_main(['ablation', '--recipe', 'configs/wt_resnet_tiny.c10.yaml', '--variant', 'a=', '--variant', 'a=',
                    '--out', str(tmp_path / 'out')])


def test_deq_solver_solves_further_only_when_asked_and_never_reads_test(tmp_path):
    out = tmp_path / 'deq_solver'
    assert bench_main(['deq-solver', 'deq_resnet_tiny.c10', '--eval-f-max-iter', '0', '20', '--eval-subset', '32',
                       '--out', str(out)]) == 0
    rows = check_tables(out, 'solver')['solver']
    check_provenance(out, 'deq-solver')
    trained_cap, further = rows
    assert trained_cap['solver_cap'] == 12 and trained_cap['solver_nstep'] <= 12
    assert further['solver_cap'] == 20 and 12 < further['solver_nstep'] <= 20  # f_tol 1e-3 is not reached in 12
    assert further['solver_rel_residual'] <= trained_cap['solver_rel_residual']
    assert {r['split'] for r in rows} == {'val'} and {r['samples'] for r in rows} == {32}
    assert {r['f_solver'] for r in rows} == {'anderson'}  # the solver the tag trained with, unless asked
    # another forward solver, asked for: solved with it (its own iterations), named in the rows and the choice
    assert bench_main(['deq-solver', 'deq_resnet_tiny.c10', '--eval-f-max-iter', '0', '--f-solvers', 'broyden',
                       '--eval-subset', '32', '--out', str(out)]) == 0
    other, = check_tables(out, 'solver')['solver']
    assert other['f_solver'] == 'broyden' and other['solver_cap'] == 12 and other['solver_nstep'] <= 12
    assert other['solver_rel_residual'] != trained_cap['solver_rel_residual']
    assert '- deq_resnet_tiny.c10: broyden at eval_f_max_iter 0 (cap 12)' in (out / 'README.md').read_text()
    with pytest.raises(SystemExit, match='--f-solvers: unknown newton; valid choices: anderson, broyden'):
        bench_main(['deq-solver', 'deq_resnet_tiny.c10', '--f-solvers', 'newton', '--out', str(out)])


def test_deq_solver_needs_a_held_out_split(tmp_path):
    from wt_zoo.bench.deq_solver import held_out_flags
    from wt_zoo.cards import choose_solver_cap as choose
    (tmp_path / 'train_args.yaml').write_text('dataset: cifar10\nval_split_size: 0\n')
    with pytest.raises(SystemExit, match='held nothing out of its training split'):
        held_out_flags(tmp_path)
    (tmp_path / 'train_args.yaml').write_text('dataset: cifar10\nval_split_size: 5000\nval_split_seed: 7\n')
    assert held_out_flags(tmp_path) == ['--dataset', 'cifar10', '--split', 'val', '--val-split-size', '5000',
                                        '--val-split-seed', '7']
    rows = [dict(top1=80.0, solver_nstep=12.0, solver_rel_residual=0.04),
            dict(top1=80.0, solver_nstep=24.0, solver_rel_residual=0.02),
            dict(top1=79.0, solver_nstep=6.0, solver_rel_residual=0.03)]
    assert choose(rows) is rows[0]  # the cheaper of the two best
    # convergence first: a higher top-1 short of the residual aim loses to the best converged one
    rows.append(dict(top1=81.0, solver_nstep=4.0, solver_rel_residual=0.08))
    assert choose(rows) is rows[0]
    assert choose(rows[3:]) is rows[3]  # none converged: the best top-1 of all


def _sweep_folder(folder: Path, top1: dict, epochs: int, seeds=(0,)) -> Path:
    """A sweep results folder of dense configurations ``{(depth, width): held-out top-1}``."""
    folder.mkdir(parents=True)
    rows = [dict(config=f'wt_d{d}_w{w}', label=f'd{d} w{w}', family='wt', depth=d, width=w, mask_density=1.0,
                 mask_kind='dense', mask_mode='dense', params=w * 1000, gflops=d * w * w * 1e-6,
                 effective_gflops=d * w * w * 1e-6, status='ok', held_out_top1=v) for (d, w), v in top1.items()]
    (folder / 'sweep.json').write_text(json.dumps(rows))
    (folder / 'run.json').write_text(json.dumps(dict(settings=dict(epochs=epochs, seeds=list(seeds), size='tiny'),
                                                     seed_std_pooled=0.25)))
    return folder


def test_guidelines_say_how_the_choices_moved_from_an_earlier_regime(tmp_path):
    from wt_zoo.bench.guidelines import generate, rank_correlation
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([1, 2, 3], [1, 1, 1]) is None  # no order to compare with
    # short regime: depth buys nothing at width 32; long regime: depth 4 is clearly better
    before = _sweep_folder(tmp_path / 'short', {(2, 32): 41.0, (4, 32): 40.8, (2, 64): 44.0, (4, 64): 43.9}, 2)
    now = _sweep_folder(tmp_path / 'long', {(2, 32): 80.0, (4, 32): 84.0, (2, 64): 83.0, (4, 64): 86.0, (8, 64): 86.1},
                        15, seeds=(0, 1))
    text = generate(now, tmp_path / 'docs' / 'g.md', previous_dir=before)
    section = text.split('## How the choices moved from the earlier regime')[1].split('\n## ')[0]
    assert '](../short/README.md)' in section and '2 epochs' in section
    assert 'd8 w64' not in section  # only configurations in both regimes are compared
    assert '| d4 w32 | 40.8% | 4 | 84.0% | 2 | +2 |' in section
    assert "rank correlation between the regimes over the 4 configurations in both: **0.00**" in section
    assert '- best configuration: earlier d2 w64, now d4 w64 (moved).' in section
    assert '- width 32: smallest depth within the resolution of the best, earlier 2, now 4 (moved).' in section
    assert 'the depth choice moved at 2 of 2 widths' in text.split('## Summary')[1].split('\n## ')[0]
    # without an earlier sweep the document has no such section
    assert 'How the choices moved' not in generate(now, tmp_path / 'docs' / 'g.md')
    assert 'Partial' not in text
    # a sweep --stop-after ended early says so where its regime is stated
    run = json.loads((now / 'run.json').read_text())
    (now / 'run.json').write_text(json.dumps(dict(run, runs_finished=7, runs_planned=10)))
    regime = next(line for line in generate(now, tmp_path / 'docs' / 'g.md').splitlines() if line.startswith('- regime:'))
    assert '**Partial: 7 of 10 runs finished**' in regime
    with pytest.raises(SystemExit, match='--previous-sweep .* holds no sweep.json'):
        bench_main(['guidelines', '--sweep-results', str(now), '--previous-sweep', str(tmp_path / 'none'),
                    '--out', str(tmp_path / 'g.md')])


def _stability_folder(folder: Path, wt_std: float) -> Path:
    """A stability results folder whose WT runs at lr 0.15 spread by ``wt_std`` points."""
    folder.mkdir(parents=True)
    rows = [dict(model='wt_resnet_tiny', family='wt', lr=0.15, runs=3, diverged=0, top1_mean=50.0, top1_std=wt_std)]
    (folder / 'summary.json').write_text(json.dumps(rows))
    return folder


def test_guidelines_take_the_earlier_sweeps_resolution_from_its_own_regime(tmp_path):
    from wt_zoo.bench.guidelines import generate
    before = _sweep_folder(tmp_path / 'short', {(2, 32): 41.0, (4, 32): 43.0}, 2)
    run = json.loads((before / 'run.json').read_text())
    run.pop('seed_std_pooled')  # one seed: its noise must come from elsewhere
    (before / 'run.json').write_text(json.dumps(dict(run, settings=dict(run['settings'], lr=0.15))))
    now = _sweep_folder(tmp_path / 'long', {(2, 32): 80.0, (4, 32): 84.0}, 15, seeds=(0, 1))
    long_stability = _stability_folder(tmp_path / 'stab_long', 0.2)
    short_stability = _stability_folder(tmp_path / 'stab_short', 1.5)

    def moved_section(**kw):
        text = generate(now, tmp_path / 'docs' / 'g.md', stability_dir=long_stability, previous_dir=before, **kw)
        return text.split('## How the choices moved from the earlier regime')[1].split('\n## ')[0]

    # this regime's stability run says nothing of the earlier regime's noise: the assumed resolution, said so
    section = moved_section()
    assert '(resolution 1.0 points: an assumed 1.0 point' in section
    assert '- width 32: smallest depth within the resolution of the best, earlier 4, now 4' in section
    # a stability run at the earlier regime gives it: 2 points at lr 0.15 turn a 2-point gap into no difference
    section = moved_section(previous_stability_dir=short_stability)
    assert '(resolution 3.0 points: twice the seed-to-seed standard deviation' in section
    assert '](../stab_short/README.md)' in section and 'stab_long' not in section
    assert '- width 32: smallest depth within the resolution of the best, earlier 2, now 4 (moved).' in section
    with pytest.raises(SystemExit, match='--previous-stability-results gives the resolution of --previous-sweep'):
        bench_main(['guidelines', '--sweep-results', str(now), '--previous-stability-results', str(short_stability),
                    '--out', str(tmp_path / 'g.md')])
    with pytest.raises(SystemExit, match='--previous-stability-results .* holds no summary.json'):
        bench_main(['guidelines', '--sweep-results', str(now), '--previous-sweep', str(before),
                    '--previous-stability-results', str(tmp_path / 'none'), '--out', str(tmp_path / 'g.md')])


def test_guidelines_without_sweep_results_says_what_to_run(tmp_path):
    with pytest.raises(SystemExit, match='run `python -m wt_zoo.bench sweep` first'):
        bench_main(['guidelines', '--sweep-results', str(tmp_path / 'missing'), '--out', str(tmp_path / 'g.md')])
    assert not (tmp_path / 'g.md').exists()


def test_budget_plans_the_common_epochs_that_fit():
    from wt_zoo.bench.budget import plan_epochs
    rows = [dict(train_seconds_per_epoch=10.0, eval_share=0.1), dict(train_seconds_per_epoch=20.0, eval_share=0.0)]
    assert plan_epochs(rows, 2) == 3  # 31 s per epoch for both twins, 120 s
    assert plan_epochs(rows, 2, max_epochs=2) == 2
    with pytest.raises(ValueError, match='fewer than --min-epochs 4'):
        plan_epochs(rows, 2, min_epochs=4)


def test_budget_times_a_recipe_named_twice_once_and_counts_it_twice(fake_cifar10, data_cache, tmp_path):
    from conftest import REPO_ROOT
    config = str(REPO_ROOT / 'configs' / 'deq_resnet_tiny.c10.yaml')
    plan_file = tmp_path / 'plan.json'
    assert bench_main(['budget', config, config, '--minutes', '0.5', '--json', str(plan_file),
                       f'--train-args=--data-dir {fake_cifar10} --data-cache {data_cache} --img-size 16 -b 32 '
                       '--progressive-min-size 0 --val-split-size 64 --amp off --channels-last off']) == 0
    plan = json.loads(plan_file.read_text())
    first, second = plan['recipes']
    assert first == second  # one timing (two would differ in their last digits), counted for both variants
    assert first['matmul_gflops'] > 0
    per_epoch = first['train_seconds_per_epoch'] * (1 + first['eval_share'])
    assert plan['epochs'] == math.floor(0.5 * 60 / (per_epoch + per_epoch)) >= 1


def test_time_to_accuracy_curve_and_minutes_to_reach():
    from wt_zoo.bench.time_to_accuracy import curve_rows, minutes_to_reach
    history = [dict(epoch=0, epoch_seconds=30.0, eval_top1=50.0, images_per_s=100.0),
               dict(epoch=1, epoch_seconds=30.0, eval_top1=70.0, ema_eval_top1=81.0, images_per_s=120.0)]
    points = curve_rows('m', history)
    assert [p['train_minutes'] for p in points] == [0.5, 1.0] and [p['epoch'] for p in points] == [1, 2]
    assert points[1]['heldout_top1'] == 81.0 and points[1]['heldout_top1_raw'] == 70.0  # the EMA's when kept
    assert minutes_to_reach(points, 50) == 0.5 and minutes_to_reach(points, 80) == 1.0
    assert minutes_to_reach(points, 90) is None


def test_time_to_accuracy_bars_need_both_the_accuracy_and_the_minutes():
    from wt_zoo.bench.time_to_accuracy import bar_lines
    row = dict(model='wt_resnet_tiny.c10', test_top1=88.0, train_minutes=59.9, hardware='CPU')
    assert bar_lines([row])[0].endswith('**met**')
    assert bar_lines([dict(row, train_minutes=60.5)])[0].endswith('**not met**')
    assert bar_lines([dict(row, test_top1=87.99)])[0].endswith('**not met**')
    assert bar_lines([dict(row, model='wtsm_resnet_tiny.c10')]) == []
    final = dict(row, test_top1=88.1, train_images=50000, whole_train_split=True)
    held_out, whole = bar_lines([dict(row, test_top1=87.8)], [final])  # both runs are shown, each with its verdict
    assert 'held out' in held_out and held_out.endswith('**not met**')
    assert 'all 50,000 training images' in whole and whole.endswith('**met**')


def test_time_to_accuracy_limits_read_the_last_third_of_each_curve():
    from wt_zoo.bench.time_to_accuracy import limit_lines, limit_rows

    def curve(model, heldout, train):
        return [dict(model=model, epoch=i + 1, train_minutes=float(i + 1), heldout_top1=h, heldout_top1_raw=h - 0.1,
                     train_top1=t) for i, (h, t) in enumerate(zip(heldout, train))]

    summary = [dict(model='wt_resnet_tiny.c10', test_top1=87.8), dict(model='wt_resnet_small.c10', test_top1=87.0),
               dict(model='wtsm_resnet_tiny.c10', test_top1=87.0)]  # no bar: no limit row
    curves = (curve('wt_resnet_tiny.c10', [80, 85, 87.0, 87.2, 87.3, 87.4], [80, 85, 88, 91, 94, 97])
              + curve('wt_resnet_small.c10', [70, 76, 80, 83, 85, 87.0], [70, 76, 81, 84, 86, 88])
              + curve('wtsm_resnet_tiny.c10', [80, 85, 87, 87, 87, 87], [80, 85, 88, 91, 94, 97]))
    tiny, small = limit_rows(summary, curves, resolution=lambda row: (0.6, 'measured'))
    # The last third starts at the first point at or past 2/3 of the minutes (4.0 of 6.0).
    assert tiny['last_third_from_minutes'] == 4.0 and tiny['last_third_gain'] == pytest.approx(0.2)
    assert tiny['limit'] == 'generalisation' and tiny['train_minus_heldout'] == pytest.approx(97 - 87.3)
    assert small['limit'] == 'minutes' and small['last_third_gain'] == pytest.approx(4.0)
    flat, = limit_rows(summary[:1], curve('wt_resnet_tiny.c10', [85, 86, 87, 87, 87, 87], [90] * 6),
                       lambda row: (0.6, 'measured'))
    assert flat['limit'] == 'plateau'  # neither held-out nor training top-1 moved
    assert limit_rows(summary[:1], curves, lambda row: (None, ''))[0]['limit'].startswith('not resolvable')
    tiny_line, small_line = limit_lines([tiny, small])
    assert 'limited by what the model generalises' in tiny_line and 'limited by the minutes' in small_line
    assert 'seed resolution of 0.60 (measured)' in tiny_line


def test_time_to_accuracy_limits_use_the_resolution_of_the_recipe_each_run_trained_with():
    # A run of the fast recipe's settings reads its measured resolution; one with another lr (recipe v2) the borrowed
    # one, as bench claims judges the same rows.
    from wt_zoo.bench.claims import Sources, borrowed_resolution, fast_recipe
    from wt_zoo.bench.time_to_accuracy import recipe_resolution
    src = Sources()
    fast = fast_recipe(src)
    same = dict(fast['settings'], model='wt_resnet_tiny.c10', epochs=68, seed=1)  # run-specific keys do not matter
    value, source = recipe_resolution(dict(recipe=same))
    assert value == fast['resolution'] and 'fast recipe' in source
    value, source = recipe_resolution(dict(recipe=dict(same, lr=fast['settings']['lr'] * 2)))
    assert value == borrowed_resolution(src) != fast['resolution'] and source.startswith('borrowed')


def test_time_to_accuracy_needs_a_budget_for_recipes(tmp_path):
    with pytest.raises(SystemExit, match='--minutes M .* is required with recipes'):
        bench_main(['time-to-accuracy', 'configs/wt_resnet_tiny.c10.yaml', '--out', str(tmp_path)])


def test_time_to_accuracy_twin_at_fixed_epochs_keeps_its_plan(tmp_path):
    from wt_zoo.bench.time_to_accuracy import PLAN_FILE, _plan
    (tmp_path / PLAN_FILE).write_text(json.dumps(dict(minutes=142.0, epochs=23, epochs_fitting=22)))
    assert _plan('configs/wtsm_resnet_small.c10.yaml', 142.0, tmp_path, [], epochs=23)['epochs'] == 23
    assert _plan('configs/wtsm_resnet_small.c10.yaml', 142.0, tmp_path, [])['epochs'] == 23  # resumed as planned
    with pytest.raises(SystemExit, match='planned for 23 epochs in 142.0 min, not 30 in 142.0'):
        _plan('configs/wtsm_resnet_small.c10.yaml', 142.0, tmp_path, [], epochs=30)
    with pytest.raises(SystemExit, match='--epochs must be a positive number'):
        _plan('configs/wtsm_resnet_small.c10.yaml', 142.0, tmp_path / 'new', [], epochs=0)


def test_time_to_accuracy_keeps_each_sitting_of_a_resumed_run():
    from wt_zoo.bench.time_to_accuracy import trained_by, with_planned_sittings
    from wt_zoo.training import record_sitting, sitting_epochs
    first, second, third = (dict(date=f'2026-12-0{i}', git_commit=c * 40, load_average_1min=0.5)
                            for i, c in ((1, 'a'), (2, 'b'), (3, 'c')))
    sittings = record_sitting(record_sitting([], 1, first), 61, second)
    assert [s['first_epoch'] for s in sittings] == [1, 61]
    # a sitting stopped before its first checkpoint trained nothing: the next one from the same epoch replaces it
    sittings = record_sitting(sittings, 61, third)
    assert [s['git_commit'][0] for s in sittings] == ['a', 'c']
    # while it has not finished an epoch, a sitting is left out of the epochs trained so far
    assert [s['last_epoch'] for s in sitting_epochs(sittings, 60)] == [60]
    sittings = sitting_epochs(sittings, 82)
    assert [(s['git_commit'][0], s['first_epoch'], s['last_epoch']) for s in sittings] == [('a', 1, 60), ('c', 61, 82)]
    assert trained_by(dict(git_commit='c' * 40, sittings=sittings)) == \
        f'`{"a" * 10}` (epochs 1-60), `{"c" * 10}` (epochs 61-82)'
    # one sitting, or a row written before sittings were kept: the commit alone
    alone = sitting_epochs([dict(first, first_epoch=1)], 82)
    assert trained_by(dict(git_commit='c' * 40, sittings=alone)) == f'`{"a" * 10}`'
    assert trained_by(dict(git_commit='c' * 40)) == f'`{"c" * 10}`'
    # a run trained before sittings were recorded and resumed after: its first epochs' commit is unknown, not guessed
    resumed = sitting_epochs(record_sitting([], 61, second), 82)
    assert resumed[0]['load_average_1min'] is None
    assert trained_by(dict(git_commit='b' * 40, sittings=resumed)) == \
        f'not recorded (epochs 1-60), `{"b" * 10}` (epochs 61-82)'
    # sittings the bench kept in its plan file (before train.py recorded them) come first, never twice
    opened = record_sitting([], 1, first)
    planned = dict(epochs=82, sittings=record_sitting(opened, 36, second))
    recorded = record_sitting([], 61, third)
    assert [s['git_commit'][0] for s in with_planned_sittings(planned, recorded, 82)] == ['a', 'b', 'c']
    assert [s['git_commit'][0] for s in with_planned_sittings(planned, [], 61)] == ['a', 'b']
    assert with_planned_sittings(dict(epochs=82), recorded, 82) == recorded
    mine = record_sitting(opened, 36, third)
    assert with_planned_sittings(planned, mine, 82) == mine  # the run's own record wins where both have one


def write_time_to_accuracy_run(folder: Path, seed: int, heldout, test_top1: float, flags: str = '', lr: float = 0.5,
                               hardware: str = 'CPU (Intel Xeon, 2 threads)'):
    """A finished time-to-accuracy results folder as the bench writes it (summary and curves), one held-out run."""
    folder.mkdir(parents=True)
    train_args = f'--seed {seed} {flags}'.strip()
    command = ('python -m wt_zoo.bench time-to-accuracy --minutes 55 configs/wt_resnet_tiny.c10.yaml '
               f"'--train-args={train_args}' --out {folder}")
    recipe = dict(model='wt_resnet_tiny.c10', seed=seed, epochs=len(heldout), lr=lr, amp='on', channels_last='off')
    (folder / 'curves.json').write_text(json.dumps([
        dict(model='wt_resnet_tiny.c10', epoch=i + 1, train_minutes=10.0 * (i + 1), heldout_top1=h)
        for i, h in enumerate(heldout)]))
    (folder / 'summary.json').write_text(json.dumps([dict(
        model='wt_resnet_tiny.c10', config='configs/wt_resnet_tiny.c10.yaml', epochs=len(heldout),
        train_minutes=10.0 * len(heldout), heldout_top1=heldout[-1], test_top1=test_top1, images_per_s=900.0,
        amp='on', channels_last='off', hardware=hardware, matmul_gflops=340.0, load_average_1min=0.4,
        command=command, git_commit='0' * 40, date='2026-12-07T00:00:00+00:00', recipe=recipe)]))
    return folder


def test_compare_judges_arms_of_time_budgeted_runs_against_the_pooled_seed_resolution(tmp_path):
    from wt_zoo.bench import compare
    base = [write_time_to_accuracy_run(tmp_path / f'base{s}', s, [80, 85, h], t)
            for s, h, t in ((1, 87.0, 87.1), (2, 87.4, 87.3))]
    prog = [write_time_to_accuracy_run(tmp_path / f'prog{s}', s, [78, 84, h], t, flags='--progressive-min-size 24')
            for s, h, t in ((2, 88.2, 88.0), (1, 88.0, 87.9))]
    out = tmp_path / 'cmp'
    assert bench_main(['compare', '--out', str(out), '--at-minutes', '15', '25',
                       '--arm', 'v2=' + ','.join(map(str, base)), '--arm', 'prog=' + ','.join(map(str, prog))]) == 0
    tables = check_tables(out, 'arms', 'runs')
    v2, arm = tables['arms']
    # Pooled over the arms: (0.4^2/2 + 0.2^2/2) / 2 -> std sqrt(0.05); resolution twice that.
    resolution = 2 * math.sqrt(0.05)
    assert json.loads((out / 'run.json').read_text())['resolution'] == pytest.approx(resolution)
    assert v2['change'] == '(baseline)' and arm['change'] == '--progressive-min-size 24'
    assert arm['top1_mean'] == pytest.approx(88.1) and arm['delta'] == pytest.approx(0.9) and arm['delta'] > resolution
    assert arm['verdict'] == 'better' and arm['by_seed'] == 'seed 2: +0.80, seed 1: +1.00'  # paired by seed
    assert arm['test_mean'] == pytest.approx(87.95) and arm['test_delta'] == pytest.approx(0.75)
    # Each run's held-out top-1 read off its curve at the last evaluation at or before each minute mark.
    assert [r['heldout_curve'] for r in tables['runs']][:1] == ['80.00 / 85.00']
    readme = (out / 'README.md').read_text()
    assert '**better**' in readme and 'met by 1 of 4 runs' in readme  # the 88 % / 60 min bar: seed 2 of prog
    assert '](../base1/README.md)' in readme
    section = compare.readme_section(out)
    assert section.count('| v2 |') == 3 and 'prog 88.10 ± 0.14 % against v2 87.20 ± 0.28 %' in section

    one_seed = tmp_path / 'one'
    bench_main(['compare', '--out', str(one_seed), '--arm', f'v2={base[0]}', '--arm', f'prog={prog[1]}'])
    assert 'no verdict' in (one_seed / 'README.md').read_text()


def test_compare_refuses_runs_that_are_not_one_recipe_over_seeds_on_one_machine(tmp_path):
    from wt_zoo.bench import compare
    a = write_time_to_accuracy_run(tmp_path / 'a', 1, [80, 87], 87.0)
    b = write_time_to_accuracy_run(tmp_path / 'b', 2, [80, 87], 87.0)
    c = write_time_to_accuracy_run(tmp_path / 'c', 3, [80, 87], 87.0, flags='--cutout 8')
    other_lr = write_time_to_accuracy_run(tmp_path / 'lr', 4, [80, 87], 87.0, lr=0.2)
    same_seed = write_time_to_accuracy_run(tmp_path / 'again', 1, [80, 87], 87.0)
    amd = write_time_to_accuracy_run(tmp_path / 'amd', 5, [80, 87], 87.0, flags='--cutout 8', hardware='CPU (AMD EPYC)')
    cmp = lambda *arms: bench_main(['compare', '--out', str(tmp_path / 'out'), *[f'--arm={arm}' for arm in arms]])
    with pytest.raises(SystemExit, match=r'arm v2 mixes recipes: .*/lr differs from .*/a in its recipe setting lr \(0.5 vs 0.2\)'):
        cmp(f'v2={a},{other_lr}', f'cut={c}')
    with pytest.raises(SystemExit, match='arm v2 mixes recipes: .* in its flags'):
        cmp(f'v2={a},{c}', f'cut={c}')
    with pytest.raises(SystemExit, match='arm v2 holds seed 1 twice'):
        cmp(f'v2={a},{same_seed}', f'cut={c}')
    with pytest.raises(SystemExit, match='must share one machine; they ran .*amd: CPU \\(AMD EPYC\\)'):
        cmp(f'v2={a},{b}', f'cut={c},{amd}')
    with pytest.raises(SystemExit, match='needs two --arm at least'):
        cmp(f'v2={a},{b}')
    with pytest.raises(SystemExit, match='is not a time-to-accuracy results folder'):
        cmp(f'v2={a}', f'cut={tmp_path / "nothing"}')
    with pytest.raises(argparse.ArgumentTypeError, match='--arm expects NAME=FOLDER'):
        compare.parse_arm('v2')


@pytest.mark.slow
def test_time_to_accuracy_trains_within_its_plan_merges_and_resumes(fake_cifar10, data_cache, tmp_path):
    from conftest import REPO_ROOT
    out, runs = tmp_path / 'results', tmp_path / 'runs'
    flags = (f'--train-args=--data-dir {fake_cifar10} --data-cache {data_cache} --img-size 16 -b 32 '
             '--progressive-min-size 0 --val-split-size 64 --amp off --channels-last off')
    config = str(REPO_ROOT / 'configs' / 'wt_resnet_tiny.c10.yaml')
    argv = ['time-to-accuracy', config, '--minutes', '0.2', '--runs', str(runs), '--out', str(out), flags]
    assert bench_main(argv) == 0
    tables = check_tables(out, 'curves', 'summary')
    readme = check_provenance(out, 'time-to-accuracy')
    plan = json.loads((runs / 'wt_resnet_tiny.c10' / 'time_to_accuracy_plan.json').read_text())
    row, = tables['summary']
    assert row['epochs'] == plan['epochs'] == len(tables['curves']) >= 1
    assert plan['epochs'] * plan['train_seconds_per_epoch'] <= 0.2 * 60
    assert 0 <= row['test_top1'] <= 100 and row['heldout_top1'] == tables['curves'][-1]['heldout_top1']
    assert row['matmul_gflops'] == plan['matmul_gflops'] > 0  # the planning machine's speed, kept with the plan
    trained = json.loads((out / 'run.json').read_text())
    args = yaml.safe_load((runs / 'wt_resnet_tiny.c10' / 'args.yaml').read_text())
    sitting, = args['sittings']  # the one sitting that trained it, kept by the run and in the row
    assert (sitting['first_epoch'], sitting['git_commit'], sitting['hardware']) == (1, trained['git_commit'],
                                                                                    plan['hardware'])
    assert sitting['date'] >= trained['date'] and 'sittings' not in plan
    assert row['sittings'] == [dict(sitting, last_epoch=plan['epochs'])]
    assert row['load_average_1min'] == sitting['load_average_1min'] is not None
    assert f'`{trained["git_commit"][:10]}` |' in readme
    assert [p['epoch'] for p in tables['curves']] == list(range(1, plan['epochs'] + 1))
    assert (out / 'time_to_accuracy.png').stat().st_size > 0 and '| wt_resnet_tiny.c10 |' in readme
    # the row keeps the recipe as the run resolved it (flags over the file), readable after the file moves on
    recipe = yaml.safe_load(Path(config).read_text())
    assert set(row['recipe']) == set(recipe) and row['recipe']['lr'] == recipe['lr']
    assert (row['recipe']['epochs'], row['recipe']['batch_size'], row['recipe']['amp']) == (plan['epochs'], 32, 'off')
    assert json.loads(next(csv.DictReader(open(out / 'summary.csv')))['recipe']) == row['recipe']  # JSON in the CSV

    last = runs / 'wt_resnet_tiny.c10' / 'last.pth.tar'
    stamp = last.stat().st_mtime_ns
    assert bench_main(argv) == 0  # a finished run is resumed at its end: nothing retrained, the rows are replaced
    assert last.stat().st_mtime_ns == stamp
    assert len(json.loads((out / 'summary.json').read_text())) == 1
    assert json.loads((runs / 'wt_resnet_tiny.c10' / 'time_to_accuracy_plan.json').read_text()) == plan  # trained nothing
    assert json.loads((out / 'summary.json').read_text())[0]['sittings'] == row['sittings']
    trained = json.loads((out / 'run.json').read_text())
    assert bench_main(['time-to-accuracy', '--out', str(out)]) == 0  # README only: the training run stays the provenance
    rewritten = json.loads((out / 'run.json').read_text())
    assert {k: v for k, v in rewritten.items() if k != 'rewritten_by'} == trained
    assert rewritten['rewritten_by']['command'] == f'python -m wt_zoo.bench time-to-accuracy --out {out}'
    readme = (out / 'README.md').read_text()
    assert trained['command'] in readme and 'README rewritten from the stored tables by' in readme
    with pytest.raises(SystemExit, match=r'was planned for \d+ epochs in 0.2 min'):
        bench_main([*argv[:2], '--minutes', '0.3', *argv[4:]])


@pytest.mark.slow
def test_time_to_accuracy_final_run_trains_on_every_image_and_reports_the_whole_test_split(
        fake_cifar10, data_cache, tmp_path, monkeypatch):
    from conftest import REPO_ROOT
    import wt_zoo.data
    from wt_zoo.bench import time_to_accuracy
    monkeypatch.setattr(time_to_accuracy, 'WATCH_IMAGES', 32)
    create_eval_loader, seen = wt_zoo.data.create_eval_loader, []

    def watching(spec, split, *args, **kwargs):
        loader = create_eval_loader(spec, split, *args, **kwargs)
        seen.append((split, loader.dataset_size))
        return loader
    monkeypatch.setattr(wt_zoo.data, 'create_eval_loader', watching)
    out, runs = tmp_path / 'results', tmp_path / 'runs'
    argv = ['time-to-accuracy', str(REPO_ROOT / 'configs' / 'wt_resnet_tiny.c10.yaml'), '--minutes', '0.2',
            '--whole-train-split', '--runs', str(runs), '--out', str(out),
            f'--train-args=--data-dir {fake_cifar10} --data-cache {data_cache} --img-size 16 -b 32 '
            '--progressive-min-size 0 --val-split-size 64 --amp off --channels-last off']  # the final run overrides the split
    assert bench_main(argv) == 0
    row, = check_tables(out, 'final')['final']
    assert row['whole_train_split'] and row['train_images'] == 320  # nothing held out of the 320 training images
    assert not (out / 'curves.json').is_file() and not (out / 'summary.json').is_file()  # no held-out curve
    assert seen[0] == ('test', 32) and seen[-1] == ('test', 128)  # watched a slice; the figure is the whole split
    assert (runs / 'wt_resnet_tiny.c10.whole' / 'time_to_accuracy_plan.json').is_file()
    readme = (out / 'README.md').read_text()
    assert '## Final runs on the whole training split' in readme and 'final run on all 320 training images' in readme


@pytest.mark.slow
def test_train_speed_times_every_path_and_the_one_auto_picks(fake_cifar10, data_cache, tmp_path):
    from conftest import REPO_ROOT
    from wt_zoo.bench.train_speed import readme_section
    out = tmp_path / 'speed'
    argv = ['train-speed', str(REPO_ROOT / 'configs' / 'wt_resnet_tiny.c10.yaml'), '--batch-sizes', '16',
            '--compile', '--matmul-size', '128', '--data-batches', '2', '--sweep-batch-sizes', '--out', str(out),
            f'--train-args=--data-dir {fake_cifar10} --data-cache {data_cache} --img-size 16 '
            '--progressive-min-size 0 --val-split-size 64']
    assert bench_main(argv) == 0
    rows = check_tables(out, 'speed')['speed']
    check_provenance(out, 'train-speed')
    paths = [r['path'] for r in rows]
    assert paths[:4] == ['fp32', 'fp32 + channels_last', 'bf16 autocast', 'bf16 autocast + channels_last']
    # a path auto gave up on (bf16 on a CPU without native bf16) keeps its name; the note says so
    assert all(r.get('note') in (None, GIVEN_UP) for r in rows)
    chosen = [r for r in rows if r.get('chosen')]
    assert len(chosen) == 1 and chosen[0]['images_per_s'] == max(r['images_per_s'] for r in rows[:4])
    auto = rows[4]
    assert auto['path'] == f'auto: {chosen[0]["path"]}, timed again' and positive(auto['of_best'])
    assert paths[5] == 'data path alone (on-device loader)' and positive(rows[5]['images_per_s'])
    # WT: FLOPs from results/profile.json, each row against the peak timed at its own precision
    peaks = json.loads((out / 'run.json').read_text())['peaks']
    assert set(peaks) == {'fp32', 'bf16'} and all(p['gflops_per_s'] == max(p['kernels'].values()) for p in peaks.values())
    for row in rows[:5]:
        assert row['precision'] == ('bf16' if 'bf16' in row['path'] else 'fp32')
        peak = peaks[row['precision']]['gflops_per_s']
        # both GFLOP/s figures are kept to 0.1: on a CPU without native bf16 its peak is a few GFLOP/s at this size
        rounding = 0.05 / peak * (1 + row['train_gflops_per_s'] / peak)
        assert row['of_peak'] == pytest.approx(row['train_gflops_per_s'] / peak, abs=2e-3 + rounding)
    section = readme_section(out)
    assert '| wt_resnet_tiny | 16 |' in section and chosen[0]['path'] in section


def test_train_speed_times_batch_sizes_and_optimizer_implementations_on_the_chosen_path(fake_cifar10, data_cache,
                                                                                        tmp_path):
    from conftest import REPO_ROOT
    from wt_zoo.bench.train_speed import readme_section
    out = tmp_path / 'speed'
    argv = ['train-speed', str(REPO_ROOT / 'configs' / 'wt_resnet_tiny.c10.yaml'), '--batch-sizes', '8', '16',
            '--compile', '--matmul-size', '64', '--data-batches', '1', '--sweep-batch-sizes', '8', '32', '512',
            '--opt-impls', 'default', 'foreach', 'fused', '--sweep-rounds', '1', '--out', str(out),
            f'--train-args=--data-dir {fake_cifar10} --data-cache {data_cache} --img-size 16 --progressive-min-size 0 '
            '--val-split-size 64 --model-kwargs width=16 depth=2']
    assert bench_main(argv) == 0
    tables = check_tables(out, 'speed', 'batch_optimizer')
    chosen = [r for r in tables['speed'] if r.get('chosen') and r['batch_size'] == 16]
    assert len(chosen) == 1
    rows, too_big = tables['batch_optimizer'][:6], tables['batch_optimizer'][6:]
    # every batch size x implementation, on the path auto picked at the largest --batch-sizes
    assert [(r['batch_size'], r['optimizer']) for r in rows] == [
        (b, impl) for b in (8, 32) for impl in ('default', 'foreach', 'fused')]
    # 256 training images hold no batch of 512: said per row, not a crash
    assert len(too_big) == 3 and all('do not fill one batch of 512' in r['note'] and r.get('images_per_s') is None
                                     for r in too_big)
    assert all(r['model'] == 'wt_resnet_tiny' and r['path'] == chosen[0]['path'] for r in rows)
    assert all(positive(r['images_per_s']) and positive(r['optimizer_step_ms']) and 0 < r['of_best'] <= 1
               for r in rows)
    assert max(r['of_best'] for r in rows) == 1
    readme = (out / 'README.md').read_text()
    assert '## Batch size and optimizer implementation' in readme and '| wt_resnet_tiny |' in readme
    section = readme_section(out)
    assert 'fused: train img/s' in section and 'foreach: optimizer update (ms)' in section
    assert f'| wt_resnet_tiny | {chosen[0]["path"]} | 32 |' in section


def test_transfer_readme_section_says_what_to_run_before_any_result(tmp_path):
    from wt_zoo.bench.transfer import readme_section, source_checkpoint
    assert readme_section(tmp_path / 'missing').startswith('Not measured yet: run `python -m wt_zoo.bench transfer')
    with pytest.raises(SystemExit, match='nope_resnet_tiny.c10 is not a published checkpoint'):
        source_checkpoint('nope_resnet_tiny.c10')


@pytest.mark.slow
def test_transfer_fine_tunes_from_the_checkpoint_against_scratch_and_resumes(fashion_mnist_dir, data_cache, tmp_path,
                                                                              monkeypatch):
    """Both inits train the same epochs on the same images; the fine-tuned run starts from the published weights
    (stem summed to 1 channel) with the scratch run's fresh head; rows, pairs and README are written; a rerun
    retrains nothing."""
    import timm
    import yaml
    from safetensors.torch import load_file
    from wt_zoo import hub
    from wt_zoo.bench.transfer import readme_section
    from wt_zoo.cards import sha256_file
    from wt_zoo.hub_ids import HUB_CONFIGS_ENV
    from wt_zoo.trainer import TrainingRun
    from wt_zoo.training import export_weights

    # a published checkpoint made here: random weights (not any seed's init), a narrow tiny model
    name, model_kwargs = 'wt_resnet_tiny.c10', {'width': 16, 'depth': 2}
    folder = tmp_path / 'hub_configs' / name
    folder.mkdir(parents=True)
    source = timm.create_model(name, **model_kwargs)
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in source.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    weights = export_weights(source, folder)
    (folder / 'train_args.yaml').write_text(yaml.safe_dump({'model': name, 'model_kwargs': model_kwargs}))
    hub.write_manifest(folder)
    monkeypatch.setenv(HUB_CONFIGS_ENV, str(folder.parent))
    checkpoint = load_file(str(weights))

    started = {}  # each run's weights at step 0
    real_run = TrainingRun.run

    def recording_run(self, *a, **kw):
        started.setdefault(self.args.experiment, []).append(
            {k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return real_run(self, *a, **kw)

    monkeypatch.setattr(TrainingRun, 'run', recording_run)
    out, runs = tmp_path / 'results', tmp_path / 'runs'
    train_args = (f'--train-args=--data-dir {fashion_mnist_dir} --data-cache {data_cache} --input-size 1 16 16 -b 32 '
                  '--eval-subset 32 --amp off --channels-last off')
    argv = ['transfer', '--models', name, '--epochs', '2', '--train-subset', '64', '--test-subset', '64',
            '--runs', str(runs), '--out', str(out), train_args]
    assert bench_main(argv) == 0

    tables = check_tables(out, 'runs', 'pairs')
    readme = check_provenance(out, 'transfer')
    rows = {r['init']: r for r in tables['runs']}
    assert sorted(rows) == ['pretrained', 'scratch']
    for row in rows.values():
        assert (row['epochs'], row['train_images'], row['images_seen'], row['test_images']) == (2, 64, 128, 64)
        assert row['source_sha256'] == sha256_file(weights) and json.loads(row['model_kwargs']) == model_kwargs
        assert 0 <= row['test_top1'] <= 100 and 0 <= row['heldout_top1'] <= 100 and positive(row['train_minutes'])
        assert row['hardware'] and row['git_commit'] and row['command'].startswith('python -m wt_zoo.bench transfer ')
        assert row['train_command'].startswith('python train.py --config ')
    assert rows['pretrained']['weights_loaded'] and not rows['scratch']['weights_loaded']
    assert '--pretrained-path' in rows['pretrained']['train_command']
    assert rows['scratch']['train_command'] == rows['pretrained']['train_command'].replace(
        f' --pretrained-path {weights}', '').replace('--experiment pretrained', '--experiment scratch')
    pair, = tables['pairs']
    assert pair['test_top1_gain'] == pytest.approx(rows['pretrained']['test_top1'] - rows['scratch']['test_top1'])
    assert f'| `{name}` | 64 | 2 |' in readme and f'| `{name}` | 64 | 2 |' in readme_section(out)

    # step 0: the fine-tuned run holds the checkpoint below the head, its stem summed to one channel,
    # and the head the scratch run starts with; the scratch run holds none of the checkpoint
    (pre,), (scratch,) = started['pretrained'], started['scratch']
    assert pre['stem.conv.weight'].shape[1] == 1
    torch.testing.assert_close(pre['stem.conv.weight'], checkpoint['stem.conv.weight'].sum(dim=1, keepdim=True))
    body = [k for k in checkpoint if not k.startswith(('head.', 'stem.conv.weight'))]
    assert body and all(torch.equal(pre[k], checkpoint[k]) for k in body)
    for k in ('head.fc.weight', 'head.fc.bias'):
        assert torch.equal(pre[k], scratch[k]) and not torch.equal(pre[k], checkpoint[k])
    conv = 'stages.0.implicit.block.conv1.weight'
    assert not torch.equal(scratch[conv], checkpoint[conv])

    # a rerun retrains nothing; a run whose result was lost resumes at its end and gives the same figures
    budget = runs / f'{name}-2ep-n64'
    stamps = {init: (budget / init / 'last.pth.tar').stat().st_mtime_ns for init in rows}
    assert bench_main(argv) == 0
    assert sum(len(v) for v in started.values()) == 2
    (budget / 'scratch' / 'transfer_result.json').unlink()
    assert bench_main(argv) == 0
    assert len(started['scratch']) == 2
    assert {init: (budget / init / 'last.pth.tar').stat().st_mtime_ns for init in rows} == stamps
    again = {r['init']: r for r in json.loads((out / 'runs.json').read_text())}
    assert len(again) == 2 and again['scratch']['test_top1'] == rows['scratch']['test_top1']
    with pytest.raises(SystemExit, match='holds runs made with other settings'):
        bench_main([*argv[:-1], train_args + ' --smoothing 0'])
