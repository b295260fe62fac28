"""The class-shaped API of the original summarizer trainer script: `from llm_summarizer.trainer_class import
TrainerClass`. Importing it imports unsloth first (when installed), as that script did, so the model and
trainer classes it hands you are Unsloth's patched ones; the class lives in llm_summarizer.training.api.
"""

from .models.unsloth_first import import_unsloth

import_unsloth()

from .training.api import TrainerClass  # noqa: E402  (after unsloth, on purpose)

__all__ = ["TrainerClass"]
