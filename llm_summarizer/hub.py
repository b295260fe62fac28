"""Push a model directory (adapter or merged weights, with its model card) to the Hugging Face Hub.

    HF_TOKEN=hf_... llm-summarizer train --config my.yaml output.push_to_hub=true output.hub_model_id=you/my-summarizer
    HF_TOKEN=hf_... llm-summarizer export fine_tuned/my-run --format merged-16bit \
        --push-to-hub --hub-model-id you/my-summarizer

The token is read from the environment (HF_TOKEN, or HUGGING_FACE_HUB_TOKEN), or from a login done
earlier with `hf auth login`. It is handed to the hub client only: never logged, never written to any
file, and removed from any error message before that message is shown. Repositories are created
private unless output.hub_private=false (or --public).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

from huggingface_hub import HfApi, get_token

from .errors import UserError
from .redaction import env_secrets, redact

log = logging.getLogger("llm_summarizer.hub")

TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def hub_token() -> Optional[str]:
    for var in TOKEN_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            return value
    try:
        return get_token()
    except Exception:
        return None


def require_token() -> str:
    token = hub_token()
    if not token:
        raise UserError(
            "pushing to the hub needs a token with write access: set HF_TOKEN in the environment "
            "(https://huggingface.co/settings/tokens) or run `hf auth login` first"
        )
    return token


def push_folder(folder, repo_id: str, private: bool = True, commit_message: Optional[str] = None) -> str:
    """Create the repository if needed (private by default) and upload the folder. Returns its URL."""
    folder = Path(folder)
    token = require_token()
    try:
        api = HfApi(token=token)
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            commit_message=commit_message or f"Upload {folder.name} (llm_summarizer)",
            ignore_patterns=[".*", "*.tmp"],
        )
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:300]
        # every credential in the environment, not only the one used: an error text could quote any
        msg = redact(f"{type(e).__name__}: {first}", [token or ""] + env_secrets())
        raise UserError(
            f"pushing {folder} to the hub repository {repo_id} failed ({msg}). The model itself is saved "
            f"in {folder}; push it later with: hf upload {repo_id} {folder}" + (" --private" if private else "")
        ) from None
    link = str(url) if url else f"https://huggingface.co/{repo_id}"
    log.info("pushed %s to %s (%s)", folder, link, "private" if private else "public")
    return link


def push_after_training(cfg, model_dir: Path) -> Optional[str]:
    """output.push_to_hub: the final model directory (adapter + card) to output.hub_model_id."""
    if not cfg.output.push_to_hub:
        return None
    return push_folder(model_dir, cfg.output.hub_model_id, cfg.output.hub_private)
