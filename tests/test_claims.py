"""The claims table (python -m wt_zoo.bench claims): its verdict rules on synthetic figures, a claim that fills
in when its results file gains the measurement, and the committed results/claims folder and README section
matching what the results files give now."""
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import yaml

from wt_zoo.bench import claims
from wt_zoo.bench.claims import FAILS, HOLDS, MIXED, NOT_MEASURED, UNRESOLVED, combine, judge, judge_ratio
from wt_zoo.bench.recipe import sweep_regime

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ verdict rules


@pytest.mark.parametrize('delta, resolution, verdict', [
    (1.0, 3.66, UNRESOLVED),     # inside the resolution, either sign
    (-3.0, 3.66, UNRESOLVED),
    (3.66, 3.66, UNRESOLVED),    # it must be larger than the resolution to count
    (3.9, 3.66, HOLDS),          # outside: the sign decides
    (-4.28, 3.66, FAILS),
    (0.0, 0.0, UNRESOLVED),      # a tie on a discrete grid
    (1.0, 0.0, HOLDS),
    (None, 1.0, NOT_MEASURED),
    (math.nan, 1.0, NOT_MEASURED),
])
def test_judge_counts_a_difference_only_outside_the_resolution(delta, resolution, verdict):
    assert judge(delta, resolution) == verdict


@pytest.mark.parametrize('ratio, resolution, verdict', [
    (1.04, 0.05, UNRESOLVED),
    (1 / 1.04, 0.05, UNRESOLVED),
    (1.06, 0.05, HOLDS),
    (0.94, 0.05, FAILS),         # 1/0.94 = 1.064: outside in log space
    (0.96, 0.05, UNRESOLVED),
    (3.33, 0.06, HOLDS),
    (0.68, 0.05, FAILS),
    (None, 0.05, NOT_MEASURED),
    (0.0, 0.05, NOT_MEASURED),
])
def test_judge_ratio_is_symmetric_around_one(ratio, resolution, verdict):
    assert judge_ratio(ratio, resolution) == verdict


@pytest.mark.parametrize('verdicts, row', [
    ([], NOT_MEASURED),
    ([NOT_MEASURED], NOT_MEASURED),
    ([UNRESOLVED, UNRESOLVED], UNRESOLVED),
    ([UNRESOLVED, HOLDS], HOLDS),
    ([UNRESOLVED, FAILS, NOT_MEASURED], FAILS),
    ([HOLDS, FAILS, UNRESOLVED], MIXED),
])
def test_combine_a_rows_comparisons(verdicts, row):
    assert combine(verdicts) == row


# ------------------------------------------------------------------ claims from synthetic results files


def _write(folder: Path, name: str, data) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(data))


def _stability(results: Path, wt_mean: float, deq_mean: float, std: float, deq_first_divergence: float = 1.5,
               recipes: bool = False, folder: str = 'stability'):
    """A stability summary: from runs of the zoo's recipes on the full split (``recipes``), or short runs on a
    subset that tracked DEQ iterations on a probe batch (the results committed before)."""
    rows = []
    for lr in (0.1, 0.5, 1.5):
        for family, mean in (('wt', wt_mean), ('deq', deq_mean)):
            diverged = 3 if lr >= (1.5 if family == 'wt' else deq_first_divergence) else 0
            row = dict(model=f'{family}_resnet_tiny', family=family, lr=lr, runs=3, diverged=diverged)
            if not diverged:
                row.update(top1_mean=mean - abs(lr - 0.5), top1_std=std)
            if family == 'deq' and not diverged:
                row.update(dict(nstep_first_mean=6.0, nstep_last_mean=9.0) if recipes
                           else dict(probe_nstep_start_mean=6.0, probe_nstep_end_mean=9.0))
            rows.append(row)
    _write(results / folder, 'summary.json', rows)
    settings = dict(epochs=2, train_subset=500, seeds=[0, 1, 2], lrs=[0.1, 0.5, 1.5], eval_subset=200)
    if recipes:
        settings = dict(epochs=10, train_subset=None, held_out=5000, seeds=[0, 1, 2], lrs=[0.1, 0.5, 1.5],
                        recipes=['configs/wt_resnet_tiny.c10.yaml', 'configs/deq_resnet_tiny.c10.yaml'])
    _write(results / folder, 'run.json', dict(command='python -m wt_zoo.bench stability', date='d', git_commit='c1',
                                              settings=settings))


def _tta_row(model: str, final: float, minutes: float):
    return dict(model=model, epochs=10, budget_minutes=10.0, train_minutes=minutes, heldout_top1=final, test_top1=final,
                hardware='CPU (test)', command=f'python -m wt_zoo.bench time-to-accuracy {model}', git_commit='c2',
                date='d', minutes_to_80=None)


def _curve(model: str, final: float, minutes: float):
    return [dict(model=model, epoch=e, train_minutes=minutes * e / 10, heldout_top1=final - (10 - e))
            for e in range(1, 11)]


def _by_id(rows, claim_id):
    return [r for r in rows if r['id'] == claim_id]


def test_claims_judge_synthetic_results_and_fill_in_when_a_measurement_appears(tmp_path):
    results, hub = tmp_path / 'results', tmp_path / 'hub_configs'
    # WT 5 points above DEQ with a seed std of 1 (resolution 2): holds; the DEQ diverges first: WT more stable
    _stability(results, wt_mean=50.0, deq_mean=45.0, std=1.0, deq_first_divergence=0.5)
    tta = results / 'time_to_accuracy'
    _write(tta, 'summary.json', [_tta_row('wt_resnet_tiny.c10', 80.0, 10.0)])
    _write(tta, 'curves.json', _curve('wt_resnet_tiny.c10', 80.0, 10.0))

    rows = claims.build(results, hub)
    [acc] = [r for r in _by_id(rows, 'accuracy_wt_vs_deq_epochs') if r['source'] == 'stability']
    assert acc['verdict'] == HOLDS and acc['comparisons'][0]['resolution'] == 2.0
    assert '50.00' in acc['measured'] and '3 seeds' in acc['regime'] and '500 CIFAR-10 training images' in acc['regime']
    assert _by_id(rows, 'stability_divergence')[0]['verdict'] == HOLDS
    assert _by_id(rows, 'stability_solver')[0]['verdict'] == HOLDS  # 6 -> 9 iterations, resolution 0.5
    # no DEQ curve at equal wall time yet: said so, not invented
    [wall] = _by_id(rows, 'accuracy_wt_vs_deq_wall_time')
    assert wall['verdict'] == NOT_MEASURED and 'no DEQ curve' in wall['measured']
    assert all(r['verdict'] == NOT_MEASURED for r in _by_id(rows, 'train_speed'))  # no speed results at all

    # the results file gains a DEQ curve 1 point below, over slightly fewer minutes: picked up, and within the
    # borrowed resolution (twice the largest stability std, 2 points) it is not resolvable
    _write(tta, 'summary.json', [_tta_row('wt_resnet_tiny.c10', 80.0, 10.0), _tta_row('deq_resnet_tiny.c10', 79.0, 9.0)])
    _write(tta, 'curves.json', _curve('wt_resnet_tiny.c10', 80.0, 10.0) + _curve('deq_resnet_tiny.c10', 79.0, 9.0))
    [wall] = _by_id(claims.build(results, hub), 'accuracy_wt_vs_deq_wall_time')
    assert wall['verdict'] == UNRESOLVED and wall['comparisons'][0]['resolution'] == 2.0
    assert 'at 9.0 min' in wall['measured'] and 'WT 79.00 vs DEQ 79.00' in wall['measured']
    # ... and 5 points below is resolvable
    _write(tta, 'summary.json', [_tta_row('wt_resnet_tiny.c10', 80.0, 10.0), _tta_row('deq_resnet_tiny.c10', 75.0, 10.0)])
    _write(tta, 'curves.json', _curve('wt_resnet_tiny.c10', 80.0, 10.0) + _curve('deq_resnet_tiny.c10', 75.0, 10.0))
    [wall] = _by_id(claims.build(results, hub), 'accuracy_wt_vs_deq_wall_time')
    assert wall['verdict'] == HOLDS and 'machines differ' not in wall['measured']
    # rows planned on machines of one CPU name but different measured speed: said beside the minutes
    for wt_speed, deq_speed, said in ((100.0, 105.0, False), (150.0, 100.0, True)):
        _write(tta, 'summary.json', [dict(_tta_row('wt_resnet_tiny.c10', 80.0, 10.0), matmul_gflops=wt_speed),
                                     dict(_tta_row('deq_resnet_tiny.c10', 75.0, 10.0), matmul_gflops=deq_speed)])
        [wall] = _by_id(claims.build(results, hub), 'accuracy_wt_vs_deq_wall_time')
        assert ('machines differ: WT ran on 150, DEQ on 100 GFLOP/s' in wall['measured']) == said

    # the same stability gap inside a larger seed spread is not resolvable; reversed, it does not hold
    _stability(results, wt_mean=50.0, deq_mean=45.0, std=3.0)
    rows = claims.build(results, hub)
    assert [r for r in _by_id(rows, 'accuracy_wt_vs_deq_epochs') if r['source'] == 'stability'][0]['verdict'] == UNRESOLVED
    assert _by_id(rows, 'stability_divergence')[0]['verdict'] == UNRESOLVED  # both first diverge at lr 1.5
    _stability(results, wt_mean=45.0, deq_mean=50.0, std=1.0)
    rows = claims.build(results, hub)
    assert [r for r in _by_id(rows, 'accuracy_wt_vs_deq_epochs') if r['source'] == 'stability'][0]['verdict'] == FAILS


def test_one_run_figures_of_the_fast_recipe_use_its_measured_seed_resolution(tmp_path):
    results, hub = tmp_path / 'results', tmp_path / 'hub_configs'
    _stability(results, wt_mean=50.0, deq_mean=45.0, std=2.0)  # borrowed resolution: 4 points
    _write(results / 'ablation' / 'fast_recipe_tiny', 'run.json',
           dict(command='python -m wt_zoo.bench ablation', date='d', git_commit='c3', resolution=0.6,
                settings=dict(recipe='configs/wt_resnet_tiny.c10.yaml', epochs=16, seeds=[0, 1])))
    tta = results / 'time_to_accuracy'
    # the DEQ twin's recipe differs from WT's only in what makes it a DEQ: both are the fast recipe
    rows = [dict(_tta_row('wt_resnet_tiny.c10', 80.0, 10.0), config='configs/wt_resnet_tiny.c10.yaml'),
            dict(_tta_row('deq_resnet_tiny.c10', 78.0, 10.0), config='configs/deq_resnet_tiny.c10.yaml')]
    _write(tta, 'summary.json', rows)
    _write(tta, 'curves.json', _curve('wt_resnet_tiny.c10', 80.0, 10.0) + _curve('deq_resnet_tiny.c10', 78.0, 10.0))
    [wall] = _by_id(claims.build(results, hub), 'accuracy_wt_vs_deq_wall_time')
    assert wall['comparisons'][0]['resolution'] == 0.6 and wall['verdict'] == HOLDS  # +2.00 against 0.6

    # a twin trained with another learning rate is not the recipe the seeds were measured for: borrowed, unresolved
    other = tmp_path / 'other.yaml'
    recipe = yaml.safe_load((REPO / 'configs' / 'deq_resnet_tiny.c10.yaml').read_text())
    other.write_text(yaml.safe_dump(dict(recipe, lr=0.05)))
    _write(tta, 'summary.json', [rows[0], dict(rows[1], config=str(other))])
    [wall] = _by_id(claims.build(results, hub), 'accuracy_wt_vs_deq_wall_time')
    assert wall['comparisons'][0]['resolution'] == 4.0 and wall['verdict'] == UNRESOLVED
    assert any(s['source'] == 'results/ablation/fast_recipe_tiny' for s in claims.sources(results, hub))


def test_stability_claims_read_runs_of_the_zoos_recipes_on_the_full_split(tmp_path):
    results = tmp_path / 'results'
    _stability(results, wt_mean=85.0, deq_mean=80.0, std=0.3, deq_first_divergence=0.5, recipes=True)
    rows = claims.build(results, tmp_path / 'hub_configs')
    [solver] = _by_id(rows, 'stability_solver')
    assert solver['verdict'] == HOLDS and '6.0 → 9.0' in solver['measured']
    assert 'after the first and the last epoch' in solver['regime']
    [acc] = [r for r in _by_id(rows, 'accuracy_wt_vs_deq_epochs') if r['source'] == 'stability']
    assert acc['verdict'] == HOLDS
    assert acc['regime'].startswith('10 epochs of `wt_resnet_tiny.c10.yaml`, `deq_resnet_tiny.c10.yaml` on all 45,000 '
                                    'CIFAR-10 training images; held-out top-1 on 5,000 images, 3 seeds')
    # a stability bench that --stop-after ended early: its rows say they stand on the runs so far
    run = json.loads((results / 'stability' / 'run.json').read_text())
    _write(results / 'stability', 'run.json', dict(run, runs_finished=5, runs_planned=24))
    [acc] = [r for r in _by_id(claims.build(results, tmp_path / 'hub_configs'), 'accuracy_wt_vs_deq_epochs')
             if r['source'] == 'stability']
    assert acc['regime'].endswith('; partial, 5 of 24 runs')


def test_the_sweeps_own_seeds_set_its_resolution(tmp_path):
    results = tmp_path / 'results'
    rows = [dict(config='wt_d2_w32', label='d2 w32', family='wt', depth=2, width=32, mask_density=1.0, params=1e5,
                 effective_gflops=0.05, held_out_top1=80.0, status='ok'),
            dict(config='wt_d4_w32', label='d4 w32', family='wt', depth=4, width=32, mask_density=1.0, params=1e5,
                 effective_gflops=0.09, held_out_top1=81.5, status='ok')]
    _write(results / 'sweep', 'sweep.json', rows)
    run = dict(command='python -m wt_zoo.bench sweep', date='d', git_commit='c3', seed_std_pooled=0.4, resolution=0.8,
               settings=dict(epochs=15, seeds=[0, 1], size='tiny', recipe='configs/wt_resnet_tiny.c10.yaml'))
    _write(results / 'sweep', 'run.json', run)
    _stability(results, wt_mean=50.0, deq_mean=45.0, std=2.0)  # a wider spread elsewhere does not set the sweep's
    assert claims.sweep_resolution(claims.Sources(results, tmp_path / 'hub_configs')) == pytest.approx(0.8)
    run.pop('seed_std_pooled')
    _write(results / 'sweep', 'run.json', run)  # one seed: the stability benchmark's spread stands in
    assert claims.sweep_resolution(claims.Sources(results, tmp_path / 'hub_configs')) == pytest.approx(4.0)


def test_a_finished_long_sweep_supersedes_the_short_one(tmp_path):
    results, hub = tmp_path / 'results', tmp_path / 'hub_configs'
    short = [dict(config='wt_d2_w32', label='d2 w32', family='wt', depth=2, width=32, mask_density=1.0, params=1e5,
                  effective_gflops=0.05, held_out_top1=40.0, status='ok'),
             dict(config='wt_d4_w32', label='d4 w32', family='wt', depth=4, width=32, mask_density=1.0, params=1e5,
                  effective_gflops=0.09, held_out_top1=38.0, status='ok')]
    _write(results / 'sweep', 'sweep.json', short)
    _write(results / 'sweep', 'run.json', dict(command='python -m wt_zoo.bench sweep', date='d', git_commit='c1',
                                               settings=dict(epochs=2, seeds=[0], size='tiny', train_subset=10000)))
    _stability(results, wt_mean=50.0, deq_mean=45.0, std=2.0)
    long = [dict(r, held_out_top1=top1) for r, top1 in zip(short, (80.0, 82.0))]
    _write(results / 'sweep_full', 'sweep.json', long)
    run = dict(command='python -m wt_zoo.bench sweep --out results/sweep_full', date='d', git_commit='c2',
               seed_std_pooled=0.3, resolution=0.6, runs_finished=3, runs_planned=4,
               settings=dict(epochs=15, seeds=[0, 1], size='tiny', held_out=5000))
    _write(results / 'sweep_full', 'run.json', run)

    def depth_row():
        [row] = _by_id(claims.build(results, hub), 'guideline_depth')
        return row

    # partial: the short sweep still speaks, at its own (borrowed) resolution
    row = depth_row()
    assert row['link'] == 'results/sweep/README.md' and row['verdict'] == UNRESOLVED and '40.00' in row['measured']
    _write(results / 'sweep_full', 'run.json', dict(run, runs_finished=4))
    row = depth_row()
    assert row['link'] == 'results/sweep_full/README.md' and row['source'] == 'sweep_full'
    assert row['verdict'] == HOLDS and row['comparisons'][0]['resolution'] == pytest.approx(0.6)
    assert row['regime'].startswith('15 epochs') and 'partial' not in row['regime']
    assert [s['source'] for s in claims.sources(results, hub)].count('results/sweep_full') == 1


def test_a_finished_full_stability_grid_supersedes_the_short_one(tmp_path):
    results, hub = tmp_path / 'results', tmp_path / 'hub_configs'
    _stability(results, wt_mean=50.0, deq_mean=45.0, std=1.0, deq_first_divergence=0.5)
    # at the full regime the DEQ comes out ahead and diverges no earlier than WT
    _stability(results, wt_mean=80.0, deq_mean=84.0, std=0.3, recipes=True, folder='stability_full')
    full_run = json.loads((results / 'stability_full' / 'run.json').read_text())

    def rows_of(claim_id):
        return [r for r in _by_id(claims.build(results, hub), claim_id) if r['source'].startswith('stability')]

    # partial: a grid with lrs or seeds still to run could name a first divergence too early, so the short one speaks
    _write(results / 'stability_full', 'run.json', dict(full_run, runs_finished=11, runs_planned=18))
    [acc] = rows_of('accuracy_wt_vs_deq_epochs')
    assert acc['source'] == 'stability' and acc['verdict'] == HOLDS and acc['link'] == 'results/stability/README.md'
    assert rows_of('stability_divergence')[0]['verdict'] == HOLDS
    _write(results / 'stability_full', 'run.json', dict(full_run, runs_finished=18, runs_planned=18))
    [acc] = rows_of('accuracy_wt_vs_deq_epochs')
    assert acc['source'] == 'stability_full' and acc['link'] == 'results/stability_full/README.md'
    assert acc['verdict'] == FAILS and acc['regime'].startswith('10 epochs') and 'partial' not in acc['regime']
    [div] = rows_of('stability_divergence')
    assert div['link'] == 'results/stability_full/README.md' and div['verdict'] == UNRESOLVED  # both first at 1.5
    sources = [s['source'] for s in claims.sources(results, hub)]
    assert 'results/stability_full' in sources and 'results/stability' not in sources


def test_speed_and_memory_claims_from_a_synthetic_efficiency_run(tmp_path):
    results = tmp_path / 'results'
    eff = [dict(model='wt_resnet_tiny', family='wt', device='cpu', train_img_s=100.0, train_iqr=0.01,
                infer_b8_img_s=400.0, infer_b8_iqr=0.01, train_mem_mb=200.0, train_mem_ckpt_mb=80.0),
           dict(model='deq_resnet_tiny', family='deq', device='cpu', train_img_s=97.0, train_iqr=0.01, f_max_iter=12,
                infer_b8_img_s=100.0, infer_b8_iqr=0.01, train_mem_mb=150.0),
           dict(model='wt_resnet_small', family='wt', device='cpu', train_img_s=10.0, train_iqr=0.01,
                infer_b8_img_s=40.0, infer_b8_iqr=0.01, train_mem_mb=1000.0, train_mem_ckpt_mb=300.0),
           dict(model='deq_resnet_small', family='deq', device='cpu', train_img_s=20.0, train_iqr=0.01,
                infer_b8_img_s=40.0, infer_b8_iqr=0.30, train_mem_mb=1020.0)]
    _write(results / 'efficiency', 'efficiency.json', eff)
    _write(results / 'efficiency', 'run.json', dict(command='python -m wt_zoo.bench efficiency', git_commit='c3',
                                                    date='d', machine=dict(cpu_model='Test CPU', torch_threads=1),
                                                    settings=dict(train_batch=8, infer_batches=[8])))
    rows = claims.build(results, tmp_path / 'none')
    [train] = [r for r in _by_id(rows, 'train_speed') if r['source'].startswith('efficiency')]
    # tiny 1.03x is inside the 5 % floor; small 0.5x is outside: the row does not hold
    assert [c['verdict'] for c in train['comparisons']] == [UNRESOLVED, FAILS] and train['verdict'] == FAILS
    [infer] = _by_id(rows, 'inference_speed')
    # small: equal speeds inside a 60 % resolution (twice the noisier timing's IQR/median)
    assert [c['verdict'] for c in infer['comparisons']] == [HOLDS, UNRESOLVED] and infer['verdict'] == HOLDS
    assert infer['comparisons'][1]['resolution'] == 0.6
    [mem] = _by_id(rows, 'training_memory')
    assert [c['verdict'] for c in mem['comparisons']] == [HOLDS, UNRESOLVED]  # 1000 vs 1020 MiB: within 5 %
    assert _by_id(rows, 'training_memory_checkpointed')[0]['verdict'] == HOLDS


def test_markdown_links_resolve_from_where_they_live(tmp_path):
    rows = claims.build()
    section = claims.readme_section()
    for target in re.findall(r'\]\(([^)#]+)\)', section):
        assert (REPO / target).exists(), target
    readme = claims.render_readme(rows, claims.sources())
    for target in re.findall(r'\]\(([^)#]+)\)', readme):
        assert (REPO / 'results' / 'claims' / target).resolve().exists(), target
    assert claims.RULES in readme and claims.COMMAND in readme


# ------------------------------------------------------------------ the committed copies are current


def test_results_claims_folder_is_current():
    stale = claims.stale(REPO / 'results' / 'claims')
    assert not stale, f'results/claims is out of date ({stale}): run python -m wt_zoo.bench claims'


def test_readme_claims_section_is_the_generators_output():
    readme = (REPO / 'README.md').read_text()
    match = re.search(r'<!-- claims:start -->\n(.*?)\n<!-- claims:end -->', readme, re.S)
    assert match, 'README.md has no claims markers'
    assert match.group(1) == claims.readme_section(), 'README claims table is stale: run scripts/update_readme.py'


def test_a_stale_copy_is_caught(tmp_path):
    out = tmp_path / 'claims'
    shutil.copytree(REPO / 'results' / 'claims', out)
    assert claims.stale(out) == []
    data = json.loads((out / 'claims.json').read_text())
    data[0]['verdict'] = HOLDS if data[0]['verdict'] != HOLDS else FAILS
    (out / 'claims.json').write_text(json.dumps(data, indent=2) + '\n')
    assert claims.stale(out) == ['claims.json']


def test_a_published_tag_trained_before_its_recipe_changed_says_so():
    """deq_resnet_tiny.c10 was published with phantom gradients; its recipe now trains with implicit ones. The
    accuracy comparison is then with the older DEQ, and the claims row must not read as the recipe's."""
    recipe = yaml.safe_load((REPO / 'configs' / 'deq_resnet_tiny.c10.yaml').read_text())['model_kwargs']
    older = dict(name='deq_resnet_tiny.c10', args=dict(model_kwargs=dict(recipe, grad_mode='phantom', phantom_steps=2,
                                                                         jac_reg_weight=0.5)))
    drift = claims.recipe_drift(older)
    assert drift.startswith('deq_resnet_tiny.c10 trained with jac_reg_weight=0.5, grad_mode=phantom, its recipe now')
    assert f"jac_reg_weight={recipe['jac_reg_weight']}, grad_mode={recipe['grad_mode']}" in drift
    assert 'phantom_steps' not in drift  # the recipe names none: nothing it changed
    assert claims.recipe_drift(dict(name='deq_resnet_tiny.c10', args=dict(model_kwargs=recipe))) == ''
    assert claims.recipe_drift(dict(name='wt_resnet_tiny.c10', args=dict(lr=0.2))) == ''


def test_a_sweep_at_the_recipes_lr_says_which_lr_that_was():
    """The tiny recipe's lr moved (0.2 -> 0.5, recipe v2) after the sweep ran at the recipe's: its regime line must
    still give the lr its runs trained at, read from its runs table, not whatever configs/ says now."""
    settings = dict(epochs=15, seeds=[0, 1], size='tiny', recipe='configs/wt_resnet_tiny.c10.yaml')
    regime = sweep_regime(settings, [dict(lr=0.2, held_out_top1=80.0), dict(lr=0.2, held_out_top1=81.0)])
    assert "the recipe's peak lr at the time (0.2)" in regime
    assert '0.5' not in regime
    assert 'peak lr 0.5,' in sweep_regime(dict(settings, lr=0.5), [dict(lr=0.5)])  # an override names itself
    assert "the recipe's peak lr," in sweep_regime(settings)  # rows that do not record it: nothing invented


def test_results_made_before_a_recipe_moved_are_judged_by_the_recipe_they_ran(tmp_path):
    """The fast recipe's seed resolution was measured at v1's lr 0.2; the tiny recipe files say lr 0.5 since recipe
    v2. An ablation or a time-to-accuracy row names its commit, and the recipe at that commit is what it ran."""
    v1 = '6a9fe5becf24f69839589316bafbc7c53e5bc9cc'  # the commit before the tiny recipe files moved to v2
    config = 'configs/wt_resnet_tiny.c10.yaml'
    now = yaml.safe_load((REPO / config).read_text())
    assert claims._recipe_args(config, v1 + '+dirty')['lr'] == 0.2
    assert claims._recipe_args(config, 'not-a-commit') == now  # git cannot say: the file as it is now
    results, hub = tmp_path / 'results', tmp_path / 'hub_configs'
    _stability(results, wt_mean=50.0, deq_mean=45.0, std=2.0)  # borrowed resolution: 4 points
    _write(results / 'ablation' / 'fast_recipe_tiny', 'run.json',
           dict(command='python -m wt_zoo.bench ablation', date='d', git_commit=v1, resolution=0.6,
                settings=dict(recipe=config, epochs=16, seeds=[0, 1])))
    tta = results / 'time_to_accuracy'
    _write(tta, 'curves.json', _curve('wt_resnet_tiny.c10', 80.0, 10.0) + _curve('deq_resnet_tiny.c10', 78.0, 10.0))
    rows = [dict(_tta_row('wt_resnet_tiny.c10', 80.0, 10.0), config=config, git_commit=v1),
            dict(_tta_row('deq_resnet_tiny.c10', 78.0, 10.0), config='configs/deq_resnet_tiny.c10.yaml',
                 git_commit=v1)]
    _write(tta, 'summary.json', rows)
    [wall] = _by_id(claims.build(results, hub), 'accuracy_wt_vs_deq_wall_time')
    assert wall['comparisons'][0]['resolution'] == 0.6  # both ran v1, the recipe the seeds were measured for
    assert now['lr'] != 0.2  # rows that name no commit read today's files: not the measured recipe any more
    _write(tta, 'summary.json', [{k: v for k, v in row.items() if k != 'git_commit'} for row in rows])
    [wall] = _by_id(claims.build(results, hub), 'accuracy_wt_vs_deq_wall_time')
    assert wall['comparisons'][0]['resolution'] == 4.0


def test_results_that_record_their_recipe_are_judged_by_it_without_git(tmp_path):
    """A time-to-accuracy row keeps its recipe as run and an ablation its recipe file's settings: those win over the
    files and over git, so a clone without history (or a commit it lacks) reads the same verdicts."""
    results, hub = tmp_path / 'results', tmp_path / 'hub_configs'
    wt, deq = 'configs/wt_resnet_tiny.c10.yaml', 'configs/deq_resnet_tiny.c10.yaml'
    now = {name: yaml.safe_load((REPO / name).read_text()) for name in (wt, deq)}
    _stability(results, wt_mean=50.0, deq_mean=45.0, std=2.0)  # borrowed resolution: 4 points
    _write(results / 'ablation' / 'fast_recipe_tiny', 'run.json',
           dict(command='python -m wt_zoo.bench ablation', date='d', git_commit='not-a-commit', resolution=0.6,
                settings=dict(recipe=wt, epochs=16, seeds=[0, 1]), recipe_settings=dict(now[wt], lr=0.2)))
    tta = results / 'time_to_accuracy'
    _write(tta, 'curves.json', _curve('wt_resnet_tiny.c10', 80.0, 10.0) + _curve('deq_resnet_tiny.c10', 78.0, 10.0))

    def wall_resolution(lr: float) -> float:
        _write(tta, 'summary.json', [
            dict(_tta_row(name.split('/')[1][:-len('.yaml')], top1, 10.0), config=name, git_commit='not-a-commit',
                 recipe=dict(now[name], lr=lr, epochs=40, amp='on'))
            for name, top1 in ((wt, 80.0), (deq, 78.0))])
        [wall] = _by_id(claims.build(results, hub), 'accuracy_wt_vs_deq_wall_time')
        return wall['comparisons'][0]['resolution']

    assert now[wt]['lr'] != 0.2  # today's files would say the rows ran another recipe than the seeds measured
    assert wall_resolution(0.2) == 0.6  # both ran the measured recipe, as they recorded
    assert wall_resolution(now[wt]['lr']) == 4.0  # today's lr, recorded: not what the seeds were measured for
