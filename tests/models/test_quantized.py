"""4-bit (NF4) on the CPU: QLoRA training on both backends, evaluate and summarize on a 4-bit base, 8-bit
optimizers, and the one message a machine gets where bitsandbytes cannot quantize."""

import json
import logging
import subprocess
import sys

import pytest
import torch
from transformers import TrainerCallback

from ..conftest import ROOT, read_jsonl, tiny_overrides

TEST = ROOT / "data" / "demo" / "test.jsonl"
LAYERS = 14  # the tiny model's 2 decoder layers x 7 projections, each a bitsandbytes Linear4bit in NF4

# A short QLoRA run of the tiny model: the base in NF4, a ROUGE pass between training steps (step 4), one checkpoint.
QLORA = {
    "model.load_in_4bit": "true",
    "train.max_steps": 8,
    "train.warmup_steps": 2,
    "train.logging_steps": 2,
    "train.eval_steps": 4,
    "train.save_steps": 8,
    "eval.num_samples": 2,
    "eval.base_eval": "false",
}


def linear4bit(model) -> int:
    import bitsandbytes as bnb

    return sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


class Layers(TrainerCallback):
    """How many 4-bit layers the trainer's model holds when training starts, and when it ends (after the ROUGE
    passes that generated between steps)."""

    def __init__(self):
        self.seen = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.seen["begin"] = linear4bit(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.seen["end"] = linear4bit(model)


def losses(history: list) -> list:
    return [h["loss"] for h in history if "loss" in h]


class Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def qlora_unsloth(tmp_path_factory, models_dir):
    """QLoRA on the unsloth backend with the default config's optimizer (adamw_8bit), in this process."""
    from llm_summarizer.config_loading import load_config
    from llm_summarizer.training.run import run

    tmp = tmp_path_factory.mktemp("qlora-unsloth")
    layers, warnings = Layers(), Warnings()
    cfg = load_config("tiny", tiny_overrides(tmp, models_dir, **QLORA, **{"train.optim": "adamw_8bit"}))
    logger = logging.getLogger("llm_summarizer")
    logger.addHandler(warnings)
    try:
        result = run(cfg, extra_callbacks=[layers])
    finally:
        logger.removeHandler(warnings)
    return result, layers.seen, tmp, warnings.messages


def optimizer_state_dtypes(checkpoint) -> set:
    """The dtypes of a checkpoint's optimizer state tensors (bitsandbytes nests its 8-bit state in a dict)."""

    def tensors(x):
        if torch.is_tensor(x):
            yield x
        elif isinstance(x, dict):
            for v in x.values():
                yield from tensors(v)

    opt = torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True)
    return {t.dtype for t in tensors(opt["state"]) if t.dim()}


def test_qlora_on_the_unsloth_backend_trains_an_nf4_base(qlora_unsloth):
    result, layers, tmp, warnings = qlora_unsloth
    assert layers == {"begin": LAYERS, "end": LAYERS}
    assert (result.model_dir / "adapter_model.safetensors").is_file()
    assert "load_in_4bit: true" in (result.model_dir / "config.yaml").read_text()
    run_info = json.loads((result.model_dir / "run_info.json").read_text())
    assert run_info["model"]["backend"] == "unsloth"
    loss = losses(result.log_history)
    assert len(loss) >= 3 and loss[-1] < loss[0] - 0.5, loss
    assert [h["step"] for h in result.log_history if "eval_rouge1" in h][0] == 4  # generated on the 4-bit base
    dtypes = optimizer_state_dtypes(tmp / "outputs" / "checkpoint-8")
    if torch.cuda.is_available():  # bitsandbytes' 8-bit AdamW, as asked
        assert torch.uint8 in dtypes
        return
    assert run_info["model"]["precision"] == "fp32"
    # Unsloth's CPU trainer replaces bitsandbytes' optimizers with AdamW: said once, and so it is in the checkpoint
    assert [
        w
        for w in warnings
        if w.startswith("train.optim=adamw_8bit: Unsloth's CPU backend runs bitsandbytes' optimizers on a GPU only")
    ], warnings
    assert torch.uint8 not in dtypes


def test_evaluate_and_summarize_load_the_base_in_4bit(qlora_unsloth, tmp_path, capsys):
    from llm_summarizer.commands.summarize import main as summarize_main
    from llm_summarizer.evaluation.evaluate import evaluate_model

    result = qlora_unsloth[0]
    evaluate_model(result.model_dir, data=str(TEST), limit=4, output=tmp_path / "eval", report=False)
    settings = json.loads((tmp_path / "eval" / "eval_settings.json").read_text())
    assert settings["quantized"] == "4bit"
    assert "rougeL" in (tmp_path / "eval" / "metrics.json").read_text()
    doc = tmp_path / "doc.txt"
    doc.write_text(read_jsonl(TEST)[0]["document"])
    capsys.readouterr()
    assert summarize_main(["--model", str(result.model_dir), str(doc)]) == 0
    assert capsys.readouterr().out.strip()


TRANSFORMERS_QLORA = r"""
import json, sys
import bitsandbytes as bnb
import torch
from transformers import TrainerCallback
from llm_summarizer.config_loading import load_config
from llm_summarizer.data.rows import load_raw_splits
from llm_summarizer.models.generation import summarize_texts
from llm_summarizer.models.loading import load_for_generation, load_for_training
from llm_summarizer.training.run import run

def count(model):
    return sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())

seen = {}
class Layers(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        seen["begin"] = count(model)
    def on_train_end(self, args, state, control, model=None, **kwargs):
        seen["end"] = count(model)

cfg = load_config("tiny", json.loads(sys.argv[1]))
result = run(cfg, extra_callbacks=[Layers()])
loaded = load_for_generation(result.model_dir)
docs = json.loads(sys.argv[2])
texts = [s.text for s in summarize_texts(loaded, docs)]

# The gradients of one step, before and after a generation on the same 4-bit model.
model, tok, _ = load_for_training(cfg, load_raw_splits(cfg))
ids = tok(docs[0], return_tensors="pt")
def first_layer_grads():
    model.train()
    model.zero_grad()
    model(**ids, labels=ids["input_ids"]).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()
            if p.requires_grad and "layers.0." in n and "lora_B" in n}  # lora_A's are 0 while lora_B is
before = first_layer_grads()
model.eval()
with torch.no_grad():
    model.generate(**ids, max_new_tokens=4, do_sample=False)
after = first_layer_grads()
print(json.dumps({"layers": seen, "quantized": loaded.quantized, "generation_layers": count(loaded.model),
                  "texts": texts, "history": result.log_history, "unsloth": "unsloth" in sys.modules,
                  "grads": len(before), "grads_nonzero": sum(bool(g.abs().sum() > 0) for g in before.values()),
                  "grad_change": max((after[n] - g).abs().max().item() / g.abs().max().item()
                                     for n, g in before.items())}))
"""


@pytest.mark.slow
def test_qlora_on_the_transformers_backend(tmp_path, models_dir):
    """bitsandbytes + PEFT through TRL's trainer on the CPU (its own process: this backend never imports Unsloth),
    then generation on the 4-bit base."""
    overrides = tiny_overrides(
        tmp_path, models_dir, **QLORA, **{"model.backend": "transformers", "train.optim": "adamw_8bit"}
    )
    docs = [r["document"] for r in read_jsonl(TEST)[:2]]
    r = subprocess.run(
        [sys.executable, "-c", TRANSFORMERS_QLORA, json.dumps(overrides), json.dumps(docs)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["unsloth"] is False
    assert got["layers"] == {"begin": LAYERS, "end": LAYERS}
    loss = losses(got["history"])
    assert len(loss) >= 3 and loss[-1] < loss[0] - 0.5, loss
    assert [h["step"] for h in got["history"] if "eval_rouge1" in h][0] == 4
    assert (tmp_path / "fine_tuned" / "adapter_model.safetensors").is_file()
    # train.optim=adamw_8bit ran as bitsandbytes' 8-bit AdamW on the CPU: its state is uint8 in the checkpoint
    assert torch.uint8 in optimizer_state_dtypes(tmp_path / "outputs" / "checkpoint-8")
    assert got["quantized"] == "4bit" and got["generation_layers"] == LAYERS
    assert len(got["texts"]) == 2 and all(t.strip() for t in got["texts"])
    # bitsandbytes 0.50 repacks a 4-bit layer for its AVX512-BF16 CPU kernel the first time it runs without
    # gradients, and after that no gradient flows back through it (the ROUGE pass generates between training
    # steps): the loader keeps the layers on their plain path, so a step's gradients are the same after generating.
    assert got["grads"] == 7 and got["grads_nonzero"] == 7  # LoRA B of layer 0's 7 projections
    assert got["grad_change"] < 1e-4, got["grad_change"]


@pytest.fixture
def bnb_without_cpu_kernels(monkeypatch):
    """bitsandbytes as releases without CPU kernels behave: 4-bit quantization and 8-bit optimizers fail."""
    if torch.cuda.is_available():
        pytest.skip("on a GPU bitsandbytes quantizes whatever its CPU kernels do")
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    def no_kernel(*args, **kwargs):
        raise NotImplementedError("no CPU kernel for this operation")

    monkeypatch.setattr(bnbf, "quantize_4bit", no_kernel)
    monkeypatch.setattr(bnb.optim, "AdamW8bit", no_kernel)


def test_4bit_training_where_bitsandbytes_cannot_is_one_message(bnb_without_cpu_kernels, tmp_path, models_dir, capsys):
    from llm_summarizer.commands.train import main

    capsys.readouterr()
    rc = main(["--config", "tiny", *tiny_overrides(tmp_path, models_dir, **{"model.load_in_4bit": "true"})])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "model.load_in_4bit=true" in err and "cannot quantize to NF4 on the CPU" in err
    assert "model.load_in_4bit=false" in err
    assert not (tmp_path / "fine_tuned").exists()


def test_8bit_optimizer_where_bitsandbytes_cannot_falls_back_and_says_why(bnb_without_cpu_kernels):
    from llm_summarizer.config_loading import load_config
    from llm_summarizer.models.device import resolve_optim

    warnings = Warnings()
    logger = logging.getLogger("llm_summarizer")
    logger.addHandler(warnings)
    try:
        cfg = load_config("tiny", ["train.optim=adamw_8bit", "model.backend=transformers"])
        assert resolve_optim(cfg) == "adamw_torch"
    finally:
        logger.removeHandler(warnings)
    assert any(
        m.startswith("train.optim=adamw_8bit: bitsandbytes cannot run 8-bit optimizers on the CPU")
        for m in warnings.messages
    ), warnings.messages


def test_8bit_loading_on_a_cpu_names_the_alternatives(models_dir):
    from llm_summarizer.config_loading import load_config
    from llm_summarizer.errors import UserError
    from llm_summarizer.models.loading import load_for_training

    if torch.cuda.is_available():
        pytest.skip("8-bit loading runs on a GPU")
    with pytest.raises(UserError, match=r"load_in_8bit=true needs a CUDA GPU.*model.load_in_4bit=true \(NF4"):
        load_for_training(load_config("tiny", [f"model.cache_dir={models_dir}", "model.load_in_8bit=true"]))
