"""Tokenizers as training and generation need them: the chat template the config names, a pad token
distinct from EOS, and right padding for training (generation switches to left padding itself).
"""

from __future__ import annotations

import logging

from transformers import AutoTokenizer

from ..config import Config
from ..errors import UserError
from ..layout import TOKENIZER_FILES
from .backends import apply_named_template
from .directory import ModelDir

log = logging.getLogger("llm_summarizer.models")


def ensure_pad_token(tokenizer) -> None:
    """Give the tokenizer a pad token distinct from EOS when the vocabulary has one to spare.

    With pad == EOS some collators mask every EOS as padding and the model never learns to stop.
    """
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    vocab = tokenizer.get_vocab()
    for cand in (
        "<|finetune_right_pad_id|>",
        "<|pad|>",
        "<pad>",
        "[PAD]",
        "<|PAD_TOKEN|>",
        "<|reserved_special_token_0|>",
        "<|vision_pad|>",
        "<unk>",
        "<|unk|>",
    ):
        if cand in vocab and vocab[cand] != tokenizer.eos_token_id:
            tokenizer.pad_token = cand
            return
    if tokenizer.pad_token_id is None:
        # Last resort; labels come from the completion mask, so EOS still carries loss.
        tokenizer.pad_token = tokenizer.eos_token
        log.warning("tokenizer has no spare token for padding; padding with EOS (loss still covers EOS)")


def finish_tokenizer(cfg: Config, tok, backend: str = "unsloth"):
    """The config's named chat template (when the tokenizer lacks one), a distinct pad token, right padding."""
    if cfg.data.template not in ("auto", "plain") and not getattr(tok, "chat_template", None):
        if backend != "unsloth":
            raise UserError(
                f"data.template={cfg.data.template!r} is a named chat template, which only the unsloth "
                f"backend can apply; the tokenizer has none. Use model.backend=unsloth (--backend unsloth)"
            )
        tok = apply_named_template(tok, cfg.data.template)
    ensure_pad_token(tok)
    tok.padding_side = "right"  # training; generation switches to left padding itself
    return tok


def load_saved_tokenizer(info: ModelDir, cfg: Config, backend: str):
    """The tokenizer saved beside a model (else its base's), finished as in training."""
    src = str(info.path) if any((info.path / f).is_file() for f in TOKENIZER_FILES) else info.base
    if src is None:
        raise UserError(f"--model {info.path}: no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    try:
        tok = AutoTokenizer.from_pretrained(src, trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(
            f"--model: could not load the tokenizer of {src} ({type(e).__name__}: "
            f"{(str(e).strip().splitlines() or [''])[0][:300]})"
        ) from None
    return finish_tokenizer(cfg, tok, backend)
