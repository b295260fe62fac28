#!/usr/bin/env bash
# The README's main command: prepares .venv/ when needed, then trains on the offline demo config.
#   bash scripts/demo.sh                       # the ready config `demo`, CPU or GPU, no network
#   bash scripts/demo.sh train.max_steps=100   # overrides pass through
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
stamp=.venv/.installed
before=$(cat "$stamp" 2>/dev/null || true)
t0=$(date +%s)
bash scripts/setup_env.sh
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$before" ]; then
  s=$(( $(date +%s) - t0 ))
  echo "demo: installing the environment took $((s / 60))m$((s % 60))s (not part of the run's start-up below)" >&2
fi
# The command runs in this same process (exec), which started before the install: it counts its start-up from here.
LLM_SUMMARIZER_COMMAND_START=$(date +%s.%N)
export LLM_SUMMARIZER_COMMAND_START
exec .venv/bin/llm-summarizer train --config demo "$@"
