"""The one percentile rule, for every figure the project prints, records or acts on: the p95 of summary lengths the
training data report logs (and metrics.json keeps), the generation budget set from it (`models.generation
.derive_max_new_tokens`), the length report of `llm-summarizer data`, the bench's and the evaluation's length
figures, and `serve`'s waits. One rule, so the p95 a log shows is the p95 that sets max_new_tokens.
"""

from __future__ import annotations

from typing import Iterable, TypeVar

T = TypeVar("T")


def percentile(values: Iterable[T], q: float, default=None) -> T:
    """The value at rank int(n * q) of the sorted values (a value that occurs; the largest for q near 1), or
    `default` for no values. `q` is a fraction: 0.5 is the median (the upper one for even n), 0.95 the p95."""
    s = sorted(values)
    if not s:
        return default
    return s[min(len(s) - 1, max(0, int(len(s) * q)))]
