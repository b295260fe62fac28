"""Try a fine-tuned model in a browser or over HTTP: `llm-summarizer serve --model DIR` (see server.py)."""
