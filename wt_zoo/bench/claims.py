"""claims: the paper's findings checked against the committed results, one row each, with a verdict.

Reads only committed results files (results/efficiency, stability, sweep or sweep_full, time_to_accuracy
and train_speed, and the published checkpoints' folders in hub_configs/); it trains and times nothing,
so it runs in seconds and gives the same output for the same files. Each row names a finding of
the research (WT against its DEQ twin at equal parameters and epochs, and at equal training wall
time; training and inference speed; training memory; stability; distinct sparse masks against
dense and against one shared mask; the design guidelines), the figure measured for it, the regime
it was measured in (epochs, training images, seeds), a verdict and the results folder.

Verdicts: a difference counts only when it is larger than the resolution of its source (twice the
seed-to-seed standard deviation, or the resolution the rules below state); ``holds`` and ``does not
hold`` follow its sign, a difference within the resolution is ``not resolvable at this regime``, a
row whose comparisons disagree is ``mixed``, and a finding with no measurement yet says ``not
measured yet`` (the row fills in by itself once the results file gains the measurement).

Writes ``--out`` (default results/claims): claims.{csv,json}, sources.json and README.md (the
table, the rules, the command, and the command and commit of every source). ``readme_section()``
is the project README's copy (scripts/update_readme.py); ``--check`` exits 1 when the folder
differs from what the results files give now.

    python -m wt_zoo.bench claims
"""
import functools
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..training import atomic_write_text, write_results
from .recipe import recipe_file_settings, stability_regime, sweep_regime
from .stability import solver_trend
from .common import FAST_RECIPE_ABLATION, REPO_ROOT, file_at_commit, log, stopped_early

__all__ = ['add_arguments', 'run', 'judge', 'judge_ratio', 'combine', 'build', 'render_readme', 'readme_section',
           'write', 'recipe_drift', 'HOLDS', 'FAILS', 'UNRESOLVED', 'MIXED', 'NOT_MEASURED']

HOLDS = 'holds'
FAILS = 'does not hold'
UNRESOLVED = 'not resolvable at this regime'
MIXED = 'mixed'
NOT_MEASURED = 'not measured yet'

TIMING_FLOOR = 0.05       # speed ratios within 5 % of 1 never count: timings on a shared machine drift that much
MEMORY_RESOLUTION = 0.05  # peak memory is allocator accounting, not a timing: ratios within 5 % of 1 do not count
SOLVER_RESOLUTION = 0.5   # DEQ solver iterations: a change of half an iteration or less does not count
ASSUMED_SEED_RESOLUTION = 1.0  # points, only when no seed spread has been measured at all
# Settings the fast recipe's seed resolution (FAST_RECIPE_ABLATION) does not depend on: the model, how long, the
# seed, the data split and the numeric path (auto-chosen), and what makes a DEQ a DEQ.
_RUN_SPECIFIC = frozenset({'model', 'experiment', 'epochs', 'seed', 'dataset', 'val_split_size', 'val_split_seed',
                           'amp', 'amp_dtype', 'channels_last', 'model_kwargs', 'unrolled_warmup_epochs'})

RESULTS = REPO_ROOT / 'results'
HUB_CONFIGS = REPO_ROOT / 'hub_configs'
COMMAND = 'python -m wt_zoo.bench claims'
# The sweep at the fast recipe's regime supersedes the short-regime one once every run of it has finished; a
# partial one does not (its configurations would have unequal seeds, and the guidelines wait for it too).
SWEEP_FOLDERS = ('sweep_full', 'sweep')
# Likewise the stability benchmark at the fast recipe's regime (10 epochs on full data) supersedes the 2-epoch one
# once all of its learning rates and seeds have finished: a partial grid would name a first divergence too early.
STABILITY_FOLDERS = ('stability_full', 'stability')

DATASETS = {'cifar10': 'CIFAR-10', 'cifar100': 'CIFAR-100', 'fashion_mnist': 'Fashion-MNIST'}


def add_arguments(parser) -> None:
    parser.add_argument('--results', default=str(RESULTS), help='results folder to read (default: the repository\'s)')
    parser.add_argument('--hub-configs', default=str(HUB_CONFIGS), help='published checkpoint folders to read')
    parser.add_argument('--out', default=None, help='folder to write (default: RESULTS/claims)')
    parser.add_argument('--check', action='store_true', help='write nothing; exit 1 if --out is out of date')


# ----------------------------------------------------------------------------------------------
# Verdict rules


def judge(delta: Optional[float], resolution: float) -> str:
    """Verdict of one comparison. ``delta`` is signed so that positive supports the claim; it counts only when
    ``|delta|`` is larger than ``resolution``."""
    if delta is None or (isinstance(delta, float) and math.isnan(delta)):
        return NOT_MEASURED
    if abs(delta) <= resolution:
        return UNRESOLVED
    return HOLDS if delta > 0 else FAILS


def judge_ratio(ratio: Optional[float], resolution: float) -> str:
    """Verdict of a ratio (above 1 supports the claim) against a relative resolution, symmetric in log space:
    it counts only outside ``[1 / (1 + resolution), 1 + resolution]``."""
    if ratio is None or not ratio > 0:
        return NOT_MEASURED
    return judge(math.log(ratio), math.log1p(resolution))


def combine(verdicts: Sequence[str]) -> str:
    """A row's verdict from its comparisons: holds (or does not hold) when at least one resolvable comparison
    says so and none says the opposite; mixed when resolvable comparisons disagree; not resolvable when none is
    resolvable; not measured yet when there is no comparison."""
    measured = [v for v in verdicts if v != NOT_MEASURED]
    if not measured:
        return NOT_MEASURED
    if HOLDS in measured and FAILS in measured:
        return MIXED
    if HOLDS in measured:
        return HOLDS
    if FAILS in measured:
        return FAILS
    return UNRESOLVED


RULES = f"""\
- Each comparison is signed so that a positive difference supports the claim. It counts only when it is
  larger than the resolution of its source; then the claim **{HOLDS}** or **{FAILS}** by its sign.
  Within the resolution it is **{UNRESOLVED}**: the measurement cannot tell, which is not evidence of
  equality.
- A row with several comparisons (sizes, datasets, configurations) **{HOLDS}** when at least one resolvable
  comparison supports the claim and none contradicts it, **{FAILS}** in the opposite case, and is
  **{MIXED}** when resolvable comparisons disagree. Rows do not correct for the number of comparisons they
  pool.
- A finding whose source has no measurement yet is **{NOT_MEASURED}**; the row fills in when the results
  file gains it (e.g. a DEQ curve in results/time_to_accuracy).
- Accuracy, several seeds (stability): twice the larger of the two seed-to-seed standard deviations.
- Accuracy, one run each (published checkpoints, time to accuracy), trained with the fast recipe's settings
  (every line of results/{FAST_RECIPE_ABLATION}'s recipe but the model, epochs, seed, data split, numeric path
  and DEQ settings): the fast recipe's seed resolution, twice the pooled seed-to-seed standard deviation that
  ablation measured (tiny, 16 epochs; borrowed for other sizes and lengths).
- Accuracy, one run each, any other recipe: no seed spread was measured at that regime, so the resolution is
  borrowed: twice the largest seed-to-seed standard deviation the stability results measured
  (results/stability_full once all its runs have finished, else results/stability, whose short runs are likely
  noisier than longer ones, so the borrowed figure errs towards "{UNRESOLVED}"); {ASSUMED_SEED_RESOLUTION:g}
  point when no stability results exist.
- Accuracy in the sweep: the resolution docs/guidelines.md states and uses. For results/sweep_full (read
  once every run of it has finished), twice the sweep's own seed-to-seed standard deviation pooled over its
  configurations; for results/sweep (one seed), twice the WT seed-to-seed standard deviation at the
  stability learning rate nearest the sweep's.
- Speed: ratio of images/s; it counts outside [1/(1+r), 1+r], r = twice the larger interquartile range
  over median of the two timings (efficiency), or twice the largest repeat-timing difference of the run
  (train-speed: the chosen path timed twice), and never under {TIMING_FLOOR:.0%}.
- Peak training memory: allocator accounting, not a timing; ratios within {MEMORY_RESOLUTION:.0%} of 1 do
  not count.
- Divergence: the lowest peak learning rate of the stability grid at which any seed diverged; a claim about
  it is resolvable only when the two families first diverge at different grid points.
- DEQ solver iterations over training: a change of more than {SOLVER_RESOLUTION:g} iteration (the solver
  stops at its cap, f_max_iter, so no growth can show when it starts there).
- Regimes are read from the source files: epochs, training images, seeds, held-out or test images. Most
  accuracy sources so far are short CPU regimes; a verdict is a verdict at that regime."""


# ----------------------------------------------------------------------------------------------
# Reading the sources


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


class Sources:
    """The committed results files, read once."""

    def __init__(self, results: Path = RESULTS, hub_configs: Path = HUB_CONFIGS):
        self.results = Path(results)
        self.hub_configs = Path(hub_configs)

    def table(self, folder: str, name: str) -> List[Dict[str, Any]]:
        return _json(self.results / folder / f'{name}.json') or []

    def run(self, folder: str) -> Dict[str, Any]:
        return _json(self.results / folder / 'run.json') or {}

    def settings(self, folder: str) -> Dict[str, Any]:
        return self.run(folder).get('settings', {})

    def _first_complete(self, folders: Sequence[str]) -> str:
        for folder in folders[:-1]:
            run = self.run(folder)
            if run.get('runs_finished') is not None and stopped_early(run) is None:
                return folder
        return folders[-1]

    @functools.cached_property
    def sweep(self) -> str:
        """The results folder the sweep claims read: the first of SWEEP_FOLDERS that is complete, else the last."""
        return self._first_complete(SWEEP_FOLDERS)

    @functools.cached_property
    def stability(self) -> str:
        """The results folder the stability claims read: the first of STABILITY_FOLDERS that is complete, else the
        last."""
        return self._first_complete(STABILITY_FOLDERS)

    def checkpoints(self) -> List[Dict[str, Any]]:
        """One row per published folder: test top-1 and the training regime, from its results files."""
        from ..cards import folder_validation, read_args, read_summary
        rows = []
        if not self.hub_configs.is_dir():
            return rows
        for folder in sorted(self.hub_configs.iterdir()):
            name = folder.name
            if name.count('.') != 1 or not (folder / 'config.json').is_file():
                continue
            arch, tag = name.split('.')
            val = folder_validation(folder, name)
            args = read_args(folder / 'train_args.yaml')
            epochs = len(read_summary(folder / 'train_summary.csv'))
            slice_file = _json(folder / 'slice_results.json') or {}
            rows.append(dict(name=name, arch=arch, tag=tag, args=args, family=arch.split('_')[0], size=arch.rsplit('_', 1)[-1],
                             top1=float(val['top1']), samples=val.get('samples'), split=val.get('split', 'test'),
                             epochs=epochs, dataset=args.get('dataset'), val_split_size=args.get('val_split_size'),
                             train_subset=args.get('train_subset'), seed=args.get('seed'), lr=args.get('lr'),
                             batch_size=args.get('batch_size'), weights_sha256=slice_file.get('weights_sha256')))
        return rows


def _fmt_int(n: Any) -> str:
    return f'{int(n):,}' if isinstance(n, (int, float)) else str(n)


def _lrs(values: Sequence[float]) -> str:
    return ', '.join(f'{v:g}' for v in values)


def _seed_std_rows(src: Sources) -> List[Dict[str, Any]]:
    return [r for r in src.table(src.stability, 'summary') if r.get('top1_std') is not None and r.get('runs', 0) > 1]


def borrowed_resolution(src: Sources) -> float:
    """For one-run accuracy figures: twice the largest seed-to-seed std the stability results measured."""
    rows = _seed_std_rows(src)
    return 2 * max(r['top1_std'] for r in rows) if rows else ASSUMED_SEED_RESOLUTION


def fast_recipe(src: Sources) -> Optional[Dict[str, Any]]:
    """The fast recipe's measured seed resolution and the settings a run must share to use it (None: not measured)."""
    run = src.run(FAST_RECIPE_ABLATION)
    recipe = run.get('settings', {}).get('recipe')
    settings = run.get('recipe_settings') or _recipe_args(recipe, run.get('git_commit'))
    if run.get('resolution') is None or not settings:
        return None
    return dict(resolution=run['resolution'], recipe=recipe,
                settings={k: v for k, v in settings.items() if k not in _RUN_SPECIFIC})


def _recipe_args(config: Optional[str], commit: Optional[str] = None) -> Dict[str, Any]:
    """A recipe file (absolute, or relative to the repository) as the settings it trains with; {} when absent.

    For results that predate recording their recipe (``recipe``, ``recipe_settings``). ``commit``: a results row's,
    so that the recipe is the one the row ran (the tiny trio's lr moved from 0.2 to 0.5 after its rows were made);
    the file as it is now where git cannot say (no clone, a shallow one, an unknown commit)."""
    import yaml
    if config and commit and not Path(config).is_absolute():
        text = file_at_commit(config, commit)
        if text is not None:
            return yaml.safe_load(text) or {}
    path = Path(config or '')
    path = path if path.is_absolute() else REPO_ROOT / path
    return recipe_file_settings(path) if config and path.is_file() else {}


def accuracy_resolution(src: Sources, *runs_args: Dict[str, Any]) -> float:
    """For one-run accuracy figures: the fast recipe's seed resolution when every run trained with its settings,
    else the borrowed one."""
    return resolution_and_source(src, *runs_args)[0]


def resolution_and_source(src: Sources, *runs_args: Dict[str, Any]) -> Tuple[float, str]:
    """``accuracy_resolution`` and where it comes from, in words a results README can quote."""
    fast = fast_recipe(src)
    if fast and runs_args and all(all(args.get(k) == v for k, v in fast['settings'].items()) for args in runs_args):
        return fast['resolution'], f'the fast recipe\'s, measured over seeds in results/{FAST_RECIPE_ABLATION}'
    if _seed_std_rows(src):
        return borrowed_resolution(src), (f'borrowed: no seed spread measured at this recipe, twice the largest seed '
                                          f'std of results/{src.stability}')
    return ASSUMED_SEED_RESOLUTION, 'assumed: no seed spread measured anywhere'


def row_recipe(row: Dict[str, Any]) -> Dict[str, Any]:
    """The recipe a results row trained with: recorded in the row, else its recipe file at the row's commit."""
    return row.get('recipe') or _recipe_args(row.get('config'), row.get('git_commit'))


def sweep_resolution(src: Sources) -> float:
    """The resolution docs/guidelines.md uses for the sweep (the same function computes it)."""
    from .guidelines import _resolution
    return _resolution(_seed_std_rows(src) or None, src.settings(src.sweep).get('lr'), '', src.run(src.sweep))[0]


# ----------------------------------------------------------------------------------------------
# Regimes


def _stability_regime(src: Sources) -> str:
    return stability_regime(src.settings(src.stability)) + _partial(src, src.stability)


def _sweep_regime(src: Sources) -> str:
    return sweep_regime(src.settings(src.sweep), src.table(src.sweep, 'runs')) + _partial(src, src.sweep)


def _partial(src: Sources, folder: str) -> str:
    """A bench stopped by --stop-after before its last run: its figures are from the runs so far."""
    run = src.run(folder)
    stopped = stopped_early(run)
    return f'; partial, {stopped[0]} of {stopped[1]} runs' if stopped else ''


def _checkpoint_regime(pairs: Sequence[Tuple[Dict[str, Any], Dict[str, Any]]]) -> str:
    parts = []
    for a, _ in pairs:
        data = DATASETS.get(a['dataset'], a['dataset'])
        train = (f"{_fmt_int(a['train_subset'])} {data} training images" if a.get('train_subset')
                 else f"{data} training split less {_fmt_int(a['val_split_size'])} held out" if a.get('val_split_size')
                 else f'{data} training split')
        parts.append(f"{a['size']} .{a['tag']}: {a['epochs']} epoch{'s' if a['epochs'] != 1 else ''} on {train}")
    seeds = sorted({str(a['seed']) for pair in pairs for a in pair})
    samples = sorted({_fmt_int(a['samples']) for pair in pairs for a in pair if a.get('samples')})
    return '; '.join(parts) + f"; one run each (seed {', '.join(seeds)}); test top-1 on {', '.join(samples)} images"


def _efficiency_regime(src: Sources, what: str) -> str:
    run = src.run('efficiency')
    m, s = run.get('machine', {}), run.get('settings', {})
    device = m.get('cuda_device') or f"{m.get('cpu_model', '?')}, {m.get('torch_threads', '?')} threads"
    if what == 'train':
        return f"no training to accuracy: one SGD step timed, batch {s.get('train_batch', '?')}, fp32, on {device}"
    if what == 'memory':
        batch = s.get('memory_batch') or s.get('train_batch', '?')
        return f'one forward + backward, batch {batch}, fp32, peak live bytes on {device}'
    return f"no training: eval mode, {what}, fp32, on {device}"


# ----------------------------------------------------------------------------------------------
# Claims


def _row(claim_id: str, claim: str, source: str, link: str, regime: str, comparisons: List[Dict[str, Any]],
         empty: str = '') -> Dict[str, Any]:
    verdict = combine([c['verdict'] for c in comparisons])
    measured = '; '.join(c['text'] for c in comparisons) if comparisons else (empty or 'no measurement in the source')
    return dict(id=claim_id, claim=claim, source=source, link=link, measured=measured, regime=regime,
                verdict=verdict, comparisons=comparisons)


def _cmp(subject: str, text: str, delta: Optional[float], resolution: float, verdict: str) -> Dict[str, Any]:
    return dict(subject=subject, text=text, delta=None if delta is None else round(delta, 4),
                resolution=round(resolution, 4), verdict=verdict)


def _points(subject: str, a: float, b: float, resolution: float, names: Tuple[str, str] = ('', '')) -> Dict[str, Any]:
    delta = a - b
    left = f'{names[0]} ' if names[0] else ''
    right = f'{names[1]} ' if names[1] else ''
    text = f'{subject}: {left}{a:.2f} vs {right}{b:.2f} ({delta:+.2f}, resolution {resolution:.2f})'
    return _cmp(subject, text, delta, resolution, judge(delta, resolution))


def _by_size(rows: Sequence[Dict[str, Any]], key: str = 'model') -> Dict[Tuple[str, str], Dict[str, Any]]:
    """(family, size) -> row, for zoo model names (``wt_resnet_tiny``)."""
    out = {}
    for r in rows:
        name = str(r[key]).split(':')[0].split('.')[0]
        out.setdefault((name.split('_')[0], name.rsplit('_', 1)[-1]), r)
    return out


SIZES = ('tiny', 'small', 'base')


def _size_order(size: str) -> int:
    return SIZES.index(size) if size in SIZES else len(SIZES)


def _checkpoint_pairs(src: Sources, family: str, twin: str) -> List[Tuple[Dict[str, Any], Dict[str, Any]]]:
    """(twin-family row, family row) for every published size and tag with both, trained the same epochs."""
    rows = src.checkpoints()
    index = {(r['family'], r['size'], r['tag']): r for r in rows}
    pairs = []
    for (fam, size, tag), a in sorted(index.items(), key=lambda kv: (kv[0][2], _size_order(kv[0][1]))):
        b = index.get((family, size, tag))
        if fam == twin and b is not None and a['epochs'] == b['epochs']:
            pairs.append((a, b))
    return pairs


def recipe_drift(checkpoint: Dict[str, Any]) -> str:
    """The training-only model arguments (a DEQ's gradient, its Jacobian term) a published tag trained with that its
    recipe in configs/ has since changed: its figure is that model's, not what the recipe trains now. '' if none."""
    from ..cards import TRAINING_ONLY_MODEL_ARGS
    now = _recipe_args(f"configs/{checkpoint['name']}.yaml").get('model_kwargs') or {}
    then = checkpoint['args'].get('model_kwargs') or {}
    moved = [k for k in TRAINING_ONLY_MODEL_ARGS if k in now and then.get(k, now[k]) != now[k]]
    if not moved:
        return ''
    return (f"{checkpoint['name']} trained with {', '.join(f'{k}={then[k]}' for k in moved)}, its recipe now has "
            f"{', '.join(f'{k}={now[k]}' for k in moved)}")


def _checkpoint_row(src: Sources, claim_id: str, claim: str, winner: str, loser: str) -> Dict[str, Any]:
    """``winner`` claimed more accurate than ``loser`` on each published pair."""
    if winner == 'wt':  # (WT, twin) as _checkpoint_pairs gives them
        pairs = _checkpoint_pairs(src, loser, 'wt')
    else:
        pairs = [(b, a) for a, b in _checkpoint_pairs(src, winner, loser)]
    comparisons = []
    for a, b in pairs:
        comparison = _points(f"{a['size']} .{a['tag']}", a['top1'], b['top1'],
                             accuracy_resolution(src, a['args'], b['args']), (winner.upper(), loser.upper()))
        drift = [text for text in (recipe_drift(a), recipe_drift(b)) if text]
        if drift:
            comparison['text'] += f" ({'; '.join(drift)})"
        comparisons.append(comparison)
    return _row(claim_id, claim, 'published checkpoints, test top-1', 'hub_configs/README.md',
                _checkpoint_regime(pairs) if pairs else '', comparisons,
                f'no published {winner}/{loser} pair trained the same epochs')


def _plus_minus(row: Dict[str, Any]) -> str:
    """A stability row's mean top-1 with its seed std; one finished run has no std to give."""
    if row.get('top1_std') is None:
        return f"{row['top1_mean']:.2f} (one run)"
    return f"{row['top1_mean']:.2f} ± {row['top1_std']:.2f}"


def claim_wt_vs_deq_epochs(src: Sources) -> List[Dict[str, Any]]:
    claim = 'WT is more accurate than its DEQ twin at equal parameters and epochs'
    rows = []
    summary = [r for r in src.table(src.stability, 'summary') if r.get('top1_mean') is not None]
    comparisons = []
    for size in SIZES:
        wt = [r for r in summary if r['family'] == 'wt' and r['model'].endswith(f'_{size}')]
        deq = [r for r in summary if r['family'] == 'deq' and r['model'].endswith(f'_{size}')]
        if not wt or not deq:
            continue
        a, b = max(wt, key=lambda r: r['top1_mean']), max(deq, key=lambda r: r['top1_mean'])
        tol = 2 * max(a.get('top1_std') or 0.0, b.get('top1_std') or 0.0)
        delta = a['top1_mean'] - b['top1_mean']
        text = (f"{size}, each at its best lr: WT {_plus_minus(a)} (lr {a['lr']:g}) vs DEQ "
                f"{_plus_minus(b)} (lr {b['lr']:g}) ({delta:+.2f}, resolution {tol:.2f})")
        comparisons.append(_cmp(size, text, delta, tol, judge(delta, tol)))
    rows.append(_row('accuracy_wt_vs_deq_epochs', claim, src.stability, f'results/{src.stability}/README.md',
                     _stability_regime(src) if comparisons else '', comparisons,
                     f'no WT and DEQ twins in results/{src.stability} yet'))
    rows.append(_checkpoint_row(src, 'accuracy_wt_vs_deq_epochs', claim, 'wt', 'deq'))
    return rows


def _value_at(curve: Sequence[Dict[str, Any]], minutes: float) -> Optional[Dict[str, Any]]:
    """The last evaluation at or before ``minutes`` of training."""
    before = [p for p in curve if p['train_minutes'] <= minutes + 1e-9]
    return before[-1] if before else None


MACHINE_SPEED_TOLERANCE = 0.10  # matmul timings of one machine vary by a few per cent between runs


def _machines_differ(a: Dict[str, Any], b: Dict[str, Any], winner: str, loser: str) -> str:
    """Minutes on two machines of one CPU name are not like for like: said beside the figures when both rows
    recorded their machine's matmul speed and it differs."""
    speed_a, speed_b = a.get('matmul_gflops'), b.get('matmul_gflops')
    if not speed_a or not speed_b or abs(speed_a / speed_b - 1) <= MACHINE_SPEED_TOLERANCE:
        return ''
    return (f"; machines differ: {winner.upper()} ran on {speed_a:.0f}, {loser.upper()} on {speed_b:.0f} GFLOP/s "
            'fp32 matmul, so the minutes are not like for like')


def _wall_time_row(src: Sources, claim_id: str, claim: str, winner: str, loser: str) -> Dict[str, Any]:
    summary = src.table('time_to_accuracy', 'summary')
    curves = src.table('time_to_accuracy', 'curves')
    index = {}
    for r in summary:
        arch, _, tag = r['model'].partition('.')
        index[(arch.split('_')[0], arch.rsplit('_', 1)[-1], tag)] = r
    comparisons, regimes = [], []
    for (fam, size, tag), a in sorted(index.items(), key=lambda kv: (kv[0][2], _size_order(kv[0][1]))):
        b = index.get((loser, size, tag))
        if fam != winner or b is None:
            continue
        ca = [p for p in curves if p['model'] == a['model']]
        cb = [p for p in curves if p['model'] == b['model']]
        if not ca or not cb:
            continue
        common = min(ca[-1]['train_minutes'], cb[-1]['train_minutes'])
        pa, pb = _value_at(ca, common), _value_at(cb, common)
        if pa is None or pb is None:
            continue
        subject = f'{size} .{tag} at {common:.1f} min'
        tol = accuracy_resolution(src, row_recipe(a), row_recipe(b))
        cmp_ = _points(subject, pa['heldout_top1'], pb['heldout_top1'], tol, (winner.upper(), loser.upper()))
        cmp_['text'] = cmp_['text'].replace(f'{subject}: ', f'{subject}, held-out: ', 1)
        reached = [f"{k.split('_')[-1]} % in {a[k]:.1f} vs {b[k]:.1f} min" if b.get(k) is not None
                   else f"{k.split('_')[-1]} % in {a[k]:.1f} min vs not reached" for k in a
                   if k.startswith('minutes_to_') and a[k] is not None]
        reached += [f"{k.split('_')[-1]} % not reached vs {b[k]:.1f} min" for k in b
                    if k.startswith('minutes_to_') and b[k] is not None and a.get(k) is None]
        cmp_['text'] += (f"; test top-1 after the budget {a['test_top1']:.2f} vs {b['test_top1']:.2f}"
                         + (f"; {', '.join(reached)}" if reached else '') + _machines_differ(a, b, winner, loser))
        comparisons.append(cmp_)
        regimes.append(f"{size} .{tag}: {a['epochs']} vs {b['epochs']} epochs in a {a['budget_minutes']:g}-min budget "
                       f"on {a['hardware']}")
    regime = ('; '.join(regimes) + '; training split less the held-out images, one run each') if regimes else ''
    name = {'wt': 'WT', 'wtsm': 'WTSM', 'deq': 'DEQ'}
    missing = (f"no {name[loser]} curve beside a {name[winner]} twin in results/time_to_accuracy yet "
               f"(models there: {', '.join(r['model'] for r in summary) or 'none'})")
    return _row(claim_id, claim, 'time to accuracy', 'results/time_to_accuracy/README.md', regime, comparisons, missing)


def claim_wt_vs_deq_wall_time(src: Sources) -> List[Dict[str, Any]]:
    return [_wall_time_row(src, 'accuracy_wt_vs_deq_wall_time',
                           'WT is more accurate than its DEQ twin at equal training wall time', 'wt', 'deq')]


def claim_train_speed(src: Sources) -> List[Dict[str, Any]]:
    claim = 'WT trains faster (images/s) than its DEQ twin'
    rows = []
    speed = src.table('train_speed', 'speed')
    auto = [r for r in speed if str(r.get('path', '')).startswith('auto:')]
    comparisons = []
    if auto:
        noise = max(abs(r['of_best'] - 1) for r in auto if r.get('of_best') is not None)
        res = max(TIMING_FLOOR, 2 * noise)
        groups = {}
        for r in auto:
            groups.setdefault(r['batch_size'], []).append(r)
        for batch, group in groups.items():
            idx = _by_size(group)
            for size in SIZES:
                a, b = idx.get(('wt', size)), idx.get(('deq', size))
                if a and b:
                    ratio = a['images_per_s'] / b['images_per_s']
                    text = (f"{size}, batch {batch}: {a['images_per_s']:.0f} vs {b['images_per_s']:.0f} img/s, "
                            f"{ratio:.2f}x (resolution ±{res:.0%})")
                    comparisons.append(_cmp(f'{size} b{batch}', text, ratio, res, judge_ratio(ratio, res)))
    hardware = auto[0].get('hardware', '?') if auto else '?'
    rows.append(_row('train_speed', claim, 'train speed (auto numeric path)', 'results/train_speed/README.md',
                     f'no training to accuracy: mean of timed steps on the path `auto` picks, on {hardware}'
                     if comparisons else '', comparisons, 'no WT and DEQ twins in results/train_speed yet'))
    rows.append(_efficiency_ratio_row(src, 'train_speed', claim, 'train_img_s', 'train_iqr', 'training', 'train'))
    return rows


def _efficiency_ratio_row(src: Sources, claim_id: str, claim: str, key: str, iqr_key: str, label: str,
                          regime: str) -> Dict[str, Any]:
    rows = src.table('efficiency', 'efficiency')
    comparisons = []
    for device in dict.fromkeys(r['device'] for r in rows):
        idx = _by_size([r for r in rows if r['device'] == device])
        for size in SIZES:
            a, b = idx.get(('wt', size)), idx.get(('deq', size))
            if not a or not b or not a.get(key) or not b.get(key):
                continue
            res = max(TIMING_FLOOR, 2 * max(a.get(iqr_key) or 0.0, b.get(iqr_key) or 0.0))
            ratio = a[key] / b[key]
            text = f'{size}: {a[key]:.1f} vs {b[key]:.1f} img/s, {ratio:.2f}x (resolution ±{res:.0%})'
            comparisons.append(_cmp(f'{size} {device}', text, ratio, res, judge_ratio(ratio, res)))
    return _row(claim_id, claim, f'efficiency ({label})', 'results/efficiency/README.md',
                _efficiency_regime(src, regime) if comparisons else '', comparisons,
                'no WT and DEQ twins in results/efficiency yet')


def claim_inference_speed(src: Sources) -> List[Dict[str, Any]]:
    claim = 'WT infers faster (images/s) than its DEQ twin'
    batches = sorted({int(k[len('infer_b'):-len('_img_s')]) for r in src.table('efficiency', 'efficiency') for k in r
                      if k.startswith('infer_b') and k.endswith('_img_s')}, reverse=True)
    rows = [_efficiency_ratio_row(src, 'inference_speed', claim, f'infer_b{b}_img_s', f'infer_b{b}_iqr',
                                  f'inference, batch {b}', f'batch {b}') for b in batches]
    return rows or [_row('inference_speed', claim, 'efficiency', 'results/efficiency/README.md', '', [],
                         'no WT and DEQ twins in results/efficiency yet')]


def claim_memory(src: Sources) -> List[Dict[str, Any]]:
    rows = src.table('efficiency', 'efficiency')
    plain_cmp, ckpt_cmp = [], []
    res = MEMORY_RESOLUTION
    for device in dict.fromkeys(r['device'] for r in rows):
        idx = _by_size([r for r in rows if r['device'] == device])
        for size in SIZES:
            a, b = idx.get(('wt', size)), idx.get(('deq', size))
            if not a or not b or not b.get('train_mem_mb'):
                continue
            if a.get('train_mem_mb'):
                ratio = a['train_mem_mb'] / b['train_mem_mb']
                text = (f"{size}: DEQ {b['train_mem_mb']:.0f} vs WT {a['train_mem_mb']:.0f} MiB, WT/DEQ {ratio:.2f}x "
                        f"(resolution ±{res:.0%})")
                plain_cmp.append(_cmp(f'{size} {device}', text, ratio, res, judge_ratio(ratio, res)))
            if a.get('train_mem_ckpt_mb'):
                ratio = b['train_mem_mb'] / a['train_mem_ckpt_mb']
                text = (f"{size}: WT checkpointed {a['train_mem_ckpt_mb']:.0f} vs DEQ {b['train_mem_mb']:.0f} MiB, "
                        f"DEQ/WT {ratio:.2f}x (resolution ±{res:.0%})")
                ckpt_cmp.append(_cmp(f'{size} {device}', text, ratio, res, judge_ratio(ratio, res)))
    regime = _efficiency_regime(src, 'memory') if rows else ''
    missing = 'no WT and DEQ twins in results/efficiency yet'
    return [
        _row('training_memory', 'The DEQ twin trains in less peak memory than WT (its implicit backward stores no '
             'iterations)', 'efficiency (memory)', 'results/efficiency/README.md', regime if plain_cmp else '',
             plain_cmp, missing),
        _row('training_memory_checkpointed', 'With gradient checkpointing, WT trains in less peak memory than its '
             'DEQ twin', 'efficiency (memory)', 'results/efficiency/README.md', regime if ckpt_cmp else '', ckpt_cmp,
             missing),
    ]


def claim_stability(src: Sources) -> List[Dict[str, Any]]:
    summary = src.table(src.stability, 'summary')
    lrs = sorted({r['lr'] for r in summary})
    div_cmp, solver_cmp = [], []
    cap = next((r.get('f_max_iter') for r in src.table('efficiency', 'efficiency') if r.get('f_max_iter')), None)
    for size in SIZES:
        wt = sorted((r for r in summary if r['family'] == 'wt' and r['model'].endswith(f'_{size}')), key=lambda r: r['lr'])
        deq = sorted((r for r in summary if r['family'] == 'deq' and r['model'].endswith(f'_{size}')),
                     key=lambda r: r['lr'])
        if wt and deq:
            def first(rows):
                return next((r for r in rows if r['diverged'] > 0), None)
            fw, fd = first(wt), first(deq)
            iw = lrs.index(fw['lr']) if fw else len(lrs)
            id_ = lrs.index(fd['lr']) if fd else len(lrs)
            delta = float(iw - id_)

            def say(r):
                return f"lr {r['lr']:g} ({r['diverged']}/{r['runs']} runs)" if r else f'none up to lr {lrs[-1]:g}'
            text = (f'{size}: first divergence WT {say(fw)}, DEQ {say(fd)} (grid lr {_lrs(lrs)})')
            div_cmp.append(_cmp(size, text, delta, 0.0, judge(delta, 0.0)))
        for r in deq:
            trend = solver_trend(r)
            if r.get('diverged') or trend is None:
                continue
            start, end = trend
            delta = end - start
            at_cap = cap is not None and start >= cap - SOLVER_RESOLUTION
            text = (f"{size}, lr {r['lr']:g}: {start:.1f} → {end:.1f} "
                    f"iterations ({delta:+.2f}, resolution {SOLVER_RESOLUTION:g})" + (f', at its cap of {cap}'
                                                                                      if at_cap else ''))
            solver_cmp.append(_cmp(f"{size} lr {r['lr']:g}", text, delta, SOLVER_RESOLUTION,
                                   judge(delta, SOLVER_RESOLUTION)))
    regime = _stability_regime(src) if summary else ''
    missing = f'no WT and DEQ twins in results/{src.stability} yet'
    link = f'results/{src.stability}/README.md'
    return [
        _row('stability_divergence', 'WT trains stably at learning rates where its DEQ twin diverges', src.stability,
             link, regime if div_cmp else '', div_cmp, missing),
        _row('stability_solver', 'The DEQ solver needs more iterations as training goes on', src.stability,
             link, (regime + '; ' + _solver_where(src)) if solver_cmp else '',
             solver_cmp, missing),
    ]


def _solver_where(src: Sources) -> str:
    if 'recipes' in src.settings(src.stability):
        return 'iterations on the held-out images after the first and the last epoch'
    return 'iterations on 256 held-out images before and after training'


def _sweep_rows(src: Sources) -> List[Dict[str, Any]]:
    return [r for r in src.table(src.sweep, 'sweep') if r.get('status') == 'ok' and r.get('held_out_top1') is not None]


def _sweep_row(src: Sources, claim_id: str, claim: str, comparisons: List[Dict[str, Any]], missing: str) -> Dict[str, Any]:
    return _row(claim_id, claim, src.sweep, f'results/{src.sweep}/README.md', _sweep_regime(src) if comparisons else '',
                comparisons, f'{missing} in results/{src.sweep} yet')


def claim_masks_vs_dense(src: Sources) -> List[Dict[str, Any]]:
    claim = 'Distinct sparse masks (WTSM) are more accurate than dense WT at equal parameters and epochs'
    tol = sweep_resolution(src)
    rows = _sweep_rows(src)
    dense = {(r['depth'], r['width']): r for r in rows if r['family'] == 'wt'}
    comparisons = []
    for r in rows:
        base = dense.get((r['depth'], r['width']))
        if r['family'] == 'wtsm' and r['mask_mode'] == 'distinct' and base is not None:
            comparisons.append(_points(r['label'], r['held_out_top1'], base['held_out_top1'], tol))
    return [_sweep_row(src, 'accuracy_masks_vs_dense_epochs', claim, comparisons,
                       'no masked configuration beside its dense one'),
            _checkpoint_row(src, 'accuracy_masks_vs_dense_epochs', claim, 'wtsm', 'wt')]


def claim_masks_wall_time(src: Sources) -> List[Dict[str, Any]]:
    return [_wall_time_row(src, 'accuracy_masks_vs_dense_wall_time',
                           'WTSM is more accurate than dense WT at equal training wall time', 'wtsm', 'wt')]


def claim_distinct_vs_shared(src: Sources) -> List[Dict[str, Any]]:
    tol = sweep_resolution(src)
    rows = _sweep_rows(src)
    masked = [r for r in rows if r['family'] == 'wtsm']
    comparisons = []
    for r in masked:
        if r['mask_mode'] != 'shared':
            continue
        twin = next((d for d in masked if d['mask_mode'] == 'distinct' and all(
            d[k] == r[k] for k in ('depth', 'width', 'mask_density', 'mask_kind'))), None)
        if twin is not None:
            comparisons.append(_points(f"{twin['label']} vs shared", twin['held_out_top1'], r['held_out_top1'], tol,
                                       ('distinct', 'shared')))
    return [_sweep_row(src, 'accuracy_distinct_vs_shared', 'A distinct mask per iteration beats one shared mask '
                       '(equal parameters, density and epochs)', comparisons,
                       'no shared-mask configuration beside its distinct twin')]


GUIDELINES = 'docs/guidelines.md'


def claim_guidelines(src: Sources) -> List[Dict[str, Any]]:
    from .guidelines import FLOP_MATCH, equal_flop_groups
    tol = sweep_resolution(src)
    rows = _sweep_rows(src)
    dense = [r for r in rows if r['family'] == 'wt']
    out = []

    # depth: at each width, the deepest dense model against the shallowest
    comparisons = []
    for width in sorted({r['width'] for r in dense}):
        line = sorted((r for r in dense if r['width'] == width), key=lambda r: r['depth'])
        if len(line) > 1:
            comparisons.append(_points(f"width {width}, depth {line[-1]['depth']} vs {line[0]['depth']}",
                                       line[-1]['held_out_top1'], line[0]['held_out_top1'], tol))
    out.append(_sweep_row(src, 'guideline_depth', 'Guideline, depth: at equal parameters, more weight-tied '
                          'iterations raise accuracy', comparisons, 'no dense depths side by side'))

    # width: at each parameter count, the best model at it against the best narrower one
    comparisons = []
    counts = sorted({r['params'] for r in rows})
    for p in counts[1:]:
        at = max((r for r in rows if r['params'] == p), key=lambda r: r['held_out_top1'])
        below = max((r for r in rows if r['params'] < p), key=lambda r: r['held_out_top1'])
        comparisons.append(_points(f"{p / 1e6:.3f}M params, {at['label']} vs {below['label']}", at['held_out_top1'],
                                   below['held_out_top1'], tol))
    out.append(_sweep_row(src, 'guideline_width', 'Guideline, width: for a parameter budget, the widest model '
                          'that fits beats every narrower one', comparisons,
                          'no two widths'))

    # equal FLOPs: deeper and narrower against shallower and wider, dense models
    comparisons = []
    for group in equal_flop_groups(rows):
        members = [r for r in group if r['family'] == 'wt']
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                if a['depth'] == b['depth'] or a['width'] == b['width']:
                    continue
                deep, wide = (a, b) if a['depth'] > b['depth'] else (b, a)
                comparisons.append(_points(f"{deep['label']} vs {wide['label']}", deep['held_out_top1'],
                                           wide['held_out_top1'], tol))
    out.append(_sweep_row(src, 'guideline_equal_flops', 'Guideline, equal FLOPs: deeper and narrower beats '
                          'shallower and wider', comparisons,
                          'no dense configurations of equal FLOPs'))

    # masks at equal effective FLOPs: each masked model against the dense model nearest in effective FLOPs
    comparisons = []
    for r in rows:
        if r['family'] != 'wtsm':
            continue
        near = [d for d in dense if max(d['effective_gflops'], r['effective_gflops'])
                <= (1 + FLOP_MATCH) * min(d['effective_gflops'], r['effective_gflops'])]
        if near:
            d = min(near, key=lambda d: abs(d['effective_gflops'] - r['effective_gflops']))
            comparisons.append(_points(f"{r['label']} vs {d['label']}", r['held_out_top1'], d['held_out_top1'], tol))
    out.append(_sweep_row(src, 'guideline_masks_equal_flops', 'Guideline, sparsity: at equal effective FLOPs '
                          f'(within {FLOP_MATCH:.0%}), a sparse-mask model beats the dense one', comparisons,
                          'no masked and dense configurations of equal effective FLOPs'))
    return out


CLAIMS = (claim_wt_vs_deq_epochs, claim_wt_vs_deq_wall_time, claim_masks_vs_dense, claim_masks_wall_time,
          claim_distinct_vs_shared, claim_train_speed, claim_inference_speed, claim_memory, claim_stability,
          claim_guidelines)


def build(results: Path = RESULTS, hub_configs: Path = HUB_CONFIGS) -> List[Dict[str, Any]]:
    """Every claim row, from the results files."""
    src = Sources(results, hub_configs)
    return [dict(n=i + 1, **row) for i, row in enumerate(row for claim in CLAIMS for row in claim(src))]


def sources(results: Path = RESULTS, hub_configs: Path = HUB_CONFIGS) -> List[Dict[str, Any]]:
    """What each source is and which command and commit made it."""
    src = Sources(results, hub_configs)
    out = []
    for folder in ('efficiency', src.stability, src.sweep, 'train_speed', FAST_RECIPE_ABLATION):
        run = src.run(folder)
        if run:
            out.append(dict(source=f'results/{folder}', command=run.get('command', '?'), date=run.get('date', '?'),
                            git_commit=run.get('git_commit', '?')))
    for row in src.table('time_to_accuracy', 'summary'):
        out.append(dict(source=f"results/time_to_accuracy ({row['model']})", command=row.get('command', '?'),
                        date=row.get('date', '?'), git_commit=row.get('git_commit', '?')))
    for row in src.checkpoints():
        out.append(dict(source=f"hub_configs/{row['name']}", command='', made_by='validate.py on the test split '
                        '(validation_results.json)', date='', git_commit='', weights_sha256=row.get('weights_sha256') or ''))
    return out


# ----------------------------------------------------------------------------------------------
# Markdown


def _link(row: Dict[str, Any], base: str) -> str:
    target = row['link']
    folder = target.split('/README.md')[0]
    return f'[{folder}]({base}{target})'


def _verdict_cell(verdict: str) -> str:
    return f'**{verdict}**' if verdict in (HOLDS, FAILS, MIXED) else verdict


def table(rows: Sequence[Dict[str, Any]], base: str = '') -> str:
    """The claims table; ``base`` prefixes the links (relative to where the markdown lives)."""
    lines = ['| # | claim | measured | regime | verdict | results |', '|---|---|---|---|---|---|']
    for row in rows:
        claim = row['claim']
        if row['id'].startswith('guideline_'):
            claim = f"{claim} ([guidelines]({base}{GUIDELINES}))"
        cells = [str(row['n']), claim, row['measured'], row['regime'] or '–', _verdict_cell(row['verdict']),
                 _link(row, base)]
        lines.append('| ' + ' | '.join(c.replace('|', '\\|') for c in cells) + ' |')
    return '\n'.join(lines)


def _counts(rows: Sequence[Dict[str, Any]]) -> str:
    order = (HOLDS, FAILS, MIXED, UNRESOLVED, NOT_MEASURED)
    return ', '.join(f'{sum(r["verdict"] == v for r in rows)} {v}' for v in order if any(r['verdict'] == v for r in rows))


def render_readme(rows: Sequence[Dict[str, Any]], srcs: Sequence[Dict[str, Any]]) -> str:
    """results/claims/README.md."""
    source_lines = ['| source | command | date (UTC) | commit |', '|---|---|---|---|']
    for s in srcs:
        commit = f"`{s['git_commit']}`" if s.get('git_commit') else (
            f"weights sha256 `{s['weights_sha256'][:16]}…`" if s.get('weights_sha256') else '')
        made_by = f"`{s['command']}`" if s.get('command') else s.get('made_by', '')
        source_lines.append(f"| {s['source']} | {made_by} | {s['date']} | {commit} |")
    return '\n\n'.join([
        '# What the measurements say: the paper\'s findings against the committed results',
        f'Produced by `{COMMAND}` from the committed results files alone (nothing trained or timed; the same files '
        'give the same folder, and `tests/test_claims.py` fails when this folder or the README\'s copy is stale). '
        f'Verdicts: {_counts(rows)}.',
        table(rows, '../../'),
        '## Verdict rules',
        RULES,
        '## Sources',
        'Each source with the command and commit that made it (a published checkpoint by its weights\' sha256):',
        '\n'.join(source_lines),
    ]) + '\n'


def readme_section(results: Path = RESULTS, hub_configs: Path = HUB_CONFIGS) -> str:
    """The project README's copy of the table, with the accuracy-vs-minutes plot and the sweep's FLOPs front."""
    rows = build(results, hub_configs)
    parts = [
        f'Each row is one finding of the research, checked against the committed results files by `{COMMAND}` '
        '([results/claims](results/claims/README.md): the verdict rules, and the command and commit of every '
        'source). A difference counts only when it is larger than its source\'s resolution (twice the seed-to-seed '
        'standard deviation, or the stated timing resolution); the regime column says how short each measurement '
        f'is, and a verdict holds at that regime only. Verdicts: {_counts(rows)}.',
        table(rows),
    ]
    sweep = Sources(results, hub_configs).sweep
    figures = [
        ('time_to_accuracy/time_to_accuracy.png', 'Held-out top-1 against training minutes, twins under one recipe '
         'and one budget ([results/time_to_accuracy](results/time_to_accuracy/README.md)):'),
        (f'{sweep}/sweep_flops.png', 'Held-out top-1 against effective FLOPs for every sweep configuration, with the '
         f'best-at-or-below-cost front ([results/{sweep}](results/{sweep}/README.md), regime as in the table):'),
    ]
    for rel, caption in figures:
        if (Path(results) / rel).is_file():
            parts.append(f'{caption}\n\n![{Path(rel).stem}](results/{rel})')
    return '\n\n'.join(parts)


# ----------------------------------------------------------------------------------------------
# Files and CLI


def _files(results: Path, hub_configs: Path) -> Dict[str, Any]:
    rows = build(results, hub_configs)
    srcs = sources(results, hub_configs)
    flat = [{k: v for k, v in r.items() if k != 'comparisons'} for r in rows]
    return {'claims.json': rows, 'claims.csv': flat, 'sources.json': srcs, 'README.md': render_readme(rows, srcs)}


def write(out: Path, results: Path = RESULTS, hub_configs: Path = HUB_CONFIGS) -> List[Path]:
    """Write the claims folder; returns the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in _files(results, hub_configs).items():
        path = out / name
        if isinstance(content, str):
            atomic_write_text(path, content)
        else:
            write_results(path, content)
        written.append(path)
    return written


def stale(out: Path, results: Path = RESULTS, hub_configs: Path = HUB_CONFIGS) -> List[str]:
    """Files of ``out`` that differ from what the results files give now."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        fresh = write(Path(tmp), results, hub_configs)
        return [p.name for p in fresh if not (Path(out) / p.name).is_file()
                or (Path(out) / p.name).read_text() != p.read_text()]


def run(args, argv: Sequence[str]) -> int:
    results = Path(args.results)
    out = Path(args.out) if args.out else results / 'claims'
    if args.check:
        changed = stale(out, results, Path(args.hub_configs))
        if changed:
            log(f'{out} is out of date ({", ".join(changed)}): run `{COMMAND}`')
            return 1
        return 0
    for path in write(out, results, Path(args.hub_configs)):
        log(f'wrote {os.path.relpath(path)}')
    return 0
