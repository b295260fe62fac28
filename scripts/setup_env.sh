#!/usr/bin/env bash
# Create or refresh the project's virtual environment at .venv/ (cheap when nothing changed).
#
#   bash scripts/setup_env.sh            # install / refresh
#   bash scripts/setup_env.sh --relock   # after changing dependencies: resolve anew, rewrite the lock
#
# Why not a plain `pip install unsloth`: unsloth and unsloth_zoo 2026.10.x require
# certifi>=2026.10.19, which some registries do not serve, so resolution fails. We install every
# other dependency first (exact versions from requirements/lock-linux-x86_64.txt on Linux x86_64,
# the ranges in pyproject.toml elsewhere), then unsloth + unsloth_zoo with --no-deps.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP="$VENV/.installed"
LOCK=requirements/lock-linux-x86_64.txt
relock=0
[ "${1:-}" = "--relock" ] && relock=1

want=$(cat pyproject.toml requirements/*.txt scripts/setup_env.sh | sha256sum | cut -d' ' -f1)
if [ $relock = 0 ] && [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
echo "setup_env: preparing $VENV (a new one takes several minutes and a few GB; a refresh installs only what changed)" >&2
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
# llama-cpp-python comes as a source archive only: it compiles llama.cpp (minutes on 2 cores; pip keeps the
# built wheel in its cache, so a rebuilt venv reuses it). A portable build (no -march=native), without the
# parts this project does not use.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF}"
rm -f "$STAMP"
if [ $relock = 0 ] && [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ]; then
  "${pip[@]}" install -q -r "$LOCK"
else
  "${pip[@]}" install -q -e ".[test,report,trackers,tune,ray]"
fi
"${pip[@]}" install -q --no-deps -r requirements/unsloth.txt
"${pip[@]}" install -q --no-deps --no-build-isolation -e .
if [ $relock = 1 ]; then
  { sed -n '1,3p' "$LOCK"; "${pip[@]}" freeze --exclude-editable | grep -v -i -E '^(unsloth|unsloth_zoo|pip|setuptools)([=@ ]|$)'; } > "$LOCK.new"
  mv "$LOCK.new" "$LOCK"
  want=$(cat pyproject.toml requirements/*.txt scripts/setup_env.sh | sha256sum | cut -d' ' -f1)
  echo "setup_env: rewrote $LOCK" >&2
fi
"$VENV/bin/python" -c "import llm_summarizer, importlib.metadata as m; print('setup_env: ready:', 'unsloth', m.version('unsloth'), 'torch', m.version('torch'))" >&2
echo "$want" > "$STAMP"
