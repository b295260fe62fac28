"""Fine-tune an LLM to summarize your documents on one GPU.

Importing the package imports no torch and no unsloth; the heavy modules are imported by the
commands that need them. The class users of the original trainer script know lives in
``llm_summarizer.trainer_class`` (``from llm_summarizer.trainer_class import TrainerClass``).
"""

__version__ = "0.1.0"
