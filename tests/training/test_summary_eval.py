"""ROUGE while training: logged scores equal rouge-score on the written predictions, early stopping, best model."""

import json
import re

import pytest

from llm_summarizer.config_loading import load_config

from ..conftest import ROOT, read_jsonl, tiny_overrides


def independent_rouge(reference: str, prediction: str) -> dict:
    from rouge_score import rouge_scorer

    sc = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    # the documented protocol: a sentence ends at . ! ? followed by whitespace and a capital, digit or opening quote
    nl = lambda t: "\n".join(
        s.strip()
        for line in t.strip().split("\n")
        for s in re.split(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9#])", line.strip())
        if s.strip()
    )
    return {k: v.fmeasure for k, v in sc.score(nl(reference), nl(prediction)).items()}


def test_logged_rouge_equals_rouge_score_on_written_predictions(tiny_run):
    evals = [h for h in tiny_run.log_history if "eval_rougeL" in h]
    for h in evals:
        rows = read_jsonl(tiny_run.output_dir / "eval_predictions" / f"step-{h['step']}.jsonl")
        assert len(rows) == h["eval_summary_examples"]
        per = [independent_rouge(r["reference"], r["prediction"]) for r in rows]
        for k in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
            assert h[f"eval_{k}"] == pytest.approx(sum(p[k] for p in per) / len(per), abs=1e-9)
        # predictions are generated text, not copies of the reference
        assert any(r["prediction"] != r["reference"] for r in rows)


def test_rouge_rises_across_evaluations(tiny_run):
    curve = [h["eval_rougeL"] for h in tiny_run.log_history if "eval_rougeL" in h]
    assert curve[-1] > curve[0] + 0.2, curve
    # the untrained model (step 0) scores below the first evaluation during training, and far below the last
    assert tiny_run.metrics.base["rougeL"] < curve[0] and tiny_run.metrics.base["rougeL"] < curve[-1] - 0.5


def test_samples_file_records_examples_per_evaluation(tiny_run):
    rows = read_jsonl(tiny_run.output_dir / "rouge_samples.jsonl")
    steps = {r["step"] for r in rows}
    evals = {h["step"] for h in tiny_run.log_history if "eval_rougeL" in h}
    assert evals <= steps
    r = rows[-1]
    assert set(r) >= {"step", "id", "document", "reference", "prediction", "rougeL"}


def test_same_losses_with_and_without_rouge_callback(tmp_path, models_dir):
    from llm_summarizer.training.run import run

    common = [
        "train.max_steps=12",
        "train.logging_steps=1",
        "train.eval_steps=4",
        "train.save_steps=100",
        "eval.base_eval=false",
    ]
    a = run(load_config("tiny", tiny_overrides(tmp_path / "a", models_dir) + common))
    b = run(load_config("tiny", tiny_overrides(tmp_path / "b", models_dir) + common + ["eval.generate=false"]))
    la = [(h["step"], h["loss"]) for h in a.log_history if "loss" in h]
    lb = [(h["step"], h["loss"]) for h in b.log_history if "loss" in h]
    assert len(la) == 12 and [s for s, _ in la] == [s for s, _ in lb]
    assert [l for _, l in la] == pytest.approx([l for _, l in lb], rel=1e-6)
    assert any("eval_rougeL" in h for h in a.log_history)
    assert not any("eval_rougeL" in h for h in b.log_history)


def test_early_stopping_on_rouge(tmp_path, models_dir):
    from llm_summarizer.training.run import run

    # A learning rate this small leaves ROUGE where it is, so patience runs out.
    cfg = load_config(
        "tiny",
        tiny_overrides(tmp_path, models_dir)
        + [
            "train.learning_rate=1e-12",
            "train.max_steps=60",
            "train.eval_steps=5",
            "train.save_steps=5",
            "eval.base_eval=false",
            "eval.num_samples=8",
            "train.early_stopping=[{metric: eval_rougeL, patience: 2, min_delta: 0.01}]",
        ],
    )
    res = run(cfg)
    assert res.metrics.train.global_step == 15  # first eval sets the best, two more without improvement
    state = json.loads(
        sorted(cfg.output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
        .joinpath("trainer_state.json")
        .read_text()
    )
    es = state["stateful_callbacks"]["EarlyStopping_eval_rougeL"]
    es = es[0] if isinstance(es, list) else es
    assert es["attributes"]["bad_evals"] == 2


def test_load_best_model_at_end_keeps_best_rouge_weights(tmp_path, models_dir):
    from safetensors.torch import load_file

    from llm_summarizer.training.run import run

    cfg = load_config(
        "tiny",
        tiny_overrides(tmp_path, models_dir)
        + [
            "train.max_steps=40",
            "train.eval_steps=10",
            "train.save_steps=10",
            "train.save_total_limit=1",
            "train.load_best_model_at_end=true",
            "train.learning_rate=2e-2",
            "eval.base_eval=false",
        ],
    )
    res = run(cfg)
    curve = {h["step"]: h["eval_rougeL"] for h in res.log_history if "eval_rougeL" in h}
    best_step = max(curve, key=lambda s: (curve[s], -s))
    best_ckpt = res.metrics.train.best_checkpoint
    assert best_ckpt.endswith(f"checkpoint-{best_step}")
    # save_total_limit=1 still keeps the best checkpoint
    assert (cfg.output_dir / f"checkpoint-{best_step}").is_dir()
    final = load_file(str(res.model_dir / "adapter_model.safetensors"))
    best = load_file(str(cfg.output_dir / f"checkpoint-{best_step}" / "adapter_model.safetensors"))
    for k in final:
        assert (final[k] - best[k]).abs().max().item() == 0.0, k
    assert res.metrics.final["rougeL"] == pytest.approx(curve[best_step], abs=1e-9)


def test_generation_oom_halves_batch_and_retries(tiny_run, monkeypatch):
    """A CUDA out-of-memory during generation halves the generation batch instead of killing the run (static
    batches through model.generate; continuous batching: tests/models/test_generation.py)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_summarizer.config_loading import load_config
    from llm_summarizer.data.prompt import Formatter
    from llm_summarizer.models import generation

    cfg = load_config(tiny_run.model_dir / "config.yaml", ["eval.batch_size=8"])
    base_path = json.loads((tiny_run.model_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    tok = AutoTokenizer.from_pretrained(str(tiny_run.model_dir))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), str(tiny_run.model_dir))
    fmt = Formatter(tok, cfg.data, cfg.model.max_seq_length)
    docs = [r["document"] for r in read_jsonl(ROOT / "data/demo/validation.jsonl")[:8]]
    sizes = []
    real = model.generate

    def flaky(**kw):
        sizes.append(kw["input_ids"].shape[0])
        if kw["input_ids"].shape[0] > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(**kw)

    monkeypatch.setattr(model, "generate", flaky)
    monkeypatch.setattr("torch.cuda.empty_cache", lambda: None)
    batch = generation.AdaptiveBatch(cfg.eval.batch_size)
    request = generation.GenerationRequest(fmt, docs, cfg.eval, 30, "transformers", batch=batch, batching="static")
    out = generation.generate(model, tok, request)
    assert sizes[:3] == [8, 4, 2] and set(sizes[3:]) == {2}
    assert len(out) == 8 and all(isinstance(g.text, str) for g in out)
    assert sum(1 for g in out if g.text) >= 6
    # the next evaluation of the run starts at the size that worked: no OOM again
    sizes.clear()
    again = generation.generate(model, tok, request)
    assert set(sizes) == {2} and len(sizes) == 4 and batch.size == 2 and batch.reductions == 2
    assert [g.text for g in again] == [g.text for g in out]


def test_out_of_memory_of_any_device_is_recognised():
    import torch

    from llm_summarizer.faults import is_oom

    assert is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 8589934592 bytes"
        )
    )
    assert is_oom(RuntimeError("MPS backend out of memory (MPS allocated: 1.2 GB)"))
    assert not is_oom(RuntimeError("expected scalar type Float but found Half"))


def unsloth_cuda_modes(model, inference: bool) -> None:
    """A stand-in for Unsloth's CUDA for_inference / for_training (unsloth/models/llama.py), which the CPU backend does
    not run: inference clears `gradient_checkpointing` and `training` on every module that has them and flags the
    chain of wrapped models for generation; training sets the flags again and drops the generation flag."""
    m = model
    chain = [m]
    while hasattr(m, "model"):
        m = m.model
        chain.append(m)
    for module in model.modules():
        if hasattr(module, "gradient_checkpointing"):
            module.gradient_checkpointing = not inference
        module.training = not inference
    for m in chain:
        if inference:
            m._flag_for_generation = True
        else:
            m.__dict__.pop("_flag_for_generation", None)


def test_gradient_checkpointing_survives_an_in_training_evaluation(tmp_path, models_dir, monkeypatch):
    """The trainer's evaluation loop switches the model to eval mode before the ROUGE pass; on a GPU Unsloth's
    for_inference then cleared every checkpointing flag, and nothing set them back: from the first evaluation on,
    activations took full memory. The flags at each step after an evaluation are those before it."""
    import dataclasses

    from transformers import TrainerCallback

    from llm_summarizer.models import backends
    from llm_summarizer.training.run import run

    monkeypatch.setitem(
        backends.BACKENDS, "unsloth", dataclasses.replace(backends.BACKENDS["unsloth"], set_mode=unsloth_cuda_modes)
    )

    class Flags(TrainerCallback):
        def __init__(self):
            self.seen = {}

        def on_step_begin(self, args, state, control, model=None, **kwargs):
            self.seen[state.global_step] = (
                [m.gradient_checkpointing for m in model.modules() if hasattr(m, "gradient_checkpointing")],
                [n for n, m in model.named_modules() if "_flag_for_generation" in m.__dict__],
            )

    flags = Flags()
    cfg = load_config(
        "tiny",
        tiny_overrides(tmp_path, models_dir)
        + [
            "model.gradient_checkpointing=true",
            "train.max_steps=4",
            "train.eval_steps=2",
            "train.save_steps=100",
            "eval.num_samples=4",
        ],
    )
    res = run(cfg, extra_callbacks=[flags])
    assert [h["step"] for h in res.log_history if "eval_rougeL" in h] == [2, 4]
    before, flagged = flags.seen[0]
    assert before and all(before) and not flagged, flags.seen[0]  # checkpointing on where the model has the flag
    assert flags.seen[2] == flags.seen[3] == (before, []), flags.seen  # after the base pass and the step-2 evaluation
