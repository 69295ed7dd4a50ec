"""What every bench subcommand shares: model specs, the results folder and its provenance, progress lines.

A results folder holds, for each table, ``<table>.csv`` and ``<table>.json`` (the same rows), a
``README.md`` with the markdown tables, plots and the provenance, and ``run.json`` with the
provenance alone (exact command, machine, date, git commit), so any figure can be traced to the
run that made it and that run can be repeated.
"""
import datetime as _dt
import functools
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch


from ..training import (atomic_write_json, atomic_write_text, cpu_model, git_commit, parse_kwargs_value, plain,
                        write_results)

__all__ = [
    'REPO_ROOT', 'FAST_RECIPE_ABLATION', 'ModelSpec', 'parse_model_specs', 'ResultsFolder', 'Column', 'markdown_table', 'machine_info',
    'git_commit', 'file_at_commit', 'log', 'warn_if_busy', 'Progress', 'partial_section', 'read_table',
]

# The fast recipe's seed-to-seed spread, measured by `bench ablation` over seeds (results/<this>/run.json): what
# one-run figures of that recipe are read against (claims, time-to-accuracy's limits).
FAST_RECIPE_ABLATION = 'ablation/fast_recipe_tiny'
REPO_ROOT = Path(__file__).resolve().parents[2]

# Arguments that shape the architecture and so carry over from a model to its dense weight-tied twin;
# everything else (mask_*, solver settings) is family-specific.
ARCH_KWARGS = ('width', 'num_stages', 'num_branches', 'stem_stride', 'norm_groups', 'depth', 'num_classes', 'in_chans')


@dataclass(frozen=True)
class ModelSpec:
    """A registered zoo model plus keyword overrides, written ``name`` or ``name:key=value,key=value``."""
    name: str
    kwargs: Tuple[Tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        if not self.kwargs:
            return self.name
        return self.name + ':' + ','.join(f'{k}={v}' for k, v in self.kwargs)

    @property
    def family(self) -> str:
        """'wt', 'wtsm' or 'deq' (``mdeq_*`` is the multi-resolution family's DEQ)."""
        from .. import zoo_family
        return zoo_family(self.name)[0]

    @property
    def architecture(self) -> str:
        from .. import zoo_family
        return zoo_family(self.name)[1]

    @property
    def size(self) -> str:
        return self.name.rsplit('_', 1)[-1]

    @property
    def unrolled(self) -> bool:
        return self.family in ('wt', 'wtsm')

    def kwargs_dict(self) -> Dict[str, Any]:
        return dict(self.kwargs)

    def create(self, device: str = 'cpu', **extra) -> torch.nn.Module:
        import timm
        import wt_zoo  # noqa: F401  registers the zoo
        return timm.create_model(self.name, **{**self.kwargs_dict(), **extra}).to(device)

    def depth(self) -> Optional[int]:
        """Unrolled iterations per stage (None for a DEQ, which solves)."""
        if not self.unrolled:
            return None
        from ..models import MDEQ_SIZES, MODEL_SIZES
        sizes = MDEQ_SIZES if self.architecture == 'mdeq' else MODEL_SIZES
        return int(self.kwargs_dict().get('depth', sizes[self.size]['depth']))

    def twin(self) -> 'ModelSpec':
        """The dense weight-tied model with the same parameters (itself for a plain WT spec)."""
        keep = tuple((k, v) for k, v in self.kwargs if k in ARCH_KWARGS)
        return ModelSpec(f'wt_{self.architecture}_{self.size}', keep)


def parse_model_specs(patterns: Iterable[str]) -> List[ModelSpec]:
    """Names, wildcards (``'wt*_tiny'``) and ``name:key=value,...`` overrides; all zoo models for none."""
    from ..profile import resolve_model_names
    specs: List[ModelSpec] = []
    for pattern in list(patterns) or ['*']:
        name_part, _, kw_part = pattern.partition(':')
        kwargs = []
        for item in filter(None, kw_part.split(',')):
            key, eq, value = item.partition('=')
            if not eq or not key.strip():
                raise ValueError(f'bad model override {item!r} in {pattern!r}; expected key=value, e.g. depth=8')
            kwargs.append((key.strip(), parse_kwargs_value(value.strip())))
        for name in resolve_model_names([name_part]):
            spec = ModelSpec(name, tuple(kwargs))
            if spec not in specs:
                specs.append(spec)
    return specs


def stopped_early(run: Dict[str, Any]) -> Optional[Tuple[int, int]]:
    """(finished, planned) when a bench's run.json says --stop-after ended it before its last run, else None."""
    done, planned = run.get('runs_finished'), run.get('runs_planned')
    return (done, planned) if done is not None and planned and done < planned else None


@functools.lru_cache(maxsize=None)
def file_at_commit(path: str, commit: str, repo: Path = REPO_ROOT) -> Optional[str]:
    """A tracked file's text at the commit a results row names (``git_commit``'s ``+dirty`` dropped: the
    committed state); None where git cannot say (no clone, a shallow one, an unknown commit)."""
    try:
        done = subprocess.run(['git', '-C', str(repo), 'show', f"{commit.split('+')[0]}:{Path(path).as_posix()}"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def machine_info() -> Dict[str, Any]:
    """The machine a figure was measured on: CPU model, cores, torch threads, CUDA device, load."""
    info: Dict[str, Any] = dict(
        cpu_model=cpu_model(),
        logical_cpus=os.cpu_count(),
        cpus_available=len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        torch=torch.__version__,
        python=platform.python_version(),
        cuda_device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    )
    try:
        import timm
        info['timm'] = timm.__version__
    except ImportError:
        pass
    if hasattr(os, 'getloadavg'):
        info['load_average_1min'] = round(os.getloadavg()[0], 2)
    return info


@dataclass
class Column:
    """One markdown column: row key, header title, format (a format string or a callable)."""
    key: str
    title: str
    fmt: Any = '{}'

    def cell(self, row: Dict[str, Any]) -> str:
        value = row.get(self.key)
        if value is None or value == '':
            return ''
        if isinstance(value, float) and value != value:  # NaN
            return 'nan'
        if callable(self.fmt):
            return self.fmt(value)
        try:
            return self.fmt.format(value)
        except (ValueError, TypeError):
            return str(value)


def markdown_table(rows: Sequence[Dict[str, Any]], columns: Sequence[Column]) -> str:
    lines = ['| ' + ' | '.join(c.title for c in columns) + ' |', '|' + '---|' * len(columns)]
    for row in rows:
        lines.append('| ' + ' | '.join(c.cell(row).replace('|', '\\|') for c in columns) + ' |')
    return '\n'.join(lines)


def read_table(folder: Path, name: str) -> List[Dict[str, Any]]:
    """Rows of ``<folder>/<name>.json`` (the typed copy of the CSV)."""
    path = Path(folder) / f'{name}.json'
    if not path.is_file():
        raise FileNotFoundError(f'{path} not found')
    return json.loads(path.read_text())


class ResultsFolder:
    """One subcommand's output folder: tables as CSV + JSON, README.md, run.json (provenance)."""

    def __init__(self, path, subcommand: str, argv: Sequence[str], settings: Optional[Dict[str, Any]] = None):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        # each finished training run's outcome, committed with the tables: a bench spanning sittings goes on
        # from here when its run folders are lost with the machine (see recipe.train_outcome)
        self.outcomes = self.path / 'outcomes'
        self.subcommand = subcommand
        self.provenance: Dict[str, Any] = dict(
            command='python -m wt_zoo.bench ' + shlex.join([subcommand, *argv]),
            cwd=os.getcwd(),
            date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds'),
            git_commit=git_commit(),
            machine=machine_info(),
            settings=plain({k: v for k, v in (settings or {}).items()
                            if v is None or isinstance(v, (str, int, float, bool, list, tuple))}),
        )
        self.started = time.perf_counter()

    def keep_provenance(self) -> None:
        """For a command that only rewrites the README from stored tables: the run.json of the run that made the
        tables stays the provenance, this command recorded beside it (``rewritten_by``)."""
        path = self.path / 'run.json'
        if not path.is_file():
            return
        rewrite = {key: self.provenance[key] for key in ('command', 'date', 'git_commit')}
        self.provenance = dict(json.loads(path.read_text()), rewritten_by=rewrite)

    def write_table(self, name: str, rows: List[Dict[str, Any]]) -> None:
        """``name.csv`` and ``name.json`` with the same rows (written atomically)."""
        write_results(self.path / f'{name}.csv', rows)
        write_results(self.path / f'{name}.json', rows)

    def provenance_markdown(self) -> str:
        p = self.provenance
        m = p['machine']
        cuda = f", CUDA device {m['cuda_device']}" if m.get('cuda_device') else ', no CUDA device'
        load = f", 1-min load average at start {m['load_average_1min']}" if 'load_average_1min' in m else ''
        rewrite = p.get('rewritten_by')
        return '\n'.join([
            f"- command: `{p['command']}`",
            f"- date (UTC): {p['date']}; git commit: `{p['git_commit']}`",
            f"- machine: {m['cpu_model']}, {m['cpus_available']} CPU(s) available, torch threads {m['torch_threads']}"
            f"{cuda}; torch {m['torch']}, timm {m.get('timm', '?')}{load}",
            *([f"- README rewritten from the stored tables by `{rewrite['command']}` ({rewrite['date']}, "
               f"`{rewrite['git_commit']}`)"] if rewrite else []),
        ])

    def finish(self, title: str, sections: Sequence[str], extra: Optional[Dict[str, Any]] = None) -> Path:
        """Write README.md (title, provenance, sections) and run.json; returns the README path."""
        if 'rewritten_by' not in self.provenance:  # the run that made the tables ends here
            self.provenance['wall_seconds'] = round(time.perf_counter() - self.started, 1)
            if hasattr(os, 'getloadavg'):
                self.provenance['machine']['load_average_1min_at_end'] = round(os.getloadavg()[0], 2)
        if extra:
            self.provenance.update(plain(extra))
        atomic_write_json(self.path / 'run.json', self.provenance)
        text = '\n\n'.join([f'# {title}', 'Produced by:\n\n' + self.provenance_markdown(), *sections]) + '\n'
        readme = self.path / 'README.md'
        atomic_write_text(readme, text)
        return readme


def warn_if_busy(what: str = 'timings') -> Optional[float]:
    """Say so on stderr when other processes load the CPUs: OpenMP threads then spin against them and
    timings can come out many times too slow. Returns the 1-minute load average."""
    if not hasattr(os, 'getloadavg'):
        return None
    load = os.getloadavg()[0]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    if load > 0.5 * cpus:
        log(f'WARNING: 1-minute load average {load:.2f} on {cpus} CPU(s) before this run: other processes are using '
            f'the CPUs and {what} will be meaningless; rerun on a quiet machine (run.json records the load)')
    return load


def log(message: str) -> None:
    """One progress line on stderr (stdout stays for the tables)."""
    print(message, file=sys.stderr, flush=True)


@dataclass
class Progress:
    """'[i/n] what ... (elapsed, ETA)' lines for a list of work items of roughly known relative cost.

    Items read back from an earlier sitting take no time, so the ETA is paced by the items trained in
    this one only; counting read-backs would promise a resumed bench to end almost at once."""
    costs: List[float]
    started: float = field(default_factory=time.perf_counter)
    done_cost: float = 0.0
    trained_cost: float = 0.0
    index: int = 0
    reading_back: bool = False

    def start(self, what: str) -> None:
        log(f'[{self.index + 1}/{len(self.costs)}] {what} ...')

    def finish(self, what: str) -> None:
        cost = self.costs[self.index]
        self.done_cost += cost
        self.index += 1
        if self.reading_back:
            log(f'[{self.index}/{len(self.costs)}] {what} (read back from an earlier sitting)')
            return
        self.trained_cost += cost
        elapsed = time.perf_counter() - self.started
        eta = elapsed * (sum(self.costs) - self.done_cost) / self.trained_cost
        log(f'[{self.index}/{len(self.costs)}] {what} (elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min)')

    def within(self, todo: Sequence[Any], stop_after_minutes: Optional[float],
               finished: Optional[Callable[[Any], bool]] = None) -> Iterator[Any]:
        """The work items in order until ``stop_after_minutes`` have passed (``--stop-after``: a bench longer
        than one sitting stops between runs, not inside one). The item under way finishes; the first item to
        train is always taken. Items ``finished`` says are done are read back, not trained: they always pass
        and start nothing, so a sitting's tables hold every finished run."""
        started_one = False
        for index, item in enumerate(todo):
            self.reading_back = finished is not None and finished(item)
            if not self.reading_back:
                minutes = (time.perf_counter() - self.started) / 60
                if started_one and stop_after_minutes is not None and minutes >= stop_after_minutes:
                    log(f'--stop-after {stop_after_minutes:g}: {minutes:.1f} min passed, {len(todo) - index} of '
                        f'{len(todo)} runs left; rerun the same command to go on')
                    return
                started_one = True
            yield item


def partial_section(done: int, planned: int) -> List[str]:
    """The line a results README opens with when ``--stop-after`` ended the bench before its last run."""
    if done >= planned:
        return []
    return [f'**Partial: {done} of {planned} runs finished** (`--stop-after` ended this sitting); the tables hold '
            'those runs only. Rerun the same command to go on: finished runs are read back from `outcomes/`.']
