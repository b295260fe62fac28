"""Trackers: what W&B (offline here), TensorBoard and MLflow actually recorded, read back with their own readers.

W&B's run file is read with wandb's protobuf classes (`wandb.proto.wandb_internal_pb2.Record` in LevelDB-log
framing), TensorBoard's event files with tensorboard's EventAccumulator, MLflow's store with MlflowClient.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_summarizer.config_loading import load_config

from ..conftest import ROOT, read_jsonl, tiny_overrides

FAKE_SECRETS = {
    "WANDB_API_KEY": "fake-wandb-key-8c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f",
    "HF_TOKEN": "hf_fakeHubToken9Zq8Yx7Wv6Ut5Sr4",
}
URL_PASSWORD = "grouppass9931"
HIDDEN_KEYS = ("_step", "_runtime", "_timestamp", "train/global_step")
SAMPLES = "eval/rouge_samples"  # the samples table's key


# -- W&B's run file, read with its own protobuf classes ------------------------------------------


def wandb_records(path: Path):
    """Records of a .wandb file: a 7-byte header (':W&B', magic, version), then LevelDB-log chunks
    (crc32 u32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last) in 32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    block, header, pos, parts = 32768, 7, 7, b""
    while pos + header <= len(data):
        left = block - pos % block
        if left < header:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + header])
        if kind == 0:  # zero padding up to the end of the block
            pos += left
            continue
        payload, pos = data[pos + header : pos + header + length], pos + header + length
        if kind == 2:
            parts = payload
            continue
        if kind == 3:
            parts += payload
            continue
        chunk, parts = (payload if kind == 1 else parts + payload), b""
        rec = pb.Record()
        rec.ParseFromString(chunk)
        yield rec


class WandbRun:
    """One offline run folder: run record, config, history rows, system stats, artifacts."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir
        (self.file,) = run_dir.glob("run-*.wandb")
        self.run, self.history, self.stats, self.artifacts, self.exit_code = None, [], [], [], None
        self.summary: dict = {}
        for r in wandb_records(self.file):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                self.run = r.run
            elif kind == "history":
                self.history.append(
                    {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
                )
            elif kind == "stats":
                self.stats.append({i.key: json.loads(i.value_json) for i in r.stats.item})
            elif kind == "artifact":
                self.artifacts.append(r.artifact)
            elif kind == "exit":
                self.exit_code = r.exit.exit_code
            elif kind == "summary":
                self.summary.update(
                    {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.summary.update}
                )
        # a SIGKILLed process can leave a file without even its run record (W&B's service never flushed it)
        self.run_id = run_dir.name.rsplit("-", 1)[1]
        self.config = (
            {}
            if self.run is None
            else {i.key: json.loads(i.value_json) for i in self.run.config.update if i.key != "_wandb"}
        )

    def scalars(self) -> dict[str, list[tuple[int, float]]]:
        """key -> [(train/global_step, value)] for every scalar logged (not the samples table)."""
        out: dict = {}
        for row in self.history:
            for k, v in row.items():
                if k in HIDDEN_KEYS or k.startswith(SAMPLES + "/") or not isinstance(v, (int, float)):
                    continue
                out.setdefault(k, []).append((row["train/global_step"], v))
        return out

    def table_rows(self, key: str = SAMPLES) -> list[tuple[int, list[dict]]]:
        """(increment number, rows) for each time a table (the samples table by default) was logged, rows from the
        table files."""
        out = []
        for row in self.history:
            if row.get(f"{key}/_type") != "incremental-table-file":
                continue
            t = json.loads((self.dir / "files" / row[f"{key}/path"]).read_text())
            out.append((row[f"{key}/increment_num"], [dict(zip(t["columns"], r)) for r in t["data"]]))
        return out


def wandb_runs(output_dir: Path) -> list[WandbRun]:
    return [WandbRun(Path(p)) for p in sorted(glob.glob(str(output_dir / "wandb" / "offline-run-*")))]


# -- one tracked run shared by the tests below -------------------------------------------------


def tracker_env(tmp: Path) -> dict:
    """No W&B server (a closed local port), fake secrets, W&B's own folders under tmp."""
    return {
        **FAKE_SECRETS,
        "WANDB_BASE_URL": "http://127.0.0.1:9",
        "WANDB_DATA_DIR": str(tmp / "wandb-data"),
        "WANDB_CACHE_DIR": str(tmp / "wandb-cache"),
        "WANDB_CONFIG_DIR": str(tmp / "wandb-config"),
    }


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, models_dir):
    from llm_summarizer.training.run import run

    tmp = tmp_path_factory.mktemp("tracked")
    handler = _Collect()
    logger = logging.getLogger("llm_summarizer.tracking")
    logger.addHandler(handler)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WANDB_MODE", raising=False)  # the automatic choice is what is tested
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        for k, v in tracker_env(tmp).items():
            mp.setenv(k, v)
        cfg = load_config(
            "tiny",
            tiny_overrides(
                tmp,
                models_dir,
                **{
                    "train.max_steps": 20,
                    "train.eval_steps": 10,
                    "train.save_steps": 20,
                    "train.logging_steps": 5,
                    "tracking.report_to": "[wandb,tensorboard,mlflow]",
                    "tracking.log_model": "true",
                    # free text holding secrets: the environment's token and a URL's password (redacted everywhere)
                    "tracking.tags": f"[demo,ci,{FAKE_SECRETS['HF_TOKEN']}]",
                    "tracking.group": f"tiny-runs https://bob:{URL_PASSWORD}@data.example.org",
                    "tracking.notes": f"a CPU test run {FAKE_SECRETS['HF_TOKEN']}",
                    "tracking.run_name": "tiny-tracked",
                },
            ),
        )
        try:
            result = run(cfg)
        finally:
            logger.removeHandler(handler)
    (wrun,) = wandb_runs(cfg.output_dir)
    return {
        "tmp": tmp,
        "cfg": cfg,
        "result": result,
        "wandb": wrun,
        "log": handler.messages,
        "metrics": json.loads((cfg.model_dir / "metrics.json").read_text()),
    }


def test_wandb_goes_offline_once_with_the_sync_command(tracked):
    wrun, metrics = tracked["wandb"], tracked["metrics"]
    offline = [m for m in tracked["log"] if "offline" in m]
    assert len(offline) == 1, tracked["log"]
    assert "127.0.0.1 cannot be reached" in offline[0]
    cmd = metrics["tracking"]["wandb"]["sync_command"]
    assert cmd in offline[0] and cmd.startswith("wandb sync ")
    assert glob.glob(cmd.split(" ", 2)[2]) == [str(wrun.dir)], "the printed command must name this run's folder"
    ids = json.loads((tracked["cfg"].output_dir / "tracking.json").read_text())
    assert wrun.run.run_id == ids["wandb"]["run_id"] == metrics["tracking"]["wandb"]["run_id"]
    assert metrics["tracking"]["wandb"]["mode"] == "offline" and "url" not in metrics["tracking"]["wandb"]
    assert "wandb" not in (tracked["cfg"].model_dir / "README.md").read_text().lower()
    assert wrun.exit_code == 0


def test_wandb_run_has_config_names_and_system_metrics(tracked):
    from llm_summarizer.config_loading import config_to_dict
    from llm_summarizer.redaction import redact

    wrun, cfg = tracked["wandb"], tracked["cfg"]
    r = wrun.run
    assert (r.project, r.display_name, r.run_group, r.notes, r.job_type) == (
        "llm_summarizer",
        "tiny-tracked",
        "tiny-runs https://<redacted>@data.example.org",
        "a CPU test run <redacted>",
        "train",
    )
    assert list(r.tags) == ["demo", "ci", "<redacted>"]
    # the resolved config, section by section, with the run's secrets (its environment's) removed
    assert wrun.config == json.loads(json.dumps(redact(config_to_dict(cfg), list(FAKE_SECRETS.values()))))
    assert wrun.stats and any("proc.memory.rssMB" in s for s in wrun.stats), "system metrics were not sampled"


def test_wandb_history_holds_every_trainer_log_and_the_base_scores(tracked):
    wrun, result, metrics = tracked["wandb"], tracked["result"], tracked["metrics"]
    logged = wrun.scalars()
    for key in (
        "train/loss",
        "train/learning_rate",
        "train/grad_norm",
        "eval/loss",
        "eval/rouge1",
        "eval/rouge2",
        "eval/rougeL",
        "eval/rougeLsum",
        "eval/gen_len_mean",
        "eval/gen_hit_max_frac",
        "eval/coverage",
        "eval/density",
        "eval/compression",
        "eval/novel_1gram",
        "eval/novel_4gram",
        "eval/repeated_3gram",
        "eval/unsupported_numbers",
        "eval/lead_copy",
        "eval/length_ratio",
        "eval/cut_by_max_new_tokens",
    ):
        assert key in logged, (key, sorted(logged))
    n = 0
    for h in result.log_history:
        for k, v in h.items():
            # total_flos: transformers' own printer callback pops it from the logs before any tracker sees them
            if k in ("step", "total_flos") or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            name = ("eval/" + k[5:]) if k.startswith("eval_") else "train/" + k
            assert (h["step"], pytest.approx(v)) in logged[name], (name, h["step"], v, logged[name])
            n += 1
    assert n >= 40
    # the untrained model's ROUGE opens the eval curves at step 0
    for k in ("rouge1", "rouge2", "rougeL", "rougeLsum", "coverage", "density", "novel_2gram"):
        assert logged[f"eval/{k}"][0] == (0, pytest.approx(metrics["base"][k]))
    # the statistics are curves too: one point per evaluation, the last one the final model's
    for k in ("rougeL", "coverage", "density", "unsupported_numbers"):
        assert [s for s, _ in logged[f"eval/{k}"]] == [0, 10, 20], k
        assert logged[f"eval/{k}"][-1][1] == pytest.approx(metrics["final"][k])
    assert wrun.summary["references/coverage"] == pytest.approx(metrics["references"]["coverage"])


def test_wandb_samples_table_is_one_table_growing_with_each_evaluation(tracked):
    wrun, cfg = tracked["wandb"], tracked["cfg"]
    increments = wrun.table_rows()
    assert [i for i, _ in increments] == [0, 1, 2], "one incremental table, logged once per evaluation"
    keys = {a.name for a in wrun.artifacts if a.type == "wandb-run-incremental-table"}
    assert len(keys) == 1, keys
    rows = [r for _, rs in increments for r in rs]
    on_disk = read_jsonl(cfg.output_dir / "rouge_samples.jsonl")
    assert len(rows) == len(on_disk) == 3 * cfg.eval.log_samples
    for r, d in zip(rows, on_disk):
        assert {k: r[k] for k in ("step", "tag", "id", "document", "reference", "prediction")} == {
            k: d[k] for k in ("step", "tag", "id", "document", "reference", "prediction")
        }
        for k in ("rouge1", "rouge2", "rougeL", "rougeLsum", "coverage", "density", "unsupported_numbers"):
            assert r[k] == pytest.approx(d[k])
    assert all(0.0 <= r["coverage"] <= 1.0 for r in rows if r["coverage"] is not None)
    assert [r["tag"] for r in rows[:: cfg.eval.log_samples]] == ["base", "step-10", "step-20"]


def test_final_adapter_is_a_wandb_artifact(tracked):
    wrun, cfg = tracked["wandb"], tracked["cfg"]
    (art,) = [a for a in wrun.artifacts if a.type == "model"]
    assert art.name == "tiny-adapter" and "final" in art.aliases
    entries = {e.path: e for e in art.manifest.contents}
    assert {"adapter_model.safetensors", "adapter_config.json", "metrics.json", "README.md"} <= set(entries)
    blob = (cfg.model_dir / "adapter_model.safetensors").read_bytes()
    assert entries["adapter_model.safetensors"].digest == base64.b64encode(hashlib.md5(blob).digest()).decode()
    meta = json.loads(art.metadata)
    assert meta["base_model"] == "random:tiny" and meta["final_rougeL"] == pytest.approx(
        tracked["metrics"]["final"]["rougeL"]
    )


def test_evaluate_adds_its_scores_to_the_wandb_and_mlflow_runs_that_trained_the_model(
    tracked, tmp_path, monkeypatch, capsys
):
    """Only when asked (--to-training-run), and MLflow only into the store the user names: the model folder names
    the run, never where to write."""
    from llm_summarizer.commands.evaluate import main

    for k, v in tracker_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    ml = tracked["metrics"]["tracking"]["mlflow"]
    out = tmp_path / "ev"
    assert (
        main(
            [
                "--model",
                str(tracked["cfg"].model_dir),
                "--data",
                str(ROOT / "data/demo/test.jsonl"),
                "--limit",
                "6",
                "--compare-base",
                "--output",
                str(out),
                "--no-report",
                "--to-training-run",
                "--mlflow-tracking-uri",
                ml["tracking_uri"],
            ]
        )
        == 0
    )
    res = json.loads((out / "metrics.json").read_text())["results"]
    printed = capsys.readouterr().out  # the statistics beside ROUGE, the change with its paired interval
    d = res["diagnostics_model_minus_base"]["density"]
    assert "each summary against its document" in printed and "model - base" in printed
    assert f"{d['diff']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]" in printed
    (erun,) = wandb_runs(out)
    assert erun.run_id == tracked["wandb"].run_id  # the training run, resumed by id (synced after it)
    assert erun.summary["test/rougeL"] == pytest.approx(res["model"]["rougeL"]["f1"])
    assert erun.summary["test/gain_rougeL"] == pytest.approx(res["model_minus_base"]["rougeL"]["diff"])
    assert erun.summary["test/examples"] == 6
    assert erun.summary["test/coverage"] == pytest.approx(res["model"]["diagnostics"]["stats"]["coverage"]["mean"])
    assert erun.summary["test/gain_density"] == pytest.approx(d["diff"])
    (row,) = [h for h in erun.history if h.get("test/predictions/_type") == "table-file"]
    table = json.loads((erun.dir / "files" / row["test/predictions/path"]).read_text())
    preds = {r["id"]: r for r in read_jsonl(out / "predictions.jsonl")}
    assert len(table["data"]) == 6 and table["columns"][:4] == ["id", "reference", "prediction", "base_prediction"]
    assert all(r[2] == preds[r[0]]["prediction"] for r in table["data"])
    for f in out.rglob("*"):  # no secret from the environment in anything the evaluation wrote
        if f.is_file():
            blob = f.read_bytes()
            assert not any(v.encode() in blob for v in FAKE_SECRETS.values()), f
    # and into the MLflow run of the same training
    from mlflow import MlflowClient

    got = MlflowClient(tracking_uri=ml["tracking_uri"]).get_run(ml["run_id"]).data
    assert got.metrics["test/rougeL"] == pytest.approx(res["model"]["rougeL"]["f1"])
    assert got.metrics["test/base_density"] == pytest.approx(res["base"]["diagnostics"]["stats"]["density"]["mean"])
    assert got.tags["llm_summarizer.evaluation.test"] == str(out.resolve())
    # by default neither is touched
    out2 = tmp_path / "ev2"
    assert (
        main(
            [
                "--model",
                str(tracked["cfg"].model_dir),
                "--data",
                str(ROOT / "data/demo/test.jsonl"),
                "--limit",
                "2",
                "--output",
                str(out2),
                "--no-report",
            ]
        )
        == 0
    )
    assert not (out2 / "wandb").exists()


def test_tensorboard_has_the_same_scalars(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged = tracked["wandb"].scalars()
    acc = EventAccumulator(str(tracked["cfg"].output_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == set(logged)
    assert {"final/rougeL", "train/loss", "eval/rougeL"} <= set(logged)
    for tag, points in logged.items():
        assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in acc.Scalars(tag)] == points, tag


def test_mlflow_store_has_the_run_and_its_metrics(tracked):
    from mlflow import MlflowClient

    info = tracked["metrics"]["tracking"]["mlflow"]
    assert info["tracking_uri"].startswith("sqlite:///") and info["tracking_uri"].endswith("/outputs/mlflow.db")
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny-tracked"
    assert client.get_experiment(run.info.experiment_id).name == "llm_summarizer"
    assert run.data.params["model.name"] == "random:tiny" and run.data.params["lora.r"] == "16"
    assert {"demo", "ci", "<redacted>"} <= set(run.data.tags)
    assert run.data.tags["mlflow.note.content"] == "a CPU test run <redacted>"
    assert run.data.tags["group"] == "tiny-runs https://<redacted>@data.example.org"
    for key, points in tracked["wandb"].scalars().items():
        hist = sorted((m.step, m.value) for m in client.get_metric_history(info["run_id"], key))
        assert hist == [(s, pytest.approx(v)) for s, v in sorted(points)], key
    assert run.data.metrics["final/rougeL"] == pytest.approx(tracked["metrics"]["final"]["rougeL"])


def test_no_secret_from_the_environment_in_any_written_file(tracked):
    wrun = tracked["wandb"]
    assert not any(v in json.dumps(wrun.config) for v in FAKE_SECRETS.values())
    checked = 0
    for f in tracked["tmp"].rglob("*"):
        if f.is_file():
            blob = f.read_bytes()
            checked += 1
            for name, value in {**FAKE_SECRETS, "the URL password": URL_PASSWORD}.items():
                assert value.encode() not in blob, f"{name} leaked into {f}"
    assert checked > 50


# -- a killed run, resumed ---------------------------------------------------------------------


def test_killed_and_resumed_run_continues_the_same_wandb_run(tmp_path, models_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from llm_summarizer.training.run import run

    over = tiny_overrides(
        tmp_path,
        models_dir,
        **{
            "eval.generate": "false",
            "eval.base_eval": "false",
            "train.eval_strategy": "'no'",
            "train.metric_for_best_model": "eval_loss",
            "train.max_steps": 30,
            "train.save_steps": 10,
            "train.logging_steps": 5,
            "train.save_total_limit": "null",
            "tracking.report_to": "[wandb,tensorboard]",
        },
    )
    env = {**os.environ, **tracker_env(tmp_path), "WANDB_MODE": "offline"}
    env.pop("WANDB_SERVICE", None)  # its own W&B service, as a separate command would have, not this process's
    out = tmp_path / "outputs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_summarizer", "train", "--config", "tiny", *over],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 600
    while not (out / "checkpoint-20" / "trainer_state.json").exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first_id = json.loads((out / "tracking.json").read_text())["wandb"]["run_id"]

    with pytest.MonkeyPatch.context() as mp:
        for k, v in tracker_env(tmp_path).items():
            mp.setenv(k, v)
        mp.setenv("WANDB_MODE", "offline")
        result = run(load_config("tiny", over))
    resumed_at = int(result.resumed_from.name.split("-")[1])
    assert resumed_at in (10, 20) and result.metrics.train.global_step == 30

    assert json.loads((out / "tracking.json").read_text())["wandb"]["run_id"] == first_id
    assert result.metrics.tracking["wandb"]["run_id"] == first_id
    first, second = wandb_runs(out)
    assert first.run_id == second.run_id == second.run.run_id == first_id
    assert first.exit_code is None, "the killed segment never closed its run"
    assert first.run is None or first.run.run_id == first_id
    assert second.exit_code == 0
    steps2 = [s for s, _ in second.scalars()["train/loss"]]
    assert steps2 == list(range(resumed_at + 5, 31, 5))
    # TensorBoard: the steps the killed process logged after the checkpoint are dropped, none twice
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    tb_steps = [e.step for e in acc.Scalars("train/loss")]
    assert tb_steps == [1] + list(range(5, 31, 5)), tb_steps
    tb_loss = {e.step: e.value for e in acc.Scalars("train/loss")}
    for s, v in second.scalars()["train/loss"]:
        assert tb_loss[s] == pytest.approx(v, rel=1e-6)


# -- decisions without a run -------------------------------------------------------------------


def test_wandb_mode_decision():
    from llm_summarizer.tracking.wandb_tracker import decide_wandb_mode

    yes, no = (lambda: True), (lambda: False)
    boom = lambda: pytest.fail("must not be asked")  # noqa: E731
    assert decide_wandb_mode("auto", {}, has_key=no, reachable=boom) == (
        "offline",
        "no W&B API key (set WANDB_API_KEY, run `wandb login`, or add a Colab secret)",
    )
    assert decide_wandb_mode("auto", {}, has_key=yes, reachable=no) == ("offline", "api.wandb.ai cannot be reached")
    assert (
        decide_wandb_mode("auto", {"WANDB_BASE_URL": "https://wandb.example.org"}, has_key=yes, reachable=no)[1]
        == "wandb.example.org cannot be reached"
    )
    assert decide_wandb_mode("auto", {}, has_key=yes, reachable=yes) == ("online", None)
    assert decide_wandb_mode("auto", {"WANDB_MODE": "offline"}, has_key=boom, reachable=boom)[0] == "offline"
    assert decide_wandb_mode("auto", {"WANDB_MODE": "disabled"}, has_key=boom, reachable=boom)[0] == "disabled"
    assert decide_wandb_mode("online", {"WANDB_MODE": "offline"}, has_key=boom, reachable=boom) == ("online", None)
    assert decide_wandb_mode("offline", {}, has_key=boom, reachable=boom)[0] == "offline"


def test_wandb_key_found_in_env_or_netrc(tmp_path):
    from llm_summarizer.tracking.wandb_tracker import has_wandb_key

    netrc = tmp_path / "netrc"
    assert not has_wandb_key({"NETRC": str(netrc)})
    assert has_wandb_key({"NETRC": str(netrc), "WANDB_API_KEY": "x" * 40})
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    assert has_wandb_key({"NETRC": str(netrc)})
    assert not has_wandb_key({"NETRC": str(netrc), "WANDB_BASE_URL": "https://wandb.example.org"})


def test_redact_removes_secrets():
    from llm_summarizer.redaction import REDACTED, env_secrets, redact

    env = {
        "HF_TOKEN": "hf_abcdefghijklmnop",
        "WANDB_API_KEY": "0123456789abcdef",
        "PATH": "/usr/bin:/bin",
        "MLFLOW_TRACKING_PASSWORD": "pw-123456789",
        "SHORT_TOKEN": "abc",
        "TOKENIZERS_PARALLELISM": "false",
    }
    secrets = env_secrets(env)
    assert set(secrets) == {"hf_abcdefghijklmnop", "0123456789abcdef", "pw-123456789"}
    got = redact(
        {
            "model": {"name": "org/model", "hub_token": "anything", "max_new_tokens": 128},
            "data": {"path": "s3://user:pw@bucket/x.jsonl", "note": "uses hf_abcdefghijklmnop here"},
            "list": ["0123456789abcdef", 1, None],
        },
        secrets,
    )
    assert got == {
        "model": {"name": "org/model", "hub_token": REDACTED, "max_new_tokens": 128},
        "data": {"path": f"s3://{REDACTED}@bucket/x.jsonl", "note": f"uses {REDACTED} here"},
        "list": [REDACTED, 1, None],
    }


def test_model_card_links_the_wandb_run_only_when_online(tmp_path):
    from llm_summarizer.contracts import RunMetrics
    from llm_summarizer.evaluation.modelcard import write_model_card

    cfg = load_config("tiny")
    base = {"base": {"rougeL": 0.1}, "final": {"rougeL": 0.5}, "train": {"global_step": 3}, "data": {}}
    url = "https://wandb.ai/team/llm_summarizer/runs/abc12345"
    online = RunMetrics.from_dict({**base, "tracking": {"wandb": {"mode": "online", "url": url}}})
    offline = RunMetrics.from_dict({**base, "tracking": {"wandb": {"mode": "offline", "sync_command": "wandb sync x"}}})
    write_model_card(tmp_path / "online.md", cfg, online, {})
    write_model_card(tmp_path / "offline.md", cfg, offline, {})
    assert f"Weights & Biases: {url}" in (tmp_path / "online.md").read_text()
    assert "wandb" not in (tmp_path / "offline.md").read_text().lower()


def test_mlflow_file_store_from_config(tmp_path, monkeypatch):
    """A folder as tracking URI: MLflow's file store, read back by MLflow itself; tracker ids kept for resume."""
    from mlflow import MlflowClient

    from llm_summarizer import layout
    from llm_summarizer.contracts import RunMetrics
    from llm_summarizer.tracking import base, trackers

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(
        "tiny",
        [
            f"output.dir={tmp_path / 'out'}",
            "tracking.report_to=mlflow",
            f"tracking.mlflow_tracking_uri={tmp_path / 'mlruns'}",
        ],
    )
    with trackers.start_trackers(cfg) as t:
        t.log(base.scalars({"loss": 2.5, "eval_rougeL": 0.25}), step=7)
        t.finish(None, RunMetrics.from_dict({"final": {"rougeL": 0.25}, "train": {"global_step": 7}}))
    info = json.loads((cfg.output_dir / layout.TRACKING_FILE).read_text())["mlflow"]
    assert info["tracking_uri"] == (tmp_path / "mlruns").resolve().as_uri()
    assert (tmp_path / "mlruns").is_dir()
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    assert [(m.step, m.value) for m in client.get_metric_history(info["run_id"], "train/loss")] == [(7, 2.5)]
    assert client.get_run(info["run_id"]).data.metrics["eval/rougeL"] == 0.25
    assert client.get_run(info["run_id"]).info.status == "FINISHED"


def test_report_to_none_opens_nothing(tmp_path):
    from llm_summarizer.tracking import trackers

    cfg = load_config("tiny", [f"output.dir={tmp_path / 'out'}"])
    t = trackers.start_trackers(cfg)
    assert not t.active and t.info() == {}
    assert not (tmp_path / "out").exists()
