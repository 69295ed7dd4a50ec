"""The multi-resolution (MDEQ-style) family: twins, shared drivers, masks, solver, features, timm plumbing.

timm's generic model tests run on these models too (tests/test_timm_suite.py); these are the
family's own behaviours.
"""
import csv
import json
import warnings

import pytest
import timm
import torch

import wt_zoo
from wt_zoo.models.mdeq import MDEQ_SIZES, MultiResolutionBlock
from wt_zoo.profile import profile_model

TWINS = ('wt_mdeq', 'wtsm_mdeq', 'mdeq')


def create(name, seed=0, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model(name, **kwargs)


def contractive_(model):
    """Shrink every branch's residual and the fused output's scale so the block is a contraction."""
    with torch.no_grad():
        block = model.implicit.block
        for branch in block.branches:
            branch.norm2.weight.mul_(0.003)
        for fusion in block.fusions:
            fusion.norm.weight.mul_(0.05)
    return model


def relative_residual(block, z, x):
    """||f(z) - z|| / ||f(z)|| over all branches together, the worst image of the batch."""
    f_z = block(z, x)
    diff = torch.cat([(a - b).flatten(1) for a, b in zip(f_z, z)], dim=1)
    ref = torch.cat([a.flatten(1) for a in f_z], dim=1)
    return (diff.norm(dim=1) / ref.norm(dim=1)).max().item()


# ------------------------------------------------------------------------------------------ twins

@pytest.mark.parametrize('size', tuple(MDEQ_SIZES))
def test_twins_have_identical_parameters(size):
    shapes = {}
    for prefix in TWINS:
        model = create(f'{prefix}_{size}')
        shapes[prefix] = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes['wt_mdeq'] == shapes['wtsm_mdeq'] == shapes['mdeq']
    counts = {prefix: sum(torch.Size(s).numel() for s in shape.values()) for prefix, shape in shapes.items()}
    assert len(set(counts.values())) == 1


def test_sizes_match_the_plan():
    params = {size: sum(p.numel() for p in create(f'wt_mdeq_{size}').parameters()) for size in MDEQ_SIZES}
    assert 0.15e6 < params['tiny'] < 0.3e6
    assert 0.9e6 < params['small'] < 1.3e6
    # tiny costs about what wt_resnet_tiny costs per image, so 2 CPU cores train it in one sitting
    tiny, resnet = profile_model(create('wt_mdeq_tiny')), profile_model(create('wt_resnet_tiny'))
    assert 0.7 * resnet['gflops'] < tiny['gflops'] < 1.1 * resnet['gflops']


def test_the_family_is_part_of_the_zoo():
    names = set(wt_zoo.list_zoo_models('*mdeq*'))
    assert names == {f'{prefix}_{size}' for prefix in TWINS for size in MDEQ_SIZES}
    assert {'wt_mdeq_tiny.c10', 'mdeq_small.fmnist'} <= set(wt_zoo.list_zoo_models(include_tags=True))
    assert wt_zoo.zoo_family('wtsm_mdeq_tiny.c10') == ('wtsm', 'mdeq')
    assert wt_zoo.zoo_family('mdeq_small') == ('deq', 'mdeq')
    assert wt_zoo.zoo_family('deq_resnet_tiny') == ('deq', 'resnet')
    assert wt_zoo.zoo_family('resnet18') is None


def test_wt_output_equals_the_deq_unrolled_warmup_with_the_same_weights():
    wt = create('wt_mdeq_tiny')
    deq = create('mdeq_tiny', seed=1)
    deq.load_state_dict(wt.state_dict())
    assert deq.warmup_depth == wt.depth == MDEQ_SIZES['tiny']['depth']
    x = torch.randn(4, 3, 32, 32)
    deq.set_unrolled_warmup(True)
    wt.train(), deq.train()
    torch.testing.assert_close(deq(x), wt(x), rtol=0, atol=0)
    assert deq.solver_stats == {}  # no solver ran
    deq.eval()
    with torch.no_grad():
        deq(x)
    assert set(deq.solver_stats) == {'implicit'}  # evaluation solves even during the warm-up


@pytest.mark.parametrize('prefix', TWINS)
def test_any_input_size_channel_count_and_channels_last(prefix):
    model = create(f'{prefix}_tiny', in_chans=1, num_classes=7).eval()
    with torch.no_grad():
        for height, width in ((28, 28), (17, 33)):
            x = torch.randn(2, 1, height, width)
            logits = model(x)
            assert logits.shape == (2, 7) and torch.isfinite(logits).all()
        reference = model(x)
        channels_last = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(channels_last, reference, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------ masks

def test_every_conv_of_the_block_gets_a_distinct_mask_per_iteration():
    model = create('wtsm_mdeq_tiny', mask_density=0.5, mask_seed=3)
    layer = model.implicit
    weights = layer.block.conv_weights()
    # 2 convs per branch; fusion: 1x1 up-paths, one stride-2 conv per resolution step down
    assert len(weights) == 2 * 3 + (2 + 2 + 3)
    assert layer.masks.num_masks == layer.depth == MDEQ_SIZES['tiny']['depth']
    for index, weight in enumerate(weights):
        per_iteration = [layer.masks.mask(index, k) for k in range(layer.depth)]
        assert all(m.shape == weight.shape for m in per_iteration)
        assert all(m.float().mean().item() == pytest.approx(0.5, abs=1 / weight.numel()) for m in per_iteration)
        assert all(not torch.equal(per_iteration[a], per_iteration[b])
                   for a in range(layer.depth) for b in range(a + 1, layer.depth))
    state = model.state_dict()
    assert [k for k in state if 'masks' in k] == ['implicit.masks.bits'] and state['implicit.masks.bits'].dtype == torch.uint8


def test_masks_reach_every_conv_and_full_density_is_the_dense_twin():
    x = torch.randn(2, 3, 32, 32)
    dense = create('wt_mdeq_tiny').eval()
    full = create('wtsm_mdeq_tiny', mask_density=1.0).eval()
    full.load_state_dict(dense.state_dict(), strict=False)
    half = create('wtsm_mdeq_tiny', mask_density=0.5).eval()
    half.load_state_dict(dense.state_dict(), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(full(x), dense(x), rtol=0, atol=0)
        assert not torch.allclose(half(x), dense(x))
    # masked-out weights get no gradient: the union of the iterations' masks bounds every conv's gradient
    half.train()
    half(x).sum().backward()
    layer = half.implicit
    for index, weight in enumerate(layer.block.conv_weights()):
        union = torch.zeros_like(weight, dtype=torch.bool)
        for iteration in range(layer.depth):
            union |= layer.masks.mask(index, iteration)
        assert torch.all(weight.grad[~union] == 0)
        assert weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------- checkpointing

@pytest.mark.parametrize('prefix', ('wt_mdeq', 'wtsm_mdeq'))
def test_grad_checkpointing_gives_identical_gradients(prefix):
    x = torch.randn(2, 3, 32, 32)
    grads = {}
    for ckpt in (False, True):
        model = create(f'{prefix}_tiny').train()
        model.set_grad_checkpointing(ckpt)
        assert model.implicit.grad_checkpointing is ckpt
        model(x).logsumexp(dim=1).sum().backward()
        grads[ckpt] = {n: p.grad for n, p in model.named_parameters()}
    assert grads[True].keys() == grads[False].keys()
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-5, atol=1e-7, msg=name)


# ---------------------------------------------------------------------------------------------- DEQ

def test_deq_solves_a_contractive_block_to_its_tolerance():
    model = contractive_(create('mdeq_tiny', f_solver='anderson', f_max_iter=40, f_tol=1e-3)).eval()
    x = torch.randn(2, 3, 32, 32)
    captured = {}
    handle = model.implicit.register_forward_hook(lambda m, args, out: captured.update(x=args[0], z=out))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('error')  # a converged solve must not warn
        model(x)
    handle.remove()
    stats = model.solver_stats['implicit']
    assert stats['converged'] and stats['rel_residual'] <= 1e-3 and 1 <= stats['nstep'] < 40
    # the fixed point, checked independently of the solver's bookkeeping
    with torch.no_grad():
        assert relative_residual(model.implicit.block, captured['z'], captured['x']) <= 1e-3


def test_deq_residual_falls_from_the_start_at_initialisation():
    """Untrained weights, no scaling: the block is no contraction yet (about 0.27 after 8 Anderson steps
    from about 0.97 at z0 = x), but the solver's best iterate is much closer to a fixed point than its
    start, and the residual it records is the one of the iterate it returns."""
    model = create('mdeq_tiny', f_solver='anderson', f_max_iter=8).eval()
    captured = {}
    handle = model.implicit.register_forward_hook(lambda m, args, out: captured.update(x=args[0], z=out))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model(torch.randn(2, 3, 32, 32))
        handle.remove()
        start = relative_residual(model.implicit.block, captured['x'], captured['x'])
        solved = relative_residual(model.implicit.block, captured['z'], captured['x'])
    assert solved < 0.5 * start
    assert model.solver_stats['implicit']['rel_residual'] == pytest.approx(solved, rel=0.15)


@pytest.mark.parametrize('grad_mode', ('implicit', 'phantom'))
def test_deq_gradients_reach_every_parameter(grad_mode):
    model = contractive_(create('mdeq_tiny', grad_mode=grad_mode, f_max_iter=20, b_max_iter=20)).train()
    model(torch.randn(2, 3, 32, 32)).logsumexp(dim=1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_deq_jacobian_penalty_on_the_branch_list_and_bf16_autocast():
    model = create('mdeq_tiny', jac_reg_weight=0.5, f_max_iter=4).train()
    logits = model(torch.randn(2, 3, 32, 32))
    penalty = model.aux_loss()
    assert penalty.item() > 0 and penalty.requires_grad
    (logits.sum() + penalty).backward()
    assert model.implicit.block.branches[2].conv1.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad(), warnings.catch_warnings(), torch.autocast('cpu', dtype=torch.bfloat16):
        warnings.simplefilter('ignore')
        out = model(torch.randn(2, 3, 32, 32))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_fx_traces_every_deq_member_around_the_solver():
    """The solver-driven layer is an fx leaf: tracing and torchvision's feature extraction keep it whole."""
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    x = torch.randn(1, 3, 32, 32)
    for name in ('mdeq_tiny', 'deq_resnet_tiny'):
        model = create(name, f_max_iter=4).eval()
        train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
        assert any(node.endswith('implicit') for node in eval_nodes)
        assert not any('deq' in node.split('.') for node in eval_nodes), 'traced into the solver'
        extractor = create_feature_extractor(model, return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer_kwargs)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            torch.testing.assert_close(list(extractor(x).values())[0], model(x))


# ----------------------------------------------------------------------------------- timm plumbing

@pytest.mark.parametrize('prefix', TWINS)
def test_features_only_gives_one_map_per_branch(prefix):
    model = create(f'{prefix}_tiny', features_only=True).eval()
    assert model.feature_info.channels() == [16, 32, 64]
    assert model.feature_info.reduction() == [1, 2, 4]
    with torch.no_grad():
        features = model(torch.randn(1, 3, 28, 28))
    assert [tuple(f.shape[1:]) for f in features] == [(16, 28, 28), (32, 14, 14), (64, 7, 7)]
    coarse = create(f'{prefix}_small', features_only=True, out_indices=(1, 2)).eval()
    with torch.no_grad():
        assert [tuple(f.shape[1:]) for f in coarse(torch.randn(1, 3, 17, 33))] == [(80, 9, 17), (160, 5, 9)]


@pytest.mark.parametrize('prefix', TWINS)
def test_fx_feature_extraction_returns_every_branch_as_forward_intermediates_does(prefix):
    kwargs = dict(f_max_iter=4) if prefix == 'mdeq' else {}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        graph = create(f'{prefix}_tiny', features_only=True, feature_cls='fx', **kwargs).eval()
        reference = create(f'{prefix}_tiny', **kwargs).eval()
        expected = reference.forward_intermediates(x, intermediates_only=True)
        features = graph(x)
    assert type(graph).__name__ == 'FeatureGraphNet' and len(features) == 3
    for got, want in zip(features, expected):
        torch.testing.assert_close(got, want)


def test_pruning_ends_forward_features_at_the_last_wanted_branch():
    model = create('wt_mdeq_tiny').eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        taps = model.forward_intermediates(x, intermediates_only=True)
        final, _ = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert final.shape[1:] == (model.num_features, 8, 8)
        assert model.prune_intermediate_layers([1]) == [1]
        assert model.head_fuse is None and model.num_features == 32
        torch.testing.assert_close(model.forward_features(x), taps[1])
        torch.testing.assert_close(model(x), taps[1])  # as timm prunes: classifier and pooling gone too


def test_head_and_stem_follow_timm_conventions():
    model = create('wtsm_mdeq_tiny', in_chans=1, num_classes=5)
    assert model.stem.conv.weight.shape[1] == 1 and model.get_classifier().out_features == 5
    assert model.forward_head(model.forward_features(torch.randn(2, 1, 28, 28)), pre_logits=True).shape == (2, 128)
    model.reset_classifier(3)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 3)
    cfg = timm.create_model('mdeq_tiny.fmnist').pretrained_cfg
    assert cfg['input_size'] == (1, 28, 28) and cfg['pool_size'] == (7, 7) and 'hf_hub_id' not in cfg


def test_bad_inputs_and_arguments_name_what_was_expected():
    model = create('wt_mdeq_tiny')
    with pytest.raises(ValueError, match=r'\(N, 3, H, W\)'):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r'H, W >= 16'):
        model(torch.randn(1, 3, 12, 32))
    with pytest.raises(ValueError, match=r'got shape \[3, 32, 32\]'):
        model.forward_intermediates(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match='num_branches must be a positive integer, got 0'):
        create('wt_mdeq_tiny', num_branches=0)
    with pytest.raises(ValueError, match='width must be a positive multiple of norm_groups=8, got 20'):
        create('mdeq_tiny', width=20)
    with pytest.raises(ValueError, match="unknown f_solver 'newton'"):
        create('mdeq_tiny', f_solver='newton')
    with pytest.raises(ValueError, match='depth must be a positive integer, got 0'):
        create('wtsm_mdeq_tiny', depth=0)
    for name, kwargs in (('wt_mdeq_tiny', dict(mask_density=0.5)), ('mdeq_tiny', dict(depth=4)),
                         ('wt_mdeq_tiny', dict(num_stages=2))):
        with pytest.raises(TypeError):
            create(name, **kwargs)


def test_torchscript_matches_eager_for_the_unrolled_twins():
    x = torch.randn(1, 3, 32, 32)
    for name in ('wt_mdeq_tiny', 'wtsm_mdeq_tiny'):
        model = create(name).eval()
        scripted = torch.jit.script(model)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)


def test_block_takes_one_state_per_branch():
    block = MultiResolutionBlock([8, 16], norm_groups=4)
    z = [torch.randn(2, 8, 9, 9), torch.randn(2, 16, 5, 5)]
    out = block(z, z)
    assert [tuple(t.shape) for t in out] == [(2, 8, 9, 9), (2, 16, 5, 5)]


# ------------------------------------------------------------------------------------------ profile

def test_profile_counts_iterations_and_the_deq_per_solver_iteration():
    wt = {depth: profile_model(create('wt_mdeq_tiny', depth=depth)) for depth in (2, 4)}
    per_iteration = (wt[4]['gflops'] - wt[2]['gflops']) / 2
    deq = profile_model(create('mdeq_tiny'), deq_iterations=4)
    assert deq['params'] == wt[4]['params'] == sum(p.numel() for p in create('mdeq_tiny').parameters())
    assert deq['gflops_per_iteration'] == pytest.approx(per_iteration, rel=1e-9)
    assert deq['gflops'] == pytest.approx(wt[4]['gflops'], rel=1e-9)
    masked = profile_model(create('wtsm_mdeq_tiny', mask_density=0.5))
    assert masked['gflops'] == pytest.approx(wt[4]['gflops'])
    assert 0.5 * wt[4]['gflops'] < masked['effective_gflops'] < 0.65 * wt[4]['gflops']


# ------------------------------------------------------------------------------ train.py, validate.py

@pytest.mark.slow
def test_train_and_validate_take_the_family_by_name(fake_cifar10, tmp_path):
    """A warm-up epoch unrolled, one solving, exported; validate.py evaluates the weights and counts FLOPs."""
    import train
    import validate
    common = ['--dataset', 'cifar10', '--data-dir', str(fake_cifar10), '-b', '32', '--model', 'mdeq_tiny',
              '--model-kwargs', 'f_max_iter=3']
    train.main([*common, '--output', str(tmp_path), '--experiment', 'run', '--img-size', '16', '--lr', '0.05',
                '--seed', '3', '--no-progress', '--epochs', '2', '--unrolled-warmup-epochs', '1',
                '--train-subset', '64', '--eval-subset', '32'])
    with open(tmp_path / 'run' / 'summary.csv') as f:
        first, second = list(csv.DictReader(f))
    assert first['solver_nstep'] == '' and 1 <= float(second['solver_nstep']) <= 3
    validate.main([*common, '--checkpoint', str(tmp_path / 'run' / 'model.safetensors'), '--split', 'test',
                   '--results-file', str(tmp_path / 'results.json')])
    row = json.loads((tmp_path / 'results.json').read_text())[0]
    assert row['params'] == sum(p.numel() for p in create('mdeq_tiny', num_classes=10).parameters())
    assert 1 <= row['deq_iterations'] <= 3 and row['gflops'] > 0
