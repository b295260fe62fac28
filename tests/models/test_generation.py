"""Continuous batching (eval.batching=continuous): the texts of plain model.generate, no work for finished rows."""

import pytest

from ..conftest import DEMO, read_jsonl

ROWS = read_jsonl(DEMO / "test.jsonl")[:14]
# long and short documents mixed, so that rows end at different steps and waiting prompts join mid-way
DOCS = [r["document"] if i % 3 else r["document"][:70] for i, r in enumerate(ROWS)]


@pytest.fixture(scope="module")
def loaded(tiny_run):
    from llm_summarizer.models.loading import load_for_generation

    return load_for_generation(tiny_run.model_dir)


def plain_generate(loaded, docs, max_new, bs):
    """The floor: model.generate over left-padded batches in the documents' order, greedy, same stop tokens."""
    from llm_summarizer.models.generation import inference_mode

    tok, fmt, stop = loaded.tokenizer, loaded.formatter, list(loaded.formatter.stop_ids)
    texts = []
    with inference_mode(loaded.model, tok, loaded.backend):
        for i in range(0, len(docs), bs):
            ids = [fmt.generation_prompt(d, max_new)[0] for d in docs[i : i + bs]]
            batch = tok.pad({"input_ids": ids}, return_tensors="pt", padding=True)
            out = loaded.model.generate(
                **batch,
                max_new_tokens=max_new,
                do_sample=False,
                num_beams=1,
                eos_token_id=stop,
                pad_token_id=tok.pad_token_id,
                temperature=None,
                top_p=None,
                top_k=None,
            )
            for toks in out[:, batch["input_ids"].shape[1] :].tolist():
                n = next((k for k, t in enumerate(toks) if t in stop), len(toks))
                texts.append(tok.decode(toks[:n], skip_special_tokens=True).strip())
    return texts


class Counting:
    """Wraps the model's forward: the rows of each decoding step and the prompts of each prefill."""

    def __init__(self, model, fail_above=None):
        self.forward, self.steps, self.prefills, self.fail_above = model.forward, [], [], fail_above

    def __call__(self, *args, **kw):
        ids = kw["input_ids"]
        if self.fail_above and ids.shape[0] > self.fail_above:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        (self.steps if ids.shape[1] == 1 else self.prefills).append(ids.shape[0])
        return self.forward(*args, **kw)


def test_continuous_gives_the_texts_of_plain_generate_and_computes_no_finished_row(loaded, monkeypatch):
    from llm_summarizer.models.generation import GenerationRequest, generate

    args = (loaded.formatter, DOCS, loaded.cfg.eval, 24, loaded.backend)
    floor = plain_generate(loaded, DOCS, 24, 4)
    static = generate(loaded.model, loaded.tokenizer, GenerationRequest(*args, batch_size=4, batching="static"))
    count = Counting(loaded.model)
    monkeypatch.setattr(loaded.model, "forward", count)
    done = []
    request = GenerationRequest(*args, batch_size=4, batching="continuous", on_done=lambda i, g: done.append(i))
    cont = generate(loaded.model, loaded.tokenizer, request)
    assert [g.text for g in cont] == [g.text for g in static] == floor
    assert [(g.new_tokens, g.hit_max) for g in cont] == [(g.new_tokens, g.hit_max) for g in static]
    assert len({g.text for g in cont}) > 3 and len({g.new_tokens for g in cont}) > 1  # rows end at different steps
    assert sorted(done) == list(range(len(DOCS)))
    # prompts joined while others were decoding, never more than the batch at once
    assert len(count.prefills) > len(DOCS) // 4 and max(count.steps) <= 4 and sum(count.prefills) == len(DOCS)
    # each decoding step computed only rows still writing: one step per token after the first (the stop included)
    assert sum(count.steps) == sum(g.new_tokens + (not g.hit_max) - 1 for g in cont)


def test_out_of_memory_halves_the_continuous_batch_and_restarts_its_rows(loaded, monkeypatch):
    from llm_summarizer.models import generation

    args = (loaded.formatter, DOCS, loaded.cfg.eval, 24, loaded.backend)
    request = generation.GenerationRequest(*args, batch_size=8, batching="static")
    want = [g.text for g in generation.generate(loaded.model, loaded.tokenizer, request)]
    monkeypatch.setattr("torch.cuda.empty_cache", lambda: None)
    monkeypatch.setattr(loaded.model, "forward", Counting(loaded.model, fail_above=2))
    batch = generation.AdaptiveBatch(8)
    request = generation.GenerationRequest(*args, batch=batch, batching="continuous")
    got = generation.generate(loaded.model, loaded.tokenizer, request)
    assert [g.text for g in got] == want and batch.size == 2 and batch.reductions == 2


def test_a_busy_cpu_generates_on_the_cores_left_free_and_gets_its_threads_back(loaded, monkeypatch, caplog):
    """The load described (another process keeping one of 2 cores busy), not this machine's: every forward runs on
    1 thread, the same texts come out, torch's 2 threads are back afterwards and the log says why."""
    import logging

    import torch

    from llm_summarizer.models import device
    from llm_summarizer.models.generation import GenerationRequest, generate

    args = (loaded.formatter, DOCS[:6], loaded.cfg.eval, 16, loaded.backend)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the machine described, whatever this one's torch uses
    try:
        want = [g.text for g in generate(loaded.model, loaded.tokenizer, GenerationRequest(*args, batch_size=4))]
        seen, forward = [], loaded.model.forward

        def watched(*a, **kw):
            seen.append(torch.get_num_threads())
            return forward(*a, **kw)

        monkeypatch.setattr(loaded.model, "forward", watched)
        monkeypatch.setattr(device, "recent_cpu_load", lambda: device.CpuLoad(others=1, threads=2, cores=2))
        monkeypatch.setattr(device, "_said", set())  # said once a process: an earlier test may have said it
        with caplog.at_level(logging.INFO):
            got = generate(loaded.model, loaded.tokenizer, GenerationRequest(*args, batch_size=4))
        assert [g.text for g in got] == want and seen and set(seen) == {1}
        assert "generation on 1 of 2 torch thread(s): the CPU is busy (1 runnable thread(s) of other" in caplog.text
        assert torch.get_num_threads() == 2
        # quiet: torch's threads; a number in eval.cpu_threads: that many, whatever the load
        monkeypatch.setattr(device, "recent_cpu_load", lambda: device.CpuLoad(others=0, threads=2, cores=2))
        seen.clear()
        generate(loaded.model, loaded.tokenizer, GenerationRequest(*args[:2], loaded.cfg.eval, 8, loaded.backend))
        assert set(seen) == {2}
        seen.clear()
        ev = loaded.cfg.eval.model_copy(update={"cpu_threads": 1})
        generate(loaded.model, loaded.tokenizer, GenerationRequest(loaded.formatter, DOCS[:2], ev, 8, loaded.backend))
        assert set(seen) == {1} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_sampling_beams_penalties_and_sliding_window_caches_run_static(loaded):
    from types import SimpleNamespace

    from transformers import Gemma2Config, MistralConfig

    from llm_summarizer.config_loading import load_config
    from llm_summarizer.models.generation import plain_cache, plain_greedy

    assert plain_cache(loaded.model)
    for config in (MistralConfig(), Gemma2Config()):  # windows that forget old positions: not padded row by row
        assert not plain_cache(SimpleNamespace(config=config))

    ev = loaded.cfg.eval
    assert plain_greedy(loaded.model, ev)
    assert not plain_greedy(loaded.model, ev.model_copy(update={"num_beams": 2}))
    assert not plain_greedy(loaded.model, ev.model_copy(update={"do_sample": True}))
    gc = loaded.model.generation_config
    old = gc.repetition_penalty
    try:
        gc.repetition_penalty = 1.3  # argmax of the raw logits would not be what generate picks
        assert not plain_greedy(loaded.model, ev)
    finally:
        gc.repetition_penalty = old
    assert load_config("tiny").eval.batching == "auto"  # continuous (static only on Unsloth's CUDA decoder)


class DecodeBuffers:
    """Wraps the model's forward as Unsloth's CUDA fast decoder behaves: a decoding step (one new token per row, a
    cache given) allocates its buffers on each attention module, sized for the batch, and leaves them there. With
    `fail_above`, the second decoding step of a batch wider than that runs out of memory (its buffers allocated)."""

    def __init__(self, model, fail_above=None):
        self.model, self.forward, self.fail_above = model, model.forward, fail_above
        self.held_at_call: list[int] = []  # attention modules holding buffers as each forward starts
        self.failed_at = None  # the index of the forward that ran out of memory

    def attention_modules(self):
        return [m for n, m in self.model.named_modules() if n.endswith("self_attn")]

    def held(self) -> int:
        return sum("paged_attention" in m.__dict__ for m in self.attention_modules())

    def __call__(self, *args, **kw):
        import torch

        rows, decoding = kw["input_ids"].shape[0], kw["input_ids"].shape[1] == 1 and kw.get("past_key_values")
        self.held_at_call.append(self.held())
        if decoding and self.held() and self.fail_above and rows > self.fail_above and self.failed_at is None:
            self.failed_at = len(self.held_at_call) - 1
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if decoding:
            for m in self.attention_modules():
                if "paged_attention" not in m.__dict__:
                    m.paged_attention = torch.empty(64, 2, rows, 4, 8)
                    m.paged_attention_K, m.paged_attention_V = m.paged_attention[:, 0], m.paged_attention[:, 1]
                    m.temp_QA, m.RH_Q = torch.empty(2, rows, 1, 32), torch.empty(rows, 4, 1, 8)
                    m.attention = torch.empty(rows, 4, 1, 64)
        return self.forward(*args, **kw)


def test_decode_buffers_are_freed_after_a_pass_and_before_an_out_of_memory_retry(loaded, monkeypatch):
    """Unsloth's decoder keeps its buffers on the model after generate returns: into the training steps after each
    in-training ROUGE pass, and into the retry after an out-of-memory (sized for the batch that failed)."""
    import torch

    from llm_summarizer.models import generation

    args = (loaded.formatter, DOCS[:6], loaded.cfg.eval, 12, loaded.backend)
    monkeypatch.setattr("torch.cuda.empty_cache", lambda: None)
    lm = loaded.model.get_base_model()  # what model.generate calls at each step, under the adapter's wrapper
    fake = DecodeBuffers(lm, fail_above=2)
    monkeypatch.setattr(lm, "forward", fake)
    batch = generation.AdaptiveBatch(4)
    gens = generation.generate(
        loaded.model, loaded.tokenizer, generation.GenerationRequest(*args, batch=batch, batching="static")
    )
    assert batch.reductions == 1 and all(g.text for g in gens)
    # the forward that ran out of memory found the decoder's buffers; the retry's first forward found none
    assert fake.held_at_call[fake.failed_at] > 0 and fake.held_at_call[fake.failed_at + 1] == 0
    assert fake.held() == 0, "buffers left on the model after the pass"
    # a module holding a submodule under one of the buffers' names keeps it
    attn = fake.attention_modules()[0]
    attn.attention = torch.nn.Identity()
    try:
        assert generation.free_decode_buffers(loaded.model) == 0 and isinstance(attn.attention, torch.nn.Identity)
    finally:
        del attn.attention


def test_generate_takes_one_request_and_the_strategy_table_refuses_an_unknown_strategy(loaded):
    """generate(model, tokenizer, request): the documents and every setting travel in one GenerationRequest; the
    decoding strategies are one table (STRATEGIES) whose names are eval.batching's, and any other name is refused,
    naming the known ones, before a prompt is built."""
    import dataclasses
    import inspect
    import typing

    from llm_summarizer.config import EvalSection
    from llm_summarizer.errors import UserError
    from llm_summarizer.models import generation

    assert list(inspect.signature(generation.generate).parameters) == ["model", "tokenizer", "request"]
    request = generation.GenerationRequest(loaded.formatter, DOCS[:3], loaded.cfg.eval, 8, loaded.backend)
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.max_new_tokens = 9
    gens = generation.generate(loaded.model, loaded.tokenizer, request)
    assert len(gens) == 3 and all(isinstance(g, generation.Generated) for g in gens)
    # the config's choices are the table's names and `auto` (which picks one of them by the device and the CPU's
    # load): a new strategy is added in both, nowhere else
    assert set(typing.get_args(EvalSection.model_fields["batching"].annotation)) == {*generation.STRATEGIES, "auto"}
    auto = generation.GenerationRequest(loaded.formatter, DOCS[:3], loaded.cfg.eval, 8, loaded.backend, batching="auto")
    assert [g.text for g in generation.generate(loaded.model, loaded.tokenizer, auto)] == [g.text for g in gens]
    assert generation.strategy("static").run is generation._static
    with pytest.raises(
        UserError, match=r"batching='speculative': no such decoding strategy; known: continuous, static"
    ):
        generation.GenerationRequest(
            loaded.formatter, DOCS[:3], loaded.cfg.eval, 8, loaded.backend, batching="speculative"
        )
    with pytest.raises(UserError, match="no such decoding strategy"):
        generation.strategy("beam")
    # continuous falls back to static where it would not compute what was asked (sampling, beams, its own order)
    sampling = dataclasses.replace(request, ev=loaded.cfg.eval.model_copy(update={"do_sample": True}))
    assert generation.chosen("continuous", loaded.model, sampling) is generation.STRATEGIES["static"]
    in_order = dataclasses.replace(request, sort_by_length=False)
    assert generation.chosen("continuous", loaded.model, in_order) is generation.STRATEGIES["static"]
    assert generation.chosen("continuous", loaded.model, request) is generation.STRATEGIES["continuous"]
