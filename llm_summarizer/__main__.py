"""python -m llm_summarizer: the console command `llm-summarizer`."""

from .commands.main import main

raise SystemExit(main())
