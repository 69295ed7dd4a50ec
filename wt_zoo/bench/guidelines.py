"""``guidelines``: write docs/guidelines.md from the measured sweep (and stability/efficiency when present).

Every number in the document is read from the results folders, and every claim names the figure
or table it rests on; rerun the generator after rerunning the sweep rather than editing the
document. Comparisons are worded against a resolution: twice the seed-to-seed standard deviation
of held-out accuracy pooled over the sweep's configurations when it ran two or more seeds, else
that of WT measured by ``stability`` (at the learning rate nearest the sweep's), else an assumed
1 point, which the document then says.
"""
import argparse
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..training import atomic_write_text
from .common import Column, log, markdown_table, read_table, stopped_early
from .recipe import sweep_regime
from .stability import solver_trend
from .sweep import pareto_front

__all__ = ['add_arguments', 'run', 'generate', 'equal_flop_groups']

ASSUMED_RESOLUTION = 1.0
FLOP_MATCH = 0.15  # configurations whose effective FLOPs differ by at most 15% count as equal-FLOP


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--sweep-results', default='results/sweep', help='sweep results folder (default: %(default)s)')
    parser.add_argument('--stability-results', default='results/stability',
                        help='stability results folder, used when present (default: %(default)s)')
    parser.add_argument('--efficiency-results', default='results/efficiency',
                        help='efficiency results folder, used when present (default: %(default)s)')
    parser.add_argument('--previous-sweep', default=None, metavar='DIR',
                        help='an earlier sweep of the same grid at another regime (e.g. results/sweep, the short '
                             'one): the document then says how each ranking and rule moved between the regimes')
    parser.add_argument('--previous-stability-results', default=None, metavar='DIR',
                        help="stability results at the earlier sweep's regime, for that sweep's resolution when it ran "
                             'one seed (default: none; a stability run at another regime says nothing about its noise)')
    parser.add_argument('--out', default='docs/guidelines.md', help='document to write (default: %(default)s)')


def _load_optional(folder: Path, name: str) -> Optional[List[Dict[str, Any]]]:
    try:
        return read_table(folder, name)
    except FileNotFoundError:
        return None


def _run_info(folder: Path) -> Dict[str, Any]:
    path = folder / 'run.json'
    return json.loads(path.read_text()) if path.is_file() else {}


def _partial_note(sweep_run: Dict[str, Any]) -> str:
    """A sweep that --stop-after ended before its last run: every rule stands on the runs so far."""
    stopped = stopped_early(sweep_run)
    if stopped is None:
        return ''
    done, planned = stopped
    return (f' **Partial: {done} of {planned} runs finished**; configurations with fewer seeds than the others are '
            'noisier than the resolution below says, and the rules may move when the sweep is complete.')


def _pct(v: float) -> str:
    return f'{v:.1f}%'


def _pts(v: float) -> str:
    return f'{v:+.1f} points'


def _compare(delta: float, tol: float) -> str:
    if abs(delta) < tol:
        return f'no resolvable difference ({_pts(delta)}, resolution {tol:.1f})'
    return f"{'better' if delta > 0 else 'worse'} by {abs(delta):.1f} points"


def equal_flop_groups(rows: List[Dict[str, Any]], tolerance: float = FLOP_MATCH) -> List[List[Dict[str, Any]]]:
    """Groups of configurations whose effective FLOPs exceed the group's cheapest by at most ``tolerance``."""
    ordered = sorted(rows, key=lambda r: r['effective_gflops'])
    groups: List[List[Dict[str, Any]]] = []
    for row in ordered:
        if groups and row['effective_gflops'] <= groups[-1][0]['effective_gflops'] * (1 + tolerance):
            groups[-1].append(row)
        else:
            groups.append([row])
    return [g for g in groups if len(g) > 1]


class _Figures:
    """Numbered figures with paths relative to the document."""

    def __init__(self, doc: Path):
        self.doc = doc
        self.items: List[Tuple[str, str, str]] = []  # (id, title, relative path)

    def add(self, path: Path, title: str) -> Optional[str]:
        if not path.is_file():
            return None
        fig_id = f'Figure {len(self.items) + 1}'
        self.items.append((fig_id, title, os.path.relpath(path.resolve(), self.doc.parent.resolve())))
        return fig_id

    def ref(self, fig_id: Optional[str]) -> str:
        if fig_id is None:
            return '(figure missing)'
        anchor = fig_id.lower().replace(' ', '-')
        return f'([{fig_id}](#{anchor}))'

    def markdown(self) -> str:
        parts = []
        for fig_id, title, rel in self.items:
            parts.append(f'### {fig_id}\n\n{title}\n\n![{title}]({rel})')
        return '\n\n'.join(parts)


def _readme_link(folder: Path, out: Path) -> str:
    """A results folder's README as a relative link from the document ``out``, wherever either lives."""
    return os.path.relpath((folder / 'README.md').resolve(), out.parent.resolve())


def _stability_source(folder: Optional[Path], out: Path) -> Tuple[Optional[List[Dict[str, Any]]], str]:
    """A stability folder's summary rows (None when absent) and its README's link from the document ``out``."""
    if folder is None:
        return None, ''
    return _load_optional(folder, 'summary'), _readme_link(folder, out)


def _resolution(stability: Optional[List[Dict[str, Any]]], sweep_lr: Optional[float], link: str,
                sweep_run: Optional[Dict[str, Any]] = None) -> Tuple[float, str]:
    """The sweep's own seed spread when it ran two or more seeds, else the stability benchmark's, else assumed."""
    std = (sweep_run or {}).get('seed_std_pooled')
    if std is not None:
        seeds = (sweep_run or {}).get('settings', {}).get('seeds') or []
        return max(2 * std, 0.1), (f"twice the seed-to-seed standard deviation of held-out top-1 pooled over the sweep's "
                                   f"configurations (seeds {', '.join(map(str, seeds))}; std {std:.2f} points)")
    if stability:
        wt = [r for r in stability if r.get('family') == 'wt' and r.get('top1_std') is not None and r.get('runs', 0) > 1]
        if wt:
            best = min(wt, key=lambda r: abs(r['lr'] - (sweep_lr or r['lr'])))
            tol = max(2 * best['top1_std'], 0.1)
            return tol, (f"twice the seed-to-seed standard deviation of WT held-out accuracy measured by the stability "
                         f"benchmark at lr {best['lr']:g} ({best['runs']} seeds, std {best['top1_std']:.2f} points; "
                         f"[stability results]({link}))")
    return ASSUMED_RESOLUTION, (f'an assumed {ASSUMED_RESOLUTION:.1f} point: seed noise was not measured (run '
                                '`python -m wt_zoo.bench stability`, then regenerate)')


def _runs(sweep_dir: Path) -> List[Dict[str, Any]]:
    """The sweep's per-run table (each run's lr, among others); empty for a folder that has none."""
    return read_table(sweep_dir, 'runs') if (Path(sweep_dir) / 'runs.json').is_file() else []


def _finished(sweep_dir: Path) -> List[Dict[str, Any]]:
    rows = [r for r in read_table(sweep_dir, 'sweep') if r.get('status') == 'ok' and r.get('held_out_top1') is not None]
    if not rows:
        raise ValueError(f'{sweep_dir}/sweep.json holds no finished configuration')
    return rows


def _depth_saturations(dense: List[Dict[str, Any]], tol: float) -> List[Tuple[int, Dict[str, Any], Dict[str, Any],
                                                                              List[Dict[str, Any]]]]:
    """Per width with two or more depths: (width, smallest depth within ``tol`` of the best, best, the line)."""
    out = []
    for width in sorted({r['width'] for r in dense}):
        line = sorted((r for r in dense if r['width'] == width), key=lambda r: r['depth'])
        if len(line) < 2:
            continue
        best = max(line, key=lambda r: r['held_out_top1'])
        enough = next(r for r in line if r['held_out_top1'] >= best['held_out_top1'] - tol)
        out.append((width, enough, best, line))
    return out


def _budget_rows(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per parameter count: the best configuration at exactly that count and the best at or below it."""
    budget_rows = []
    for p in sorted({r['params'] for r in rows}):
        at = max((r for r in rows if r['params'] == p), key=lambda r: r['held_out_top1'])
        within = max((r for r in rows if r['params'] <= p), key=lambda r: r['held_out_top1'])
        budget_rows.append(dict(params=p, width=at['width'], at=at['label'], at_top1=at['held_out_top1'],
                                within=within['label'], within_top1=within['held_out_top1']))
    return budget_rows


def _density_lines(masked: List[Dict[str, Any]], dense: List[Dict[str, Any]]) -> List[Tuple[int, int, Dict[str, Any],
                                                                                             List[Dict[str, Any]]]]:
    """Per masked depth with a dense twin: (depth, width, dense twin, unstructured distinct masks by density)."""
    out = []
    for depth in sorted({r['depth'] for r in masked}):
        width = next(r['width'] for r in masked if r['depth'] == depth)
        base = next((r for r in dense if r['depth'] == depth and r['width'] == width), None)
        line = sorted((r for r in masked if r['depth'] == depth and r['mask_kind'] == 'unstructured'
                       and r['mask_mode'] == 'distinct'), key=lambda r: r['mask_density'])
        if base is not None:
            out.append((depth, width, base, line))
    return out


def _best_densities(masked: List[Dict[str, Any]], dense: List[Dict[str, Any]]) -> List[Tuple[int, Dict[str, Any],
                                                                                               Dict[str, Any]]]:
    """Per masked depth with a dense twin: (depth, dense twin, best unstructured distinct density)."""
    return [(depth, base, max(line, key=lambda r: r['held_out_top1']))
            for depth, _, base, line in _density_lines(masked, dense) if line]


def _ranks(values: List[float]) -> List[float]:
    """Rank 1 for the highest value; ties share their mean rank."""
    order = sorted(range(len(values)), key=lambda i: -values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def rank_correlation(a: List[float], b: List[float]) -> Optional[float]:
    """Spearman's rho: how far two regimes order the same configurations alike (1 same order, -1 reversed)."""
    if len(a) != len(b) or len(a) < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    mean = (len(a) + 1) / 2
    cov = sum((x - mean) * (y - mean) for x, y in zip(ra, rb))
    var_a, var_b = sum((x - mean) ** 2 for x in ra), sum((y - mean) ** 2 for y in rb)
    return cov / (var_a * var_b) ** 0.5 if var_a and var_b else None


def _moved(before: Any, now: Any) -> str:
    return 'unchanged' if before == now else 'moved'


def _regime_shift(rows: List[Dict[str, Any]], tol: float, previous_dir: Path, out: Path,
                  previous_stability_dir: Optional[Path]) -> Tuple[List[str], str]:
    """The section comparing this sweep with an earlier one of the same grid at another regime, and its summary.

    The earlier sweep's resolution comes from its own seeds or from a stability run at its regime, never from this
    regime's: seed noise after 2 epochs is several times that after 15.
    """
    before_rows = _finished(previous_dir)
    before_run = _run_info(previous_dir)
    before_settings = before_run.get('settings', {})
    stability, stab_rel = _stability_source(previous_stability_dir, out)
    before_tol, before_tol_source = _resolution(stability, before_settings.get('lr'), stab_rel, before_run)
    rel = _readme_link(previous_dir, out)
    by_config = {r['config']: r for r in before_rows}
    shared = [r for r in rows if r['config'] in by_config]
    section = ['## How the choices moved from the earlier regime',
               f'The earlier sweep ([table]({rel})) ran the same grid at '
               f'{sweep_regime(before_settings, _runs(previous_dir))} '
               f'(resolution {before_tol:.1f} points: {before_tol_source}); it is kept only for this comparison, '
               'and every rule above comes from this regime.']
    if not shared:
        section.append('No configuration finished in both sweeps yet.')
        return section, 'Regimes: no configuration finished in both sweeps yet.'
    before_top1 = [by_config[r['config']]['held_out_top1'] for r in shared]
    now_top1 = [r['held_out_top1'] for r in shared]
    before_rank, now_rank = _ranks(before_top1), _ranks(now_top1)
    table = [dict(label=r['label'], before=b, before_rank=rb, now=n, now_rank=rn, change=rb - rn)
             for r, b, n, rb, rn in zip(shared, before_top1, now_top1, before_rank, now_rank)]
    section.append(markdown_table(table, [
        Column('label', 'configuration'), Column('before', 'earlier top-1', _pct),
        Column('before_rank', 'rank', '{:g}'), Column('now', 'this regime top-1', _pct),
        Column('now_rank', 'rank', '{:g}'), Column('change', 'ranks gained', '{:+g}')]))
    rho = rank_correlation(before_top1, now_top1)
    order = (f"Spearman's rank correlation between the regimes over the {len(shared)} configurations in both: "
             f'**{rho:.2f}** (1: same order, 0: unrelated)' if rho is not None
             else f'{len(shared)} configurations in both: too few for a rank correlation')
    section.append(order + '.')
    moves = []
    best_before = max(shared, key=lambda r: by_config[r['config']]['held_out_top1'])
    best_now = max(shared, key=lambda r: r['held_out_top1'])
    moves.append(f"- best configuration: earlier {best_before['label']}, now {best_now['label']} "
                 f"({_moved(best_before['config'], best_now['config'])}).")
    shared_before = [by_config[r['config']] for r in shared]
    depth_before = {w: e['depth'] for w, e, _, _ in _depth_saturations(
        [r for r in shared_before if r['family'] == 'wt'], before_tol)}
    depth_moves = depth_compared = 0
    for width, enough, _, _ in _depth_saturations([r for r in shared if r['family'] == 'wt'], tol):
        if width in depth_before:
            depth_compared += 1
            depth_moves += depth_before[width] != enough['depth']
            moves.append(f"- width {width}: smallest depth within the resolution of the best, earlier "
                         f"{depth_before[width]}, now {enough['depth']} "
                         f"({_moved(depth_before[width], enough['depth'])}).")
    budgets = [_budget_rows(x) for x in (shared_before, shared)]
    widest = [sum(b['within'] == b['at'] for b in rows_) for rows_ in budgets]
    moves.append(f'- parameter budgets whose best model uses the largest width that fits: earlier {widest[0]}, now '
                 f'{widest[1]} of {len(budgets[1])} ({_moved(*widest)}).')
    density_before = {d: (b, best) for d, b, best in _best_densities(
        [r for r in shared_before if r['family'] == 'wtsm'], [r for r in shared_before if r['family'] == 'wt'])}
    for depth, base, best in _best_densities([r for r in shared if r['family'] == 'wtsm'],
                                            [r for r in shared if r['family'] == 'wt']):
        if depth in density_before:
            b_base, b_best = density_before[depth]
            moves.append(f"- depth {depth}: best mask density earlier {b_best['mask_density']:g} "
                         f"({_compare(b_best['held_out_top1'] - b_base['held_out_top1'], before_tol)} against dense), "
                         f"now {best['mask_density']:g} "
                         f"({_compare(best['held_out_top1'] - base['held_out_top1'], tol)} against dense) "
                         f"({_moved(b_best['mask_density'], best['mask_density'])}).")
    section.append('What each choice was in the earlier regime and in this one, over the configurations in both:')
    section += moves
    summary = (f'Regimes: against the earlier sweep, rank correlation {rho:.2f} over {len(shared)} configurations'
               if rho is not None else f'Regimes: {len(shared)} configurations in both sweeps')
    summary += ('; the best configuration '
                f"{'stayed' if best_before['config'] == best_now['config'] else 'changed'}, "
                f'and the depth choice moved at {depth_moves} of {depth_compared} widths '
                '(see "How the choices moved").')
    return section, summary


def generate(sweep_dir: Path, out: Path, stability_dir: Optional[Path] = None,
             efficiency_dir: Optional[Path] = None, previous_dir: Optional[Path] = None,
             previous_stability_dir: Optional[Path] = None) -> str:
    """The guidelines document as markdown, from the results folders."""
    rows_all = read_table(sweep_dir, 'sweep')
    rows = _finished(sweep_dir)
    sweep_run = _run_info(sweep_dir)
    settings = sweep_run.get('settings', {})
    stability, stab_rel = _stability_source(stability_dir, out)
    efficiency = _load_optional(efficiency_dir, 'efficiency') if efficiency_dir else None
    bars = _load_optional(efficiency_dir, 'bars') if efficiency_dir else None
    tol, tol_source = _resolution(stability, settings.get('lr'), stab_rel, sweep_run)

    figs = _Figures(out)
    f_depth = figs.add(sweep_dir / 'sweep_depth.png', 'Dense WT: held-out accuracy vs depth, one line per width '
                                                      '(equal parameters along each line).')
    f_width = figs.add(sweep_dir / 'sweep_width.png', 'Dense WT: held-out accuracy vs width, one line per depth.')
    f_density = figs.add(sweep_dir / 'sweep_density.png', 'Sparse masks: held-out accuracy vs mask density at fixed '
                                                          'depth and width (equal parameters; density 1 is dense).')
    f_params = figs.add(sweep_dir / 'sweep_params.png', 'Every configuration: accuracy vs parameters, with the '
                                                        'best-at-or-below-budget front.')
    f_flops = figs.add(sweep_dir / 'sweep_flops.png', 'Every configuration: accuracy vs effective FLOPs, with the '
                                                      'best-at-or-below-budget front.')
    f_stab_acc = figs.add(stability_dir / 'stability_accuracy.png', 'Stability: final held-out accuracy per seed and '
                                                                    'learning rate, WT vs DEQ.') if stability else None
    f_stab_deq = figs.add(stability_dir / 'stability_solver.png', 'Stability: DEQ solver iterations and residual '
                                                                  'over training.') if stability else None

    dense = [r for r in rows if r['family'] == 'wt']
    masked = [r for r in rows if r['family'] == 'wtsm']
    rel_sweep = _readme_link(sweep_dir, out)
    table_ref = f'([sweep table]({rel_sweep}))'
    out_lines: List[str] = []
    summary: List[str] = []

    # --- parameter budget
    budget_rows = _budget_rows(rows)
    widest_wins = sum(1 for b in budget_rows if b['within'] == b['at'])
    section = ['## Choosing for a parameter budget',
               f'Parameters are set by width alone (depth and masks add none). For each parameter count in the sweep, '
               f'the best configuration at exactly that count and the best at or below it {figs.ref(f_params)}:',
               markdown_table(budget_rows, [
                   Column('params', 'params (M)', lambda v: f'{v / 1e6:.3f}'), Column('width', 'width'),
                   Column('at', 'best at these parameters'), Column('at_top1', 'top-1', _pct),
                   Column('within', 'best at or below'), Column('within_top1', 'top-1', _pct)])]
    if widest_wins == len(budget_rows):
        rule = ('spend a parameter budget on width first: at every budget, the best model within it uses the largest '
                'width that fits')
    else:
        rule = (f'at {widest_wins} of {len(budget_rows)} parameter budgets the best model within the budget uses the '
                'largest width that fits; at the others a narrower model is better (see the table)')
    section.append(f'Rule: {rule} {figs.ref(f_params)}.')
    summary.append(f'Parameter budget: {rule} {figs.ref(f_params)}.')
    out_lines += section

    # --- FLOP budget
    front = pareto_front(rows, 'effective_gflops')
    section = ['## Choosing for a FLOP budget',
               'The configurations no cheaper configuration beats, by effective GFLOPs per image (fvcore, masked convs '
               f'scaled by density). For a budget B, take the last row at or below B {figs.ref(f_flops)}:',
               markdown_table(front, [
                   Column('effective_gflops', 'effective GFLOPs', '{:.4f}'), Column('label', 'configuration'),
                   Column('params', 'params (M)', lambda v: f'{v / 1e6:.3f}'),
                   Column('held_out_top1', 'top-1', _pct)])]
    masked_on_front = [r for r in front if r['family'] == 'wtsm']
    if masked_on_front:
        rule = (f"{len(masked_on_front)} of the {len(front)} best-per-FLOP configurations use sparse masks "
                f"({', '.join(r['label'] for r in masked_on_front)})")
    else:
        rule = 'no sparse-mask configuration is on the accuracy-per-FLOP front: at equal effective FLOPs a dense WT model was at least as accurate'
    section.append(f'{rule[0].upper() + rule[1:]} {figs.ref(f_flops)}.')
    summary.append(f'FLOP budget: take the last row of the front at or below the budget; {rule} {figs.ref(f_flops)}.')
    out_lines += section

    # --- depth at equal parameters
    section = ['## Depth (at equal parameters)',
               'Depth adds iterations, not parameters: FLOPs grow linearly with it. Held-out top-1 by depth, per width '
               f'{figs.ref(f_depth)}:']
    depth_claims = []
    saturations = []
    for width, enough, best, line in _depth_saturations(dense, tol):
        saturations.append((width, enough['depth'], line[-1]['depth']))
        steps = ', '.join(f"depth {a['depth']}→{b['depth']}: {_pts(b['held_out_top1'] - a['held_out_top1'])}"
                          for a, b in zip(line, line[1:]))
        depth_claims.append(f"- width {width}: {steps}; the smallest depth within the resolution of the best "
                            f"({_pct(best['held_out_top1'])} at depth {best['depth']}) is **{enough['depth']}** "
                            f"{figs.ref(f_depth)}.")
    section += depth_claims
    if saturations:
        if all(s[1] == s[2] for s in saturations):
            rule = ('every width still gained from its deepest setting: the largest depth tried is the choice, and '
                    'deeper settings are untested')
        else:
            rule = ('beyond depth ' + ', '.join(f'{d} at width {w}' for w, d, _ in saturations) +
                    ' more iterations bought no resolvable accuracy in this regime; choose the smallest such depth to '
                    'save FLOPs')
        section.append(f'Rule: {rule} {figs.ref(f_depth)}.')
        summary.append(f'Depth: {rule} {figs.ref(f_depth)}.')
    out_lines += section

    # --- width
    section = ['## Width', f'Held-out top-1 by width, per depth {figs.ref(f_width)}:']
    for depth in sorted({r['depth'] for r in dense}):
        line = sorted((r for r in dense if r['depth'] == depth), key=lambda r: r['width'])
        if len(line) < 2:
            continue
        steps = ', '.join(f"width {a['width']}→{b['width']} ({a['params'] / 1e6:.2f}M→{b['params'] / 1e6:.2f}M params): "
                          f"{_pts(b['held_out_top1'] - a['held_out_top1'])}" for a, b in zip(line, line[1:]))
        section.append(f'- depth {depth}: {steps} {figs.ref(f_width)}.')
    out_lines += section

    # --- equal FLOPs
    groups = equal_flop_groups(rows)
    section = ['## At equal FLOPs: deeper and narrower, or shallower and wider?',
               f'Configurations whose effective FLOPs differ by at most {100 * FLOP_MATCH:.0f}% '
               f'{figs.ref(f_flops)}:']
    deeper_wins = comparisons = 0
    for group in groups:
        group = sorted(group, key=lambda r: -r['held_out_top1'])
        top = group[0]
        members = '; '.join(f"{r['label']} ({r['effective_gflops']:.4f} GFLOPs, {r['params'] / 1e6:.2f}M params): "
                            f"{_pct(r['held_out_top1'])}" for r in group)
        verdicts = []
        for other in group[1:]:
            verdicts.append(f"{top['label']} vs {other['label']}: {_compare(top['held_out_top1'] - other['held_out_top1'], tol)}")
        section.append(f'- {members}. {"; ".join(verdicts)} {figs.ref(f_flops)}.')
        dense_group = [r for r in group if r['family'] == 'wt']
        for i, a in enumerate(dense_group):
            for b in dense_group[i + 1:]:
                if a['depth'] != b['depth'] and abs(a['held_out_top1'] - b['held_out_top1']) >= tol:
                    comparisons += 1
                    deeper, shallower = (a, b) if a['depth'] > b['depth'] else (b, a)
                    deeper_wins += deeper['held_out_top1'] > shallower['held_out_top1']
    if not groups:
        section.append('No two configurations of the sweep have matching FLOPs; add e.g. `--dense-extra 16x32` '
                       '(16 x 32² = 4 x 64²).')
    elif comparisons:
        rule = (f'in {deeper_wins} of {comparisons} resolvable equal-FLOP comparisons between dense models the deeper, '
                f'narrower one was more accurate')
        section.append(f'Rule: {rule} {figs.ref(f_flops)}.')
        summary.append(f'Equal FLOPs: {rule} {figs.ref(f_flops)}.')
    else:
        section.append(f'No equal-FLOP pair of dense models differs by more than the resolution {figs.ref(f_flops)}.')
    out_lines += section

    # --- sparsity
    if masked:
        section = ['## Sparse masks: density, kind and mode',
                   f'At fixed depth and width (so at equal parameters), against the dense model of the same depth and '
                   f'width {figs.ref(f_density)}:']
        for depth, width, base, line in _density_lines(masked, dense):
            parts = [f"density {r['mask_density']:g}: {_pct(r['held_out_top1'])} "
                     f"({_compare(r['held_out_top1'] - base['held_out_top1'], tol)}, "
                     f"{r['effective_gflops'] / base['gflops']:.2f}x the FLOPs)" for r in line]
            section.append(f"- depth {depth}, width {width}, dense {_pct(base['held_out_top1'])}: " + '; '.join(parts)
                           + f' {figs.ref(f_density)}.')
            for r in masked:
                if r['depth'] == depth and (r['mask_kind'] != 'unstructured' or r['mask_mode'] != 'distinct'):
                    ref = next((x for x in line if x['mask_density'] == r['mask_density']), None)
                    if ref is not None:
                        section.append(
                            f"- depth {depth}, density {r['mask_density']:g}, {r['mask_kind']} {r['mask_mode']} masks: "
                            f"{_pct(r['held_out_top1'])}, against unstructured distinct: "
                            f"{_compare(r['held_out_top1'] - ref['held_out_top1'], tol)} {figs.ref(f_density)}.")
        # equal effective FLOPs: a masked model against the dense model nearest in effective FLOPs
        pairs = []
        for r in masked:
            candidates = [d for d in dense if max(d['effective_gflops'], r['effective_gflops'])
                          <= (1 + FLOP_MATCH) * min(d['effective_gflops'], r['effective_gflops'])]
            if candidates:
                d = min(candidates, key=lambda d: abs(d['effective_gflops'] - r['effective_gflops']))
                pairs.append(f"{r['label']} ({r['effective_gflops']:.4f} GFLOPs) vs dense {d['label']} "
                             f"({d['effective_gflops']:.4f}): {_compare(r['held_out_top1'] - d['held_out_top1'], tol)}")
        if pairs:
            section.append(f'At equal effective FLOPs (at most {100 * FLOP_MATCH:.0f}% apart), masked against dense '
                           f'{figs.ref(f_flops)}:\n\n' + '\n'.join(f'- {p}.' for p in pairs))
        best_gains = [(depth, best, best['held_out_top1'] - base['held_out_top1'])
                      for depth, base, best in _best_densities(masked, dense)]
        if best_gains:
            rule = '; '.join(f"at depth {d} the best density tried is {b['mask_density']:g}, against dense at equal "
                             f"parameters: {_compare(g, tol)}" for d, b, g in best_gains)
            section.append(f'Rule: {rule} {figs.ref(f_density)}.')
            summary.append(f'Sparsity: {rule} {figs.ref(f_density)}.')
        out_lines += section

    # --- cost and stability, when measured
    if efficiency or bars:
        section = ['## Cost of each choice (efficiency benchmark)']
        eff_rel = _readme_link(efficiency_dir, out)
        if efficiency:
            cpu = [r for r in efficiency if r['device'] == 'cpu']
            batches = sorted(int(k[len('infer_b'):-len('_img_s_vs_wt')]) for r in cpu for k in r
                             if k.startswith('infer_b') and k.endswith('_img_s_vs_wt'))
            key = f'infer_b{batches[-1]}_img_s_vs_wt' if batches else None
            for r in cpu:
                if r['family'] in ('wtsm', 'deq') and key and r.get(key):
                    section.append(f"- {r['model']}: inference (batch {batches[-1]}) {r[key]:.2f}x, training "
                                   f"{r.get('train_img_s_vs_wt', float('nan')):.2f}x the images/s of its dense WT twin; "
                                   f"peak training memory {r.get('train_mem_mb_vs_wt', float('nan')):.2f}x "
                                   f"([efficiency]({eff_rel})).")
        if bars:
            judged = [b for b in bars if b.get('passed') is not None]
            passed = sum(bool(b['passed']) for b in judged)
            summary.append(f'Cost: {passed} of {len(judged)} performance-bar checks pass on the efficiency run '
                           f'([efficiency]({eff_rel})); see "Cost of each choice" below.')
            for b in bars:
                verdict = {True: 'pass', False: 'FAIL', None: 'n/a'}[b.get('passed')]
                section.append(f"- bar {b['bar']}, {b['subject']}: {b['figure']} ({verdict}) ([efficiency]({eff_rel})).")
        out_lines += section
    if stability:
        section = ['## Stability (WT vs DEQ twins)']
        for r in stability:
            text = f"- {r['model']}, lr {r['lr']:g}: {r['diverged']} of {r['runs']} runs diverged"
            if r.get('top1_mean') is not None:
                text += f"; held-out top-1 {r['top1_mean']:.1f}"
                if r.get('top1_std') is not None:
                    text += f" ± {r['top1_std']:.1f}"
            trend = solver_trend(r)
            if trend is not None:
                text += f"; DEQ solver iterations {trend[0]:.1f} → {trend[1]:.1f} over training"
            section.append(text + f' {figs.ref(f_stab_acc)} ([stability]({stab_rel})).')
        if f_stab_deq:
            section.append(f'Solver iterations over training: {figs.ref(f_stab_deq)}.')
        out_lines += section
    if previous_dir is not None:
        section, line = _regime_shift(rows, tol, previous_dir, out, previous_stability_dir)
        out_lines += section
        summary.append(line)

    short_regime = (settings.get('epochs') or 0) <= 2 or bool(settings.get('train_subset'))
    header = [
        '# Choosing depth, width and sparsity for weight-tied models',
        f"<!-- generated by `python -m wt_zoo.bench guidelines` from {sweep_dir}; do not edit, regenerate -->",
        f"Every number below is measured by the zoo's sweep {table_ref} and read from its results by "
        '`python -m wt_zoo.bench guidelines`; every claim points at its figure.',
        f"- sweep: `{sweep_run.get('command', '?')}`, {sweep_run.get('date', '?')}, commit "
        f"`{sweep_run.get('git_commit', '?')}`, on {sweep_run.get('machine', {}).get('cpu_model', '?')}",
        f'- regime: {sweep_regime(settings, _runs(sweep_dir))}.' + (
            ' This is a short-budget regime: the ranking of choices can change with longer training.'
            if short_regime else '') + _partial_note(sweep_run),
        f'- resolution: differences under {tol:.1f} points are treated as no difference; that is {tol_source}.',
        '## Summary',
        '\n'.join(f'{i + 1}. {s}' for i, s in enumerate(summary)),
    ]
    all_cols = [Column('label', 'configuration'), Column('params', 'params (M)', lambda v: f'{v / 1e6:.3f}'),
                Column('effective_gflops', 'effective GFLOPs', '{:.4f}'), Column('held_out_top1', 'top-1', _pct)]
    if any('seeds' in r for r in rows_all):
        all_cols.append(Column('seeds', 'seeds'))
    all_cols.append(Column('status', 'status'))
    footer = ['## Figures', figs.markdown(), '## Every configuration', markdown_table(rows_all, all_cols)]
    return _join(header + out_lines + footer) + '\n'


def _join(blocks: List[str]) -> str:
    """Blocks separated by blank lines, except consecutive list items, which stay one tight list."""
    text = ''
    for i, block in enumerate(blocks):
        if i:
            tight = block.startswith('- ') and blocks[i - 1].startswith('- ')
            text += '\n' if tight else '\n\n'
        text += block
    return text


def run(args, argv: Sequence[str]) -> int:
    sweep_dir = Path(args.sweep_results)
    if not (sweep_dir / 'sweep.json').is_file():
        raise SystemExit(f'error: no sweep results at {sweep_dir} (sweep.json missing); run '
                         '`python -m wt_zoo.bench sweep` first')
    out = Path(args.out)
    stability_dir = Path(args.stability_results) if args.stability_results else None
    efficiency_dir = Path(args.efficiency_results) if args.efficiency_results else None
    previous_dir = Path(args.previous_sweep) if args.previous_sweep else None
    if previous_dir is not None and not (previous_dir / 'sweep.json').is_file():
        raise SystemExit(f'error: --previous-sweep {previous_dir} holds no sweep.json; give a folder written by '
                         '`python -m wt_zoo.bench sweep`')
    previous_stability_dir = Path(args.previous_stability_results) if args.previous_stability_results else None
    if previous_stability_dir is not None and previous_dir is None:
        raise SystemExit('error: --previous-stability-results gives the resolution of --previous-sweep; give both')
    if previous_stability_dir is not None and not (previous_stability_dir / 'summary.json').is_file():
        raise SystemExit(f'error: --previous-stability-results {previous_stability_dir} holds no summary.json; give a '
                         'folder written by `python -m wt_zoo.bench stability`')
    try:
        text = generate(sweep_dir, out, stability_dir, efficiency_dir, previous_dir, previous_stability_dir)
    except ValueError as e:
        raise SystemExit(f'error: {e}')
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    log(f'wrote {out}')
    return 0
