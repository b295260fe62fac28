"""Never lose a run: crash-consistent checkpoints, guards, bad input everywhere, secrets."""

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import TrainerCallback

from llm_summarizer.config_loading import load_config
from llm_summarizer.errors import DataError
from llm_summarizer.paths import claim
from llm_summarizer.training.checkpoints import checkpoint_problem

from ..conftest import ROOT, run_cli, tiny_overrides

QUIET = ["eval.generate=false", "eval.base_eval=false", "train.eval_strategy=no"]


def tree_digest(d: Path) -> dict:
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()
    }


def cli_main(argv, extra_callbacks=None):
    """The train command in-process (Unsloth already imported), with callbacks injected."""
    from llm_summarizer.commands.boot import run_command as _run_cli
    from llm_summarizer.commands.train import build_parser
    from llm_summarizer.training.run import run

    return _run_cli(build_parser(), lambda a, cfg: (run(cfg, extra_callbacks=extra_callbacks), 0)[1], argv)


def demo_args(tmp, models_dir, *extra, **kw):
    return ["--config", "tiny", *tiny_overrides(tmp, models_dir, **kw), *extra]


class NaNGradAt(TrainerCallback):
    def __init__(self, steps):
        self.steps = set(steps)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        if state.global_step + 1 in self.steps:
            next(p for p in model.parameters() if p.requires_grad).grad.fill_(float("nan"))


class RaiseAt(TrainerCallback):
    def __init__(self, step, exc):
        self.step, self.exc = step, exc

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            raise self.exc


# -- crash-consistent checkpoints --------------------------------------------------------------


def test_checkpoint_interrupted_mid_write_is_never_visible(tmp_path, models_dir, monkeypatch):
    import torch

    from llm_summarizer.training.run import run

    real_save = torch.save
    calls = {"n": 0}

    class Killed(BaseException):
        pass

    def dying_save(obj, f, *a, **k):
        if str(f).endswith("optimizer.pt"):
            calls["n"] += 1
            if calls["n"] == 2:  # the second checkpoint dies half-written
                raise Killed()
        return real_save(obj, f, *a, **k)

    cfg = load_config(
        "tiny", tiny_overrides(tmp_path, models_dir, **{"train.max_steps": 20, "train.save_steps": 10}) + QUIET
    )
    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(Killed):
        run(cfg)
    monkeypatch.setattr(torch, "save", real_save)
    visible = sorted(p.name for p in cfg.output_dir.glob("checkpoint-*"))
    assert visible == ["checkpoint-10"]
    assert checkpoint_problem(cfg.output_dir / "checkpoint-10") is None
    assert list((cfg.output_dir / ".staging").iterdir()), "the half-written checkpoint stayed in staging"
    res = run(cfg)
    assert res.resumed_from == cfg.output_dir / "checkpoint-10"
    assert res.metrics.train.global_step == 20
    assert not (cfg.output_dir / ".staging").exists() or not list((cfg.output_dir / ".staging").iterdir())
    assert all(checkpoint_problem(p) is None for p in cfg.output_dir.glob("checkpoint-*"))


@pytest.mark.slow
def test_kill_resume_soak_short(tmp_path, models_dir):
    r = subprocess.run(
        [
            sys.executable,
            "scripts/kill_resume_soak.py",
            "--kills",
            "3",
            "--steps",
            "30",
            "--save-steps",
            "5",
            "--eval-steps",
            "15",
            "--workdir",
            str(tmp_path),
            "--models-dir",
            str(models_dir),
            "--report",
            str(tmp_path / "report.json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["ok"] and rep["kills_landed"] == 3
    n = rep["rounds_compared"]
    assert rep["adapter_max_abs_diff"] <= 1e-5 and rep["loss_steps_compared"] == 30 * n
    assert rep["rouge_steps_compared"] >= 2 * n
    assert all(r["ok"] and not r["rouge_mismatch_steps"] for r in rep["rounds"])


# -- guards -------------------------------------------------------------------------------------


def test_nonfinite_gradient_stops_keeping_last_checkpoint(tmp_path, models_dir, capsys):
    rc = cli_main(
        demo_args(tmp_path, models_dir, *QUIET, **{"train.max_steps": 10, "train.save_steps": 2}),
        extra_callbacks=[NaNGradAt({5})],
    )
    err = capsys.readouterr().err
    assert rc == 3
    assert "non-finite loss or gradient at step 5" in err and "Traceback" not in err
    out = tmp_path / "outputs"
    assert sorted(p.name for p in out.glob("checkpoint-*"))[-1] == "checkpoint-4"
    assert checkpoint_problem(out / "checkpoint-4") is None
    assert not (tmp_path / "fine_tuned").exists()


def test_nonfinite_gradient_skip_policy(tmp_path, models_dir):
    import torch
    from safetensors.torch import load_file

    from llm_summarizer.training.run import run

    cfg = load_config(
        "tiny",
        tiny_overrides(tmp_path, models_dir, **{"train.max_steps": 8, "train.save_steps": 100})
        + QUIET
        + ["train.on_nonfinite=skip", "train.max_nonfinite_skips=2"],
    )
    res = run(cfg, extra_callbacks=[NaNGradAt({3, 6})])
    assert res.metrics.train.global_step == 8
    w = load_file(str(res.model_dir / "adapter_model.safetensors"))
    assert all(torch.isfinite(t).all() for t in w.values())
    cfg3 = load_config(
        "tiny",
        tiny_overrides(tmp_path / "b", models_dir, **{"train.max_steps": 8})
        + QUIET
        + ["train.on_nonfinite=skip", "train.max_nonfinite_skips=1"],
    )
    from llm_summarizer.errors import TrainingStopped

    with pytest.raises(TrainingStopped, match=r"at step 6 .*after skipping 1 step"):
        run(cfg3, extra_callbacks=[NaNGradAt({3, 6})])


def test_out_of_memory_gives_advice(tmp_path, models_dir, capsys):
    import torch

    rc = cli_main(
        demo_args(tmp_path, models_dir, *QUIET, "model.max_seq_length=2048", **{"train.max_steps": 6}),
        extra_callbacks=[RaiseAt(2, torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"))],
    )
    err = capsys.readouterr().err
    assert rc == 3 and "Traceback" not in err
    assert "ran out of memory" in err
    assert "train.per_device_train_batch_size=4 with train.gradient_accumulation_steps=2" in err
    assert "model.load_in_4bit=true" in err and "model.max_seq_length=1024" in err
    assert "model.gradient_checkpointing=unsloth" in err


def test_disk_full_on_final_save_leaves_previous_model(tmp_path, models_dir, capsys, monkeypatch):
    args = demo_args(tmp_path, models_dir, *QUIET, **{"train.max_steps": 4, "train.save_steps": 2})
    assert cli_main(args) == 0
    before = tree_digest(tmp_path / "fine_tuned")
    ckpts_before = tree_digest(tmp_path / "outputs" / "checkpoint-4")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    import llm_summarizer.training.run as run_module

    monkeypatch.setattr(run_module, "write_model_card", full)
    capsys.readouterr()
    rc = cli_main(args + ["train.max_steps=6"])
    err = capsys.readouterr().err
    assert rc == 3 and "no space left on the device" in err and "Traceback" not in err
    assert tree_digest(tmp_path / "fine_tuned") == before
    assert tree_digest(tmp_path / "outputs" / "checkpoint-4") == ckpts_before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fine_tuned")]


def test_disk_full_during_checkpoint_keeps_previous(tmp_path, models_dir, capsys, monkeypatch):
    import torch

    real = torch.save
    n = {"k": 0}

    def full(obj, f, *a, **k):
        if str(f).endswith("optimizer.pt"):
            n["k"] += 1
            if n["k"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full)
    rc = cli_main(demo_args(tmp_path, models_dir, *QUIET, **{"train.max_steps": 6, "train.save_steps": 2}))
    err = capsys.readouterr().err
    assert rc == 3 and "no space left on the device" in err
    assert sorted(p.name for p in (tmp_path / "outputs").glob("checkpoint-*")) == ["checkpoint-2"]
    assert checkpoint_problem(tmp_path / "outputs" / "checkpoint-2") is None


def test_second_run_on_same_output_dir_refuses(tmp_path):
    from llm_summarizer.training.guards import RunLock

    out = tmp_path / "outputs"
    with RunLock(out):
        r = run_cli("train", "--config", "tiny", f"output.dir={out}", timeout=300)
    assert r.returncode == 2
    assert f"is in use by another run (process {os.getpid()})" in r.stderr
    assert "Traceback" not in r.stderr


# -- bad input ---------------------------------------------------------------------------------


def make_model_dir(d: Path, config: dict, weights=True, adapter=None) -> Path:
    d.mkdir(parents=True)
    if config is not None:
        (d / "config.json").write_text(json.dumps(config))
    if weights:
        (d / "model.safetensors").write_bytes(b"\x00" * 16)
    if adapter is not None:
        (d / "adapter_config.json").write_text(json.dumps(adapter))
        (d / "adapter_model.safetensors").write_bytes(b"\x00" * 16)
    return d


@pytest.mark.parametrize(
    "case,expect",
    [
        ("missing", "directory not found"),
        ("file", "is a file; expected a model directory"),
        ("no_config", "has no config.json"),
        ("no_weights", "has config.json but no weights"),
        ("unknown_arch", "model_type 'quantum_llm'"),
        ("not_causal", "is a BertForSequenceClassification, not a causal language model"),
        ("adapter_without_base", "is a LoRA adapter whose base model /nonexistent/base is not found"),
    ],
)
def test_bad_model_dirs_exit_2_and_touch_nothing(tmp_path, case, expect, capsys):
    d = tmp_path / "model"
    if case == "file":
        d.write_text("x")
    elif case == "no_config":
        make_model_dir(d, None)
    elif case == "no_weights":
        make_model_dir(d, {"model_type": "llama"}, weights=False)
    elif case == "unknown_arch":
        make_model_dir(d, {"model_type": "quantum_llm"})
    elif case == "not_causal":
        make_model_dir(d, {"model_type": "bert", "architectures": ["BertForSequenceClassification"]})
    elif case == "adapter_without_base":
        make_model_dir(d, None, weights=False, adapter={"base_model_name_or_path": "/nonexistent/base", "r": 8})
    out = tmp_path / "outputs"
    claim(out, "run")  # an earlier run's folder, with a file of the user's beside
    (out / "keep.txt").write_text("mine")
    rc = cli_main(["--config", "tiny", f"model.name={d}", f"output.dir={out}", f"output.model_dir={tmp_path / 'ft'}"])
    err = capsys.readouterr().err
    assert rc == 2 and expect in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["keep.txt"]
    assert not (tmp_path / "ft").exists()


@pytest.mark.parametrize("case", ["output_is_file", "model_dir_is_file", "uncreatable"])
def test_bad_output_paths_exit_2(tmp_path, case, capsys):
    args = ["--config", "tiny"]
    if case == "output_is_file":
        (tmp_path / "f").write_text("x")
        args += [f"output.dir={tmp_path / 'f'}"]
        expect = f"output.dir {tmp_path / 'f'} is a file; expected a directory"
    elif case == "model_dir_is_file":
        (tmp_path / "f").write_text("x")
        args += [f"output.dir={tmp_path / 'o'}", f"output.model_dir={tmp_path / 'f'}"]
        expect = f"output.model_dir {tmp_path / 'f'} is a file; expected a directory"
    else:
        args += ["output.dir=/proc/llm_summarizer_cannot_create_here"]
        expect = "output.dir: cannot"
    rc = cli_main(args)
    err = capsys.readouterr().err
    assert rc == 2 and expect in err and "Traceback" not in err


def test_huge_single_row_and_binary_data(tmp_path, models_dir):
    from llm_summarizer.data import rows as R
    from llm_summarizer.data import tokenize as TK
    from llm_summarizer.models.loading import load_tokenizer

    big = tmp_path / "big.jsonl"
    rows = [
        {"document": "word " * 300_000, "summary": "a short summary."},
        {"document": "a normal document.", "summary": "normal."},
    ]
    big.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(
        "tiny",
        [
            f"data.train={big}",
            "data.validation=null",
            "data.test=null",
            "data.validation_size=0",
            f"model.cache_dir={models_dir}",
        ],
    )
    raw = R.load_raw_splits(cfg)
    prep = TK.prepare(cfg, load_tokenizer(cfg, R.load_raw_splits(load_config("tiny"))), raw)
    assert prep.stats["train"].truncated == 1
    assert max(len(x) for x in prep.splits["train"]["input_ids"]) <= cfg.model.max_seq_length
    binary = tmp_path / "x.parquet"
    binary.write_bytes(os.urandom(2048))
    with pytest.raises(DataError, match="not a readable parquet file"):
        R.load_raw_splits(load_config("tiny", [f"data.train={binary}"]))


# -- fuzz ---------------------------------------------------------------------------------------


def test_fuzz_configs_never_crash(tmp_path):
    """Malformed configs: every outcome is a resolved config (exit 0) or one clear error (exit 2)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from llm_summarizer.commands.train import main

    sections = ["model", "lora", "data", "train", "eval", "output", "tracking", "modle", ""]
    keys = [
        "name",
        "r",
        "alpha",
        "max_steps",
        "learning_rate",
        "target_modules",
        "train",
        "report_to",
        "x",
        "load_in_4bit",
        "load_in_8bit",
        "truncation",
        "resume",
        "early_stopping",
        "validation_size",
    ]
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**6), 10**6),
        st.floats(allow_nan=True),
        st.text(max_size=12),
        st.lists(st.text(max_size=5), max_size=3),
    )
    values = st.recursive(scalars, lambda c: st.dictionaries(st.sampled_from(keys), c, max_size=3), max_leaves=6)
    configs = st.one_of(st.dictionaries(st.sampled_from(sections), values, max_size=4), scalars, st.text(max_size=40))
    p = tmp_path / "fuzz.yaml"

    @settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
    @given(configs)
    def check(obj):
        import yaml

        p.write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj))
        rc = main(["--config", str(p), "--print-config"])
        assert rc in (0, 2)

    check()


def test_fuzz_data_files_never_crash(tmp_path):
    """Malformed data files: a clean read or one DataError naming the file, never another exception."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from llm_summarizer.data import rows as R
    from llm_summarizer.errors import UserError

    good = (ROOT / "data/demo/validation.jsonl").read_bytes()[:3000]
    mutations = st.one_of(
        st.binary(max_size=300),
        st.builds(lambda n: good[:n], st.integers(0, len(good))),
        st.builds(lambda i, b: good[:i] + b + good[i:], st.integers(0, len(good)), st.binary(max_size=20)),
        st.builds(lambda t: t.encode("utf-8", "surrogatepass"), st.text(max_size=200)),
        st.builds(
            lambda o: json.dumps(o).encode(),
            st.recursive(
                st.one_of(st.none(), st.integers(), st.text(max_size=8)),
                lambda c: st.one_of(
                    st.lists(c, max_size=3),
                    st.dictionaries(st.sampled_from(["document", "summary", "id", "text"]), c, max_size=3),
                ),
                max_leaves=8,
            ),
        ),
    )

    @settings(max_examples=200, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
    @given(mutations, st.sampled_from([".jsonl", ".json", ".csv", ".tsv", ".parquet"]))
    def check(content, suffix):
        f = tmp_path / f"fuzz{suffix}"
        f.write_bytes(content)
        cfg = load_config(
            "tiny", [f"data.train={f}", "data.validation=null", "data.test=null", "data.validation_size=0"]
        )
        try:
            R.load_raw_splits(cfg)
        except UserError as e:
            assert "fuzz" in str(e) or "data.train" in str(e)

    check()


# -- secrets ------------------------------------------------------------------------------------


def test_secrets_never_written(tmp_path, models_dir, monkeypatch):
    secrets = {"WANDB_API_KEY": "wandb-secret-0123456789abcdef", "HF_TOKEN": "hf_secretTOKEN0123456789"}
    envf = tmp_path / ".env"
    envf.write_text("# tokens\nexport HF_TOKEN='hf_secretTOKEN0123456789'\n")
    monkeypatch.setenv("WANDB_API_KEY", secrets["WANDB_API_KEY"])
    monkeypatch.delenv("HF_TOKEN", raising=False)
    rc = cli_main(
        ["--env-file", str(envf)]
        + demo_args(tmp_path / "run", models_dir, **{"train.max_steps": 4, "train.save_steps": 2})
    )
    assert rc == 0
    assert os.environ.get("HF_TOKEN") == secrets["HF_TOKEN"]
    monkeypatch.delenv("HF_TOKEN")
    for f in (tmp_path / "run").rglob("*"):
        if f.is_file():
            blob = f.read_bytes()
            for name, value in secrets.items():
                assert value.encode() not in blob, f"{name} leaked into {f}"
