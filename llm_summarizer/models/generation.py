"""Batched summary generation with left padding, shared by the ROUGE callback, evaluate, summarize and export.

Generation leaves the model exactly as it found it: train/eval mode (Unsloth's for_inference /
for_training on the unsloth backend), the tokenizer's padding side, and the global RNG states, so a
run with in-training evaluation follows the same loss trajectory as one without.

A call is one `GenerationRequest`: `generate(model, tokenizer, request)`.
A new decoding strategy goes in STRATEGIES below (its runner, when it fits) and in config.py's EvalSection.batching.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import sys
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ..config import EvalSection
from ..contracts import RunMetrics
from ..data.prompt import Formatter
from ..errors import UserError
from ..faults import is_oom
from ..stats import percentile
from .backends import for_inference, for_training
from .chunked import MERGE_INSTRUCTION, REFINE_INSTRUCTION, TRAINING_PROMPT, plan_cost, summarize_long
from .device import effective_batching, threads_for_generation
from .loading import Loaded, load_for_generation

log = logging.getLogger("llm_summarizer.generation")


@dataclass
class Generated:
    text: str
    new_tokens: int
    hit_max: bool  # stopped by max_new_tokens, not by EOS
    truncated_input: bool
    method: str = "whole"  # whole (the document fit), truncated (cut to fit), chunked (eval.long_documents: chunk)
    tree: Optional[dict] = None  # chunked: how, the windows and the merge rounds (models/chunked.py)


def derive_max_new_tokens(summary_token_lengths: list[int], ev: EvalSection) -> int:
    """eval.max_new_tokens, or 1.5x the 95th percentile of reference summary lengths (+8)."""
    if ev.max_new_tokens:
        return ev.max_new_tokens
    if not summary_token_lengths:
        return 128
    return budget_for(percentile(summary_token_lengths, 0.95))


BUDGET_RULE = "1.5 x p95 of the training summaries' token lengths + 8"  # budget_for's rule, as records say it


def budget_for(p95_summary_tokens: float) -> int:
    """The generation budget for summaries whose 95th percentile length is this many tokens: 1.5 x p95 + 8."""
    return int(math.ceil(p95_summary_tokens * 1.5)) + 8


@contextlib.contextmanager
def inference_mode(model, tokenizer, backend: str):
    """Switch to inference for generation; afterwards put back exactly what it changed: each module's train/eval
    mode and gradient-checkpointing flag, the padding side, use_cache, the RNG states; and free the decode buffers
    generation left on the model.

    The exact restore matters on a GPU: Unsloth's CUDA for_inference clears `gradient_checkpointing` on every
    module, and neither its for_training nor model.train() is what sets it back when the trainer's evaluation loop
    had already switched the model to eval mode (then nothing here would call for_training): from the first
    in-training evaluation on, activations would take full memory."""
    was_training = model.training
    modes = module_modes(model)
    padding_side = tokenizer.padding_side
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    py_rng, np_rng = random.getstate(), np.random.get_state()
    use_cache = getattr(model.config, "use_cache", None)
    for_inference(model, backend)
    tokenizer.padding_side = "left"
    try:
        with torch.inference_mode():
            yield
    finally:
        tokenizer.padding_side = padding_side
        if was_training:
            for_training(model, backend)
        restore_module_modes(modes)
        if use_cache is not None:
            model.config.use_cache = use_cache
        free_decode_buffers(model)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        random.setstate(py_rng)
        np.random.set_state(np_rng)


_MISSING = object()
# What switching to inference and back changes on a module: its mode, its gradient-checkpointing flag, and the flag
# Unsloth sets on the chain of wrapped models while they generate.
_MODE_ATTRIBUTES = ("training", "gradient_checkpointing", "_flag_for_generation")


def module_modes(model) -> list:
    """Every module's train/eval mode and gradient-checkpointing flags, as restore_module_modes puts them back."""
    return [(m, tuple(m.__dict__.get(a, _MISSING) for a in _MODE_ATTRIBUTES)) for m in model.modules()]


def restore_module_modes(modes: list) -> None:
    for m, values in modes:
        for attr, value in zip(_MODE_ATTRIBUTES, values):
            if value is _MISSING:
                m.__dict__.pop(attr, None)
            elif m.__dict__.get(attr, _MISSING) is not value:
                setattr(m, attr, value)


# The tensors Unsloth's fast decoder allocates on each attention module at the first decoding step (sized for that
# batch and length) and keeps there after generation ends.
DECODE_BUFFERS = ("paged_attention", "paged_attention_K", "paged_attention_V", "temp_QA", "temp_KV", "RH_Q")
DECODE_BUFFERS_2 = ("temp_O", "attention")  # names a model may use for a submodule: only plain tensors are dropped


def free_decode_buffers(model) -> int:
    """Drop the decode buffers a generation left on the model (Unsloth's, where it allocated any), so that training
    and a retry after an out-of-memory get their memory back; returns how many modules held some. Unsloth's own
    release (CUDA graphs included) where it has one; the next generation allocates fresh buffers."""
    held = 0
    for m in model.modules():
        d = m.__dict__
        if "paged_attention" in d or "_unsloth_graph_buffers" in d:
            held += 1
        for name in DECODE_BUFFERS + DECODE_BUFFERS_2:
            if isinstance(d.get(name), torch.Tensor):
                del d[name]
    if held and "unsloth" in sys.modules:
        try:
            # Unsloth's own release of its CUDA-graph decode state, where this version has it (private module)
            from unsloth.models import _decode_graphs

            _decode_graphs.release_for_training(model)
        except (ImportError, AttributeError):
            pass
    if held and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return held


class AdaptiveBatch:
    """A generation batch size that remembers the halving an out-of-memory forced, for the rest of a run:
    the next evaluation starts from the size that worked instead of running into the same OOM again."""

    def __init__(self, size: int):
        self.size = max(1, int(size))
        self.reductions = 0

    def reduce(self) -> int:
        self.size = max(1, self.size // 2)
        self.reductions += 1
        return self.size


@dataclass(frozen=True)
class GenerationRequest:
    """One generation call: the documents and their prompt, the decoding settings, and who hears of the progress.

    `ev` holds the decoding settings (num_beams, do_sample, temperature, top_p, batch_size, batching). `batching`
    (default eval.batching) names the decoding strategy (STRATEGIES): "continuous" lets a row that ends leave the
    batch at once and the next prompt take its place (greedy decoding only: the same texts as static batches);
    "static" runs each batch through `model.generate` until its longest summary ends. Sampling and beam search
    always run static. `batch_size` (default eval.batch_size) is the first batch size, unless `batch` is given (an
    AdaptiveBatch that keeps an out-of-memory's smaller size for the next call). `sort_by_length=False` runs static
    batches in the given order (the benchmark's equal-settings comparison). `seed` seeds sampling.
    `progress(done, total)` counts finished rows; `on_done(i, generated)` is called as each row finishes (in the
    order they finish)."""

    formatter: Formatter
    documents: Sequence[str]
    ev: EvalSection
    max_new_tokens: int
    backend: str
    batch_size: Optional[int] = None
    seed: int = 0
    batching: Optional[str] = None
    sort_by_length: bool = True
    batch: Optional[AdaptiveBatch] = None
    progress: Optional[Callable[[int, int], None]] = None
    on_done: Optional[Callable[[int, Generated], None]] = None

    def __post_init__(self):
        if self.batching not in (None, "auto"):
            strategy(self.batching)  # an unknown strategy is refused here, before any prompt is built


class _Prompt(NamedTuple):
    ids: list[int]
    truncated: bool  # the document was cut to fit


@dataclass
class _Job:
    """A generation call under way, as a decoding strategy runs it: the request, each document's prompt, the order
    rows are taken in, the batch size, the stop tokens, and the results so far (None: not written yet)."""

    request: GenerationRequest
    prompts: list[_Prompt]
    order: list[int]
    batch: AdaptiveBatch
    stop: list[int]
    results: list[Optional[Generated]]

    @classmethod
    def start(cls, request: GenerationRequest) -> _Job:
        """Rows are taken longest prompt first (an out-of-memory shows at once; less left padding to compute)."""
        r = request
        prompts = [_Prompt(*r.formatter.generation_prompt(d, r.max_new_tokens)) for d in r.documents]
        order = list(range(len(prompts)))
        if r.sort_by_length:
            order = sorted(order, key=lambda i: -len(prompts[i].ids))
        batch = r.batch or AdaptiveBatch(r.batch_size or r.ev.batch_size)
        return cls(r, prompts, order, batch, list(r.formatter.stop_ids), [None] * len(prompts))

    def finish(self, tokenizer, j: int, toks: list[int]) -> Generated:
        """Row `j`'s summary from its new tokens, written into the results (and handed to on_done)."""
        self.results[j] = _finish(tokenizer, toks, self.stop, self.prompts[j].truncated)
        if self.request.on_done:
            self.request.on_done(j, self.results[j])
        return self.results[j]


def generate(model, tokenizer, request: GenerationRequest) -> list[Generated]:
    """Summaries of `request.documents`, in order, by the decoding strategy the request names (STRATEGIES). Rows
    are taken longest prompt first and the results put back in the documents' order; an out-of-memory halves the
    batch and retries, and `request.batch` (when given) keeps the smaller size for the next call."""
    job = _Job.start(request)
    mode = effective_batching(request.backend, request.ev, request.batching)
    with inference_mode(model, tokenizer, request.backend), threads_for_generation(request.ev.cpu_threads):
        chosen(mode, model, request).run(model, tokenizer, job)
    return job.results  # type: ignore[return-value]


def _finish(tokenizer, toks: list[int], stop, truncated: bool) -> Generated:
    n, ended = len(toks), False
    for k, t in enumerate(toks):
        if t in stop:
            n, ended = k, True
            break
    text = tokenizer.decode(toks[:n], skip_special_tokens=True).strip()
    return Generated(
        text=text,
        new_tokens=n,
        hit_max=not ended,
        truncated_input=truncated,
        method="truncated" if truncated else "whole",
    )


def _oom_retry(model, e: RuntimeError, batch: AdaptiveBatch, bs: int) -> int:
    """The smaller batch size after an out-of-memory (0: give up and raise), with the decode buffers sized for the
    batch that failed freed first."""
    if not is_oom(e) or bs <= 1:
        return 0
    free_decode_buffers(model)
    torch.cuda.empty_cache()
    bs = batch.reduce() if batch.size == bs else max(1, bs // 2)
    log.warning(
        "generation ran out of memory; retrying with batch size %d (kept for the rest of this run; set "
        "eval.batch_size to start there)",
        bs,
    )
    return bs


def _static(model, tokenizer, job: _Job) -> None:
    """Batches of `batch.size` rows through model.generate, each until its longest summary ends."""
    request, bs, i = job.request, job.batch.size, 0
    device = next(model.parameters()).device
    if request.ev.do_sample:
        torch.manual_seed(request.seed)
    gen_kwargs = _generate_kwargs(tokenizer, job)
    while i < len(job.order):
        idx = job.order[i : i + bs]
        inputs = tokenizer.pad({"input_ids": [job.prompts[j].ids for j in idx]}, return_tensors="pt", padding=True)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        try:
            out = model.generate(**inputs, **gen_kwargs)
        except RuntimeError as e:
            bs = _oom_retry(model, e, job.batch, bs)
            if not bs:
                raise
            continue
        new = out[:, inputs["input_ids"].shape[1] :].tolist()
        for j, toks in zip(idx, new):
            job.finish(tokenizer, j, toks)
        i += len(idx)
        if request.progress:
            request.progress(i, len(job.order))


def _generate_kwargs(tokenizer, job: _Job) -> dict:
    """model.generate's settings for the request: greedy, sampling (temperature, top_p) or beam search."""
    ev = job.request.ev
    kwargs = dict(
        max_new_tokens=job.request.max_new_tokens,
        num_beams=ev.num_beams,
        do_sample=ev.do_sample,
        eos_token_id=job.stop,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    if ev.do_sample:
        kwargs.update(temperature=ev.temperature, top_p=ev.top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


# generation_config fields that change what greedy search picks; when one is set, model.generate's own loop runs
_GREEDY_CHANGERS = {
    "repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "sequence_bias": (None,),
    "exponential_decay_length_penalty": (None,),
    "encoder_repetition_penalty": (None, 1.0),
    "guidance_scale": (None, 1.0),
    "watermarking_config": (None,),
    "renormalize_logits": (None, False),
}


def plain_greedy(model, ev: EvalSection) -> bool:
    """Whether the next token is the argmax of the logits, as continuous batching computes it: greedy decoding and
    nothing in the model's generation_config that would change the pick."""
    if ev.do_sample or ev.num_beams > 1:
        return False
    gc = getattr(model, "generation_config", None)
    return gc is None or all(getattr(gc, k, None) in ok for k, ok in _GREEDY_CHANGERS.items())


def plain_cache(model) -> bool:
    """Whether the model keeps every position of every layer in its cache (no sliding windows, no recurrent state):
    what continuous batching pads, joins and cuts row by row."""
    try:
        layers = DynamicCache(config=model.config).layers
    except Exception:  # noqa: BLE001 - a config transformers cannot map: the static path knows the model
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


# A row joins once this share of the batch is free (or the queue is empty enough): joining costs a prefill and one
# copy of the batch's cache, so a few rows join together rather than one at a time.
_JOIN_SHARE = 4


@dataclass
class _Row:
    index: int
    tokens: list


def _kv(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The per-layer (keys, values) of a cache, [batch, heads, positions, head_dim]: a transformers Cache or the
    tuple of pairs Unsloth's fast decoding returns."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return [(layer.keys, layer.values) for layer in layers]
    return [(k, v) for k, v in cache]


def _rebuilt(model, kv: list) -> DynamicCache:
    # Unsloth's fast decoding copies the cache into buffers of its own at its first step and then only appends to
    # them: after rows left or joined, those buffers must be dropped so that the next step copies the new cache (what
    # Unsloth's generate does when handed a cache).
    for m in model.modules():
        if hasattr(m, "paged_attention"):
            del m.paged_attention_K, m.paged_attention_V, m.paged_attention
    return DynamicCache(ddp_cache_data=kv)


def _left_pad(x: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    if n == 0:
        return x
    shape = list(x.shape)
    shape[dim] = n
    return torch.cat([x.new_zeros(shape), x], dim=dim)


def _prefill(model, tokenizer, ids: list[list[int]], device):
    inputs = tokenizer.pad({"input_ids": ids}, return_tensors="pt", padding=True)
    input_ids, mask = inputs["input_ids"].to(device), inputs["attention_mask"].to(device)
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    return _kv(out.past_key_values), mask.long(), out.logits[:, -1, :].float().argmax(-1).tolist()


def _continuous(model, tokenizer, job: _Job) -> None:
    """Greedy decoding where a finished row leaves the batch at once and waiting prompts join when a share of the
    batch is free: each row is left-padded to the batch's cache length, with position ids counted from its first real
    token, as model.generate does for a left-padded batch, so each row computes what it would in a static batch."""
    device = next(model.parameters()).device
    queue, live, bs = list(job.order), _InFlight(), job.batch.size
    record = _Recorder(job, tokenizer)
    while queue or live.rows:
        try:
            free = bs - len(live.rows)
            if queue and free > 0 and (not live.rows or free >= max(1, bs // _JOIN_SHARE) or len(queue) <= free):
                take = queue[:free]
                new_kv, new_mask, toks = _prefill(model, tokenizer, [job.prompts[j].ids for j in take], device)
                queue = queue[free:]
                rows = [_Row(j, []) for j in take]
                live.join(model, rows, record(rows, toks), new_kv, new_mask)
                continue
            if not live.rows:
                continue
            out = live.step(model)
        except RuntimeError as e:
            bs = _oom_retry(model, e, job.batch, bs)
            if not bs:
                raise
            # the rows in flight start again (greedy: the same texts), in their turn at the front of the queue
            queue = [row.index for row in live.rows] + queue
            live = _InFlight()
            continue
        live.keep(model, record(live.rows, out.logits[:, -1, :].float().argmax(-1).tolist()))


@dataclass
class _Recorder:
    """Continuous batching's bookkeeping: each row's new token appended, finished rows written out (counted for
    progress), and the positions of those that go on returned."""

    job: _Job
    tokenizer: object
    done: int = 0

    def __call__(self, rows: list[_Row], toks: list[int]) -> list[int]:
        request, keep = self.job.request, []
        for r_i, (row, t) in enumerate(zip(rows, toks)):
            row.tokens.append(t)
            if t in self.job.stop or len(row.tokens) >= request.max_new_tokens:
                self.job.finish(self.tokenizer, row.index, row.tokens)
                self.done += 1
                if request.progress:
                    request.progress(self.done, len(self.job.order))
            else:
                keep.append(r_i)
        return keep


@dataclass
class _InFlight:
    """The rows continuous batching decodes together: their tokens, their cache as per-layer (keys, values) and as the
    model's cache object, and `mask` [rows, positions]: 1 where the cache holds a real token of that row."""

    rows: list[_Row] = field(default_factory=list)
    kv: list = field(default_factory=list)
    mask: Optional[torch.Tensor] = None
    cache: object = None

    def join(self, model, rows: list[_Row], keep: list[int], kv: list, mask: torch.Tensor) -> None:
        """The prefilled `rows` at positions `keep` (those not finished by their first token) join the batch, the
        batch's cache and theirs left-padded to the longer of the two."""
        if not keep:
            return
        sel = torch.tensor(keep, device=mask.device)
        kv = [(k.index_select(0, sel), v.index_select(0, sel)) for k, v in kv]
        mask = mask.index_select(0, sel)
        if self.rows:
            t_old, t_new = self.mask.shape[1], mask.shape[1]
            t = max(t_old, t_new)
            self.kv = [
                (
                    torch.cat([_left_pad(k0, t - t_old, 2), _left_pad(k1, t - t_new, 2)]),
                    torch.cat([_left_pad(v0, t - t_old, 2), _left_pad(v1, t - t_new, 2)]),
                )
                for (k0, v0), (k1, v1) in zip(self.kv, kv)
            ]
            self.mask = torch.cat([_left_pad(self.mask, t - t_old, 1), _left_pad(mask, t - t_new, 1)])
        else:
            self.kv, self.mask = kv, mask
        self.rows += [rows[i] for i in keep]
        self.cache = _rebuilt(model, self.kv)

    def step(self, model):
        """One decoding step of every row (its last token in, the next one's logits out); the model's output."""
        step_ids = torch.tensor([[row.tokens[-1]] for row in self.rows], device=self.mask.device)
        positions = self.mask.sum(1, keepdim=True)
        step_mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=1)
        out = model(
            input_ids=step_ids,
            attention_mask=step_mask,
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
        )
        self.mask, self.cache = step_mask, out.past_key_values
        return out

    def keep(self, model, keep: list[int]) -> None:
        """After a step, only the rows at positions `keep` go on: the others leave the batch and the cache, and so do
        the cache columns no remaining row uses."""
        if len(keep) == len(self.rows):
            self.kv = _kv(self.cache)  # the model's cache is current; its tensors are read when rows leave or join
            return
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.kv, self.mask, self.cache = [], None, None
            return
        sel = torch.tensor(keep, device=self.mask.device)
        mask = self.mask.index_select(0, sel)
        first = int(mask.any(0).int().argmax())  # columns no remaining row uses are dropped
        self.mask = mask[:, first:]
        self.kv = [
            (k.index_select(0, sel)[:, :, first:], v.index_select(0, sel)[:, :, first:]) for k, v in _kv(self.cache)
        ]
        self.cache = _rebuilt(model, self.kv)


@dataclass(frozen=True)
class Strategy:
    """A decoding strategy: `run(model, tokenizer, job)` writes every row's summary into job.results; when
    `fits(model, request)` says it would not compute what the request asks, its `fallback` strategy runs instead."""

    run: Callable[..., None]
    fits: Optional[Callable[[object, GenerationRequest], bool]] = None  # None: every request
    fallback: Optional[str] = None


def _continuous_fits(model, request: GenerationRequest) -> bool:
    """Continuous batching computes greedy argmax over a plain cache, in its own order (longest prompt first)."""
    return request.sort_by_length and plain_greedy(model, request.ev) and plain_cache(model)


# The decoding strategies, by eval.batching name (greedy, sampling and beam search run static; greedy on a plain cache
# may run continuous). A new one: its runner here and its name in config.py's EvalSection.batching Literal.
STRATEGIES: dict[str, Strategy] = {
    "continuous": Strategy(_continuous, fits=_continuous_fits, fallback="static"),
    "static": Strategy(_static),
}


def strategy(name: str) -> Strategy:
    """The decoding strategy `name`; a UserError naming the known ones for any other name."""
    if name not in STRATEGIES:
        raise UserError(
            f"batching={name!r}: no such decoding strategy; known: {', '.join(sorted(STRATEGIES))} (eval.batching; "
            f"a new one goes in llm_summarizer/models/generation.py STRATEGIES)"
        )
    return STRATEGIES[name]


def chosen(name: str, model, request: GenerationRequest) -> Strategy:
    """The strategy that runs `request` when `name` is asked: that one, or its fallback where it does not fit."""
    s = strategy(name)
    return s if s.fits is None or s.fits(model, request) else strategy(s.fallback)


def default_max_new_tokens(loaded: Loaded) -> tuple[int, str]:
    """The generation budget and where it came from: eval.max_new_tokens, else what the model was
    validated with during training, else derived from the training summaries' lengths."""
    ev = loaded.cfg.eval
    if ev.max_new_tokens:
        return ev.max_new_tokens, "eval.max_new_tokens"
    m = loaded.info.metrics or RunMetrics()
    n = m.validated_max_new_tokens
    if n:
        return n, "metrics.json eval_protocol (as validated during training)"
    p95 = m.train_summary_p95
    if p95:
        return budget_for(p95), BUDGET_RULE
    return derive_max_new_tokens([], ev), "default (no lengths recorded; set eval.max_new_tokens)"


def summarize_texts(
    loaded: Loaded,
    texts: list[str],
    max_new_tokens: Optional[int] = None,
    batch_size: Optional[int] = None,
    model=None,
    progress=None,
    batch: Optional[AdaptiveBatch] = None,
    long_documents: Optional[str] = None,
    names: Optional[list[str]] = None,
    on_done=None,
) -> list[Generated]:
    """Generated summaries (text, new_tokens, hit_max, truncated_input, method, tree), in order.

    A document over the token budget is chunked (windows, then merge rounds; `tree` says how) or cut by
    data.truncation, by `long_documents` (default eval.long_documents). `progress(done, total)` counts
    generations (with chunking, windows and merges: the total grows as rounds are planned); `on_done(i, g)` is
    called as each document's summary is final; `names` name the documents in messages."""
    n = max_new_tokens or default_max_new_tokens(loaded)[0]
    model = model or loaded.model
    ev = loaded.cfg.eval

    def run(docs: list[str], formatter, report, done=None) -> list[Generated]:
        request = GenerationRequest(
            formatter,
            list(docs),
            ev,
            n,
            loaded.backend,
            batch_size=batch_size,
            seed=ev.sample_seed,
            progress=report,
            batch=batch,
            on_done=done,
        )
        return generate(model, loaded.tokenizer, request)

    if (long_documents or ev.long_documents) != "chunk":
        return run(texts, loaded.formatter, progress, on_done)
    formatter, merge_formatter, refine_formatter = chunk_formatters(loaded, n)
    return summarize_long(
        list(texts),
        formatter,
        merge_formatter,
        ev,
        n,
        run,
        names=names,
        progress=progress,
        on_done=on_done,
        refine_formatter=refine_formatter,
    )


def check_documents(
    loaded: Loaded, texts: list[str], max_new_tokens: Optional[int] = None, names: Optional[list[str]] = None
):
    """With eval.long_documents=chunk, the refusals summarize_texts would give (an empty document, more windows
    than eval.max_chunks, no room for a document), for all `texts` at once and before anything is generated; and
    what summarizing them will cost (a chunked.Cost), else None."""
    if loaded.cfg.eval.long_documents == "chunk":
        n = max_new_tokens or default_max_new_tokens(loaded)[0]
        formatter, merge, refine = chunk_formatters(loaded, n)
        return plan_cost(list(texts), formatter, merge, loaded.cfg.eval, n, names, refine)
    return None


def chunk_window(loaded: Loaded, max_new_tokens: int) -> Optional[int]:
    """The document tokens one window holds as chunking applies it (None without chunking, or with no room)."""
    if loaded.cfg.eval.long_documents != "chunk":
        return None
    budget = chunk_formatters(loaded, max_new_tokens)[0].doc_budget(max_new_tokens)
    return budget if budget >= 1 else None


_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def model_context(config, tokenizer=None) -> tuple[Optional[int], str]:
    """The tokens the model can attend to, and where that was read: its config's context length (the first of
    _CONTEXT_KEYS), else the tokenizer's model_max_length (when it is a real number, not the 1e30 placeholder),
    else None."""
    for key in _CONTEXT_KEYS:
        v = getattr(config, key, None) if config is not None else None
        if isinstance(v, int) and v > 0:
            return v, f"the model config's {key}"
    v = getattr(tokenizer, "model_max_length", None)
    if isinstance(v, int) and 0 < v < 10**7:
        return v, "the tokenizer's model_max_length"
    return None, "nothing (no context length in the model config or tokenizer)"


def kv_bytes_per_token(config, dtype_bytes: int = 2) -> Optional[int]:
    """The KV cache one token takes: 2 (keys, values) x layers x key/value heads x head size x dtype bytes."""
    layers = getattr(config, "num_hidden_layers", None)
    heads = getattr(config, "num_attention_heads", None)
    hidden = getattr(config, "hidden_size", None)
    if not (layers and heads and hidden):
        return None
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return 2 * layers * kv_heads * head_dim * dtype_bytes


def memory_window(config, batch_size: int, free_bytes: Optional[int], dtype_bytes: int = 2) -> Optional[int]:
    """The longest window whose KV cache for `batch_size` rows fits half of `free_bytes` (a GPU's free memory;
    None on the CPU, where RAM is not what limits a window)."""
    per = kv_bytes_per_token(config, dtype_bytes)
    if not free_bytes or not per:
        return None
    return int(free_bytes * 0.5 // (per * max(1, batch_size)))


def _free_gpu_bytes(model) -> Optional[int]:
    try:
        device = next(model.parameters()).device
    except (StopIteration, AttributeError, TypeError):
        return None
    if device.type != "cuda":
        return None
    return int(torch.cuda.mem_get_info(device)[0])


def window_length(loaded: Loaded, max_new_tokens: int) -> tuple[int, str]:
    """The tokens of one chunking window (prompt + document + summary) and why: eval.chunk_tokens when set; else
    the model's context capped by eval.max_window_tokens and (on a GPU) by what free memory holds for
    eval.batch_size rows; never below model.max_seq_length (what the model was trained with)."""
    config = getattr(loaded.model, "config", None)
    dtype = getattr(config, "torch_dtype", None)
    mem = memory_window(
        config, loaded.cfg.eval.batch_size, _free_gpu_bytes(loaded.model), 4 if dtype == torch.float32 else 2
    )
    return window_for(loaded.cfg, loaded.formatter.template_tokens, max_new_tokens, config, loaded.tokenizer, mem)


def window_for(cfg, template_tokens: int, max_new_tokens: int, config, tokenizer, memory: Optional[int] = None):
    """window_length from its parts: the config, the prompt's template tokens, the model config (or None) and
    tokenizer (their context), the memory cap (or None)."""
    if cfg.eval.chunk_tokens:
        return template_tokens + cfg.eval.chunk_tokens + max_new_tokens, f"eval.chunk_tokens={cfg.eval.chunk_tokens}"
    context, where = model_context(config, tokenizer)
    limits = [(cfg.eval.max_window_tokens, f"eval.max_window_tokens={cfg.eval.max_window_tokens}")]
    if context:
        limits.append((context, f"the model's context ({context}, {where})"))
    if memory:
        limits.append((memory, f"the GPU's free memory (KV cache of {cfg.eval.batch_size} rows)"))
    length, why = min(limits, key=lambda x: x[0])
    if length <= cfg.model.max_seq_length:
        return cfg.model.max_seq_length, f"model.max_seq_length={cfg.model.max_seq_length} ({why} is not longer)"
    return length, why


def chunk_formatters(loaded: Loaded, max_new_tokens: int):
    """The prompt formatters of the windows, of the merge rounds and of refine's updates, all of one window
    (window_length): the windows' is the model's own prompt; the merge rounds' has eval.merge_instruction
    (default MERGE_INSTRUCTION; 'data.instruction' = the training prompt), refine's eval.refine_instruction."""
    cfg, f = loaded.cfg, loaded.formatter
    length, _why = window_length(loaded, max_new_tokens)
    ev = cfg.eval
    key = (length, id(f), cfg.data.model_dump_json(), ev.merge_instruction, ev.refine_instruction, ev.chunk_strategy)
    cached = loaded.chunk_formatters_cache
    if cached is not None and cached[0] == key:
        return cached[1]
    formatter = f if length == f.max_seq_length else Formatter(loaded.tokenizer, cfg.data, length)

    def with_instruction(text: Optional[str]):
        if text == TRAINING_PROMPT or text == cfg.data.instruction:
            return formatter
        return Formatter(loaded.tokenizer, cfg.data.model_copy(update={"instruction": text}), length)

    merge = with_instruction(cfg.eval.merge_instruction or MERGE_INSTRUCTION)
    refine = None
    if cfg.eval.chunk_strategy == "refine":
        refine = with_instruction(cfg.eval.refine_instruction or REFINE_INSTRUCTION)
    loaded.chunk_formatters_cache = (key, (formatter, merge, refine))
    return formatter, merge, refine


def summarize(
    model,
    texts: list[str],
    backend: Optional[str] = None,
    base: Optional[str] = None,
    overrides: Optional[list[str]] = None,
    max_new_tokens: Optional[int] = None,
) -> list[str]:
    """Summaries of `texts` by a saved model directory (or an already loaded Loaded); documents over the token
    budget are chunked or cut by eval.long_documents (pass e.g. overrides=["eval.long_documents=truncate"])."""
    loaded = model if isinstance(model, Loaded) else load_for_generation(model, backend, base, overrides)
    return [g.text for g in summarize_texts(loaded, texts, max_new_tokens)]
