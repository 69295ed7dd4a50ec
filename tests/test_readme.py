"""The README's embedded tables are the committed results files, not hand-typed numbers."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_tables_match_the_results_files():
    result = subprocess.run([sys.executable, str(REPO / 'scripts' / 'update_readme.py'), '--check'],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_two_commands_are_documented():
    readme = (REPO / 'README.md').read_text()
    assert 'make test' in readme and 'make demo' in readme
    assert 'make test' in (REPO / '.ci' / 'run').read_text()
