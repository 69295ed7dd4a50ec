"""time-to-accuracy: held-out top-1 against training minutes, twins under one recipe and one wall-clock budget.

For each recipe (a train.py ``--config``), the epochs that fit ``--minutes`` of training on this
machine are planned from the run's own epoch loop timed on copies (as ``bench budget`` does, with the
fast path the recipe chooses), then the recipe trains as train.py would (:class:`wt_zoo.trainer.TrainingRun`, a normal
run folder under ``--runs``, resumable: rerunning the command continues an unfinished run with its
saved plan). After every epoch the held-out split is evaluated (the EMA's figure when the recipe
keeps one); the curve is held-out top-1 against cumulative training minutes, evaluation excluded.
The finished run's weights are evaluated once on the test split, for the summary, never to choose
anything.

``--whole-train-split`` is a recipe's final run: settings already chosen on the held-out split, the
same budget, trained on every training image (nothing held out, so there is no held-out curve; each
epoch watches a fixed 1,000-image test slice for divergence only, and nothing is chosen from it).
Its row goes to the ``final`` table, beside, never instead of, the held-out run's; the bars read both.

Results (``--out``, default results/time_to_accuracy): curves.{csv,json}, summary.{csv,json} with
the minutes each run took to reach each ``--thresholds`` accuracy, final.{csv,json} (whole-split
runs), time_to_accuracy.png (one curve per model), README.md, run.json. Rows are merged by model, so twins measured in separate sittings
share one folder; each summary row keeps its own command, commit and machine. A run resumed over several sittings
keeps each sitting (its first epoch, date, commit, hardware, load; train.py's run records them in its checkpoints
and args.yaml, runs planned before that kept them in the plan file) in its row, so the commit column says which
code trained which epochs, not only the sitting that finished it.

    python -m wt_zoo.bench time-to-accuracy --minutes 55 configs/wt_resnet_tiny.c10.yaml
"""
import json
import math
import shlex
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..training import atomic_write_json, sitting_epochs
from .claims import Sources, resolution_and_source, row_recipe
from .common import FAST_RECIPE_ABLATION, REPO_ROOT, Column, ResultsFolder, log, markdown_table, warn_if_busy
from .recipe import recipe_as_run

__all__ = ['add_arguments', 'run', 'minutes_to_reach', 'curve_rows', 'meets_bar', 'bar_lines', 'readme_section']

PLAN_FILE = 'time_to_accuracy_plan.json'
WATCH_IMAGES = 1000  # a whole-split run's per-epoch look at the test split: divergence only, never a choice

# The zoo's CPU bars (2 cores): CIFAR-10 test top-1 of the finished weights, training minutes at most.
BARS = {'wt_resnet_tiny.c10': (88.0, 60.0), 'wt_resnet_small.c10': (90.0, 150.0)}


def add_arguments(parser) -> None:
    parser.add_argument('configs', nargs='*', metavar='CONFIG.yaml',
                        help='train.py recipes (twins), run one after another; none: rewrite the README, plot and '
                             'limits from the stored tables, training nothing')
    parser.add_argument('--minutes', type=float, default=None,
                        help='training wall-clock budget per recipe (required with recipes)')
    parser.add_argument('--epochs', type=int, default=None,
                        help='train exactly this many epochs instead of what fits --minutes: a twin at the epochs '
                             'of a run already measured (the summary then reports the minutes it took against the budget)')
    parser.add_argument('--thresholds', type=float, nargs='+', default=[80, 85, 88, 90],
                        help='held-out top-1 levels whose time to reach is reported')
    parser.add_argument('--runs', default='output/time_to_accuracy', help='parent folder of the run folders')
    parser.add_argument('--out', default=str(REPO_ROOT / 'results' / 'time_to_accuracy'), help='results folder')
    parser.add_argument('--train-args', default='', metavar='"FLAGS"',
                        help='train.py flags for every recipe, one string: --train-args="--device cuda"')
    parser.add_argument('--whole-train-split', action='store_true',
                        help="the recipe's final run: every training image, nothing held out (run folder NAME.whole); "
                             'its test figure goes to the final table beside the held-out run')


def minutes_to_reach(curve: Sequence[Dict[str, Any]], threshold: float) -> Optional[float]:
    """Training minutes at the first evaluation whose held-out top-1 is at least ``threshold``."""
    for point in curve:
        if point['heldout_top1'] >= threshold:
            return point['train_minutes']
    return None


def curve_rows(model: str, history: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One point per epoch: cumulative training minutes, the held-out top-1 (the EMA's when kept) and the
    running top-1 on the epoch's augmented training batches, whose gap to held-out says what limits a run."""
    rows, seconds = [], 0.0
    for row in history:
        seconds += float(row['epoch_seconds'])
        top1 = row.get('ema_eval_top1', row['eval_top1'])
        rows.append(dict(model=model, epoch=int(row['epoch']) + 1, train_minutes=round(seconds / 60, 3),
                         heldout_top1=round(float(top1), 3), heldout_top1_raw=round(float(row['eval_top1']), 3),
                         train_top1=round(float(row['train_top1']), 3) if 'train_top1' in row else None,
                         images_per_s=round(float(row['images_per_s']), 1)))
    return rows


def limit_rows(summary: Sequence[Dict[str, Any]], curves: Sequence[Dict[str, Any]],
               resolution: Callable[[Dict[str, Any]], Tuple[Optional[float], str]]) -> List[Dict[str, Any]]:
    """For each held-out run with a bar: what its last third of training minutes bought. A curve that gains no
    more than its recipe's seed resolution there while training top-1 keeps climbing is limited by what the
    model generalises at this recipe, not by the minutes; one still gaining is limited by the minutes.
    ``resolution``: a summary row's seed resolution and where it comes from (``recipe_resolution``)."""
    rows = []
    for row in summary:
        points = [p for p in curves if p['model'] == row['model']]
        if row['model'] not in BARS or len(points) < 3:
            continue
        start = next(p for p in points if p['train_minutes'] >= points[-1]['train_minutes'] * 2 / 3)
        last = points[-1]
        gain = last['heldout_top1'] - start['heldout_top1']
        train_top1 = last.get('train_top1')
        fitting = None if train_top1 is None or start.get('train_top1') is None else train_top1 - start['train_top1']
        resolution_value, resolution_source = resolution(row)
        if resolution_value is None:
            limit = 'not resolvable: no seed resolution measured for the recipe'
        elif gain > resolution_value:
            limit = 'minutes'
        else:
            limit = 'generalisation' if fitting is not None and fitting > resolution_value else 'plateau'
        rows.append(dict(model=row['model'], epochs=len(points), train_minutes=last['train_minutes'],
                         last_third_from_minutes=start['train_minutes'], heldout_at_start=start['heldout_top1'],
                         heldout_at_end=last['heldout_top1'], last_third_gain=round(gain, 3),
                         train_top1_at_start=start.get('train_top1'), train_top1_at_end=train_top1,
                         train_minus_heldout=None if train_top1 is None else round(train_top1 - last['heldout_top1_raw'], 3),
                         ema_minus_raw=round(last['heldout_top1'] - last['heldout_top1_raw'], 3),
                         bar_top1=BARS[row['model']][0], test_top1=row['test_top1'], resolution=resolution_value,
                         resolution_source=resolution_source, limit=limit))
    return rows


_LIMIT_READINGS = {
    'minutes': 'still gaining more than the seed resolution in its last third: **limited by the minutes**; more '
               'epochs in the budget (a faster step) or a longer budget would raise it',
    'generalisation': 'flat within the seed resolution in its last third while training top-1 kept climbing: '
                      '**limited by what the model generalises at this recipe**; longer runs mostly fit the training '
                      'images, so closing the bar needs stronger regularisation or augmentation, or more capacity '
                      'per minute, not more epochs',
    'plateau': 'flat within the seed resolution in its last third: more epochs of this recipe buy little',
}


def limit_lines(rows: Sequence[Dict[str, Any]]) -> List[str]:
    lines = []
    for row in rows:
        reading = _LIMIT_READINGS.get(row['limit'], row['limit'])
        fit = '' if row['train_top1_at_end'] is None else (
            f'; training top-1 (running, on augmented batches) {row["train_top1_at_start"]:.1f} -> '
            f'{row["train_top1_at_end"]:.1f} %, {row["train_minus_heldout"]:+.1f} points over held-out (raw weights)')
        lines.append(
            f'- `{row["model"]}` ({row["epochs"]} epochs, {row["train_minutes"]:.1f} min; test {row["test_top1"]:.2f} % '
            f'against a bar of {row["bar_top1"]:g} %): held-out top-1 {row["heldout_at_start"]:.2f} -> '
            f'{row["heldout_at_end"]:.2f} % over the last third ({row["last_third_from_minutes"]:.1f} min on), '
            f'{row["last_third_gain"]:+.2f} points against a seed resolution of '
            + (f'{row["resolution"]:.2f} ({row["resolution_source"]})' if row['resolution'] is not None
               else 'none measured')
            + f'{fit}; EMA minus raw weights at the end {row["ema_minus_raw"]:+.2f}. '
            + reading[0].upper() + reading[1:] + '.')
    return lines


def _plan(config: str, minutes: float, run_dir: Path, train_args: List[str],
          epochs: Optional[int] = None) -> Dict[str, Any]:
    """Epochs that fit the budget (or the ``epochs`` asked for), measured once and kept in the run folder so a
    resumed run keeps them."""
    from .budget import measure
    if epochs is not None and epochs < 1:
        raise SystemExit(f'error: --epochs must be a positive number of epochs, got {epochs}')
    path = run_dir / PLAN_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved['minutes'] != minutes or (epochs is not None and saved['epochs'] != epochs):
            raise SystemExit(f'error: {run_dir} was planned for {saved["epochs"]} epochs in {saved["minutes"]} min, '
                             f'not {epochs if epochs is not None else "what fits"} in {minutes}; '
                             'use another --runs folder or the same --minutes and --epochs')
        return saved
    row = measure(config, train_args)
    fitted = math.floor(minutes * 60 / row['train_seconds_per_epoch'])
    if epochs is None and fitted < 1:
        raise SystemExit(f'error: {minutes} min fit no epoch of {config} '
                         f'({row["train_seconds_per_epoch"]:.0f} s per epoch here)')
    plan = dict(row, minutes=minutes, epochs=epochs if epochs is not None else fitted, epochs_fitting=fitted)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_plan(run_dir, plan)
    return plan


def _write_plan(run_dir: Path, plan: Dict[str, Any]) -> None:
    atomic_write_json(run_dir / PLAN_FILE, plan)


def trained_by(row: Dict[str, Any]) -> str:
    """The commit cell: the commit, or each sitting's commit and epochs when the run spanned several."""
    sittings = row.get('sittings') or []
    if len(sittings) <= 1:
        commit = sittings[0]['git_commit'] if sittings else row['git_commit']
        return f'`{commit[:10]}`' if commit else 'not recorded'
    return ', '.join((f'`{s["git_commit"][:10]}`' if s['git_commit'] else 'not recorded')
                     + f' (epochs {s["first_epoch"]}-{s["last_epoch"]})' for s in sittings)


def _shown(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [dict(row, trained_by=trained_by(row)) for row in rows]


def with_planned_sittings(plan: Dict[str, Any], recorded: List[Dict[str, Any]],
                          next_epoch: int) -> List[Dict[str, Any]]:
    """The run's sittings, preceded by those this bench kept in its plan file before train.py recorded them
    (the run's history before its first recorded sitting, or before the epoch about to train)."""
    first = min((s['first_epoch'] for s in recorded), default=next_epoch)
    return [s for s in plan.get('sittings', []) if s['first_epoch'] < first] + list(recorded)


def _train(config: str, plan: Dict[str, Any], run_dir: Path, train_args: List[str], load: Optional[float]):
    """Train (or resume) the planned run; returns the run, its test top-1 and its sittings."""
    from .recipe import open_run
    run = open_run(run_dir, ['--config', config, '--epochs', str(plan['epochs']), *train_args])
    if load is not None:  # measured before this bench planned (and so loaded the machine)
        run.sitting['load_average_1min'] = round(load, 2)
    run.sittings = with_planned_sittings(plan, run.sittings, run.start_epoch + 1)
    try:
        run.run()
        return run, _test_top1(run), sitting_epochs(run.sittings, plan['epochs'])
    finally:
        run.close()


def _test_top1(run) -> float:
    """The finished weights (the EMA's when kept) on the test split, once, for the summary."""
    from ..data import create_eval_loader
    from ..training import evaluate
    import dataclasses
    model = run.model_ema.module if run.model_ema is not None else run.model
    spec = dataclasses.replace(run.spec, eval_subset=None)  # the whole test split, whatever the run watched
    loader = create_eval_loader(spec, 'test', run.data_config, run.args.validation_batch_size or run.args.batch_size,
                                run.ctx.device, channels_last=run.args.channels_last == 'on')
    return evaluate(model, loader, run.ctx, run.amp_dtype)['top1']


def meets_bar(row: Dict[str, Any]) -> bool:
    """Whether a run of a model with a bar reached its test top-1 within its training minutes."""
    top1, minutes = BARS[row['model']]
    return row['test_top1'] >= top1 and row['train_minutes'] <= minutes


def bar_lines(summary: Sequence[Dict[str, Any]], final: Sequence[Dict[str, Any]] = ()) -> List[str]:
    """One line per measured run of a model that has a bar (held-out runs, then whole-split final runs): the
    figure against it and the verdict."""
    lines = []
    for row in [*summary, *final]:
        if row['model'] not in BARS:
            continue
        top1, minutes = BARS[row['model']]
        met = meets_bar(row)
        split = (f'final run on all {row["train_images"]:,} training images' if row.get('whole_train_split')
                 else 'run with 5,000 images held out')
        lines.append(f'- {row["model"]} ({split}): test top-1 {row["test_top1"]:.2f} % after {row["train_minutes"]:.1f} '
                     f'training min on {row["hardware"]}; bar >= {top1:g} % within {minutes:g} min: '
                     f'**{"met" if met else "not met"}**')
    return lines


def readme_section(folder: Path = REPO_ROOT / 'results' / 'time_to_accuracy') -> str:
    """The project README's summary of this folder (scripts/update_readme.py embeds it)."""
    summary, final = _read(Path(folder), 'summary'), _read(Path(folder), 'final')
    if not summary and not final:
        return 'Not measured yet: `python -m wt_zoo.bench time-to-accuracy --minutes M CONFIG...`.'
    lines = []
    for row in summary:
        reached = ', '.join(f'{key.split("_")[-1]} % in {row[key]:.1f} min' for key in row
                            if key.startswith('minutes_to_') and row[key] is not None)
        lines.append(f'- `{row["model"]}`: {row["test_top1"]:.2f} % test top-1 ({row["heldout_top1"]:.2f} % held-out) '
                     f'after {row["train_minutes"]:.1f} training minutes, {row["epochs"]} epochs, on {row["hardware"]} '
                     f'(amp {row["amp"]}, channels_last {row["channels_last"]}); held-out top-1 reached '
                     + (reached or 'none of the levels'))
    for row in final:
        lines.append(f'- `{row["model"]}`, final run on all {row["train_images"]:,} training images (the recipe chosen '
                     f'on the held-out split, the same budget): {row["test_top1"]:.2f} % test top-1 after '
                     f'{row["train_minutes"]:.1f} training minutes, {row["epochs"]} epochs, on {row["hardware"]}')
    limits = limit_lines(limit_rows(summary, _read(Path(folder), 'curves'), recipe_resolution))
    return '\n'.join(lines + ['', 'Bars:', ''] + (bar_lines(summary, final) or ['- none measured'])
                     + (['', 'What limits them:', '', *limits] if limits else []))


def _merge(old: List[Dict[str, Any]], new: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    replaced = {row['model'] for row in new}
    return [row for row in old if row['model'] not in replaced] + new


def _read(folder: Path, name: str) -> List[Dict[str, Any]]:
    path = folder / f'{name}.json'
    return json.loads(path.read_text()) if path.is_file() else []


def _plot(curves: List[Dict[str, Any]], thresholds: Sequence[float], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for model in dict.fromkeys(row['model'] for row in curves):
        points = [r for r in curves if r['model'] == model]
        ax.plot([r['train_minutes'] for r in points], [r['heldout_top1'] for r in points], marker='o', ms=3,
                label=model)
    for level in thresholds:
        ax.axhline(level, color='0.85', lw=0.8, zorder=0)
    ax.set_xlabel('training minutes (evaluation excluded)')
    ax.set_ylabel('held-out top-1 (%)')
    ax.set_title('CIFAR-10 held-out top-1 against training time')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args, argv) -> int:
    out = Path(args.out)
    if args.configs and args.minutes is None:
        raise SystemExit('error: --minutes M (the training budget per recipe) is required with recipes; '
                         'without recipes the command only rewrites the README from the stored tables')
    load = warn_if_busy('time-to-accuracy minutes') if args.configs else None
    folder = ResultsFolder(out, 'time-to-accuracy', argv, settings=vars(args))
    if not args.configs:
        folder.keep_provenance()
    train_args = shlex.split(args.train_args)
    if args.whole_train_split:
        train_args += ['--val-split-size', '0', '--eval-subset', str(WATCH_IMAGES)]
    curves, summary, final = _read(out, 'curves'), _read(out, 'summary'), _read(out, 'final')
    for config in args.configs:
        name = Path(config).stem
        run_dir = Path(args.runs) / (f'{name}.whole' if args.whole_train_split else name)
        plan = _plan(config, args.minutes, run_dir, train_args, args.epochs)
        asked = '' if plan['epochs'] == plan.get('epochs_fitting', plan['epochs']) else \
            f' ({plan["epochs_fitting"]} would fit; the epochs were fixed with --epochs)'
        log(f'{name}: {plan["epochs"]} epochs planned for {args.minutes} min{asked} '
            f'({plan["train_seconds_per_epoch"]:.1f} s per epoch, amp {plan["amp"]}, channels_last {plan["channels_last"]})')
        trained, test_top1, sittings = _train(config, plan, run_dir, train_args, load)
        points = curve_rows(trained.args.model, trained.history)
        row = dict(model=trained.args.model, config=config, epochs=plan['epochs'], budget_minutes=args.minutes,
                   train_minutes=points[-1]['train_minutes'])
        if args.whole_train_split:  # no held-out curve: the per-epoch figures are the watched test slice's
            row.update(train_images=trained.train_loader.dataset_size, whole_train_split=True)
        else:
            row.update(heldout_top1=points[-1]['heldout_top1'])
        row.update(test_top1=round(test_top1, 3),
                   images_per_s=round(sum(p['images_per_s'] for p in points) / len(points), 1),
                   amp=trained.args.amp, channels_last=trained.args.channels_last, hardware=plan['hardware'],
                   matmul_gflops=plan.get('matmul_gflops'), run_folder=str(run_dir),
                   load_average_1min=sittings[0]['load_average_1min'],  # the first sitting's, when recorded
                   command=folder.provenance['command'], git_commit=folder.provenance['git_commit'],
                   date=folder.provenance['date'], sittings=sittings, recipe=recipe_as_run(config, trained.args))
        if args.whole_train_split:
            final = _merge(final, [row])
            folder.write_table('final', final)
            continue
        row.update({f'minutes_to_{level:g}': minutes_to_reach(points, level) for level in args.thresholds})
        curves, summary = _merge(curves, points), _merge(summary, [row])
        folder.write_table('curves', curves)
        folder.write_table('summary', summary)
    if curves:
        _plot(curves, args.thresholds, out / 'time_to_accuracy.png')
    limits = limit_rows(summary, curves, recipe_resolution)
    if limits:
        folder.write_table('limits', limits)
    columns = [Column('model', 'model'), Column('epochs', 'epochs'), Column('train_minutes', 'training min', '{:.1f}'),
               Column('heldout_top1', 'held-out top-1', '{:.2f}'), Column('test_top1', 'test top-1', '{:.2f}'),
               *[Column(f'minutes_to_{level:g}', f'min to {level:g} %', '{:.1f}') for level in args.thresholds],
               Column('images_per_s', 'train img/s', '{:.0f}'), Column('amp', 'amp'),
               Column('channels_last', 'channels_last'), Column('hardware', 'hardware'),
               Column('matmul_gflops', 'machine fp32 matmul GFLOP/s', '{:.0f}'),
               Column('load_average_1min', 'load at start', '{:.2f}'), Column('trained_by', 'commit')]
    final_columns = [Column('model', 'model'), Column('train_images', 'training images', '{:,}'),
                     Column('epochs', 'epochs'), Column('train_minutes', 'training min', '{:.1f}'),
                     Column('test_top1', 'test top-1', '{:.2f}'), Column('images_per_s', 'train img/s', '{:.0f}'),
                     Column('hardware', 'hardware'), Column('load_average_1min', 'load at start', '{:.2f}'),
                     Column('trained_by', 'commit')]
    final_section = ('## Final runs on the whole training split\n\nThe recipe, its settings chosen on the held-out '
                     'split above, trained once more on every training image under the same budget '
                     '(`--whole-train-split`); the finished weights on the test split, measured once. Each epoch '
                     f'watched {WATCH_IMAGES:,} test images for divergence only.\n\n'
                     + markdown_table(_shown(final), final_columns)
                     if final else '')
    held_out_section = [
        'Held-out top-1 (5,000 images held out of the CIFAR-10 training split; the EMA\'s figure where the recipe '
        'keeps one) against cumulative training minutes, evaluation excluded. Test top-1 is the finished '
        'weights on the test split, measured once. Each row names the command and commit that made it (a run resumed '
        'over several sittings: each sitting\'s commit and epochs; "not recorded" for sittings before the bench '
        'recorded them), and the load when its first sitting started; a blank "min to" cell means the run never '
        'reached that level.',
        markdown_table(_shown(summary), columns), '![time to accuracy](time_to_accuracy.png)'] if summary else []
    limits_section = ('## What limits the bars\n\nEach held-out run with a bar, read from its own curve: what the last '
                      'third of its training minutes bought on the held-out split, against the seed resolution of '
                      'the recipe it ran (as `python -m wt_zoo.bench claims` judges one-run figures: the fast '
                      f'recipe\'s, measured over seeds in `results/{FAST_RECIPE_ABLATION}`, when the run shares its '
                      'settings, else borrowed), beside how far it kept fitting its training batches (limits.csv).'
                      '\n\n' + '\n'.join(limit_lines(limits))) if limits else ''
    folder.finish('Time to accuracy', [*held_out_section, *filter(None, [final_section]),
        '## Bars\n\n' + ('\n'.join(bar_lines(summary, final)) or 'No model with a bar measured yet.'),
        *filter(None, [limits_section])])
    return 0


def recipe_resolution(row: Dict[str, Any]) -> Tuple[Optional[float], str]:
    """The seed resolution ``bench claims`` gives a one-run figure of this row's recipe, and its source."""
    return resolution_and_source(Sources(), row_recipe(row))
