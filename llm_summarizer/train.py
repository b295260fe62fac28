"""python -m llm_summarizer.train: the same as `llm-summarizer train` (kept for scripts that use it)."""

from .commands.train import main

if __name__ == "__main__":
    raise SystemExit(main(prog="python -m llm_summarizer.train"))
