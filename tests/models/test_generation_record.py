"""One record of how summaries were made (models/generation_record.py): the batching as it really ran, the
strategy, stop tokens, budget and its source, the prompt template; written alike by training and evaluate."""

from types import SimpleNamespace

from llm_summarizer.config import EvalSection
from llm_summarizer.models import device
from llm_summarizer.models.generation_record import GenerationRecord

FORMATTER = SimpleNamespace(stop_ids=[2, 7], use_chat=True)
TOKENIZER = SimpleNamespace(convert_ids_to_tokens=lambda i: {2: "</s>", 7: "<|im_end|>"}[i])


def made(ev: EvalSection, backend: str = "transformers") -> GenerationRecord:
    return GenerationRecord.made(ev, backend, 94, "eval.max_new_tokens", FORMATTER, TOKENIZER)


def test_greedy_continuous_record(monkeypatch):
    # eval.batching=auto on a quiet CPU (the load described, not this machine's)
    monkeypatch.setattr(device, "recent_cpu_load", lambda: device.CpuLoad(0, 2, 2))
    r = made(EvalSection(batch_size=4))
    assert r.to_dict() == {
        "strategy": "greedy",
        "num_beams": 1,
        "do_sample": False,
        "max_new_tokens": 94,
        "max_new_tokens_source": "eval.max_new_tokens",
        "stop_tokens": ["</s>", "<|im_end|>"],
        "batching": "continuous batches of up to 4 (a finished row's place is taken at once), left padding",
        "prompt_template": "the tokenizer's chat template",
    }
    assert "greedy, max_new_tokens 94 (eval.max_new_tokens), continuous" in r.describe()
    # ... and on a busy one too (a busy CPU changes generation's threads, not its batching)
    monkeypatch.setattr(device, "recent_cpu_load", lambda: device.CpuLoad(3, 2, 2))
    assert made(EvalSection(batch_size=4)).batching.startswith("continuous")
    assert made(EvalSection(batch_size=4, batching="static")).batching == "batches of 4, left padding"


def test_batching_is_recorded_as_it_runs_not_as_asked(monkeypatch):
    # sampling and beam search always batch statically, whatever eval.batching says
    s = made(EvalSection(do_sample=True, temperature=0.7, top_p=0.9, sample_seed=5, batch_size=2))
    assert s.batching == "batches of 2, left padding" and s.strategy == "sampling"
    assert (s.to_dict()["temperature"], s.to_dict()["top_p"], s.to_dict()["seed"]) == (0.7, 0.9, 5)
    assert (
        made(EvalSection(num_beams=4)).batching.startswith("batches of")
        and "4 beams" in made(EvalSection(num_beams=4)).describe()
    )
    # Unsloth's CUDA decoder runs static batches (models/device.py): the record says static on a described T4
    monkeypatch.setattr(device, "current", lambda: device.KNOWN["t4"])
    assert made(EvalSection(), "unsloth").batching.startswith("batches of")
    assert made(EvalSection(), "transformers").batching.startswith("continuous")
    assert made(EvalSection(batching="static")).batching.startswith("batches of")


def test_training_and_evaluate_write_the_same_record(tiny_run, tmp_path):
    """The in-training protocol (metrics.json) and evaluate's eval_settings.json hold the same record's keys, and
    the same values where the settings are the same."""
    import json

    from llm_summarizer.evaluation.evaluate import evaluate_model

    data = tmp_path / "t.jsonl"
    data.write_text(json.dumps({"document": "The cat sat on the mat all day.", "summary": "A cat sat."}) + "\n")
    res = evaluate_model(tiny_run.model_dir, data=data, output=tmp_path / "ev", report=False)
    train = tiny_run.metrics.eval_protocol["decoding"]
    ev = res.metrics["protocol"]["decoding"]
    assert set(train) == set(ev) == set(made(EvalSection()).to_dict())
    for k in ("strategy", "stop_tokens", "batching", "prompt_template", "max_new_tokens"):
        assert train[k] == ev[k], k
