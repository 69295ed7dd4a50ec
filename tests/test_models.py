"""Behaviour of the three model families beyond timm's generic contract (see test_timm_suite.py)."""
import warnings

import pytest
import timm
import torch

import wt_zoo
from wt_zoo.masks import IterationMasks, pack_bits, unpack_bits

SIZES = tuple(wt_zoo.MODEL_SIZES)
FAMILIES = ('wt', 'wtsm', 'deq')


def create(name, seed=0, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model(name, **kwargs)


def contractive_(model):
    """Shrink the residual branch and the block's output scale so f is a contraction."""
    with torch.no_grad():
        for layer in model.implicit_layers():
            layer.block.norm2.weight.mul_(0.003)
            layer.block.norm3.weight.mul_(0.1)
    return model


@pytest.mark.parametrize('size', SIZES)
def test_twins_have_identical_parameters(size):
    shapes = {}
    for family in FAMILIES:
        model = create(f'{family}_resnet_{size}')
        shapes[family] = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes['wt'] == shapes['wtsm'] == shapes['deq']
    counts = {family: sum(torch.Size(s).numel() for s in shape.values()) for family, shape in shapes.items()}
    assert len(set(counts.values())) == 1


def test_model_sizes_match_the_plan():
    params = {size: sum(p.numel() for p in create(f'wt_resnet_{size}').parameters()) for size in SIZES}
    assert params['tiny'] < params['small'] < params['base']
    # base is meant to be about half of MDEQ's 10M parameters
    assert 4.5e6 < params['base'] < 5.5e6


@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('in_chans,height,width', [(3, 32, 32), (1, 28, 28), (3, 16, 16), (3, 40, 24), (1, 17, 33)])
def test_any_input_size_and_channel_count(family, in_chans, height, width):
    model = create(f'{family}_resnet_tiny', in_chans=in_chans, num_classes=7).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, in_chans, height, width))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize('family', FAMILIES)
def test_channels_last_matches_contiguous(family):
    model = create(f'{family}_resnet_tiny').eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
        model = model.to(memory_format=torch.channels_last)
        channels_last = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(channels_last, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('family', FAMILIES)
def test_bf16_autocast(family):
    model = create(f'{family}_resnet_tiny', f_max_iter=4) if family == 'deq' else create(f'{family}_resnet_tiny')
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
        with warnings.catch_warnings(), torch.autocast('cpu', dtype=torch.bfloat16):
            warnings.simplefilter('ignore')
            logits = model(x)
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(logits.float()).all()
    # same function, lower precision: the predictions mostly agree
    assert (logits.float() - reference).abs().max() < 0.25 * reference.abs().max() + 0.05


@pytest.mark.parametrize('name', ['wt_resnet_tiny', 'wtsm_resnet_tiny'])
@pytest.mark.parametrize('depth', [0, -1, 2.5])
def test_bad_depth_is_a_value_error_in_both_unrolled_families(name, depth):
    with pytest.raises(ValueError, match=f'depth must be a positive integer, got {depth!r}'):
        create(name, depth=depth)


def test_wrong_channel_count_names_expected_shape():
    model = create('wt_resnet_tiny')
    with pytest.raises(ValueError, match=r'\(N, 3, H, W\)'):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r'H, W >= 16'):
        model(torch.randn(1, 3, 12, 32))
    with pytest.raises(ValueError, match=r'got shape \[3, 32, 32\]'):
        model(torch.randn(3, 32, 32))


@pytest.mark.parametrize('kwargs,match', [
    (dict(mask_density=0.0), r'mask_density must be a number in \(0, 1\]'),
    (dict(mask_density=1.5), r'mask_density must be a number in \(0, 1\]'),
    (dict(mask_kind='random'), r"unknown mask_kind 'random'; valid choices: unstructured, 2:4, channel"),
    (dict(mask_mode='cyclic'), r"unknown mask_mode 'cyclic'; valid choices: distinct, shared"),
    (dict(mask_kind='2:4', mask_density=0.3), r'mask_density must be 0.5'),
])
def test_bad_mask_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model('wtsm_resnet_tiny', **kwargs)


@pytest.mark.parametrize('kwargs,match', [
    (dict(f_solver='newton'), r"unknown f_solver 'newton'; valid choices: anderson, broyden, fixed_point_iter"),
    (dict(b_solver='lbfgs'), r"unknown b_solver 'lbfgs'; valid choices: anderson, broyden, fixed_point_iter"),
    (dict(grad_mode='exact'), r"unknown grad_mode 'exact'; valid choices: implicit, phantom"),
    (dict(f_max_iter=0), r'f_max_iter must be a positive integer'),
    (dict(eval_f_max_iter=-1), r'eval_f_max_iter must be a non-negative integer \(0: f_max_iter\)'),
])
def test_bad_solver_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model('deq_resnet_tiny', **kwargs)


@pytest.mark.parametrize('name,kwargs', [
    ('wt_resnet_tiny', dict(mask_density=0.5)),   # a wtsm argument is unknown to the dense family
    ('wtsm_resnet_tiny', dict(f_solver='anderson')),
    ('deq_resnet_tiny', dict(depth=4)),             # DEQs solve, they have no unrolled depth
])
def test_other_families_arguments_are_unknown(name, kwargs):
    with pytest.raises(TypeError):
        timm.create_model(name, **kwargs)


# ---------------------------------------------------------------------------------------- masks

def test_pack_bits_round_trip():
    mask = torch.rand(5, 7, 3, 3, generator=torch.Generator().manual_seed(1)) < 0.3
    bits = pack_bits(mask)
    assert bits.dtype == torch.uint8 and bits.numel() == -(-mask.numel() // 8)
    assert torch.equal(unpack_bits(bits, mask.numel()).view(mask.shape), mask)


@pytest.mark.parametrize('kind,density', [('unstructured', 0.5), ('unstructured', 0.3), ('2:4', 0.5),
                                          ('channel', 0.25)])
def test_distinct_masks_differ_and_have_the_requested_density(kind, density):
    masks = IterationMasks([(16, 16, 3, 3), (16, 16, 3, 3)], depth=4, mask_density=density, mask_kind=kind,
                           mask_seed=3)
    for index in range(2):
        per_iteration = [masks.mask(index, k) for k in range(4)]
        for mask in per_iteration:
            assert mask.shape == (16, 16, 3, 3) and mask.dtype == torch.bool
            assert mask.float().mean().item() == pytest.approx(density, abs=1 / mask.numel())
        for a in range(4):
            for b in range(a + 1, 4):
                assert not torch.equal(per_iteration[a], per_iteration[b])
        if kind == '2:4':
            groups = per_iteration[0].view(16, 4, 4, 3, 3).sum(dim=2)
            assert torch.all(groups == 2)
        if kind == 'channel':
            # whole input channels: constant over output channels and the kernel window
            mask = per_iteration[0]
            assert torch.equal(mask, mask[:1, :, :1, :1].expand_as(mask))


def test_shared_mode_uses_one_mask_for_all_iterations():
    masks = IterationMasks([(8, 8, 3, 3)], depth=5, mask_mode='shared', mask_seed=1)
    assert masks.num_masks == 1
    assert all(torch.equal(masks.mask(0, 0), masks.mask(0, k)) for k in range(5))


def test_masks_are_compact_and_travel_with_the_state_dict():
    model = create('wtsm_resnet_tiny', mask_seed=1)
    state = model.state_dict()
    mask_keys = [k for k in state if k.endswith('masks.bits')]
    assert len(mask_keys) == 2
    assert all(state[k].dtype == torch.uint8 for k in mask_keys)
    assert not any(t.dtype.is_floating_point for k, t in state.items() if 'masks' in k)
    # a model built with another seed becomes the saved one by loading the checkpoint
    other = create('wtsm_resnet_tiny', mask_seed=2)
    x = torch.randn(2, 3, 32, 32)
    model.eval(), other.eval()
    with torch.no_grad():
        assert not torch.allclose(model(x), other(x))
        other.load_state_dict(state)
        torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)


def test_full_density_masks_equal_the_dense_twin():
    dense = create('wt_resnet_tiny').eval()
    masked = create('wtsm_resnet_tiny', mask_density=1.0).eval()
    masked.load_state_dict(dense.state_dict(), strict=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(masked(x), dense(x), rtol=0, atol=0)


def test_gradients_reach_the_shared_weight_through_every_mask():
    model = create('wtsm_resnet_tiny', mask_density=0.3, mask_seed=5).train()
    model(torch.randn(4, 3, 32, 32)).logsumexp(dim=1).sum().backward()
    for layer in model.implicit_layers():
        for index, weight in enumerate(layer.block.conv_weights()):
            union = torch.zeros_like(weight, dtype=torch.bool)
            for iteration in range(layer.depth):
                union |= layer.masks.mask(index, iteration)
            grad = weight.grad
            assert torch.all(grad[~union] == 0), 'masked-out weights must get no gradient'
            # union of 4 masks at density 0.3 covers ~76% of the weights; gradients reach them
            assert (grad[union] != 0).float().mean() > 0.95
            # the gradient is the sum over iterations: more than any single mask could give
            assert (grad != 0).float().mean() > 0.3 + 0.2


def test_shared_weight_gradient_is_the_sum_of_masked_copies():
    """d loss / d W equals the sum over iterations of (d loss / d (W * M_k)) * M_k."""
    model = create('wtsm_resnet_tiny', mask_density=0.5, mask_seed=2).train()
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    layer = model.implicit_layers()[0]
    shared_grad = layer.block.conv1.weight.grad.clone()

    # Re-run stage 0 with explicit per-iteration leaf copies of the masked weights.
    with torch.no_grad():
        stage_input = layer_input = model.stages[0].downsample(model.stem(x))
    copies = [(layer.block.conv1.weight.detach() * layer.masks.mask(0, k)).requires_grad_() for k in range(layer.depth)]
    z = stage_input
    for k in range(layer.depth):
        w2 = layer.block.conv2.weight * layer.masks.mask(1, k)
        z = layer.block(z, layer_input, [copies[k], w2])
    rest = torch.nn.Sequential(*list(model.stages)[1:])
    model.head(rest(z)).sum().backward()
    expected = sum(c.grad * layer.masks.mask(0, k) for k, c in enumerate(copies))
    torch.testing.assert_close(shared_grad, expected, rtol=1e-4, atol=1e-6)


def test_eval_cache_matches_uncached_path_and_follows_weight_updates():
    model = create('wtsm_resnet_tiny', mask_seed=4).eval()
    x = torch.randn(2, 3, 32, 32)
    uncached = model(x)  # grad enabled and weights require grad: masked weights computed per call
    with torch.no_grad():
        cached_first = model(x)
        cached_again = model(x)
    masks = model.implicit_layers()[0].masks
    assert len(masks._cache) == masks.num_masks, 'eval under no_grad should fill the cache'
    torch.testing.assert_close(cached_first, uncached.detach(), rtol=0, atol=0)
    torch.testing.assert_close(cached_again, cached_first, rtol=0, atol=0)
    # an in-place update (what an optimizer step does) must invalidate the cache
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        after_update = model(x)
    fresh = model(x).detach()
    assert not torch.allclose(after_update, cached_first)
    torch.testing.assert_close(after_update, fresh, rtol=0, atol=0)


def test_cached_weights_in_train_and_eval_modes_are_identical():
    masks = IterationMasks([(8, 8, 3, 3)], depth=3, mask_seed=0)
    weight = torch.randn(8, 8, 3, 3)
    trained = [masks([weight], k)[0] for k in range(3)]
    masks.eval()
    with torch.no_grad():
        cached = [masks([weight], k)[0] for k in range(3)]
        assert all(masks([weight], k)[0] is cached[k] for k in range(3)), 'second call must reuse the cache'
    for a, b in zip(trained, cached):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------------------- grad checkpointing

def _saved_bytes(model, x):
    """Bytes of distinct storages autograd keeps for the backward pass."""
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum().backward()
    return sum(storages.values())


@pytest.mark.parametrize('family', ('wt', 'wtsm'))
def test_grad_checkpointing_same_result_and_memory_stops_growing_with_depth(family):
    x = torch.randn(2, 3, 32, 32)
    saved = {}
    for depth in (4, 8):
        for ckpt in (False, True):
            model = create(f'{family}_resnet_tiny', depth=depth).train()
            model.set_grad_checkpointing(ckpt)
            saved[depth, ckpt] = _saved_bytes(model, x)
            if depth == 8:
                grads = {n: p.grad.clone() for n, p in model.named_parameters()}
                if ckpt:
                    for name, grad in grads.items():
                        torch.testing.assert_close(grad, reference[name], rtol=1e-4, atol=1e-6)
                else:
                    reference = grads
    per_iteration = (saved[8, False] - saved[4, False]) / 4
    per_iteration_ckpt = (saved[8, True] - saved[4, True]) / 4
    assert saved[8, True] < saved[8, False] / 2
    # what remains per iteration is the checkpoint's input z, a fraction of the block's activations
    assert per_iteration_ckpt < per_iteration / 4, (per_iteration_ckpt, per_iteration)


def test_torch_compile_unrolls_without_graph_breaks():
    model = create('wt_resnet_tiny').eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, fullgraph=True, backend='eager')  # fullgraph raises on any graph break
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------- DEQ

@pytest.mark.parametrize('solver', ('anderson', 'broyden', 'fixed_point_iter'))
def test_deq_reaches_tolerance_on_a_contractive_block(solver):
    model = contractive_(create('deq_resnet_tiny', f_solver=solver, f_max_iter=40, f_tol=1e-3)).eval()
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # a converged solve must not warn
        with torch.no_grad():
            model(x)
    stats = model.solver_stats
    assert set(stats) == {'stages.0', 'stages.1'}
    for stage in stats.values():
        assert stage['converged'] and stage['rel_residual'] <= 1e-3
        assert 1 <= stage['nstep'] < 40
    # check the fixed point independently of the solver's own bookkeeping
    captured = {}
    layer = model.implicit_layers()[0]
    handle = layer.register_forward_hook(lambda m, args, out: captured.update(x=args[0], z=out))
    with torch.no_grad():
        model(x)
        handle.remove()
        f_z = layer.block(captured['z'], captured['x'])
    residual = ((f_z - captured['z']).flatten(1).norm(dim=1) / f_z.flatten(1).norm(dim=1)).max()
    assert residual <= 1e-3


def test_deq_that_misses_tolerance_warns_once_and_returns_its_best_iterate():
    # eval_f_max_iter 0: the training cap, not the c10 tag's 24 (an untagged name builds timm's default tag)
    model = create('deq_resnet_tiny', f_solver='fixed_point_iter', f_max_iter=2, f_tol=1e-8, eval_f_max_iter=0).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        with torch.no_grad():
            outputs = [model(torch.randn(1, 3, 32, 32)) for _ in range(3)]
    relevant = [w for w in caught if 'did not reach f_tol' in str(w.message)]
    assert len(relevant) == len(model.implicit_layers()), 'one warning per stage, not one per forward'
    assert {w.filename for w in relevant} == {__file__}, 'the warning points at the line that ran the model'
    assert all(not s['converged'] and s['nstep'] <= 2 for s in model.solver_stats.values())
    assert all(torch.isfinite(out).all() for out in outputs)


def test_deq_eval_f_max_iter_caps_the_solver_at_evaluation_only():
    model = create('deq_resnet_tiny', f_solver='fixed_point_iter', f_max_iter=2, f_tol=1e-8, eval_f_max_iter=5)
    images = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)  # f_tol 1e-8 is out of reach on purpose
        model.train()
        model(images)
        assert all(s['nstep'] <= 2 for s in model.solver_stats.values())
        model.eval()
        with torch.no_grad():
            model(images)
    assert all(2 < s['nstep'] <= 5 for s in model.solver_stats.values())


def test_deq_never_returns_nan_silently():
    model = create('deq_resnet_tiny', f_max_iter=3).eval()
    with torch.no_grad():
        model.implicit_layers()[0].block.conv1.weight[0, 0, 0, 0] = float('nan')
    with pytest.raises(FloatingPointError, match='non-finite'):
        with torch.no_grad():
            model(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize('grad_mode', ('implicit', 'phantom'))
def test_deq_gradients_reach_every_parameter(grad_mode):
    model = contractive_(create('deq_resnet_tiny', grad_mode=grad_mode, f_max_iter=20, b_max_iter=20)).train()
    model(torch.randn(2, 3, 32, 32)).logsumexp(dim=1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    block_grad = model.implicit_layers()[0].block.conv1.weight.grad
    assert block_grad.abs().sum() > 0


def test_deq_implicit_gradient_matches_finite_differences_direction():
    """IFT gradients on a contractive block agree with phantom gradients run to many steps."""
    grads = {}
    for mode, steps in (('implicit', 1), ('phantom', 30)):
        model = contractive_(create('deq_resnet_tiny', grad_mode=mode, phantom_steps=steps, f_max_iter=60,
                                    f_tol=1e-6, b_max_iter=60)).train()
        torch.manual_seed(1)
        model(torch.randn(2, 3, 32, 32)).logsumexp(dim=1).sum().backward()
        grads[mode] = model.implicit_layers()[1].block.conv2.weight.grad.flatten()
    cosine = torch.nn.functional.cosine_similarity(grads['implicit'], grads['phantom'], dim=0)
    assert cosine > 0.98


def test_deq_jacobian_regularisation_adds_a_differentiable_penalty():
    model = create('deq_resnet_tiny', jac_reg_weight=0.5, f_max_iter=6).train()
    assert model.aux_loss().item() == 0  # nothing computed before a forward
    logits = model(torch.randn(2, 3, 32, 32))
    penalty = model.aux_loss()
    assert penalty.item() > 0 and penalty.requires_grad
    (logits.sum() + penalty).backward()
    assert model.implicit_layers()[0].block.conv1.weight.grad.abs().sum() > 0
    plain = create('deq_resnet_tiny', f_max_iter=6).train()
    plain(torch.randn(2, 3, 32, 32))
    assert plain.aux_loss().item() == 0


def test_deq_unrolled_warmup_trains_as_its_weight_tied_twin_and_evaluation_still_solves():
    deq = create('deq_resnet_tiny')
    wt = create('wt_resnet_tiny', seed=1)
    wt.load_state_dict(deq.state_dict())
    assert deq.warmup_depth == wt_zoo.MODEL_SIZES['tiny']['depth']
    x = torch.randn(4, 3, 32, 32)
    deq.set_unrolled_warmup(True)
    deq.train(), wt.train()
    torch.testing.assert_close(deq(x), wt(x))
    assert deq.solver_stats == {}  # no solver ran
    deq.eval()
    with torch.no_grad():
        deq(x)
    assert set(deq.solver_stats) == {'stages.0', 'stages.1'}  # evaluation solves even during the warm-up
    deq.set_unrolled_warmup(False)
    deq.train()
    deq(x)
    assert all(s['nstep'] >= 1 for s in deq.solver_stats.values())
    with pytest.raises(ValueError, match='warmup_depth must be a positive integer'):
        create('deq_resnet_tiny', warmup_depth=0)


def test_deq_implicit_gradient_under_bf16_autocast_follows_the_fp32_one():
    """torchdeq re-evaluates the block inside backward, where autocast is off; the block keeps the forward's."""
    grads = {}
    x = torch.randn(2, 3, 32, 32)
    for dtype in (None, torch.bfloat16):
        model = contractive_(create('deq_resnet_tiny', grad_mode='implicit', f_max_iter=30, f_tol=1e-4,
                                    b_max_iter=30)).train()
        with torch.autocast('cpu', dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = model(x).float().logsumexp(dim=1).sum()
        loss.backward()
        grads[dtype] = model.implicit_layers()[1].block.conv2.weight.grad.flatten()
    assert torch.isfinite(grads[torch.bfloat16]).all()
    assert torch.nn.functional.cosine_similarity(grads[None], grads[torch.bfloat16], dim=0) > 0.9


def test_deq_solver_algebra_stays_fp32_under_bf16_autocast(monkeypatch):
    """Anderson's least-squares systems in bf16 lose their regulariser and turn singular mid-training."""
    seen = []
    real_solve = torch.linalg.solve

    def spy(A, B, *args, **kwargs):
        seen.append(torch.is_autocast_enabled('cpu'))
        return real_solve(A, B, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, 'solve', spy)
    model = create('deq_resnet_tiny', f_solver='anderson', f_max_iter=6).eval()
    with torch.no_grad(), warnings.catch_warnings(), torch.autocast('cpu', dtype=torch.bfloat16):
        warnings.simplefilter('ignore')
        out = model(torch.randn(2, 3, 32, 32))
    assert out.dtype == torch.bfloat16  # the block and head still ran in autocast
    assert seen and not any(seen)


# ----------------------------------------------------------------------------------- timm plumbing

@pytest.mark.parametrize('family', FAMILIES)
def test_features_only_through_the_getter(family):
    model = create(f'{family}_resnet_small', features_only=True).eval()
    assert model.feature_info.channels() == [48, 48, 96, 192]
    assert model.feature_info.reduction() == [1, 1, 2, 4]
    with torch.no_grad():
        features = model(torch.randn(1, 3, 32, 32))
    assert [tuple(f.shape[1:]) for f in features] == [(48, 32, 32), (48, 32, 32), (96, 16, 16), (192, 8, 8)]


def test_fine_tuning_overrides_adapt_stem_and_head():
    model = create('wt_resnet_small', in_chans=1, num_classes=5)
    assert model.stem.conv.weight.shape[1] == 1
    assert model.get_classifier().out_features == 5
    model.reset_classifier(3)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 3)


def test_pretrained_cfgs_describe_the_datasets():
    c10 = timm.create_model('wt_resnet_tiny.c10').pretrained_cfg
    fmnist = timm.create_model('wt_resnet_tiny.fmnist')
    assert c10['input_size'] == (3, 32, 32) and c10['num_classes'] == 10
    assert fmnist.in_chans == 1 and fmnist.pretrained_cfg['input_size'] == (1, 28, 28)
    assert fmnist.pretrained_cfg['pool_size'] == (7, 7)


def test_a_tags_own_model_arguments_follow_the_tag_and_yield_to_the_caller(monkeypatch):
    """A checkpoint's test-time solver cap belongs to its tag: loading it by name builds it, another tag of the
    same architecture does not, and the caller's argument wins."""
    from wt_zoo.models.implicit_resnet import TAG_MODEL_ARGS
    monkeypatch.delitem(TAG_MODEL_ARGS, 'deq_resnet_tiny.c10', raising=False)  # a tag with no arguments of its own
    monkeypatch.setitem(TAG_MODEL_ARGS, 'deq_resnet_tiny.fmnist', dict(eval_f_max_iter=30))
    cap = lambda name, **kwargs: timm.create_model(name, **kwargs).deq_args['eval_f_max_iter']
    assert cap('deq_resnet_tiny.fmnist') == 30
    assert cap('deq_resnet_tiny.c10') == 0 and cap('deq_resnet_tiny') == 0  # no tag: timm's default tag, c10
    assert cap('deq_resnet_tiny.fmnist', eval_f_max_iter=5) == 5
    monkeypatch.setitem(TAG_MODEL_ARGS, 'deq_resnet_tiny.c10', dict(eval_f_max_iter=18))
    assert cap('deq_resnet_tiny') == 18
