"""The lint rules of pyproject.toml ([tool.ruff.lint]: unused names, sorted imports at the top, PEP 8's blank
lines, no trailing whitespace) hold for the package, the tests and the scripts: a change that breaks one fails
here, with ruff's own message."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_code_passes_the_projects_lint_rules():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is part of the test extra (pip install -e '.[test]'; scripts/setup_env.sh installs it)"
    res = subprocess.run([ruff, "check", "--no-cache", "llm_summarizer", "tests", "scripts"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
