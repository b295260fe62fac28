"""What one `llm-summarizer bench` invocation asks for, as the bench library reads it: the command checks its flags
and builds a `BenchOptions` once (commands/bench.py); the harness and the floors take it, never the command line's
Namespace. The flags' help and defaults stay with the parser in commands/bench.py (every field is given there:
no default is restated here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class BenchOptions:
    # what is measured: the model (a random-init shape, or a directory / a name the loader knows) and the data
    data: str
    shape: str
    model: Optional[str]
    train_rows: Optional[int]
    val_rows: Optional[int]
    config: Optional[str]  # the base YAML config; None: the schema's defaults
    overrides: tuple[str, ...]  # config overrides for every run
    qlora: bool
    # how: the backends in alternation, the steps (the first warmup_steps left out of the speeds), the rounds
    backends: tuple[str, ...]
    steps: int
    warmup_steps: int
    rounds: int
    threads: Optional[int]  # CPU threads per run; None: the library's choice
    # --floors: the parts measured (empty: the backend comparison), the rows of the data and generation parts
    floor_parts: tuple[str, ...]
    data_rows: int
    gen_rows: int
    # where: the result file, the work folder (kept with keep), the Markdown file its row goes to ('' for none)
    out: Optional[str]
    work_dir: Optional[str]
    markdown: str
    keep: bool
    argv: tuple[str, ...]  # the command line, recorded in the result
