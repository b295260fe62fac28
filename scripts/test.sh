#!/usr/bin/env bash
# The test command from the README: prepares .venv/ when needed, then runs the suite.
#   bash scripts/test.sh              # everything that runs on this machine (GPU tests skip on CPU)
#   bash scripts/test.sh -k data -x   # any pytest arguments
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
export WANDB_MODE=offline HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
# pytest exits 5 when it collected no test: that is a failure here, not a pass.
[ $rc -eq 5 ] && echo "no tests were collected" >&2
exit $rc
