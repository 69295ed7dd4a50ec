"""``efficiency``: parameters, FLOPs, speed and training memory of zoo models, side by side in one run.

Every model is measured next to its dense weight-tied twin in the same process, and each figure is
also given as a ratio to that twin, so the comparison survives a change of machine. The fp32
matrix-multiply throughput of the machine is measured in the same run (at its start and end), and
the issue's four performance bars are evaluated from these numbers and printed.

Conventions:
- FLOPs are fvcore's: one multiply-add counts as one flop. The matmul peak is given in the same
  unit (n^3 multiply-adds per n x n product), so "achieved / peak" compares like with like.
- Timings use ``torch.utils.benchmark.Timer.blocked_autorange`` (median), with every available
  torch thread. Inference runs in eval mode under ``torch.inference_mode()`` (the sparse-mask
  family caches its masked weights there). Training is one SGD step (forward, loss, backward,
  optimizer step) in train mode.
- Peak training memory is params + input batch + the peak growth of live tensor bytes during one
  forward+backward (no optimizer state). On CPU the growth is read from torch.profiler's
  accounting of the CPU allocator (``profile_memory=True``: every allocation and free in the
  window, summed in time order); on CUDA from ``torch.cuda.max_memory_allocated``.
- Inputs are CIFAR-10 test images (normalised), so a DEQ's solver does the number of iterations
  it does on real data; a seeded random batch where the dataset is absent (the README says which).
"""
import argparse
import gc
import math
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer

from ..profile import _flops, profile_model
from .common import Column, ModelSpec, ResultsFolder, log, markdown_table, parse_model_specs, warn_if_busy

__all__ = ['add_arguments', 'run', 'timing_images', 'matmul_peak', 'kernel_peaks', 'peak_training_memory', 'evaluate_bars']

BAR_OVERHEAD = 0.05      # wtsm eval inference at most 5% slower than its dense WT twin
BAR_DEQ_SPEEDUP = 2.0    # WT inference at least 2x its DEQ twin
BAR_CKPT_SAVING = 2.0    # grad checkpointing cuts WT peak training memory at least 2x at depth >= 8
BAR_CKPT_MIN_DEPTH = 8
BAR_PEAK_FRACTION = 0.40  # WT CPU inference at least 40% of the measured matmul throughput


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('models', nargs='*',
                        help="zoo models, wildcards or 'name:key=value,...' overrides (default: every zoo model); "
                             'the dense WT twin of each is added when missing')
    parser.add_argument('--out', default='results/efficiency', help='results folder (default: %(default)s)')
    parser.add_argument('--devices', nargs='+', default=None,
                        help="devices to measure on (default: cpu, plus cuda when present)")
    parser.add_argument('--infer-batches', type=int, nargs='+', default=[1, 128],
                        help='inference batch sizes (default: %(default)s); the largest one is used for the bars')
    parser.add_argument('--train-batch', type=int, default=128, help='training batch size (default: %(default)s)')
    parser.add_argument('--memory-batch', type=int, default=None,
                        help='batch size of the peak-memory step (default: --train-batch)')
    parser.add_argument('--min-run-time', type=float, default=2.0,
                        help='seconds each timing runs at least (Timer.blocked_autorange; default: %(default)s)')
    parser.add_argument('--matmul-size', type=int, default=2048,
                        help='n of the n x n fp32 matmul whose throughput is the machine peak (default: %(default)s)')
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: torch.get_num_threads())')
    parser.add_argument('--no-conv-share', action='store_true',
                        help="skip the profiler breakdown of WT inference time into convs and the rest")
    parser.add_argument('--data-dir', default=None, help='CIFAR-10 folder for the timing images (default: the usual places)')
    parser.add_argument('--data-cache', default=None, help='decoded-image cache folder')


# ----------------------------------------------------------------------------------------------
# Measurements


def timing_images(count: int, data_dir=None, cache_dir=None) -> Tuple[torch.Tensor, str]:
    """``count`` normalised CIFAR-10 test images (tiled if the split is smaller), and where they came from."""
    from ..data import DatasetNotFoundError, load_image_arrays
    from ..models.implicit_resnet import CIFAR10_MEAN, CIFAR10_STD
    try:
        arrays = load_image_arrays('cifar10', 'test', data_dir, cache_dir=cache_dir)
        images = torch.from_numpy(arrays.images[:count]).permute(0, 3, 1, 2).float().div(255)
        source = f'CIFAR-10 test images ({min(count, len(arrays))} distinct)'
    except DatasetNotFoundError:
        images = torch.rand((count, 3, 32, 32), generator=torch.Generator().manual_seed(0))
        source = 'seeded uniform random images (CIFAR-10 not found)'
    mean = torch.tensor(CIFAR10_MEAN).view(1, -1, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, -1, 1, 1)
    images = (images - mean) / std
    if len(images) < count:
        images = images.repeat(math.ceil(count / len(images)), 1, 1, 1)[:count]
    return images.contiguous(), source


def _timer(fn, threads: int, min_run_time: float):
    """Median seconds per call and the interquartile range as a fraction of it."""
    measurement = Timer(stmt='fn()', globals={'fn': fn}, num_threads=threads).blocked_autorange(
        min_run_time=min_run_time)
    return measurement.median, measurement.iqr / measurement.median


def matmul_peak(n: int, device: str, threads: int, min_run_time: float) -> Dict[str, float]:
    """fp32 n x n matmul throughput in G multiply-adds/s (fvcore's flop unit) and in GFLOP/s (2 n^3)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device)
    b = torch.randn(n, n, generator=g).to(device)
    out = torch.empty(n, n, device=device)
    seconds, iqr = _timer(lambda: torch.mm(a, b, out=out), threads, min_run_time)
    return dict(gmacs_per_s=n ** 3 / seconds / 1e9, gflops_2n3_per_s=2 * n ** 3 / seconds / 1e9, iqr=iqr)


# A 3x3 convolution shaped like the small models' middle stage (batch 64, 128 -> 128 channels, 16 x 16).
PEAK_CONV_SHAPE = dict(batch=64, channels=128, size=16, kernel=3)


def kernel_peaks(matmul_size: int, device: str, threads: int, min_run_time: float,
                 dtypes: Sequence[torch.dtype] = (torch.float32, torch.bfloat16)) -> Dict[str, Dict[str, Any]]:
    """The best GFLOP/s (2 flops a multiply-add) of an n x n matmul and of a 3x3 convolution, per dtype.

    A training step's fraction of a peak only reads as 'how much is left' against the fastest kernel the
    machine runs at the step's own precision: on CPU, oneDNN's convolutions outrun the BLAS matmul, and a
    bf16 step would read above 100 % of an fp32 figure.
    """
    g = torch.Generator().manual_seed(0)
    c, hw, k, b = (PEAK_CONV_SHAPE[key] for key in ('channels', 'size', 'kernel', 'batch'))
    peaks: Dict[str, Dict[str, Any]] = {}
    for dtype in dtypes:
        a = torch.randn(matmul_size, matmul_size, generator=g).to(device, dtype)
        m = torch.randn(matmul_size, matmul_size, generator=g).to(device, dtype)
        x = torch.randn(b, c, hw, hw, generator=g).to(device, dtype)
        w = torch.randn(c, c, k, k, generator=g).to(device, dtype)
        conv_flops = 2 * b * c * c * k * k * hw * hw
        kernels = {}
        with torch.inference_mode():
            seconds, _ = _timer(lambda: torch.mm(a, m), threads, min_run_time)
            kernels[f'{matmul_size}x{matmul_size} matmul'] = 2 * matmul_size ** 3 / seconds / 1e9
            for layout, fmt in (('', torch.contiguous_format), (', channels_last', torch.channels_last)):
                xf, wf = x.contiguous(memory_format=fmt), w.contiguous(memory_format=fmt)
                seconds, _ = _timer(lambda: F.conv2d(xf, wf, padding=k // 2), threads, min_run_time)
                kernels[f'{k}x{k} conv {c}->{c} ch, {hw}x{hw}, batch {b}{layout}'] = conv_flops / seconds / 1e9
        best = max(kernels, key=kernels.get)
        name = str(dtype).replace('torch.', '').replace('float32', 'fp32').replace('bfloat16', 'bf16')
        peaks[name] = dict(gflops_per_s=round(kernels[best], 1), kernel=best,
                           kernels={key: round(v, 1) for key, v in kernels.items()})
    return peaks


def _mean_nstep(model) -> Optional[float]:
    stats = getattr(model, 'solver_stats', None)
    if not stats:
        return None
    return sum(s['nstep'] for s in stats.values()) / len(stats)


def _train_step_fn(model, x, y, optimizer=None):
    has_aux = callable(getattr(model, 'aux_loss', None))

    def step():
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        if has_aux:
            loss = loss + model.aux_loss()
        loss.backward()
        if optimizer is not None:
            optimizer.step()
    return step


def _cpu_allocation_peak(fn) -> int:
    """Peak growth of live CPU tensor bytes while ``fn`` runs, from the profiler's allocator records."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == '[memory]' and e.device_type() == torch._C._autograd.DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def peak_training_memory(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """MiB: parameters + input batch + peak growth of live tensors in one forward+backward (see module doc)."""
    model.train()
    for p in model.parameters():
        p.grad = None
    fixed = sum(p.numel() * p.element_size() for p in model.parameters()) + x.numel() * x.element_size()
    step = _train_step_fn(model, x, y)
    if x.device.type == 'cuda':
        torch.cuda.synchronize(x.device)
        gc.collect()
        before = torch.cuda.memory_allocated(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        step()
        torch.cuda.synchronize(x.device)
        growth = torch.cuda.max_memory_allocated(x.device) - before
    else:
        growth = _cpu_allocation_peak(step)
    for p in model.parameters():
        p.grad = None
    return (fixed + growth) / 2 ** 20


def conv_time_share(model: torch.nn.Module, x: torch.Tensor) -> Tuple[float, float]:
    """(share of eval inference time spent in convolutions, its conv seconds) from one profiled forward."""
    from torch.profiler import ProfilerActivity, profile
    model.eval()
    with torch.inference_mode():
        model(x)  # warm-up outside the profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(x)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if 'conv' in e.key)
    return (conv / total if total else float('nan')), conv / 1e6


def measure(spec: ModelSpec, device: str, images: torch.Tensor, args, profile_row: Dict[str, Any]) -> Dict[str, Any]:
    """One table row: timings and memory of ``spec`` on ``device`` (FLOPs/params come from ``profile_row``)."""
    threads = args.threads or torch.get_num_threads()
    torch.manual_seed(0)
    model = spec.create(device)
    row: Dict[str, Any] = dict(model=spec.label, family=spec.family, size=spec.size, device=device,
                               twin=spec.twin().label, depth=spec.depth())
    for key in ('params', 'gflops', 'effective_gflops', 'gflops_per_iteration', 'deq_iterations'):
        if profile_row.get(key) is not None:
            row[key] = profile_row[key]
    if hasattr(model, 'deq_args'):
        row.update(f_solver=model.deq_args['f_solver'], f_max_iter=model.deq_args['f_max_iter'],
                   f_tol=model.deq_args['f_tol'])

    model.eval()
    for batch in args.infer_batches:
        x = images[:batch].to(device)

        def infer():
            with torch.inference_mode():
                model(x)
        seconds, iqr = _timer(infer, threads, args.min_run_time)
        row[f'infer_b{batch}_img_s'] = batch / seconds
        row[f'infer_b{batch}_iqr'] = iqr
        nstep = _mean_nstep(model)
        if nstep is not None:
            row[f'deq_iterations_b{batch}'] = nstep
    big = max(args.infer_batches)
    if row.get('gflops') is not None:
        gflops = row['gflops']
        if row.get(f'deq_iterations_b{big}') is not None and row.get('gflops_per_iteration'):
            # the profile counted the DEQ at the iterations it did on 64 images; recount at the timed batch's
            gflops += (row[f'deq_iterations_b{big}'] - row['deq_iterations']) * row['gflops_per_iteration']
        row['achieved_gflops_s'] = gflops * row[f'infer_b{big}_img_s']
    if spec.family == 'wt' and device == 'cpu' and not args.no_conv_share:
        share, conv_seconds = conv_time_share(model, images[:big].to(device))
        row['conv_time_share'] = share
        conv_flops = float(_flops(model, images[:1].to(device)).by_operator().get('conv', 0))
        row['conv_flop_share'] = conv_flops / 1e9 / row['gflops'] if row.get('gflops') else None
        row['conv_achieved_gflops_s'] = conv_flops * big / 1e9 / conv_seconds if conv_seconds > 0 else None

    x = images[:args.train_batch].to(device)
    y = torch.arange(args.train_batch, device=device) % 10
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)  # small: timing, not learning
    seconds, iqr = _timer(_train_step_fn(model, x, y, optimizer), threads, args.min_run_time)
    row['train_img_s'] = args.train_batch / seconds
    row['train_iqr'] = iqr
    nstep = _mean_nstep(model)
    if nstep is not None:
        row['train_deq_iterations'] = nstep
    del optimizer

    mem_batch = args.memory_batch or args.train_batch
    x = images[:mem_batch].to(device)
    y = torch.arange(mem_batch, device=device) % 10
    row['train_mem_mb'] = peak_training_memory(model, x, y)
    if spec.unrolled:
        model.set_grad_checkpointing(True)
        row['train_mem_ckpt_mb'] = peak_training_memory(model, x, y)
        model.set_grad_checkpointing(False)
        row['ckpt_memory_saving'] = row['train_mem_mb'] / row['train_mem_ckpt_mb']
    del model, x, y
    gc.collect()
    if device == 'cuda':
        torch.cuda.empty_cache()
    return row


RATIO_KEYS = ('params', 'gflops', 'effective_gflops', 'infer_b{}_img_s', 'train_img_s', 'train_mem_mb',
              'train_mem_ckpt_mb')


def add_twin_ratios(rows: List[Dict[str, Any]], batches: Sequence[int]) -> None:
    """``<figure>_vs_wt``: each figure over the same figure of the dense WT twin on the same device."""
    by_key = {(r['model'], r['device']): r for r in rows}
    keys = [k for k in RATIO_KEYS if '{}' not in k] + [k.format(b) for k in RATIO_KEYS if '{}' in k for b in batches]
    for row in rows:
        twin = by_key.get((row['twin'], row['device']))
        if twin is None:
            continue
        for key in keys:
            # a masked model's effective FLOPs are compared with its twin's (dense) FLOPs
            twin_key = 'gflops' if key == 'effective_gflops' else key
            if row.get(key) is not None and twin.get(twin_key):
                row[f'{key}_vs_wt'] = row[key] / twin[twin_key]


# ----------------------------------------------------------------------------------------------
# The performance bars


def evaluate_bars(rows: List[Dict[str, Any]], peak_gmacs: Optional[float], batch: int) -> List[Dict[str, Any]]:
    """The issue's four bars, from this run's CPU rows: one line per model it applies to."""
    cpu = [r for r in rows if r['device'] == 'cpu']
    by_model = {r['model']: r for r in cpu}
    key = f'infer_b{batch}_img_s'
    bars: List[Dict[str, Any]] = []

    def add(bar, subject, value, figure, threshold, passed, note=''):
        bars.append(dict(bar=bar, subject=subject, value=value, figure=figure, threshold=threshold,
                         passed=passed, note=note))

    name = f'1. wtsm eval inference overhead over its dense WT twin (batch {batch}, CPU)'
    subjects = [r for r in cpu if r['family'] == 'wtsm' and r['twin'] in by_model]
    for r in subjects:
        twin = by_model[r['twin']]
        overhead = twin[key] / r[key] - 1
        noise = max(r.get(f'infer_b{batch}_iqr', 0), twin.get(f'infer_b{batch}_iqr', 0))
        note = ''
        if overhead > BAR_OVERHEAD:
            note = f'timing spread (IQR) up to {100 * noise:.1f}% of the median'
            if overhead <= noise:
                note += ': the difference is within the timing noise; rerun on a quiet machine'
            else:
                note += ('; the masked weights are cached in eval mode, so what remains is the per-iteration cache '
                         'lookup (a Python key over weight versions) and a separate weight tensor per iteration (a '
                         'larger working set than one shared weight); materialising all masked weights once per '
                         'eval() would remove the lookup')
        add(name, r['model'], overhead, f'{100 * overhead:+.1f}% ({r[key]:.1f} vs {twin[key]:.1f} img/s)',
            f'<= {100 * BAR_OVERHEAD:.0f}%', overhead <= BAR_OVERHEAD, note)
    if not subjects:
        add(name, '-', None, 'no wtsm model with its twin in this run', '', None)

    name = f'2. WT inference speed over its DEQ twin (batch {batch}, CPU, DEQ at its default tolerance)'
    subjects = [r for r in cpu if r['family'] == 'deq' and r['twin'] in by_model]
    for r in subjects:
        twin = by_model[r['twin']]
        ratio = twin[key] / r[key]
        its = r.get(f'deq_iterations_b{batch}')
        note = ''
        if ratio < BAR_DEQ_SPEEDUP:
            flop_ratio = r['gflops'] / twin['gflops'] if r.get('gflops') and twin.get('gflops') else float('nan')
            cap = r.get('f_max_iter')
            its_text = f'{its:.1f}' if its is not None else '?'
            note = (f"the DEQ's cost is its iteration count: it did {its_text} solver iterations per stage against "
                    f"the twin's {twin.get('depth')} unrolled ones, {flop_ratio:.2f}x the FLOPs, and the speed ratio "
                    'follows the FLOP ratio (plus solver overhead)')
            if cap and twin.get('depth'):
                note += (f"; with f_max_iter={cap} the FLOP ratio is at most {cap / twin['depth']:.1f}x, so the bar "
                         f"needs a DEQ that runs at least {BAR_DEQ_SPEEDUP * twin['depth']:.0f} iterations: it is set "
                         "by the DEQ's settings and convergence, not by a WT inefficiency")
        add(name, f"{twin['model']} vs {r['model']}", ratio,
            f'{ratio:.2f}x ({twin[key]:.1f} vs {r[key]:.1f} img/s; DEQ {its:.1f} iterations)' if its is not None
            else f'{ratio:.2f}x', f'>= {BAR_DEQ_SPEEDUP:.0f}x', ratio >= BAR_DEQ_SPEEDUP, note)
    if not subjects:
        add(name, '-', None, 'no DEQ model with its twin in this run', '', None)

    name = f'3. grad checkpointing cuts WT peak training memory (depth >= {BAR_CKPT_MIN_DEPTH})'
    subjects = [r for r in cpu if r['family'] == 'wt' and (r.get('depth') or 0) >= BAR_CKPT_MIN_DEPTH
                and r.get('ckpt_memory_saving')]
    for r in subjects:
        saving = r['ckpt_memory_saving']
        note = ''
        if saving < BAR_CKPT_SAVING:
            note = ('checkpointing keeps only each iteration\'s input, so what remains is the memory outside the '
                    'iterations (stem, downsampling, head, parameters and gradients) plus one iteration recomputed '
                    'during backward; checkpointing the downsampling convs too, or a larger depth, raises the ratio')
        add(name, f"{r['model']} (depth {r['depth']})", saving,
            f"{saving:.2f}x ({r['train_mem_mb']:.0f} -> {r['train_mem_ckpt_mb']:.0f} MiB)",
            f'>= {BAR_CKPT_SAVING:.0f}x', saving >= BAR_CKPT_SAVING, note)
    if not subjects:
        add(name, '-', None, f'no WT model with depth >= {BAR_CKPT_MIN_DEPTH} in this run '
                             f"(add e.g. 'wt_resnet_tiny:depth=8')", '', None)

    name = f'4. WT CPU inference throughput as a fraction of the fp32 matmul peak (batch {batch})'
    subjects = [r for r in cpu if r['family'] == 'wt' and r.get('achieved_gflops_s')]
    for r in subjects:
        if not peak_gmacs:
            add(name, r['model'], None, 'no matmul peak measured', '', None)
            continue
        fraction = r['achieved_gflops_s'] / peak_gmacs
        note = ''
        if fraction < BAR_PEAK_FRACTION:
            parts = []
            if r.get('conv_time_share') is not None:
                parts.append(f"convolutions are {100 * (r.get('conv_flop_share') or float('nan')):.0f}% of the FLOPs "
                             f"but {100 * r['conv_time_share']:.0f}% of the time")
            if r.get('conv_achieved_gflops_s'):
                parts.append(f"the convs alone run at {r['conv_achieved_gflops_s']:.1f} GFLOP/s "
                             f"({100 * r['conv_achieved_gflops_s'] / peak_gmacs:.0f}% of peak)")
            parts.append('GroupNorm, ReLU and the residual adds are memory-bound and unfused, and small channel '
                         'counts give oneDNN short GEMMs; fusing them (torch.compile) and wider stages would raise it')
            note = '; '.join(parts)
        add(name, r['model'], fraction,
            f"{100 * fraction:.0f}% ({r['achieved_gflops_s']:.1f} of {peak_gmacs:.1f} G multiply-adds/s)",
            f'>= {100 * BAR_PEAK_FRACTION:.0f}%', fraction >= BAR_PEAK_FRACTION, note)
    if not subjects:
        add(name, '-', None, 'no WT model in this run', '', None)
    return bars


# ----------------------------------------------------------------------------------------------
# The command


def _order_with_twins(specs: List[ModelSpec]) -> List[ModelSpec]:
    """Every spec after its dense WT twin (added if missing), each measured once; small sizes first."""
    ordered: List[ModelSpec] = []
    for spec in specs:
        for s in (spec.twin(), spec):
            if s not in ordered:
                ordered.append(s)
    sizes, families = ('tiny', 'small', 'base'), ('wt', 'wtsm', 'deq')
    first_seen = {s.twin(): i for i, s in reversed(list(enumerate(ordered)))}
    return sorted(ordered, key=lambda s: (sizes.index(s.size) if s.size in sizes else len(sizes),
                                          first_seen[s.twin()], families.index(s.family)))


def _passed(value) -> str:
    return {True: 'pass', False: 'FAIL', None: 'n/a'}[value]


def run(args, argv: Sequence[str]) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    devices = args.devices or (['cpu', 'cuda'] if torch.cuda.is_available() else ['cpu'])
    for device in devices:
        if device.startswith('cuda') and not torch.cuda.is_available():
            raise SystemExit(f'--devices {device}: CUDA is not available on this machine')
    try:
        specs = _order_with_twins(parse_model_specs(args.models))
    except ValueError as e:
        raise SystemExit(f'error: {e}')
    warnings.filterwarnings('ignore', message='DEQ solver did not reach')
    folder = ResultsFolder(args.out, 'efficiency', argv, settings=vars(args))
    warn_if_busy('timings')
    need = max(max(args.infer_batches), args.train_batch, args.memory_batch or 0)
    images, source = timing_images(need, args.data_dir, args.data_cache)

    peaks: List[Dict[str, Any]] = []
    for device in devices:
        log(f'matmul peak on {device} (n={args.matmul_size}) ...')
        peaks.append(dict(device=device, when='start', n=args.matmul_size,
                          **matmul_peak(args.matmul_size, device, threads, args.min_run_time)))

    rows: List[Dict[str, Any]] = []
    total = len(specs) * len(devices)
    for i, spec in enumerate(specs):
        log(f'[{i * len(devices) + 1}/{total}] {spec.label}: fvcore profile ...')
        torch.manual_seed(0)
        profile_row = profile_model(spec.create('cpu'), images=images[:64])
        for j, device in enumerate(devices):
            n = i * len(devices) + j + 1
            log(f'[{n}/{total}] {spec.label} on {device}: timing and memory ...')
            row = measure(spec, device, images, args, profile_row)
            rows.append(row)
            big = max(args.infer_batches)
            log(f"[{n}/{total}] {spec.label} on {device}: {row[f'infer_b{big}_img_s']:.1f} img/s inference "
                f"(batch {big}), {row['train_img_s']:.1f} img/s training, {row['train_mem_mb']:.0f} MiB")
            folder.write_table('efficiency', rows)  # partial results survive an interrupted run

    for device in devices:
        log(f'matmul peak on {device} again (end of run) ...')
        peaks.append(dict(device=device, when='end', n=args.matmul_size,
                          **matmul_peak(args.matmul_size, device, threads, args.min_run_time)))
    add_twin_ratios(rows, args.infer_batches)
    cpu_peaks = [p['gmacs_per_s'] for p in peaks if p['device'] == 'cpu']
    peak = max(cpu_peaks) if cpu_peaks else None
    big = max(args.infer_batches)
    bars = evaluate_bars(rows, peak, big)
    folder.write_table('efficiency', rows)
    folder.write_table('matmul_peak', peaks)
    folder.write_table('bars', bars)

    sections = format_sections(rows, peaks, bars, args, source, threads)
    readme = folder.finish('Efficiency: weight-tied vs sparse-mask vs DEQ, measured side by side', sections,
                           extra=dict(timing_images=source))
    print('\n\n'.join(sections[-1:]))  # the bars
    log(f'wrote {readme.parent}/ (README.md, efficiency/matmul_peak/bars .csv and .json, run.json)')
    return 0


def format_sections(rows, peaks, bars, args, source: str, threads: int) -> List[str]:
    big = max(args.infer_batches)
    batches = list(args.infer_batches)
    mem_batch = args.memory_batch or args.train_batch
    gf = '{:.4f}'
    absolute = [
        Column('model', 'model'), Column('device', 'device'),
        Column('params', 'params (M)', lambda v: f'{v / 1e6:.3f}'),
        Column('gflops', 'GFLOPs / img (fvcore)', gf), Column('effective_gflops', 'effective GFLOPs (masked)', gf),
        Column('deq_iterations', 'DEQ solver iterations (64 imgs)', '{:.1f}'),
        *[Column(f'infer_b{b}_img_s', f'inference img/s, batch {b}', '{:.1f}') for b in batches],
        Column('train_img_s', f'training img/s, batch {args.train_batch}', '{:.1f}'),
        Column('train_deq_iterations', 'DEQ iterations in training', '{:.1f}'),
        Column('train_mem_mb', f'peak training memory (MiB), batch {mem_batch}', '{:.0f}'),
        Column('train_mem_ckpt_mb', 'same, grad checkpointing', '{:.0f}'),
        Column('achieved_gflops_s', f'achieved GFLOP/s (fvcore), batch {big}', '{:.1f}'),
    ]
    ratios = [
        Column('model', 'model'), Column('device', 'device'), Column('twin', 'dense WT twin'),
        Column('params_vs_wt', 'params', '{:.2f}'), Column('gflops_vs_wt', 'GFLOPs', '{:.2f}'),
        Column('effective_gflops_vs_wt', 'effective GFLOPs', '{:.2f}'),
        *[Column(f'infer_b{b}_img_s_vs_wt', f'inference img/s, batch {b}', '{:.2f}') for b in batches],
        Column('train_img_s_vs_wt', 'training img/s', '{:.2f}'),
        Column('train_mem_mb_vs_wt', 'peak training memory', '{:.2f}'),
        Column('train_mem_ckpt_mb_vs_wt', 'same, grad checkpointing', '{:.2f}'),
    ]
    peak_cols = [Column('device', 'device'), Column('when', 'measured at'), Column('n', 'n'),
                 Column('gmacs_per_s', 'G multiply-adds/s (fvcore unit)', '{:.1f}'),
                 Column('gflops_2n3_per_s', 'GFLOP/s counting 2n^3', '{:.1f}'),
                 Column('iqr', 'timing IQR / median', lambda v: f'{100 * v:.1f}%')]
    conv_rows = [r for r in rows if r.get('conv_time_share') is not None]
    conv_cols = [Column('model', 'model'), Column('conv_flop_share', 'conv share of FLOPs', lambda v: f'{100 * v:.0f}%'),
                 Column('conv_time_share', 'conv share of inference time', lambda v: f'{100 * v:.0f}%'),
                 Column('conv_achieved_gflops_s', 'convs alone, GFLOP/s (fvcore)', '{:.1f}'),
                 Column('achieved_gflops_s', 'whole model, GFLOP/s (fvcore)', '{:.1f}')]
    bar_cols = [Column('bar', 'bar'), Column('subject', 'model'), Column('figure', 'measured'),
                Column('threshold', 'threshold'), Column('passed', 'result', _passed), Column('note', 'note')]
    sections = [
        '## How it was measured\n\n' + (__doc__.split('Conventions:\n', 1)[1].strip()) +
        f'\n\nTiming images: {source}. Torch threads: {threads}. Timer minimum run time: {args.min_run_time} s '
        'per figure. The `*_iqr` columns of efficiency.csv give each timing\'s interquartile range over its '
        'median: large values mean the machine was busy.',
        '## Absolute figures\n\n' + markdown_table(rows, absolute),
        '## Ratios to the dense weight-tied twin (same device, same run)\n\n' + markdown_table(rows, ratios),
        '## Machine fp32 matmul throughput (same run)\n\n' + markdown_table(peaks, peak_cols),
    ]
    if conv_rows:
        sections.append('## Where WT inference time goes (CPU, torch.profiler, batch '
                        f'{big})\n\n' + markdown_table(conv_rows, conv_cols))
    sections.append('## Performance bars\n\n' + markdown_table(bars, bar_cols))
    return sections
