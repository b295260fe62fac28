"""python -m llm_summarizer.data: the same as `llm-summarizer data`."""

from ..commands.data import main

if __name__ == "__main__":
    raise SystemExit(main(prog="python -m llm_summarizer.data"))
