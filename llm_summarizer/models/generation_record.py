"""How summaries were made, as one typed record: the decoding strategy, the batching as it really ran (not as it
was asked: Unsloth's CUDA decoder and sampling run static batches), the stop tokens, the token budget and where it
came from, and the prompt template. The in-training evaluation (metrics.json `eval_protocol.decoding`), `evaluate`
(eval_settings.json and metrics.json `protocol.decoding`), `summarize` (its log) and the chunked path (each tree's
`generation`) write this one record, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from ..config import EvalSection
from .device import effective_batching


def strategy(ev: EvalSection) -> str:
    return "sampling" if ev.do_sample else ("beam search" if ev.num_beams > 1 else "greedy")


def batching_as_run(ev: EvalSection, backend: str) -> str:
    """The batching generation really uses, in words (sampling and beam search always batch statically)."""
    how = effective_batching(backend, ev) if strategy(ev) == "greedy" else "static"
    if how == "continuous":
        return f"continuous batches of up to {ev.batch_size} (a finished row's place is taken at once), left padding"
    return f"batches of {ev.batch_size}, left padding"


@dataclass(frozen=True)
class GenerationRecord:
    strategy: str  # greedy, sampling or beam search
    num_beams: int
    do_sample: bool
    max_new_tokens: int
    max_new_tokens_source: str  # where the budget came from
    stop_tokens: list  # the tokens that end a summary, as the tokenizer writes them
    batching: str  # as it ran
    prompt_template: str  # the tokenizer's chat template, or plain text
    temperature: Optional[float] = None  # sampling only
    top_p: Optional[float] = None
    seed: Optional[int] = None

    @classmethod
    def made(
        cls, ev: EvalSection, backend: str, max_new_tokens: int, source: str, formatter, tokenizer
    ) -> "GenerationRecord":
        sampling = ev.do_sample
        return cls(
            strategy=strategy(ev),
            num_beams=ev.num_beams,
            do_sample=ev.do_sample,
            max_new_tokens=max_new_tokens,
            max_new_tokens_source=source,
            stop_tokens=[tokenizer.convert_ids_to_tokens(i) for i in formatter.stop_ids],
            batching=batching_as_run(ev, backend),
            prompt_template="the tokenizer's chat template" if formatter.use_chat else "plain text",
            temperature=ev.temperature if sampling else None,
            top_p=ev.top_p if sampling else None,
            seed=ev.sample_seed if sampling else None,
        )

    def to_dict(self) -> dict:
        """The record as written (the sampling settings only when sampling)."""
        return {k: v for k, v in asdict(self).items() if v is not None or k not in ("temperature", "top_p", "seed")}

    def describe(self) -> str:
        """One line for a log: "greedy, max_new_tokens 94 (1.5 x p95 ...), continuous batches of up to 8 ..."."""
        extra = f", temperature {self.temperature}, top_p {self.top_p}, seed {self.seed}" if self.do_sample else ""
        beams = f" ({self.num_beams} beams)" if self.num_beams > 1 else ""
        return (
            f"{self.strategy}{beams}{extra}, max_new_tokens {self.max_new_tokens} ({self.max_new_tokens_source}), "
            f"{self.batching}, stop at {', '.join(map(str, self.stop_tokens))}, prompt: {self.prompt_template}"
        )
