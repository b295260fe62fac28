"""Hyperparameter search on ROUGE of generated summaries: `llm-summarizer tune` (study.py)."""
