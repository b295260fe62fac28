"""python -m llm_summarizer.bench: the same as `llm-summarizer bench`."""

from ..commands.bench import main

if __name__ == "__main__":
    raise SystemExit(main(prog="python -m llm_summarizer.bench"))
