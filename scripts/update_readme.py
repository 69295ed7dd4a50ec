#!/usr/bin/env python3
"""Regenerate the README's embedded tables from the committed results files.

    python scripts/update_readme.py          # rewrite README.md
    python scripts/update_readme.py --check  # exit 1 if README.md is out of date

Each table sits between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``: ``results/profile.md``
(made by ``python -m wt_zoo.profile``) and ``checkpoints`` (``python -m wt_zoo.hub table``, read
from the hub_configs folders' results files), ``time_to_accuracy`` and ``train_speed`` (read from
results/time_to_accuracy and results/train_speed, written by ``python -m wt_zoo.bench``), ``claims``
(the claims table, ``python -m wt_zoo.bench claims``, computed from the results files), ``transfer``
(results/transfer, ``python -m wt_zoo.bench transfer``: the .c10 checkpoints fine-tuned on Fashion-MNIST),
``progressive_tiny`` (results/progressive_tiny, ``python -m wt_zoo.bench compare``: progressive resizing against
recipe v2 over seeds).
"""
import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sections():
    from wt_zoo.bench import time_to_accuracy, train_speed
    from wt_zoo.bench import claims
    from wt_zoo.bench import compare, transfer
    from wt_zoo.hub import results_table
    return {
        'results/profile.md': (REPO / 'results' / 'profile.md').read_text().strip(),
        'checkpoints': results_table(),
        'time_to_accuracy': time_to_accuracy.readme_section(),
        'train_speed': train_speed.readme_section(),
        'claims': claims.readme_section(),
        'transfer': transfer.readme_section(),
        'progressive_tiny': compare.readme_section(REPO / 'results' / 'progressive_tiny'),
    }


def render(readme: str) -> str:
    for name, body in sections().items():
        pattern = re.compile(rf'(<!-- {re.escape(name)}:start -->\n).*?(<!-- {re.escape(name)}:end -->)', re.S)
        if not pattern.search(readme):
            raise SystemExit(f'README.md has no <!-- {name}:start/end --> markers')
        readme = pattern.sub(lambda m: m.group(1) + body + '\n' + m.group(2), readme)
    return readme


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--check', action='store_true')
    args = parser.parse_args()
    path = REPO / 'README.md'
    current = path.read_text()
    updated = render(current)
    if args.check:
        if updated != current:
            print('README.md is out of date: run python scripts/update_readme.py', file=sys.stderr)
            return 1
        return 0
    path.write_text(updated)
    return 0


if __name__ == '__main__':
    sys.exit(main())
