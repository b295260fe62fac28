"""llm-summarizer: fine-tune an LLM to summarize your documents on one GPU.

    llm-summarizer train --config demo                     # the demo: SmolLM2 on SciTLDR, ~10 min on a CPU
    llm-summarizer train --config tiny                     # a tiny random model, nothing downloaded, 3 min
    llm-summarizer train --config my.yaml key=value ...    # your own run
    llm-summarizer data --config my.yaml                   # what training would see
    llm-summarizer evaluate --model fine_tuned/demo --compare-base
    llm-summarizer summarize --model fine_tuned/demo article.txt
    llm-summarizer export fine_tuned/demo --format merged-16bit
    llm-summarizer serve --model fine_tuned/demo --compare-base  # try it in a browser
    llm-summarizer score predictions.jsonl --base other.jsonl  # ROUGE of any predictions file, paired
    llm-summarizer tune --config tiny --trials 8 'tune.space={...}'  # hyperparameters on ROUGE (Optuna)
    llm-summarizer bench                                   # unsloth vs transformers, same run
    llm-summarizer env                                     # versions and device, for bug reports
    llm-summarizer configs                                 # the ready configs

`python -m llm_summarizer` is the same command; `llm-summarizer COMMAND --help` says more.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module in llm_summarizer.commands, one line for --help)
COMMANDS = {
    "train": ("train", "fine-tune a model on a summarization dataset (resumes from the newest checkpoint)"),
    "evaluate": ("evaluate", "ROUGE with 95% intervals of a saved model on a split, optionally against its base"),
    "summarize": ("summarize", "summarize files, directories, table columns or stdin with a saved model"),
    "export": ("export", "adapter, merged 16-bit, merged 4-bit or GGUF, each checked against the adapter"),
    "data": ("data", "show what training would see: sizes, drops, truncations, token lengths, examples"),
    "serve": ("serve", "try a saved model in a browser: a local page and a JSON API (POST /summarize)"),
    "score": (
        "score",
        "ROUGE with 95% intervals of any predictions file (JSONL/CSV/...), optionally paired with another",
    ),
    "tune": ("tune", "search hyperparameters on ROUGE: an Optuna study whose trials are training runs (resumable)"),
    "bench": ("bench", "benchmark the training path, unsloth against transformers, in one run"),
    "env": ("env", "versions, device and precision facts for a bug report"),
    "configs": ("configs", "list the ready configs (used as --config NAME)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [__doc__.split("\n")[0], "", "usage: llm-summarizer COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "\n".join(__doc__.split("\n")[2:]).rstrip()]
    return "\n".join(lines)


def main(argv=None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # a reader that went away is noticed here, not at the interpreter's exit
        return code
    except BrokenPipeError:
        from .boot import broken_pipe  # light: config, errors

        return broken_pipe()


def _main(argv) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        # only for --version
        from .. import __version__

        print(f"llm-summarizer {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; one of: {', '.join(COMMANDS)}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"{__package__}.{COMMANDS[name][0]}")
    return module.main(rest, prog=f"llm-summarizer {name}")


if __name__ == "__main__":
    raise SystemExit(main())
