#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md in one command, on a machine with one CUDA GPU and no network.
#
#   bash scripts/bench_gpu_prepare.sh                # first, where the package registry is reachable
#   bash scripts/bench_gpu.sh                        # on the GPU machine, repository root, .whl + .bench_data beside
#   bash scripts/bench_gpu.sh lora qlora features    # stages to run (default: lora qlora)
#   .venv/bin/python -m llm_summarizer bench --from-json RESULTS/bench-*.json   # back here: rows into BENCHMARKS.md
#
# Stages (each one invocation of python -m llm_summarizer bench, both backends, schema defaults):
#   lora      random-init Llama-3.2-1B shape, bf16 LoRA r=16 on all seven projections, DialogSum
#   qlora     the same with the base in 4-bit (QLoRA)
#   features  bench_features.py: padded vs group_by_length vs padding_free (SDPA, and FlexAttention on the
#             transformers backend), both backends, bf16 LoRA
# Results (JSON, Markdown rows, logs of failed runs) go to $OUT (default outputs/bench/gpu). BUDGET (seconds,
# default 560) skips a stage that would not finish in time, so a run under a hard limit still returns what it has.
# A dry run of the script itself on a CPU: REQUIRE_GPU=0 SHAPE=tiny STEPS=3 WARMUP=1 EXTRA="eval.num_samples=2".
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-outputs/bench/gpu}
BUDGET=${BUDGET:-560}
SHAPE=${SHAPE:-llama-1b}
STEPS=${STEPS:-40}
WARMUP=${WARMUP:-5}
ROUNDS=${ROUNDS:-1}
DATA=${DATA:-.bench_data/dialogsum}
REQUIRE_GPU=${REQUIRE_GPU:-1}
read -r -a extra <<< "${EXTRA:-}"
[ -f "$DATA/train.jsonl" ] || DATA=auto
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(lora qlora)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

if [ -d .whl ] && ! python3 -c "import unsloth_zoo" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# Fail in seconds, not minutes, when a package is missing.
REQUIRE_GPU=$REQUIRE_GPU python3 - <<'EOF' || exit 1
import importlib, os, sys
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
assert torch.cuda.is_available() or os.environ["REQUIRE_GPU"] == "0", "no CUDA GPU visible"
missing = []
for m in ("pydantic", "yaml", "datasets", "trl", "peft", "rouge_score", "bitsandbytes", "llm_summarizer.bench.harness"):
    try:
        importlib.import_module(m)
    except Exception as e:
        missing.append(f"{m}: {type(e).__name__}: {e}")
print("\n".join(missing) or "imports ok")
sys.exit(1 if missing else 0)
EOF
python3 -c "import unsloth" 2>&1 | tail -3 || exit 1

bench() {  # bench NAME ESTIMATED_SECONDS ARGS...
  local name=$1 need=$2; shift 2
  if [ $((SECONDS + need)) -gt "$BUDGET" ]; then
    echo "== skip $name: ${SECONDS}s used, ~${need}s needed, budget ${BUDGET}s"
    return
  fi
  echo "== $name (${SECONDS}s used)"
  python3 -m llm_summarizer bench --shape "$SHAPE" --data "$DATA" --steps "$STEPS" --warmup-steps "$WARMUP" \
    --rounds "$ROUNDS" --out "$OUT/bench-$SHAPE-$name.json" --markdown "$OUT/rows.md" \
    --work-dir "/tmp/bench-$name" "$@" "${extra[@]}" || {
      echo "== $name failed"; tail -n 60 /tmp/bench-"$name"/*.log 2>/dev/null | tail -c 6000 > "$OUT/$name-failed.log"; }
}

for stage in "${stages[@]}"; do
  case $stage in
    lora) bench lora 240 ;;
    qlora) bench qlora 200 --qlora ;;
    features)
      if [ $((SECONDS + 300)) -gt "$BUDGET" ]; then echo "== skip features (${SECONDS}s used)"; continue; fi
      echo "== features (${SECONDS}s used)"
      python3 scripts/bench_features.py --backends unsloth,transformers --rounds 1 \
        --variants padded,group_by_length,padding_free,padding_free+flex --out-dir /tmp/bench-features -- \
        --shape "$SHAPE" --data "$DATA" --steps 20 --warmup-steps 4 eval.num_samples=8 "${extra[@]}"
      cp /tmp/bench-features/summary.md "$OUT/features.md" 2>/dev/null
      cp /tmp/bench-features/summary.json "$OUT/features.json" 2>/dev/null ;;
    *) echo "unknown stage $stage (lora, qlora, features)" >&2 ;;
  esac
done
[ -f "$OUT/rows.md" ] && cat "$OUT/rows.md"
echo "== done in ${SECONDS}s; results in $OUT"
