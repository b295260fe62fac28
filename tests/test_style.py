"""The code's style is checked, not hoped for: the lint rules of pyproject.toml ([tool.ruff.lint]: unused names,
sorted imports at the top, PEP 8's blank lines, no trailing whitespace) and `ruff format`'s layout hold for the
package, the tests, the scripts, the notebook and the README's Python blocks. A change that breaks one fails here
with ruff's own message; `ruff format .` and `ruff check --fix .` mend most of them."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ruff():
    found = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert found, "ruff is part of the test extra (pip install -e '.[test]'; scripts/setup_env.sh installs it)"
    return found


def test_the_code_passes_the_projects_lint_rules(ruff):
    res = subprocess.run([ruff, "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_code_is_laid_out_by_the_formatter(ruff):
    res = subprocess.run([ruff, "format", "--check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, "run `ruff format .`:\n" + res.stdout + res.stderr
    checked = re.search(r"(\d+) files? already formatted", res.stdout)
    package = len(list((ROOT / "llm_summarizer").rglob("*.py")))
    assert checked and int(checked.group(1)) >= package, (
        f"the package's {package} modules were not all checked:\n" + res.stdout
    )
