"""Scale-out engines: Ray Train (ray_engine.py). torchrun needs none: see llm_summarizer.distributed."""
