"""A hostile user, on every command: bad configs, bad files, bad paths, secrets, Ctrl-C, a closed pipe.

Each case runs the command in this process through `llm_summarizer.commands.main.main(argv)` (a subprocess would
cost seconds of imports per case) inside one shared workspace that holds what a user would not want to lose: their
own documents, a data folder, a fine-tuned model, an earlier export and a training run. For every case: the exit
code, no traceback, one `error:` line naming the key, file or row, and every file of the workspace as it was.
Property-based cases (hypothesis) throw generated values at every config key and generated text at the YAML loader
(tests/training/test_reliability.py fuzzes whole configs and data files).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_summarizer.commands.main import main
from llm_summarizer.config import Config
from llm_summarizer.config_loading import load_config
from llm_summarizer.errors import UserError
from llm_summarizer.files import OWNER_FILE

from .conftest import DEMO, ROOT, read_jsonl, run_cli

SECRET = "pw-s3cret-9f2"  # typed by the user in a URL: never printed, never recorded


def _tree(root: Path) -> dict:
    """Every file and folder under root, files by content; the scratch folder (new outputs) left out."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if rel.parts[0] == "scratch":
            continue
        out[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_run):
    """The user's workspace: what no bad input may change."""
    w = tmp_path_factory.mktemp("hostile")
    (w / "docs").mkdir()
    (w / "docs" / "thesis.txt").write_text("Chapter 1. Years of work.\n")
    data = w / "data"
    data.mkdir()
    shutil.copy(DEMO / "train.jsonl", data / "train.jsonl")
    shutil.copy(DEMO / "validation.jsonl", data / "validation.jsonl")
    rows = read_jsonl(DEMO / "validation.jsonl")[:4]
    bad = data / "bad"
    bad.mkdir()
    (bad / "empty.jsonl").write_text("")
    (bad / "broken.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:2]) + '\n{"document": "x", \n')
    (bad / "deep.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    (bad / "deep.json").write_text('{"a": ' * 50_000 + "1" + "}" * 50_000)
    (bad / "binary.jsonl").write_bytes(b"\x00\x01\x02" * 100)
    (bad / "latin1.jsonl").write_bytes(
        json.dumps({"document": "caf\u00e9", "summary": "x"}).encode()[:-1] + b'\xe9"}\n'
    )
    (bad / "columns.jsonl").write_text(
        "\n".join(json.dumps({"foo": r["document"], "bar": r["summary"]}) for r in rows) + "\n"
    )
    (bad / "fields.csv").write_text('document,summary\n"a","b","c"\n')
    (bad / "garbage.parquet").write_bytes(b"PAR1 not really")
    (bad / "number.json").write_text("42")
    # lone surrogates as JSON escapes them, and NUL characters: text that cannot be encoded as it is
    (bad / "surrogate.jsonl").write_text(
        "".join(
            json.dumps(
                {"id": f"s{i}", "document": r["document"] + " \ud800 end\u0000.", "summary": r["summary"] + " \udfff"}
            )
            + "\n"
            for i, r in enumerate(rows)
        )
    )
    (bad / "notes.txt").write_text("plain text, not a data format\n")
    (bad / "nodata").mkdir()
    preds = w / "preds"
    preds.mkdir()
    (preds / "preds.jsonl").write_text(
        "\n".join(json.dumps({"id": r["id"], "prediction": r["summary"][:40], "reference": r["summary"]}) for r in rows)
        + "\n"
    )
    (preds / "other-ids.jsonl").write_text(
        "\n".join(json.dumps({"id": f"x{i}", "prediction": "a", "reference": "b"}) for i in range(4)) + "\n"
    )
    (preds / "no-reference.jsonl").write_text(json.dumps({"id": 1, "prediction": "a"}) + "\n")
    (w / "doc.txt").write_text(rows[0]["document"])
    (w / "empty.txt").write_text("   \n")
    shutil.copytree(tiny_run.model_dir, w / "model")
    shutil.copytree(tiny_run.model_dir, w / "model-with-notes")
    (w / "model-with-notes" / "notes.txt").write_text("my notes about this model\n")
    shutil.copytree(tiny_run.model_dir, w / "model-broken")
    (w / "model-broken" / "adapter_config.json").write_text("{not json")
    exp = w / "export"  # an export written before exports recorded their owner: known by export_info.json
    shutil.copytree(tiny_run.model_dir, exp)
    (exp / OWNER_FILE).unlink(missing_ok=True)
    (exp / "export_info.json").write_text(json.dumps({"format": "adapter"}))
    run = w / "run"  # a training run's folder: checkpoints and logs
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (run / "base_metrics.json").write_text("{}")
    cfgs = w / "configs"
    cfgs.mkdir()
    (cfgs / "dup.yaml").write_text("train:\n  max_steps: 4\ntrain:\n  seed: 1\n")
    (cfgs / "dup-nested.yaml").write_text("train:\n  max_steps: 4\n  max_steps: 5\n")
    levels = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 10) + "]" for i in range(6)
    ]
    (cfgs / "bomb.yaml").write_text("\n".join(levels) + "\ntrain:\n  extra_args: {x: *g}\n")
    (cfgs / "syntax.yaml").write_text("model: [1\n")
    (cfgs / "latin1.yaml").write_bytes(b"model:\n  name: caf\xe9\n")
    (cfgs / "list.yaml").write_text("- model\n- lora\n")
    (cfgs / "a-folder.yaml").mkdir()
    (cfgs / "bad.env").write_text(f"OK_VAR=1\nthis line {SECRET}\n")
    (w / "scratch").mkdir()
    return w


@pytest.fixture
def hostile(ws, models_dir, capsys, monkeypatch):
    """Runs one command as a user would in the workspace; returns (exit code, stderr), checking that nothing that
    existed before was changed and that no traceback was printed."""
    monkeypatch.chdir(ws)
    for k in ("HF_TOKEN", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(k, raising=False)

    def go(argv: list, code: int, *words: str, after=None):
        before, env, sys_argv = _tree(ws), dict(os.environ), list(sys.argv)
        try:
            rc = main([str(a).replace("{w}", str(ws)).replace("{models}", str(models_dir)) for a in argv])
        except SystemExit as e:  # argparse's own errors: usage and one line, exit 2, as at the command line
            rc = e.code
        finally:
            os.environ.clear()
            os.environ.update(env)
            sys.argv[:] = sys_argv
        out, err = capsys.readouterr()
        assert rc == code, (argv, rc, err[-2000:])
        assert "Traceback" not in err and "Traceback" not in out, err[-3000:]
        if code == 2 and words:
            errors = [line for line in err.splitlines() if "error:" in line]
            assert len(errors) == 1, err[-2000:]
        for w in words:
            assert w.lower() in err.lower(), (argv, w, err[-2000:])
        assert SECRET not in err + out
        assert _tree(ws) == before, f"{argv} changed the workspace"
        if after is not None:
            after()
        shutil.rmtree(ws / "scratch", ignore_errors=True)
        (ws / "scratch").mkdir()
        return rc, err

    return go


TRAIN = [
    "train",
    "--config",
    "tiny",
    "model.cache_dir={models}",
    "data.train={w}/data/train.jsonl",
    "data.validation={w}/data/validation.jsonl",
    "data.test=null",
    "train.max_steps=2",
]
FRESH = ["output.dir={w}/scratch/out", "output.model_dir={w}/scratch/model"]

CONFIG_CASES = [  # (overrides, words)
    (["train.max_stepz=4"], ["did you mean 'max_steps'"]),
    (["train.max_steps=abc"], ["train.max_steps"]),
    (["train.seed=-1"], ["train.seed"]),
    (["train.seed=4294967296"], ["train.seed"]),
    (["train.learning_rate=.inf"], ["train.learning_rate", "finite"]),
    (["train.learning_rate=.nan"], ["train.learning_rate", "finite"]),
    (["train.num_train_epochs=.inf"], ["train.num_train_epochs", "finite"]),
    (["train.max_steps=1e400"], ["train.max_steps"]),
    (["train.max_steps=99999999999999999999999"], ["train.max_steps", "out of range"]),
    (["eval.bootstrap_seed=-5"], ["eval.bootstrap_seed"]),
    (["lora.r=0"], ["lora.r"]),
    (["lora.dropout=1.5"], ["lora.dropout"]),
    (["data.prompt_template={foo}"], ["data.prompt_template"]),
    (["data.prompt_template={document} {foo}"], ["unknown field", "{foo}"]),
    (["data.prompt_template={document"], ["data.prompt_template", "not a valid template"]),
    (["data.prompt_template={0} {document}"], ["unknown field"]),
    (["data.prompt_template='{document.upper}'"], ["unknown field"]),
    (["train.extra_args={adam_beta2: .nan}"], ["extra_args.adam_beta2", "finite"]),
    (["train.extra_args={adam_beta2: 0.9, adam_beta2: 0.95}"], ["appears twice"]),
    (["train.extra_args={output_dir: x}"], ["output_dir"]),
    (["train.extra_args={no_such_field: 1}"], ["no_such_field"]),
    (["train.max_steps"], ["expected key=value"]),
    (["=4"], ["dotted key"]),
    (["train..max_steps=4"], ["dotted key"]),
    (["model.backend=tensorflow"], ["model.backend"]),
    (["model.load_in_4bit=true", "model.load_in_8bit=true"], ["pick one"]),
    (["train.optim=adamw_9bit"], ["unknown optimizer"]),
    (["tracking.report_to=[slack]"], ["tracking.report_to"]),
    (["output.run_name=../x"], ["run_name"]),
    (["output.push_to_hub=true"], ["hub_model_id"]),
    (["scale.num_workers=2"], ["torchrun"]),
    (["tune.metric=eval_bleu"], ["tune.metric"]),
    (["eval.num_samples=0"], ["eval.num_samples"]),
    (["data.validation_size=1.5"], ["validation_size"]),
    (["model.max_seq_length=8"], ["model.max_seq_length"]),
    (["data.train={path: x.jsonl, name: some/dataset}"], ["exactly one"]),
    (["lora.target_modules=[]"], ["target_modules"]),
    (["lora.target_modules=(unclosed"], ["regex"]),
    (["train.resume="], ["train.resume"]),
    (["output.run_name=http://user:" + SECRET + "@host"], ["run_name"]),
]


@pytest.mark.parametrize("overrides,words", CONFIG_CASES, ids=[" ".join(c[0])[:40] for c in CONFIG_CASES])
def test_bad_config_values(hostile, overrides, words):
    hostile([*TRAIN, *FRESH, *overrides], 2, *words)


CONFIG_FILE_CASES = [
    ("{w}/configs/missing.yaml", ["config file not found"]),
    ("{w}/configs/a-folder.yaml", ["is a directory"]),
    ("{w}/configs/dup.yaml", ["'train' appears twice", "line 3"]),
    ("{w}/configs/dup-nested.yaml", ["'max_steps' appears twice"]),
    ("{w}/configs/bomb.yaml", ["aliases"]),
    ("{w}/configs/syntax.yaml", ["YAML syntax error", "line 2"]),
    ("{w}/configs/latin1.yaml", ["not UTF-8"]),
    ("{w}/configs/list.yaml", ["expected a mapping"]),
]


@pytest.mark.parametrize("path,words", CONFIG_FILE_CASES, ids=[Path(c[0]).name for c in CONFIG_FILE_CASES])
def test_bad_config_files(hostile, path, words):
    hostile(["train", "--config", path, *FRESH], 2, *words)


def test_bad_env_files_name_the_line_and_never_the_value(hostile):
    hostile([*TRAIN, *FRESH, "--env-file", "{w}/configs/missing.env"], 2, "file not found")
    _, err = hostile([*TRAIN, *FRESH, "--env-file", "{w}/configs/bad.env"], 2, "line 2")
    assert "this line" not in err


PLACE_CASES = [  # (overrides, words): outputs that would overwrite or delete what is not theirs
    (["output.dir={w}/scratch/x", "output.model_dir={w}/scratch/x"], ["same place"]),
    (["output.dir={w}/scratch/o", "output.model_dir={w}/docs"], ["output.model_dir", "thesis.txt"]),
    (["output.dir={w}/docs", "output.model_dir={w}/scratch/m"], ["output.dir", "thesis.txt"]),
    (["output.dir={w}/scratch/o", "output.model_dir={w}/scratch/o/final"], ["inside"]),
    (["output.dir={w}/scratch/m/ckpt", "output.model_dir={w}/scratch/m"], ["inside"]),
    (["output.dir={w}/scratch/o", "output.model_dir={w}/data"], ["data.train"]),
    (["output.dir={w}/scratch/o", "output.model_dir={w}/data/train.jsonl"], ["data.train"]),
    (["output.dir={w}/docs/thesis.txt", "output.model_dir={w}/scratch/m"], ["is a file"]),
    (["output.dir={w}/docs/thesis.txt/sub", "output.model_dir={w}/scratch/m"], ["is a file"]),
    ([*FRESH, "model.cache_dir={w}/docs/thesis.txt"], ["model.cache_dir", "is a file"]),
    ([*FRESH[:1], "model.cache_dir={w}/scratch/model", "output.model_dir={w}/scratch/model"], ["same place"]),
    (["output.dir={w}/scratch/o", "output.model_dir={w}/export"], ["an export"]),
    (["output.dir={w}/scratch/o", "output.model_dir={w}/run"], ["training run"]),
    (["output.dir={w}/model", "output.model_dir={w}/scratch/m"], ["fine-tuned model"]),
    (["output.dir={w}/scratch/o", "output.model_dir={w}/model-with-notes"], ["notes.txt"]),
    (["output.dir={w}/scratch/o", "output.model_dir={w}/model", "model.name={w}/model"], ["model.name"]),
    (["output.dir={w}/scratch/o", "output.model_dir={w}"], ["inside output.model_dir"]),
    (["output.dir={w}/scratch/o", "output.model_dir={w}/scratch/m", "model.cache_dir={w}"], ["inside model.cache_dir"]),
]


@pytest.mark.parametrize("overrides,words", PLACE_CASES, ids=[c[0][-1][-40:] for c in PLACE_CASES])
def test_training_never_writes_over_what_is_not_its_own(hostile, overrides, words):
    hostile([*TRAIN, *overrides], 2, *words)


DATA_CASES = [  # data.train=..., words (file and line where there is one)
    ("{w}/data/missing.jsonl", ["not found"]),
    ("{w}/data/bad/empty.jsonl", ["empty.jsonl", "empty"]),
    ("{w}/data/bad/broken.jsonl", ["broken.jsonl", "line 3"]),
    ("{w}/data/bad/deep.jsonl", ["deep.jsonl", "nested too deeply"]),
    ("{w}/data/bad/deep.json", ["deep.json", "nested too deeply"]),
    ("{w}/data/bad/binary.jsonl", ["binary"]),
    ("{w}/data/bad/latin1.jsonl", ["latin1.jsonl", "UTF-8"]),
    ("{w}/data/bad/columns.jsonl", ["column"]),
    ("{w}/data/bad/fields.csv", ["fields.csv", "more fields"]),
    ("{w}/data/bad/garbage.parquet", ["garbage.parquet", "parquet"]),
    ("{w}/data/bad/number.json", ["number.json", "expected a list"]),
    ("{w}/data/bad/notes.txt", ["unsupported format"]),
    ("{w}/data/bad/nodata", ["holds no"]),
]


@pytest.mark.parametrize("path,words", DATA_CASES, ids=[Path(c[0]).name for c in DATA_CASES])
def test_bad_training_data(hostile, path, words):
    hostile([*TRAIN, *FRESH, f"data.train={path}"], 2, *words)


def test_resume_of_missing_incomplete_or_other_shaped_checkpoints(hostile, tiny_run):
    hostile([*TRAIN, *FRESH, "train.resume={w}/nowhere"], 2, "train.resume", "not found")
    hostile([*TRAIN, *FRESH, "train.resume={w}/run/checkpoint-2"], 2, "not a complete checkpoint")
    ckpt = max(tiny_run.output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    hostile([*TRAIN, *FRESH, f"train.resume={ckpt}", "lora.r=4"], 2, "lora.r=16 there, 4 here", "another shape")


def test_unknown_lora_target_modules_name_the_layers_there_are(hostile):
    hostile([*TRAIN, *FRESH, "lora.target_modules=[nonexistent_proj]"], 2, "lora.target_modules", "q_proj")


EXPORT_CASES = [
    (["{w}/model", "--format", "adapter", "--output", "{w}", "--overwrite"], ["holds the model directory"]),
    (["{w}/model", "--format", "adapter", "--output", "{w}/docs", "--overwrite"], ["thesis.txt"]),
    (["{w}/model", "--format", "adapter", "--output", "{w}/docs/thesis.txt"], ["is a file"]),
    (["{w}/model", "--format", "adapter", "--output", "{w}/model", "--overwrite"], ["the model directory itself"]),
    (["{w}/model", "--format", "adapter", "--output", "{w}/model/sub"], ["inside the model directory"]),
    (["{w}/model", "--format", "adapter", "--output", "{w}/run", "--overwrite"], ["training run"]),
    (["{w}/model", "--format", "adapter", "--output", "{w}/model-with-notes", "--overwrite"], ["fine-tuned model"]),
    (["{w}/model", "--format", "adapter", "--output", "{w}/export"], ["already exists"]),
    (["{w}/model", "--format", "nope"], ["invalid choice"]),
    (["{w}/model", "--format", "adapter", "--verify-examples", "0", "--output", "{w}/scratch/e"], ["at least 1"]),
    (["{w}/nowhere", "--format", "adapter"], ["nowhere"]),
    (["{w}/docs", "--format", "adapter"], ["config.json"]),
    (["{w}/model-broken", "--format", "adapter", "--output", "{w}/scratch/e"], ["adapter_config.json", "JSON"]),
    (["{w}/model", "--format", "merged-16bit", "--dtype", "float8"], ["invalid choice"]),
]


@pytest.mark.parametrize("args,words", EXPORT_CASES, ids=[" ".join(c[0][1:])[-40:] for c in EXPORT_CASES])
def test_export_never_replaces_a_source_or_a_users_folder(hostile, args, words):
    hostile(["export", *args], 2, *words)


EVALUATE_CASES = [
    (["--output", "{w}/docs/thesis.txt"], ["is a file"]),
    (["--output", "{w}/docs"], ["thesis.txt"]),
    (["--output", "{w}/model"], ["--model itself"]),
    (["--output", "{w}/run"], ["training run"]),
    (["--limit", "0"], ["--limit"]),
    (["--data", "{w}/data/missing.jsonl", "--output", "{w}/scratch/e"], ["not found"]),
    (["--data", "{w}/data/bad/deep.jsonl", "--output", "{w}/scratch/e"], ["nested too deeply"]),
]


@pytest.mark.parametrize("args,words", EVALUATE_CASES, ids=[" ".join(c[0])[-40:] for c in EVALUATE_CASES])
def test_evaluate_bad_input(hostile, args, words):
    hostile(["evaluate", "--model", "{w}/model", *args], 2, *words)


SUMMARIZE_CASES = [
    (["/dev/urandom"], ["binary"]),
    (["/dev/zero"], ["binary"]),
    (["{w}/doc.txt", "--output", "{w}/docs/thesis.txt/out.txt"], ["is a file"]),
    (["{w}/doc.txt", "--output", "{w}/doc.txt"], ["itself"]),
    (["{w}/doc.txt", "--output", "{w}/docs"], ["is a directory"]),
    (["{w}/missing.txt"], ["not found"]),
    (["{w}/empty.txt"], ["nothing to summarize"]),
    (["{w}/data/validation.jsonl", "--column", "nope"], ["column 'nope' not found"]),
    (["{w}/data/bad/deep.jsonl"], ["nested too deeply"]),
]


@pytest.mark.parametrize("args,words", SUMMARIZE_CASES, ids=[" ".join(c[0])[-40:] for c in SUMMARIZE_CASES])
def test_summarize_bad_input(hostile, args, words):
    t0 = time.time()
    hostile(["summarize", "--model", "{w}/model", *args], 2, *words)
    assert time.time() - t0 < 60  # refused before anything large is read or any model is loaded


SCORE_CASES = [
    (["{w}/preds/missing.jsonl"], ["no such file"]),
    (["{w}/data/bad/deep.jsonl"], ["nested too deeply"]),
    (["{w}/preds/no-reference.jsonl"], ["no column 'reference'"]),
    (["{w}/preds/preds.jsonl", "--output", "{w}/docs"], ["is a directory"]),
    (["{w}/preds/preds.jsonl", "--output", "{w}/preds/preds.jsonl"], ["itself"]),
    (["{w}/preds/preds.jsonl", "--base", "{w}/preds/other-ids.jsonl"], ["other-ids.jsonl"]),
    (["{w}/data/bad/empty.jsonl"], ["empty"]),
    (["{w}/data/bad/binary.jsonl"], ["binary"]),
]


@pytest.mark.parametrize("args,words", SCORE_CASES, ids=[" ".join(c[0])[-40:] for c in SCORE_CASES])
def test_score_bad_input(hostile, args, words):
    hostile(["score", *args], 2, *words)


OTHER_CASES = [
    (["serve", "--model", "{w}/model", "--port", "70000"], ["--port"]),
    (["serve", "--model", "{w}/model", "--max-chars", "0"], ["--max-chars"]),
    (["serve", "--model", "{w}/nowhere"], ["nowhere"]),
    (["tune", "--config", "tiny", "--trials", "1", "tune.dir={w}/docs"], ["tune.dir", "thesis.txt"]),
    (
        [
            "tune",
            "--config",
            "tiny",
            "--trials",
            "1",
            "tune.dir={w}/scratch/t",
            "tune.space={train.lr: {type: float, low: 0.0001, high: 0.01}}",
        ],
        ["train.lr"],
    ),
    (
        [
            "tune",
            "--config",
            "tiny",
            "--trials",
            "1",
            "tune.dir={w}/scratch/t",
            f"tune.storage=postgresql://user:{SECRET}@127.0.0.1:9/db",
            "train.max_stepz=1",
        ],
        ["max_stepz"],
    ),
    (
        [
            "bench",
            "--steps",
            "2",
            "--warmup-steps",
            "1",
            "--data",
            "{w}/data/train.jsonl",
            "--work-dir",
            "{w}/docs",
            "--out",
            "{w}/scratch/b.json",
        ],
        ["--work-dir", "thesis.txt"],
    ),
    (
        [
            "bench",
            "--steps",
            "2",
            "--warmup-steps",
            "1",
            "--data",
            "{w}/data/train.jsonl",
            "--work-dir",
            "{w}/scratch/w",
            "--out",
            "{w}/docs",
        ],
        ["--out", "is a directory"],
    ),
    (["data", "--config", "tiny", "data.train={w}/data/bad/broken.jsonl"], ["line 3"]),
]


@pytest.mark.parametrize(
    "argv",
    [
        [
            "data",
            "--config",
            "tiny",
            "data.train={w}/data/bad/surrogate.jsonl",
            "data.validation={w}/data/validation.jsonl",
            "data.test=null",
            "model.cache_dir={models}",
        ],
        ["summarize", "--model", "{w}/model", "{w}/data/bad/surrogate.jsonl", "--output", "{w}/scratch/s.jsonl"],
        [
            "evaluate",
            "--model",
            "{w}/model",
            "--data",
            "{w}/data/bad/surrogate.jsonl",
            "--output",
            "{w}/scratch/ev",
            "--no-report",
        ],
        ["score", "{w}/data/bad/surrogate.jsonl", "--prediction-column", "document", "--reference-column", "summary"],
    ],
    ids=["data", "summarize", "evaluate", "score"],
)
def test_text_that_cannot_be_encoded_is_replaced_with_a_note(hostile, argv):
    """A lone surrogate or a NUL in a document: every reader replaces it (U+FFFD, a space) and says so; the
    commands work (they failed with a TypeError or a UnicodeEncodeError traceback)."""
    rc, err = hostile(argv, 0)
    assert "could not be encoded (lone surrogates, NUL) and were replaced" in err


def test_a_nul_in_a_path_setting_is_one_message(hostile):
    hostile([*TRAIN, 'output.dir="{w}/scratch/x\\0y"'], 2, "output.dir", "NUL")
    hostile(["evaluate", "--model", "{w}/model", "--output", "{w}/scratch/a\x00b"], 2, "--output", "NUL")


@pytest.mark.parametrize("argv,words", OTHER_CASES, ids=[" ".join(c[0][:3]) + c[0][-1][-20:] for c in OTHER_CASES])
def test_other_commands_bad_input(hostile, argv, words):
    hostile(argv, 2, *words)


def test_unreachable_mlflow_is_one_message_in_seconds_without_its_password(hostile):
    t0 = time.time()
    hostile(
        [
            *TRAIN,
            *FRESH,
            "tracking.report_to=[mlflow]",
            f"tracking.mlflow_tracking_uri=http://user:{SECRET}@127.0.0.1:9/",
        ],
        2,
        "does not answer",
        "<redacted>",
    )
    assert time.time() - t0 < 60


def test_ctrl_c_is_one_line_with_how_to_resume(hostile, monkeypatch):
    import llm_summarizer.training.run as run_module

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "load_raw_splits", interrupted)
    _, err = hostile([*TRAIN, *FRESH], 130, "interrupted", "resume")
    assert len(err.strip().splitlines()) == 1


def test_a_closed_pipe_is_silent():
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first byte, as with `| head -0`
    try:
        for args in (["--help"], ["configs"]):
            p = subprocess.run(
                [sys.executable, "-m", "llm_summarizer", *args],
                stdout=w,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
                timeout=120,
            )
            assert p.returncode == 141 and p.stderr == "", (args, p.returncode, p.stderr)
    finally:
        os.close(w)


def test_secrets_typed_on_the_command_line_never_reach_the_wandb_run(ws, models_dir, tmp_path):
    """W&B records the process's command line (sys.argv) in the run file that `wandb sync` uploads: a process of its
    own, since that is what W&B reads."""
    out = tmp_path / "o"
    args = [a.replace("{w}", str(ws)).replace("{models}", str(models_dir)) for a in TRAIN[1:]]
    p = run_cli(
        "train",
        *args,
        f"output.dir={out}",
        f"output.model_dir={tmp_path / 'm'}",
        "train.max_steps=1",
        "eval.generate=false",
        "output.report=false",
        "tracking.report_to=[wandb]",
        "tracking.wandb_mode=offline",
        f"tracking.mlflow_tracking_uri=http://user:{SECRET}@127.0.0.1:9/",
        env={"WANDB_MODE": "offline"},
    )
    assert p.returncode == 0, p.stderr[-3000:]
    raw = b"".join(f.read_bytes() for f in (out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert b"mlflow_tracking_uri=http://<redacted>@127.0.0.1" in raw  # the command line is recorded ...
    assert SECRET.encode() not in raw  # ... without the password
    assert SECRET not in p.stdout + p.stderr


def test_killed_exports_leftovers_are_cleared_by_the_next_export(hostile, ws):
    stale = [ws / "scratch" / ".exp.tmp-killed", ws / "scratch" / ".exp.work-killed"]
    for d in stale:
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"0" * 1024)

    def cleared():
        assert not any(d.exists() for d in stale)
        assert (ws / "scratch" / "exp" / "adapter_model.safetensors").is_file()
        assert [p.name for p in (ws / "scratch").iterdir() if p.name.startswith(".exp.")] == []

    hostile(
        ["export", "{w}/model", "--format", "adapter", "--output", "{w}/scratch/exp", "--verify-examples", "2"],
        0,
        after=cleared,
    )


# -- property-based: whatever the value or the bytes, a clear error or a result, never a crash -------------------

KEYS = [f"{s}.{k}" for s, sec in Config.model_fields.items() for k in sec.annotation.model_fields]
VALUES = st.one_of(
    st.text(max_size=20),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=3),
    st.sampled_from([".inf", "-.inf", ".nan", "1e400", "[", "{", "*a", "&a x", "{a: 1, a: 2}", "'"]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_any_value_for_any_key_is_a_config_or_a_config_error(key, value):
    raw = value if isinstance(value, str) else json.dumps(value)
    try:
        cfg = load_config("tiny", [f"{key}={raw}"])
    except UserError:
        return
    assert isinstance(cfg, Config)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_any_yaml_text_is_a_config_or_a_user_error(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text, encoding="utf-8")
    try:
        load_config(p)
    except UserError:
        pass
