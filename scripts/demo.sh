#!/usr/bin/env bash
# The README's main command: prepares .venv/ when needed, then trains on the offline demo config.
#   bash scripts/demo.sh                       # the ready config `demo`, CPU or GPU, no network
#   bash scripts/demo.sh train.max_steps=100   # overrides pass through
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
exec .venv/bin/llm-summarizer train --config demo "$@"
