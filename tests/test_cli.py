"""The console command as users meet it: `llm-summarizer` and `python -m llm_summarizer`, its subcommands,
the ready configs by name from any directory, and answers that come before torch is imported."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_summarizer.commands.main import COMMANDS

from .conftest import ROOT

BIN = Path(sys.executable).parent / "llm-summarizer"
# Runs the console command in-process and says, last on stderr, whether torch got imported (argparse's --help
# exits through SystemExit, hence the finally).
NO_TORCH = (
    "import sys\nfrom llm_summarizer.commands.main import main\ntry:\n    rc = main(sys.argv[1:])\nfinally:\n"
    "    print('TORCH' if 'torch' in sys.modules else 'NO_TORCH', file=sys.stderr)\nraise SystemExit(rc)"
)


def cli(*args, cwd, timeout=180, env=None):
    return subprocess.run(
        [str(BIN), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_help_lists_every_subcommand_and_module_form_is_the_same(tmp_path):
    assert BIN.is_file(), "the console script is installed by `pip install -e .` (scripts/setup_env.sh)"
    r = cli("--help", cwd=tmp_path)
    assert r.returncode == 0
    for name in ("train", "evaluate", "summarize", "export", "data", "bench", "env", "configs"):
        assert f"  {name} " in r.stdout, name
    m = subprocess.run(
        [sys.executable, "-m", "llm_summarizer", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert m.returncode == 0 and m.stdout == r.stdout
    bad = cli("trian", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown command 'trian'" in bad.stderr


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_subcommand_help_answers_without_torch(name, tmp_path):
    r = subprocess.run(
        [sys.executable, "-c", NO_TORCH, name, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and f"usage: llm-summarizer {name}" in r.stdout, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == "NO_TORCH"


def test_ready_config_by_name_from_any_directory(tmp_path):
    """After install the shipped configs resolve by name wherever the user stands; a path still wins."""
    r = cli("train", "--config", "tiny", "--print-config", "train.max_steps=3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "max_steps: 3" in r.stdout and "name: random:tiny" in r.stdout
    mine = tmp_path / "tiny"  # a file of the user's named like a shipped config: the path wins
    mine.write_text("model:\n  name: my/own-model\n")
    r = cli("train", "--config", "tiny", "--print-config", cwd=tmp_path)
    assert r.returncode == 0 and "name: my/own-model" in r.stdout
    listing = cli("configs", cwd=tmp_path)
    assert listing.returncode == 0 and listing.stdout.splitlines()[0].startswith("default")
    assert any(l.startswith("demo ") and "SmolLM2" in l for l in listing.stdout.splitlines())
    assert any(l.startswith("tiny ") and "random-init" in l for l in listing.stdout.splitlines())
    shown = cli("configs", "--show", "tiny", cwd=tmp_path)
    assert shown.returncode == 0 and "random:tiny" in shown.stdout


def test_config_error_through_the_console_command_is_one_message_without_torch(tmp_path):
    r = subprocess.run(
        [sys.executable, "-c", NO_TORCH, "data", "--config", "tiny", "data.trian=x"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "data.trian: unknown key; did you mean 'train'?" in r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().splitlines()[-1] == "NO_TORCH"


def test_env_reports_versions_device_and_precision_facts(tmp_path):
    r = cli("env", "--json", cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    facts = json.loads(r.stdout)
    assert facts["versions"]["torch"] and facts["versions"]["transformers"] and facts["versions"]["unsloth"]
    assert isinstance(facts["cuda_available"], bool) and facts["cpu_cores"] >= 1
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    assert ("avx512_bf16" in facts["cpu_bf16_flags"]) == ("avx512_bf16" in flags)
    assert facts["unsloth_cpu_bf16"] in (True, False)
    if not facts["cuda_available"]:
        assert facts["training_precision_auto"].startswith("fp32")
    text = cli("env", cwd=tmp_path, timeout=300)
    assert text.returncode == 0 and "training_precision_auto" in text.stdout and "versions: python" in text.stdout


def test_missing_unsloth_is_one_message_with_the_fix(tmp_path):
    """A machine where unsloth cannot be imported: the unsloth backend says how to install it, no traceback."""
    fake = tmp_path / "site"
    (fake / "unsloth").mkdir(parents=True)
    (fake / "unsloth" / "__init__.py").write_text("raise ImportError('No module named unsloth', name='unsloth')\n")
    env = {"PYTHONPATH": f"{fake}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = cli("train", "--config", "tiny", f"output.dir={tmp_path / 'out'}", cwd=ROOT, env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "needs the unsloth package" in r.stderr and "scripts/setup_env.sh" in r.stderr
    assert "model.backend=transformers" in r.stderr and "Traceback" not in r.stderr


def test_env_file_comments_quotes_and_multiline_values(tmp_path, monkeypatch):
    from llm_summarizer.commands.boot import load_env_file
    from llm_summarizer.errors import UserError

    for k in ("LS_KEY", "LS_TOKEN", "LS_MULTI", "LS_HASH", "LS_SET", "LS_OK"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("LS_SET", "from-the-environment")
    f = tmp_path / ".env"
    f.write_text(
        '# tokens\nLS_KEY=abc123 # my key\nexport LS_TOKEN="hf x"\nLS_MULTI="line one\nline two"\n'
        "LS_HASH='a#b'\nLS_SET=from-the-file\n"
    )
    assert load_env_file(str(f)) == ["LS_KEY", "LS_TOKEN", "LS_MULTI", "LS_HASH"]
    assert os.environ["LS_KEY"] == "abc123"  # the inline comment is not part of the value
    assert os.environ["LS_TOKEN"] == "hf x" and os.environ["LS_MULTI"] == "line one\nline two"
    assert os.environ["LS_HASH"] == "a#b" and os.environ["LS_SET"] == "from-the-environment"
    bad = tmp_path / "bad.env"
    bad.write_text("LS_OK=1\nthis is not a setting sk-secret\n")
    with pytest.raises(UserError) as e:
        load_env_file(str(bad))
    assert "bad.env, line 2: expected KEY=VALUE" in str(e.value) and "sk-secret" not in str(e.value)
    assert "LS_OK" not in os.environ  # nothing set from a file that does not parse
