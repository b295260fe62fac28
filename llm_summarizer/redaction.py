"""The one way secrets are kept out of logs, saved configs, model cards, trackers and error messages.

A secret is the value of an environment variable whose name says it is one (HF_TOKEN, WANDB_API_KEY,
MY_SECRET, DB_PASSWORD, ...), any value stored under a secret-sounding key (`hub_token: ...`), and the
user:password part of a URL. `redact` returns a copy of a string, dict or list with all of them replaced.
"""

from __future__ import annotations

import os
import re
from typing import Optional

REDACTED = "<redacted>"

_SECRET_KEY = re.compile(r"(^|[_.-])(token|api_?key|secret|password|passwd|credentials?|private_key)$", re.I)
# TOKEN but not TOKENIZER: TOKENIZERS_PARALLELISM=false is set everywhere, and every "false" would be blanked out
_SECRET_ENV = re.compile(r"(TOKEN(?!IZER)|API_?KEY|SECRET|PASSWORD|PASSWD|CREDENTIALS?)|(^|_)KEY(_|$)", re.I)
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
_URL_USERINFO_VALUE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://(?P<userinfo>[^/@\s]+)@")
_MIN_SECRET_LEN = 4  # shorter values ("1", "true") would blank out ordinary text


def env_secrets(environ=None) -> list[str]:
    """Values of environment variables whose names say they are secrets, longest first."""
    environ = os.environ if environ is None else environ
    found = {v for k, v in environ.items() if _SECRET_ENV.search(k) and v and len(v.strip()) >= _MIN_SECRET_LEN}
    return sorted(found, key=len, reverse=True)


def redact(obj, secrets: Optional[list[str]] = None):
    """A copy of obj with secret-named keys, known secret values and URL passwords replaced."""
    secrets = (
        env_secrets()
        if secrets is None
        else sorted((s for s in secrets if s and len(s) >= _MIN_SECRET_LEN), key=len, reverse=True)
    )
    if isinstance(obj, dict):
        return {
            k: (REDACTED if _SECRET_KEY.search(str(k)) and obj[k] not in (None, "") else redact(v, secrets))
            for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [redact(v, secrets) for v in obj]
    if isinstance(obj, str):
        for s in secrets:
            obj = obj.replace(s, REDACTED)
        return _URL_USERINFO.sub(lambda m: m.group("scheme") + REDACTED + "@", obj)
    return obj


def secret_values(obj) -> list[str]:
    """The secrets a user typed into a config or a command line: values under secret-named keys (`hub_token: x`,
    `train.extra_args.hub_token=x`) and the user:password part of URLs, so that they can be redacted wherever they
    would otherwise be echoed (an error message quoting a value, a tracker recording the command line)."""
    found: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if _SECRET_KEY.search(str(k)) and isinstance(v, (str, int, float)) and str(v):
                found.append(str(v))
            else:
                found += secret_values(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            found += secret_values(v)
    elif isinstance(obj, str):
        if "=" in obj and not obj.startswith("-"):  # a command-line override: key=value
            key, value = obj.split("=", 1)
            if _SECRET_KEY.search(key.strip()) and value:
                found.append(value)
        for m in _URL_USERINFO_VALUE.finditer(obj):  # user:password, and the password alone
            found += [m.group("userinfo"), m.group("userinfo").partition(":")[2]]
    return [v for v in found if len(v) >= _MIN_SECRET_LEN]
