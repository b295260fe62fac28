#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md in one command, on a machine with one CUDA GPU and no network.
#
#   bash scripts/bench_gpu_prepare.sh                # first, where the package registry is reachable
#   bash scripts/bench_gpu.sh                        # on the GPU machine, repository root, .whl + .bench_data beside
#   bash scripts/bench_gpu.sh lora anchor features   # stages to run (default: lora qlora anchor generation)
#   .venv/bin/python -m llm_summarizer bench --from-json RESULTS/bench-*.json   # back here: rows into BENCHMARKS.md
#
# Stages (each with an estimate in seconds; one that would not fit in what is left of BUDGET is skipped and said):
#   lora        llm-summarizer bench: random-init Llama-3.2-1B shape, bf16 LoRA at the schema defaults, DialogSum,
#               both backends                                                                            240
#   qlora       the same with the base in 4-bit NF4 (QLoRA)                                              200
#   anchor      scripts/bench_anchor.py: the same model through our loader, trained by a bare loop (no
#               Trainer) on 4 x 2048 random tokens, bf16 LoRA and QLoRA, Unsloth and transformers + PEFT:
#               what the rows above are ratios of                                                        150
#   generation  llm-summarizer bench --floors generation, both backends: our generation path (what the ROUGE
#               pass, evaluate, summarize and serve call) against plain model.generate at equal settings,
#               and the whole ROUGE pass, at eval batch GEN_BATCH (default 128)                          150
#   features    bench_features.py: padded vs group_by_length vs padding_free (SDPA, and FlexAttention on the
#               transformers backend), both backends, bf16 LoRA                                         300
# Results go to $OUT (default outputs/bench/gpu), at most 8 files: bench-SHAPE-lora.json, bench-SHAPE-qlora.json and
# rows.md (the bench rows), anchor.json, generation.json and floors.md, features.md, and failed.log (what was
# skipped, and the last lines of any run that failed). BUDGET (seconds,
# default 560) bounds the whole call, so a run under a hard limit still returns what it has.
# A dry run of the script itself on a CPU: REQUIRE_GPU=0 SHAPE=tiny STEPS=3 WARMUP=1 EXTRA="eval.num_samples=2".
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/gpu_env.sh
OUT=${OUT:-outputs/bench/gpu}
WORK=${WORK:-${TMPDIR:-/tmp}/bench_gpu}  # run directories and logs of the stages (not brought back)
BUDGET=${BUDGET:-560}
SHAPE=${SHAPE:-llama-1b}
STEPS=${STEPS:-40}
WARMUP=${WARMUP:-5}
ROUNDS=${ROUNDS:-1}
DATA=${DATA:-.bench_data/dialogsum}
# A dry run on a CPU keeps generation and the anchor small: eval batch 4 (not 128), the anchor at 4 x 256 (not the
# earlier anchors' 4 x 2048).
GEN_BATCH=${GEN_BATCH:-$([ "$REQUIRE_GPU" = 0 ] && echo 4 || echo 128)}
ANCHOR_SEQ=${ANCHOR_SEQ:-$([ "$REQUIRE_GPU" = 0 ] && echo 256 || echo 2048)}
read -r -a extra <<< "${EXTRA:-}"
[ -f "$DATA/train.jsonl" ] || DATA=demo
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(lora qlora anchor generation)
mkdir -p "$OUT"
mkdir -p "$WORK"
rm -f "$WORK"/anchor-*.json "$WORK"/generation-*.json "$OUT/failed.log"

gpu_env_install || exit 1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# Fail in seconds, not minutes, when a package is missing.
gpu_env_check unsloth pydantic yaml datasets trl peft rouge_score bitsandbytes llm_summarizer.bench.harness || exit 1

fits() {  # fits NAME ESTIMATED_SECONDS: whether the stage fits in what is left of BUDGET (says so when not)
  if [ $((SECONDS + $2)) -gt "$BUDGET" ]; then
    echo "== skip $1: ${SECONDS}s used, ~$2s needed, budget ${BUDGET}s" | tee -a "$OUT/failed.log"
    return 1
  fi
  echo "== $1 (${SECONDS}s used)"
}

failed() {  # failed NAME LOG...: say so, and keep the end of its logs in $OUT/failed.log
  echo "== $1 failed" | tee -a "$OUT/failed.log"
  shift
  tail -n 60 "$@" 2>/dev/null | tail -c 6000 >> "$OUT/failed.log"
}

merge() {  # merge OUT.json IN.json...: one JSON list of what the inputs hold (each a list or one result)
  "$PY" -c 'import json, sys; from pathlib import Path
out = []
for p in map(Path, sys.argv[2:]):
    got = json.loads(p.read_text()) if p.is_file() else []
    out.extend(got if isinstance(got, list) else [got])
Path(sys.argv[1]).write_text(json.dumps(out, indent=1))' "$@"
}

bench() {  # bench NAME ESTIMATED_SECONDS ARGS...
  local name=$1 need=$2; shift 2
  fits "$name" "$need" || return
  "$PY" -m llm_summarizer bench --shape "$SHAPE" --data "$DATA" --steps "$STEPS" --warmup-steps "$WARMUP" \
    --rounds "$ROUNDS" --out "$OUT/bench-$SHAPE-$name.json" --markdown "$OUT/rows.md" \
    --work-dir "$WORK/bench-$name" "$@" "${extra[@]}" || failed "$name" "$WORK/bench-$name"/*.log
}

anchor() {  # the raw loop, one process per backend (Unsloth must not be imported by the transformers one)
  fits anchor 150 || return
  local b
  for b in unsloth transformers; do
    "$PY" scripts/bench_anchor.py --backend $b --shape "$SHAPE" --data "$DATA" --modes lora,qlora --seq "$ANCHOR_SEQ" \
      --steps $((WARMUP + 10)) --warmup "$WARMUP" --out "$WORK/anchor-$b.json" > "$WORK/anchor-$b.log" 2>&1 \
      || failed "anchor $b" "$WORK/anchor-$b.log"
    grep '^{"anchor"' "$WORK/anchor-$b.log"
  done
  merge "$OUT/anchor.json" "$WORK/anchor-unsloth.json" "$WORK/anchor-transformers.json"
}

generation() {  # the generation floors of each backend at one eval batch size
  fits generation 150 || return
  local b
  for b in unsloth transformers; do
    "$PY" -m llm_summarizer bench --floors generation --backends $b --shape "$SHAPE" --data "$DATA" \
      --gen-rows $((GEN_BATCH * 2)) --out "$WORK/generation-$b.json" --markdown "$OUT/floors.md" \
      --work-dir "$WORK/bench-generation-$b" "eval.batch_size=$GEN_BATCH" "${extra[@]}" \
      > "$WORK/generation-$b.log" 2>&1 || failed "generation $b" "$WORK/generation-$b.log"
    tail -n 12 "$WORK/generation-$b.log"
  done
  merge "$OUT/generation.json" "$WORK/generation-unsloth.json" "$WORK/generation-transformers.json"
}

for stage in "${stages[@]}"; do
  case $stage in
    lora) bench lora 240 ;;
    qlora) bench qlora 200 --qlora ;;
    anchor) anchor ;;
    generation) generation ;;
    features)
      fits features 300 || continue
      "$PY" scripts/bench_features.py --backends unsloth,transformers --rounds 1 \
        --variants padded,group_by_length,padding_free,padding_free+flex --out-dir "$WORK/bench-features" -- \
        --shape "$SHAPE" --data "$DATA" --steps 20 --warmup-steps 4 eval.num_samples=8 "${extra[@]}"
      cp "$WORK/bench-features/summary.md" "$OUT/features.md" 2>/dev/null
      ;;
    *) echo "unknown stage $stage (lora, qlora, anchor, generation, features)" >&2 ;;
  esac
done
[ -f "$OUT/rows.md" ] && cat "$OUT/rows.md"
echo "== done in ${SECONDS}s; results in $OUT"
