"""python -m llm_summarizer.export: the same as `llm-summarizer export`."""

from ..commands.export import main

if __name__ == "__main__":
    raise SystemExit(main(prog="python -m llm_summarizer.export"))
