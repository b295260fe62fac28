"""models/directory.py: what a model directory is, from its file names and small JSON files alone (no weights are
read, so the weight files here are names with a few bytes), and each incomplete directory's message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llm_summarizer.contracts import METRICS_VERSION
from llm_summarizer.errors import UserError
from llm_summarizer.models.directory import check_architecture, describe_model_dir, resolve_base, weight_files

LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}


def model(p: Path, config: dict | None = None, *files: str, **json_files) -> Path:
    """A directory with config.json (unless None), the named (fake) files, and name=dict as name.json."""
    p.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (p / "config.json").write_text(json.dumps(config))
    for f in files:
        (p / f).write_bytes(b"not read")
    for name, obj in json_files.items():
        (p / f"{name}.json").write_text(json.dumps(obj))
    return p


def merged(p: Path, **json_files) -> Path:
    return model(p, LLAMA, "model.safetensors", **json_files)


def adapter(p: Path, base, weights: str = "adapter_model.safetensors") -> Path:
    return model(p, None, *([weights] if weights else []), adapter_config={"base_model_name_or_path": base, "r": 8})


def refused(fn, *args, **kw) -> str:
    with pytest.raises(UserError) as e:
        fn(*args, **kw)
    return str(e.value)


# -- merged models -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weights",
    ["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"],
)
def test_config_and_weights_are_a_merged_model(tmp_path, weights):
    d = describe_model_dir(model(tmp_path / "m", LLAMA, weights))
    assert (d.kind, d.base, d.base_recorded, d.config_yaml, d.metrics) == ("merged", None, None, None, None)


def test_what_this_project_wrote_beside_the_weights_is_found(tmp_path):
    p = merged(tmp_path / "fine_tuned", metrics={"final": {"rouge1": 0.41}, "train": {"global_step": 7}})
    (p / "config.yaml").write_text("model: {}\n")
    d = describe_model_dir(str(p))
    assert d.config_yaml == p / "config.yaml" and d.metrics.final_score("eval_rouge1") == 0.41
    assert d.metrics.train.global_step == 7 and d.metrics.version == METRICS_VERSION == 3  # an unversioned file reads
    assert d.name == "fine_tuned"
    (tmp_path / "link").symlink_to(p)
    assert describe_model_dir(tmp_path / "link").name == "fine_tuned"  # the real folder's name, for cards and runs


def test_a_missing_or_file_path_is_named(tmp_path):
    assert refused(describe_model_dir, tmp_path / "nope") == f"--model {tmp_path / 'nope'}: directory not found"
    (tmp_path / "f.bin").write_text("x")
    assert refused(describe_model_dir, tmp_path / "f.bin", what="model.name").startswith(
        f"model.name {tmp_path / 'f.bin'}: is a file; expected a model directory"
    )


def test_a_folder_without_config_is_not_a_model(tmp_path):
    p = model(tmp_path / "m", None, "model.safetensors")
    assert refused(describe_model_dir, p) == (
        f"--model {p}: {p} has no config.json (a full model) and no adapter_config.json (a LoRA adapter); is it a "
        f"model directory?"
    )


@pytest.mark.parametrize("files", [(), ("tokenizer.json",), ("model-00001-of-00002.safetensors",)])
def test_config_without_weights_says_the_save_did_not_finish(tmp_path, files):
    # shards without their index cannot be loaded either
    p = model(tmp_path / "m", LLAMA, *files)
    assert refused(describe_model_dir, p) == (
        f"--model {p}: {p} has config.json but no weights (model.safetensors, pytorch_model.bin); the save or copy "
        f"did not finish"
    )


def test_a_broken_metrics_file_is_named_and_left_out(tmp_path, caplog):
    """Every command works without metrics.json: a damaged one is named and left out, not a refusal."""
    p = merged(tmp_path / "m")
    (p / "metrics.json").write_text('{"test": ')
    with caplog.at_level("WARNING", logger="llm_summarizer"):
        assert describe_model_dir(p).metrics is None
    assert caplog.messages == [
        f"{p / 'metrics.json'}: not valid JSON (Expecting value: line 1 column 10 (char 9)); going on without it "
        "(the generation budget validated in training and the training scores in reports and cards are left out)"
    ]


def test_the_base_an_export_recorded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = merged(tmp_path / "base")
    assert describe_model_dir(merged(tmp_path / "e1", export_info={"base_model": str(base)})).base == str(base)
    gone = describe_model_dir(merged(tmp_path / "e2", export_info={"base_model": str(tmp_path / "gone")}))
    assert gone.base is None and gone.base_recorded == str(tmp_path / "gone")  # only --compare-base needs it
    hub = describe_model_dir(merged(tmp_path / "e3", export_info={"base_model": "org/base-model"}))
    assert hub.base == "org/base-model"
    given = describe_model_dir(tmp_path / "e2", base="org/other")
    assert given.base == "org/other" and given.base_recorded == str(tmp_path / "gone")


# -- adapters ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", ["adapter_model.safetensors", "adapter_model.bin"])
def test_an_adapter_on_a_hub_base(tmp_path, weights):
    d = describe_model_dir(adapter(tmp_path / "a", "unsloth/Qwen2.5-0.5B-Instruct", weights))
    assert (d.kind, d.base, d.base_recorded) == (
        "adapter",
        "unsloth/Qwen2.5-0.5B-Instruct",
        "unsloth/Qwen2.5-0.5B-Instruct",
    )


def test_an_adapter_config_wins_over_a_config_json(tmp_path):
    p = adapter(tmp_path / "a", "org/base")
    (p / "config.json").write_text(json.dumps(LLAMA))
    assert describe_model_dir(p).kind == "adapter"


def test_an_adapter_without_weights(tmp_path):
    p = adapter(tmp_path / "a", "org/base", weights="")
    assert refused(describe_model_dir, p) == (
        f"--model {p}: has adapter_config.json but no adapter weights (adapter_model.safetensors or "
        f"adapter_model.bin); the save or copy did not finish"
    )


def test_an_adapter_config_that_is_not_an_object(tmp_path):
    p = model(tmp_path / "a", None, "adapter_model.safetensors")
    (p / "adapter_config.json").write_text("[]")
    assert refused(describe_model_dir, p) == (
        f"--model: {p / 'adapter_config.json'}: its content is []; expected a JSON object. Is the directory complete?"
    )


def test_an_adapter_naming_no_base(tmp_path):
    p = adapter(tmp_path / "a", None)
    assert refused(describe_model_dir, p) == (
        f"--model: {p / 'adapter_config.json'} names no base model (base_model_name_or_path); pass --base "
        f"/path/to/base/model"
    )
    assert describe_model_dir(p, base="org/base").base == "org/base"


def test_a_relative_base_is_found_from_the_working_directory_then_beside_the_adapter(tmp_path, monkeypatch):
    work = tmp_path / "project"
    merged(work / "models" / "base")
    a = adapter(work / "runs" / "adapter", "models/base")
    monkeypatch.chdir(work)
    assert describe_model_dir(a).base == "models/base"  # as recorded: it is there from here
    # moved together with its base (runs/models/base beside the adapter's folder), opened from elsewhere
    merged(work / "runs" / "models" / "base")
    monkeypatch.chdir(tmp_path)
    assert describe_model_dir(a).base == str((work / "runs" / "models" / "base").resolve())
    merged(a / "models" / "base")  # inside the adapter's own folder comes before beside it
    assert describe_model_dir(a).base == str((a / "models" / "base").resolve())


def test_an_adapter_whose_local_base_is_gone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = adapter(tmp_path / "a", str(tmp_path / "base"))
    msg = refused(describe_model_dir, a, what="model.name")
    assert msg.startswith(
        f"model.name: {a} is a LoRA adapter whose base model {tmp_path / 'base'} is not found "
        f"(looked in: {tmp_path / 'base'})."
    )
    assert "pass --base /path/to/base/model, or use a merged model directory" in msg
    rel = adapter(tmp_path / "b", "./base")
    assert f"(looked in: base, {rel / 'base'}, {tmp_path / 'base'})" in refused(describe_model_dir, rel)


def test_an_adapter_whose_base_folder_is_incomplete(tmp_path):
    base = model(tmp_path / "base", LLAMA)  # config.json, no weights: a copy that did not finish
    msg = refused(describe_model_dir, adapter(tmp_path / "a", str(base)))
    assert msg.startswith(f"--model: base model of the adapter: {base} has config.json but no weights")


# -- --base --------------------------------------------------------------------------------------------------------


def test_base_given_on_the_command_line(tmp_path):
    a = tmp_path / "a"
    base = merged(tmp_path / "base")
    assert resolve_base("org/recorded", a, str(base), "--model") == str(base)
    assert resolve_base(None, a, "org/base", "--model") == "org/base"  # a hub id is returned for the loader
    assert (
        refused(resolve_base, "org/recorded", a, str(tmp_path / "nope"), "--model")
        == f"--base {tmp_path / 'nope'}: directory not found"
    )
    empty = model(tmp_path / "empty", None)
    assert refused(resolve_base, None, a, str(empty), "--model").startswith(
        f"--base {empty}: {empty} has no config.json"
    )


# -- architecture --------------------------------------------------------------------------------------------------


def test_a_causal_lm_passes_and_a_hub_id_is_left_to_the_loader(tmp_path):
    check_architecture(str(merged(tmp_path / "m")), "--model")
    check_architecture(str(model(tmp_path / "qwen", {"model_type": "qwen2"})), "--model")  # no architectures listed
    check_architecture("org/not-a-folder", "--model")


@pytest.mark.parametrize(
    "config,words",
    [
        (
            {"model_type": "bert", "architectures": ["BertModel"]},
            "is a BertModel, not a causal language model (model_type bert)",
        ),
        (
            {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]},
            "is a T5ForConditionalGeneration, not a causal language model (model_type t5)",
        ),
        ({"model_type": "t5"}, "is a t5, not a causal language model"),
        ({"model_type": "llama", "architectures": ["LlamaForSequenceClassification"]}, "not a causal language model"),
    ],
)
def test_a_model_that_is_not_a_causal_lm_is_refused(tmp_path, config, words):
    p = model(tmp_path / "m", config, "model.safetensors")
    msg = refused(check_architecture, str(p), "model.name")
    assert msg.startswith(f"model.name: {p} ") and words in msg and "(...ForCausalLM)" in msg


def test_an_unknown_model_type_names_the_transformers_version(tmp_path):
    import transformers

    p = model(tmp_path / "m", {"model_type": "brand-new-lm", "architectures": ["BrandNewForCausalLM"]})
    msg = refused(check_architecture, str(p), "--model")
    assert msg.startswith(
        f"--model: {p}/config.json has model_type 'brand-new-lm', which transformers "
        f"{transformers.__version__} does not know"
    )
    # with its own code (auto_map) and trust_remote_code it is the model's business
    p = model(
        tmp_path / "r",
        {
            "model_type": "brand-new-lm",
            "architectures": ["BrandNewForCausalLM"],
            "auto_map": {"AutoModelForCausalLM": "modeling.BrandNew"},
        },
    )
    check_architecture(str(p), "--model", trust_remote_code=True)
    assert "does not know" in refused(check_architecture, str(p), "--model")


def test_an_8bit_bitsandbytes_model_needs_a_gpu(tmp_path):
    p = model(tmp_path / "m", {**LLAMA, "quantization_config": {"quant_method": "bitsandbytes", "load_in_8bit": True}})
    if torch.cuda.is_available():
        check_architecture(str(p), "--model")
    else:
        msg = refused(check_architecture, str(p), "--model")
        assert msg == (
            f"--model: {p} is stored quantized with bitsandbytes and this machine has no CUDA GPU (8-bit "
            f"weights need a CUDA GPU). Use a 16-bit model directory on the CPU"
        )


# -- weight files --------------------------------------------------------------------------------------------------


def test_weight_files_by_name_shards_in_order(tmp_path):
    p = model(
        tmp_path / "m",
        LLAMA,
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "tokenizer.json",
        "adapter_model.safetensors",
        "pytorch_model-00001-of-00001.bin",
        "training_args.bin",
    )
    assert weight_files(p) == [
        "adapter_model.safetensors",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "pytorch_model-00001-of-00001.bin",
    ]
    assert weight_files(model(tmp_path / "empty", LLAMA)) == []
