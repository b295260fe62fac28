"""python -m llm_summarizer.summarize: the same as `llm-summarizer summarize` (kept for scripts that use it)."""

from .commands.summarize import main

if __name__ == "__main__":
    raise SystemExit(main(prog="python -m llm_summarizer.summarize"))
