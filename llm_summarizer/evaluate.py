"""python -m llm_summarizer.evaluate: the same as `llm-summarizer evaluate` (kept for scripts that use it)."""

from .commands.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main(prog="python -m llm_summarizer.evaluate"))
