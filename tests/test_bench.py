"""python -m wt_zoo.bench on tiny models and a tiny grid: each subcommand runs and writes its tables (CSV, JSON,
README) with the right rows and columns, plus its provenance. The measured figures are not asserted."""
import csv
import json
import math
from pathlib import Path

import pytest
import torch

from wt_zoo.bench import main as bench_main
from wt_zoo.bench import sweep as bench_sweep
from wt_zoo.bench.common import ModelSpec, parse_model_specs


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
    specs = parse_model_specs(['wt*_tiny:depth=8,width=16', 'deq_resnet_tiny:width=16,f_max_iter=3'])
    assert [s.label for s in specs] == ['wt_resnet_tiny:depth=8,width=16', 'wtsm_resnet_tiny:depth=8,width=16',
                                        'deq_resnet_tiny:width=16,f_max_iter=3']
    assert specs[1].twin() == specs[0] and specs[0].twin() == specs[0]
    assert specs[2].twin() == ModelSpec('wt_resnet_tiny', (('width', 16),))  # solver settings do not carry over
    assert specs[0].depth() == 8 and specs[2].depth() is None
    with pytest.raises(ValueError, match='key=value'):
        parse_model_specs(['wt_resnet_tiny:depth'])


def test_efficiency_tables_ratios_and_bars(fake_cifar10, data_cache, tmp_path):
    out = tmp_path / 'efficiency'
    assert bench_main([
        'efficiency', 'wtsm_resnet_tiny:width=16,depth=2', 'deq_resnet_tiny:width=16,f_max_iter=3',
        'wt_resnet_tiny:width=16,depth=8', '--out', str(out), '--devices', 'cpu', '--infer-batches', '1', '8',
        '--train-batch', '8', '--min-run-time', '0.01', '--matmul-size', '64', '--threads', '1', '--data-dir', str(fake_cifar10),
        '--data-cache', str(data_cache)]) == 0
    tables = check_tables(out, 'efficiency', 'matmul_peak', 'bars')
    rows = {r['model']: r for r in tables['efficiency']}
    # each model follows its dense WT twin, which the bench adds when it was not asked for
    assert [r['model'] for r in tables['efficiency']] == [
        'wt_resnet_tiny:width=16,depth=2', 'wtsm_resnet_tiny:width=16,depth=2', 'wt_resnet_tiny:width=16',
        'deq_resnet_tiny:width=16,f_max_iter=3', 'wt_resnet_tiny:width=16,depth=8']
    common = {'params', 'gflops', 'infer_b1_img_s', 'infer_b8_img_s', 'train_img_s', 'train_mem_mb',
              'achieved_gflops_s', 'params_vs_wt', 'gflops_vs_wt', 'infer_b1_img_s_vs_wt', 'infer_b8_img_s_vs_wt',
              'train_img_s_vs_wt', 'train_mem_mb_vs_wt'}
    for row in rows.values():
        assert row['device'] == 'cpu'
        assert common <= set(row), common - set(row)
        assert all(positive(row[k]) for k in common), row
        assert row['params_vs_wt'] == 1.0  # twins share every parameter
    wt, wtsm, deq = (rows['wt_resnet_tiny:width=16,depth=2'], rows['wtsm_resnet_tiny:width=16,depth=2'],
                     rows['deq_resnet_tiny:width=16,f_max_iter=3'])
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
    assert [b['subject'] for b in by_bar['2']] == ['wt_resnet_tiny:width=16 vs deq_resnet_tiny:width=16,f_max_iter=3']
    assert [b['subject'] for b in by_bar['3']] == ['wt_resnet_tiny:width=16,depth=8 (depth 8)']
    assert len(by_bar['4']) == 3
    assert all(b['passed'] in (True, False) and b['figure'] for b in bars)
    assert all(b['note'] for b in bars if b['passed'] is False), 'a missed bar says what limits it'
    readme = check_provenance(out, 'efficiency')
    for heading in ('## Absolute figures', '## Ratios to the dense weight-tied twin', '## Machine fp32 matmul',
                    '## Performance bars', '## Where WT inference time goes'):
        assert heading in readme


def test_stability_records_divergence_accuracy_spread_and_solver_curves(fake_cifar10, data_cache, tmp_path):
    out = tmp_path / 'stability'
    assert bench_main([
        'stability', '--models', 'wt_resnet_tiny:width=16,depth=2', 'deq_resnet_tiny:width=16,f_max_iter=3',
        '--seeds', '0', '1', '--lrs', '0.05', 'inf', '--epochs', '1', '--train-subset', '32', '--held-out', '32',
        '--eval-subset', '32', '--batch-size', '16', '--segments-per-epoch', '2', '--out', str(out),
        '--data-dir', str(fake_cifar10), '--data-cache', str(data_cache)]) == 0
    tables = check_tables(out, 'runs', 'curves', 'summary')
    runs = tables['runs']
    assert len(runs) == 8
    assert {(r['model'].split('_')[0], r['lr'], r['seed']) for r in runs} == {
        (m, lr, s) for m in ('wt', 'deq') for lr in (0.05, math.inf) for s in (0, 1)}
    for r in runs:
        if r['lr'] == 0.05:
            assert r['status'] == 'ok' and 0 <= r['held_out_top1'] <= 100 and r['steps_done'] == 2
        else:  # an infinite learning rate makes the weights non-finite with the first update
            assert r['status'] == 'diverged' and r['diverged_at'] == 1 and r['held_out_top1'] is None, r
    deq_ok = [r for r in runs if r['model'].startswith('deq') and r['status'] == 'ok']
    assert all({'probe_nstep_start', 'probe_nstep_end', 'probe_nstep_growth', 'train_nstep_last', 'held_out_nstep'}
               <= set(r) for r in deq_ok)
    # DEQ curves: a probe before training and after each of the 2 segments
    curve = [c for c in tables['curves'] if c['model'].startswith('deq') and c['lr'] == 0.05 and c['seed'] == 0]
    assert [c['step'] for c in curve] == [0, 1, 2] and all('probe_nstep' in c for c in curve)
    summary = {(r['model'].split('_')[0], r['lr']): r for r in tables['summary']}
    assert len(summary) == 4
    assert summary[('wt', math.inf)]['diverged'] == 2 and summary[('wt', 0.05)]['diverged'] == 0
    assert {'top1_mean', 'top1_std', 'top1_min', 'top1_max'} <= set(summary[('deq', 0.05)])
    assert 'top1_mean' not in summary[('deq', math.inf)]
    assert (out / 'stability_accuracy.png').stat().st_size > 0 and (out / 'stability_solver.png').stat().st_size > 0
    readme = check_provenance(out, 'stability')
    assert '![stability_solver.png](stability_solver.png)' in readme


SWEEP_GRID = ['--size', 'tiny', '--depths', '1', '2', '--widths', '16', '--dense-extra', '4x8', '--densities', '0.5',
              '--mask-depths', '2', '--mask-width', '16', '--mask-kinds', '2:4', '--mask-modes', 'shared',
              '--epochs', '1', '--train-subset', '32', '--held-out', '32', '--eval-subset', '32', '--batch-size', '16']


def test_sweep_grid_tables_plots_resume_and_guidelines(fake_cifar10, data_cache, tmp_path, monkeypatch):
    out = tmp_path / 'results' / 'sweep'
    data = ['--data-dir', str(fake_cifar10), '--data-cache', str(data_cache)]
    assert bench_main(['sweep', *SWEEP_GRID, '--out', str(out), *data]) == 0
    rows = check_tables(out, 'sweep')['sweep']
    assert [r['config'] for r in rows] == [
        'wt_d1_w16', 'wt_d2_w16', 'wt_d4_w8', 'wtsm_d2_w16_p0.5_unstructured_distinct',
        'wtsm_d2_w16_p0.5_2:4_distinct', 'wtsm_d2_w16_p0.5_unstructured_shared']
    columns = {'config', 'family', 'depth', 'width', 'mask_density', 'mask_kind', 'mask_mode', 'params', 'gflops',
               'effective_gflops', 'held_out_top1', 'status', 'train_seconds', 'seed'}
    for r in rows:
        assert columns <= set(r) and r['status'] == 'ok'
    masked = [r for r in rows if r['family'] == 'wtsm']
    assert all(r['params'] == rows[1]['params'] for r in masked)  # masks add no parameters
    assert all(r['effective_gflops'] < r['gflops'] for r in masked)
    for png in ('sweep_depth.png', 'sweep_width.png', 'sweep_density.png', 'sweep_params.png', 'sweep_flops.png'):
        assert (out / png).stat().st_size > 0, png
    check_provenance(out, 'sweep')

    # --resume keeps finished configurations and trains none again
    def no_training(*args, **kwargs):
        raise AssertionError('--resume retrained a finished configuration')
    monkeypatch.setattr(bench_sweep, 'train_short', no_training)
    assert bench_main(['sweep', *SWEEP_GRID, '--out', str(out), '--resume', *data]) == 0
    assert [r['config'] for r in check_tables(out, 'sweep')['sweep']] == [r['config'] for r in rows]

    doc = tmp_path / 'docs' / 'guidelines.md'
    assert bench_main(['guidelines', '--sweep-results', str(out), '--stability-results', str(tmp_path / 'none'),
                       '--efficiency-results', str(tmp_path / 'none'), '--out', str(doc)]) == 0
    text = doc.read_text()
    for heading in ('## Summary', '## Choosing for a parameter budget', '## Choosing for a FLOP budget',
                    '## Depth (at equal parameters)', '## Sparse masks', '## Figures', '## Every configuration'):
        assert heading in text, heading
    assert 'seed noise was not measured' in text
    for png in ('sweep_depth.png', 'sweep_density.png', 'sweep_flops.png'):
        assert f'](../results/sweep/{png})' in text  # embedded, relative to the document
    assert '([Figure 1](#figure-1))' in text
    for r in rows:
        assert r['label'] in text


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


@pytest.mark.slow
def test_time_to_accuracy_trains_within_its_plan_merges_and_resumes(fake_cifar10, data_cache, tmp_path):
    from conftest import REPO_ROOT
    out, runs = tmp_path / 'results', tmp_path / 'runs'
    flags = (f'--train-args=--data-dir {fake_cifar10} --data-cache {data_cache} --img-size 16 -b 32 '
             '--val-split-size 64 --amp off --channels-last off')
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
    assert [p['epoch'] for p in tables['curves']] == list(range(1, plan['epochs'] + 1))
    assert (out / 'time_to_accuracy.png').stat().st_size > 0 and '| wt_resnet_tiny.c10 |' in readme

    last = runs / 'wt_resnet_tiny.c10' / 'last.pth.tar'
    stamp = last.stat().st_mtime_ns
    assert bench_main(argv) == 0  # a finished run is resumed at its end: nothing retrained, the rows are replaced
    assert last.stat().st_mtime_ns == stamp
    assert len(json.loads((out / 'summary.json').read_text())) == 1
    with pytest.raises(SystemExit, match='was planned for 0.2 min'):
        bench_main([*argv[:2], '--minutes', '0.3', *argv[4:]])


@pytest.mark.slow
def test_train_speed_times_every_path_and_the_one_auto_picks(fake_cifar10, data_cache, tmp_path):
    from conftest import REPO_ROOT
    from wt_zoo.bench.train_speed import readme_section
    out = tmp_path / 'speed'
    argv = ['train-speed', str(REPO_ROOT / 'configs' / 'wt_resnet_tiny.c10.yaml'), '--batch-sizes', '16',
            '--compile', '--matmul-size', '128', '--data-batches', '2', '--out', str(out),
            f'--train-args=--data-dir {fake_cifar10} --data-cache {data_cache} --img-size 16 --val-split-size 64']
    assert bench_main(argv) == 0
    rows = check_tables(out, 'speed')['speed']
    check_provenance(out, 'train-speed')
    paths = [r['path'] for r in rows]
    assert paths[:4] == ['fp32', 'fp32 + channels_last', 'bf16 autocast', 'bf16 autocast + channels_last']
    chosen = [r for r in rows if r.get('chosen')]
    assert len(chosen) == 1 and chosen[0]['images_per_s'] == max(r['images_per_s'] for r in rows[:4])
    auto = rows[4]
    assert auto['path'] == f'auto: {chosen[0]["path"]}, timed again' and positive(auto['of_best'])
    assert paths[5] == 'data path alone (on-device loader)' and positive(rows[5]['images_per_s'])
    assert all(positive(r['of_fp32_matmul_peak']) for r in rows[:5])  # WT: FLOPs from results/profile.json
    section = readme_section(out)
    assert '| wt_resnet_tiny | 16 |' in section and chosen[0]['path'] in section
