"""fvcore accounting: every unrolled iteration counted, shared weights once, masks and solvers handled."""
import json
import subprocess
import sys

import pytest
import timm
import torch

import wt_zoo  # noqa: F401
from wt_zoo.profile import format_table, profile_model, profile_models


def row(name, **kwargs):
    torch.manual_seed(0)
    return profile_model(timm.create_model(name, **kwargs), **({} if 'deq' not in name else {'deq_iterations': 4}))


def test_every_unrolled_iteration_is_counted():
    flops = {depth: row('wt_resnet_tiny', depth=depth)['gflops'] for depth in (1, 2, 4, 8)}
    per_iteration = flops[2] - flops[1]
    assert per_iteration > 0
    assert flops[8] - flops[4] == pytest.approx(4 * per_iteration, rel=1e-9)
    # the known count of the tiny model: 89 MFLOPs at 32x32, nearly all of it in the iterations
    assert flops[4] == pytest.approx(0.0891, abs=5e-4)


def test_shared_weights_counted_once_and_masks_not_at_all():
    dense, masked = row('wt_resnet_tiny'), row('wtsm_resnet_tiny')
    model = timm.create_model('wt_resnet_tiny')
    assert dense['params'] == sum(p.numel() for p in model.parameters())
    assert row('wt_resnet_tiny', depth=8)['params'] == dense['params']
    assert masked['params'] == dense['params']


def test_masked_effective_flops_scale_with_density():
    dense = row('wt_resnet_tiny')
    half = row('wtsm_resnet_tiny', mask_density=0.5)
    full = row('wtsm_resnet_tiny', mask_density=1.0)
    assert half['gflops'] == pytest.approx(dense['gflops'])   # dense count: fvcore sees w * mask as dense
    assert full['effective_gflops'] == pytest.approx(dense['gflops'])
    # almost all FLOPs are the masked block convs, so half density is a bit above half the FLOPs
    assert 0.5 * dense['gflops'] < half['effective_gflops'] < 0.56 * dense['gflops']


def test_deq_flops_per_iteration_and_at_a_count_match_the_unrolled_twin():
    deq = row('deq_resnet_tiny')  # counted at 4 iterations, the tiny twin's depth
    wt = row('wt_resnet_tiny')
    assert deq['deq_iterations'] == 4 and deq['deq_iterations_source'] == 'given'
    assert deq['gflops'] == pytest.approx(wt['gflops'], rel=1e-9)
    wt8 = row('wt_resnet_tiny', depth=8)
    assert deq['gflops_per_iteration'] == pytest.approx((wt8['gflops'] - wt['gflops']) / 4, rel=1e-9)


def test_deq_iterations_measured_on_a_batch_by_default():
    torch.manual_seed(0)
    model = timm.create_model('deq_resnet_tiny', f_max_iter=5, eval_f_max_iter=0)  # not the c10 tag's test-time 24
    measured = profile_model(model, images=torch.randn(8, 3, 32, 32))
    assert measured['deq_iterations_source'] == 'measured on the given batch'
    assert 1 <= measured['deq_iterations'] <= 5


def test_deq_iterations_default_to_real_test_images():
    torch.manual_seed(0)
    measured = profile_model(timm.create_model('deq_resnet_tiny.c10', f_max_iter=5))
    assert measured['deq_iterations_source'] == 'measured on 64 test images'


def test_table_and_cli(capsys):
    rows = profile_models(['wt_resnet_tiny', 'wtsm_resnet_t*'])
    assert [r['model'] for r in rows] == ['wt_resnet_tiny', 'wtsm_resnet_tiny']
    table = format_table(rows)
    assert 'one multiply-add as one flop' in table.splitlines()[0]
    assert '| wtsm_resnet_tiny | 3x32x32 | 0.252 |' in table
    out = subprocess.run([sys.executable, '-m', 'wt_zoo.profile', 'deq_resnet_tiny', '--json', '--deq-iterations', '3'],
                         capture_output=True, text=True, check=True).stdout
    parsed = json.loads(out)
    assert parsed[0]['model'] == 'deq_resnet_tiny' and parsed[0]['deq_iterations'] == 3


def test_cli_rejects_unknown_models():
    result = subprocess.run([sys.executable, '-m', 'wt_zoo.profile', 'resnet50'], capture_output=True, text=True)
    assert result.returncode == 2
    assert "no zoo model matches 'resnet50'" in result.stderr


def test_the_zoos_commands_show_no_deprecation_notice_from_fvcore():
    """fvcore scripts a loss at import, which torch now warns about: not the user's warning to see."""
    code = 'import wt_zoo.profile; from wt_zoo.bench import build_parser; build_parser()'
    done = subprocess.run([sys.executable, '-W', 'error::FutureWarning', '-c', code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
