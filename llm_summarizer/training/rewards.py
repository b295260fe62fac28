"""The summary reward of the GRPO stage: a weighted sum of named components, each computed by the implementation
the evaluation already uses (ROUGE from evaluation/scoring.py, every other statistic from
evaluation/diagnostics.py), so a reward and the score it should move are the same number.

Components of one completion (its document, its reference; the weights are rl.weights):

    similarity   ROUGE F1 (rl.similarity_metric) against the reference, in [0, 1]; 0 without a reference
    length       0 when summary words / reference words is inside rl.length_band [lo, hi] (or the words against
                 rl.target_words for a row without a reference); below lo: -(lo - r) / lo; above hi:
                 -min(1, (r - hi) / hi); an empty completion: -1
    copying      0 while extractive density d stays under the training references' mean density x rl.copy_slack
                 (at least 1: "allowed"); above it: -(d - allowed) / d, which never saturates (twice the allowed
                 density: -0.5; a copy of the document, d = its length: close to -1)
    unsupported  -0.5 per distinct number or name-like word absent from the document, at most -1
    repetition   minus the share of repeated trigrams inside the completion, in [-1, 0]
    cut          -1 when the completion reached rl.max_completion_length without an end of turn, else 0

A cut completion keeps its other components and gets the cut penalty on top: TRL's alternative
(mask_truncated_completions) drops it from the loss, which leaves a policy that learns to run past the budget
without any signal against it (trl PR #5759); a zero reward would be as good as an average completion's.

Each component is one reward function for TRL (named `<component>`, its weight in GRPOConfig.reward_weights), so
TRL logs each one's mean and std and the weighted sum as `reward`; one statistics pass per batch serves them all.
A user's component (rl.custom) is a function f(prompts, completions, **columns) -> list[float] loaded by its
'module:function' or 'file.py:function' name; one that raises or returns the wrong shape stops the run with a
message naming it.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..config import RLSection
from ..errors import UserError
from ..evaluation import diagnostics
from ..evaluation.scoring import Protocol, rouge_f1, word_tokens

COMPONENTS = ("similarity", "length", "copying", "unsupported", "repetition", "cut")
UNSUPPORTED_EACH = 0.5  # the penalty per unsupported number or name (at most -1 in all)


@dataclass
class Completion:
    """What the components read of one completion."""

    text: str
    document: str
    reference: Optional[str] = None
    cut: bool = False


def length_component(ratio: Optional[float], band: tuple[float, float]) -> float:
    """0 inside the band, down to -1 outside it (None: an empty completion, -1)."""
    lo, hi = band
    if ratio is None or ratio <= 0:
        return -1.0
    if ratio < lo:
        return -(lo - ratio) / lo
    if ratio > hi:
        return -min(1.0, (ratio - hi) / hi)
    return 0.0


def copying_component(density: Optional[float], allowed: float) -> float:
    if density is None or density <= allowed:
        return 0.0
    return -(density - allowed) / density


def unsupported_component(numbers: int, names: int) -> float:
    return -min(1.0, UNSUPPORTED_EACH * (numbers + names)) if numbers + names else 0.0


class SummaryReward:
    """The components of rl.weights for one run. `reference_density`: the mean extractive density of the training
    references against their documents (what the data teaches; `llm-summarizer data` shows it). `protocol`: the
    evaluation's ROUGE protocol (its tokenizer resolved on the references)."""

    def __init__(self, rl: RLSection, protocol: Protocol, reference_density: Optional[float]):
        self.rl = rl
        self.protocol = protocol
        self.reference_density = reference_density
        self.allowed_density = max(1.0, (reference_density or 1.0) * rl.copy_slack)
        self._cache: tuple[Optional[int], list[dict]] = (None, [])

    # -- one completion ----------------------------------------------------------------------------------
    def parts(self, c: Completion) -> dict[str, float]:
        """Every component's value (unweighted) for one completion."""
        rl, tok = self.rl, self.protocol.tokenizer
        has_ref = bool(c.reference and c.reference.strip())
        d = diagnostics.example(c.text, c.document, c.reference if has_ref else None, c.cut, tok)
        ratio = d["length_ratio"]
        if not has_ref:
            words = len(word_tokens(c.text, tok))
            ratio = words / rl.target_words if rl.target_words and words else None
        return {
            "similarity": rouge_f1(c.reference, c.text, rl.similarity_metric, self.protocol) if has_ref else 0.0,
            "length": length_component(ratio, rl.length_band) if (has_ref or rl.target_words) else 0.0,
            "copying": copying_component(d["density"], self.allowed_density),
            "unsupported": unsupported_component(len(d["unsupported"]["numbers"]), len(d["unsupported"]["names"])),
            "repetition": -d["repeated_3gram"] if d["repeated_3gram"] else 0.0,
            "cut": -1.0 if c.cut else 0.0,
        }

    def total(self, c: Completion) -> float:
        """The weighted sum of the built-in components (custom components are added by the trainer)."""
        w = self.rl.weights
        return sum(getattr(w, k) * v for k, v in self.parts(c).items())

    # -- TRL's reward functions ----------------------------------------------------------------------------
    def functions(self, is_cut: Callable[[Sequence[int]], bool]) -> tuple[list[Callable], list[float]]:
        """One reward function per component with a weight above 0, and their weights, in TRL's form:
        f(prompts, completions, completion_ids, document, summary, **_) -> list[float]. `is_cut(ids)`: whether
        a completion's token ids end without an end of turn at the budget."""
        funcs, weights = [], []
        for name in COMPONENTS:
            weight = getattr(self.rl.weights, name)
            if weight > 0:
                funcs.append(self._component(name, is_cut))
                weights.append(weight)
        for spec in self.rl.custom:
            if spec.weight > 0:
                funcs.append(checked(load_function(spec.function), spec.name))
                weights.append(spec.weight)
        return funcs, weights

    def _component(self, name: str, is_cut) -> Callable:
        def reward(prompts, completions, completion_ids, document, summary, **_):
            return [p[name] for p in self._batch(completions, completion_ids, document, summary, is_cut)]

        reward.__name__ = name
        return reward

    def _batch(self, completions, completion_ids, documents, references, is_cut) -> list[dict]:
        # every component of one batch reads one statistics pass (TRL calls them one after the other with the
        # same lists)
        key = id(completions)
        if self._cache[0] != key:
            rows = [
                Completion(text, doc, ref, is_cut(ids))
                for text, ids, doc, ref in zip(completions, completion_ids, documents, references)
            ]
            self._cache = (key, [self.parts(r) for r in rows])
        return self._cache[1]


def load_function(spec: str) -> Callable:
    """'package.module:function' or 'path/to/file.py:function' as the function (a UserError naming the spec when
    it cannot be loaded)."""
    where, _, name = spec.rpartition(":")
    try:
        if where.endswith(".py"):
            path = Path(where).expanduser()
            if not path.is_file():
                raise UserError(f"rl.custom: {spec!r}: no file {path}")
            module_name = f"llm_summarizer_reward_{path.stem}"
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"rl.custom: {spec!r} could not be loaded: {type(e).__name__}: {e}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise UserError(f"rl.custom: {spec!r}: {where} has no function {name!r}")
    return fn


def checked(fn: Callable, name: Optional[str] = None) -> Callable:
    """A user's reward function whose failures stop the run with one message naming it: an exception, a result
    that is not one finite number (or None) per completion."""
    label = name or getattr(fn, "__name__", "custom")

    def reward(prompts, completions, **columns):
        try:
            out = fn(prompts=prompts, completions=completions, **columns)
        except Exception as e:
            raise UserError(
                f"rl.custom reward {label!r} raised {type(e).__name__}: {e} (on a batch of {len(completions)} "
                "completions); fix the function or remove it from rl.custom"
            ) from None
        try:
            values = list(out)
        except TypeError:
            values = None
        if values is None or len(values) != len(completions):
            got = f"{len(values)} values" if values is not None else type(out).__name__
            raise UserError(
                f"rl.custom reward {label!r} returned {got} for {len(completions)} completions; it must return "
                "a list with one float (or None) per completion"
            )
        for i, v in enumerate(values):
            if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)):
                raise UserError(
                    f"rl.custom reward {label!r} returned {v!r} for completion {i}; each value must be a finite "
                    "number (or None to abstain)"
                )
        return values

    reward.__name__ = label
    return reward
