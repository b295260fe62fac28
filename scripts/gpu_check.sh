#!/usr/bin/env bash
# Every GPU path of the project in one prepared command, for a machine with one CUDA GPU and no network.
#
#   bash scripts/bench_gpu_prepare.sh              # first, where the package registry is reachable (.whl/)
#   bash scripts/gpu_check.sh                      # on the GPU machine, repository root, .whl/ beside: all stages
#   bash scripts/gpu_check.sh train export         # only these stages (in the order given)
#   REQUIRE_GPU=0 bash scripts/gpu_check.sh        # the dry run on a CPU: every stage that can run there
#
# Stages, in priority order, each a function below with a time budget in seconds (a stage starts only when half
# its budget is left of BUDGET, else it is skipped and the summary says so; it is stopped at its budget or at the
# end of BUDGET, whichever comes first):
#   env       versions, the GPU, train.precision=auto picking bf16                                          30
#   load      Unsloth's loader on CUDA through ours: 16-bit, 4-bit NF4, 8-bit (layers, dtype, a step, generate)  60
#   train     train command, unsloth backend at the schema's GPU defaults (4-bit NF4, adamw_8bit, gradient
#             checkpointing "unsloth", precision auto), the ROUGE callback generating between steps,
#             peak memory read from CUDA                                                                      90
#   train_tf  the same on the transformers backend (bitsandbytes + PEFT, TRL's own loss kernel on CUDA)          90
#   generate  evaluate, summarize and serve on CUDA with the train stage's model                               120
#   oom       the generation back-off on a real torch.cuda.OutOfMemoryError; the train command's answer to a
#             real one (its CUDA memory capped)                                                                75
#   resume    SIGKILL in the middle of a run and resume, against an uninterrupted run (max abs difference of
#             the adapters, bitwise or not)                                                                   150
#   export    merged-4bit (which merges and checks the 16-bit model first: the dtype rule), merged-16bit; GGUF
#             is not checked here (llama.cpp's converter does not know the random-init model's tokenizer)     180
#   torchrun  the train command under torchrun --nproc_per_node=1, and an NCCL all_reduce                       75
# Every stage uses the random-init tiny model built on this machine from data/demo (no network).
#
# Results: $OUT/gpu_check.json and $OUT/gpu_check.md (stage, pass/fail/skip, seconds, peak GiB, versions, the
# commands, what could not be checked here and why, the last lines of a failed stage's log). OUT defaults to
# outputs/gpu_check; logs and run directories go to WORK (default /tmp/gpu_check).
# BUDGET (default 540 s) bounds the whole run; SCALE multiplies every stage budget (a dry run on a CPU: 4, and
# BUDGET 4 times as long). A missing package stops everything within seconds, naming it (GPU_CHECK_MODULES adds
# modules to that check).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/gpu_env.sh
OUT=${OUT:-outputs/gpu_check}
WORK=${WORK:-/tmp/gpu_check}
if [ "$REQUIRE_GPU" = 0 ]; then SCALE=${SCALE:-4}; else SCALE=${SCALE:-1}; fi
BUDGET=${BUDGET:-$((540 * SCALE))}
# The kill/resume run needs steps slow enough to be killed between two checkpoints: many on a GPU, few on a CPU.
RESUME_STEPS=${RESUME_STEPS:-$([ "$REQUIRE_GPU" = 0 ] && echo 24 || echo 200)}
# Training steps of the train stages: on a GPU enough for the tiny model to write summaries (not repeated words),
# which the export stage's agreement check compares; a few on a CPU.
STEPS=${STEPS:-$([ "$REQUIRE_GPU" = 0 ] && echo 12 || echo 200)}
ALL_STAGES=(env load train train_tf generate oom resume export torchrun)
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=("${ALL_STAGES[@]}")
rm -rf "$WORK" && mkdir -p "$WORK" "$OUT"
MODELS=$WORK/models        # the random-init tiny model, built once by the first stage that needs it
TRAINED=$WORK/train/model  # the train stage's model, for generate, oom and export
TINY=(--config tiny "model.cache_dir=$MODELS" "train.logging_steps=5" "tracking.report_to=[none]")

summary() {
  "$PY" scripts/gpu_check.py summary "$WORK" "$OUT" --budget "$BUDGET" --wall "$SECONDS" --require-gpu "$REQUIRE_GPU"
}

note() {  # note STAGE STATUS SECONDS BUDGET [REASON]: one line of $WORK/stages.jsonl
  "$PY" - "$@" "$WORK" <<'EOF'
import json, sys
from pathlib import Path
stage, status, seconds, budget, reason, work = sys.argv[1:7]
work = Path(work)
cmds = work / f"{stage}.commands"
mem = work / f"{stage}.mem"
used = [float(x) for x in mem.read_text().split() if x.replace(".", "", 1).isdigit()] if mem.is_file() else []
line = {"stage": stage, "status": status, "seconds": int(seconds), "budget": int(budget), "reason": reason or None,
        "commands": cmds.read_text().splitlines() if cmds.is_file() else [],
        "gpu_used_gib": round(max(used) / 1024, 2) if used else None}
with open(work / "stages.jsonl", "a") as f:
    f.write(json.dumps(line) + "\n")
EOF
}

# ---- fail in seconds when something is missing ---------------------------------------------------------
gpu_env_install || { note setup fail 0 0 "installing .whl/ failed"; summary; exit 1; }
read -r -a extra_modules <<< "${GPU_CHECK_MODULES:-}"
if ! gpu_env_check unsloth pydantic yaml datasets trl peft accelerate bitsandbytes rouge_score starlette uvicorn \
    llm_summarizer.training.run llm_summarizer.export.exporter llm_summarizer.serve.server "${extra_modules[@]}" \
    > "$WORK/setup.log" 2>&1; then
  cat "$WORK/setup.log"
  note setup fail "$SECONDS" 0 "$(grep MISSING "$WORK/setup.log" | sed 's/gpu_env: MISSING //' | paste -sd ';' -)"
  summary >/dev/null
  echo "gpu_check: stopped after ${SECONDS}s: a package is missing (see above); results in $OUT"
  exit 1
fi
cat "$WORK/setup.log"

# ---- helpers for the stages --------------------------------------------------------------------------
said() {  # said CMD...: record a command of the stage for the summary, and echo it into the stage's log
  echo "${*#$PWD/}" >> "$WORK/$STAGE.commands"
  echo "+ $*" >&2
}
run() { said "$@"; "$@"; }
check() { run "$PY" scripts/gpu_check.py "$@"; }
train() {  # train DIR OVERRIDES...: the train command with its output under DIR
  local dir=$1; shift
  run "$PY" -m llm_summarizer train "${TINY[@]}" "output.dir=$dir/out" "output.model_dir=$dir/model" "$@"
}
needs_model() { [ -f "$TRAINED/adapter_model.safetensors" ] || { echo "needs the train stage's model ($TRAINED)"; exit 77; }; }
QLORA=("model.load_in_4bit=true" "train.optim=adamw_8bit" "model.gradient_checkpointing=unsloth" "train.precision=auto"
       "train.max_steps=$STEPS" "train.eval_steps=$((STEPS / 2))" "train.save_steps=$((STEPS / 2))" "eval.num_samples=8")

# ---- the stages ----------------------------------------------------------------------------------------
stage_env() { check env; }

stage_load() { check load --cache "$MODELS"; }

stage_train() {
  train "$WORK/train" "${QLORA[@]}" || return 1
  check check-train "$WORK/train/out" "$TRAINED" --backend unsloth --four-bit --optim adamw_8bit
}

stage_train_tf() {
  train "$WORK/train_tf" model.backend=transformers "${QLORA[@]}" || return 1
  check check-train "$WORK/train_tf/out" "$WORK/train_tf/model" --backend transformers --four-bit --optim adamw_8bit
}

stage_generate() {
  needs_model
  local s=$WORK/generate && mkdir -p "$s"
  run "$PY" -m llm_summarizer evaluate --model "$TRAINED" --limit 16 --output "$s/eval" --no-report --no-tracking \
    || return 1
  check check-eval "$s/eval" || return 1
  "$PY" -c "import json; print(json.loads(open('data/demo/test.jsonl').readline())['document'])" > "$s/doc.txt"
  run "$PY" -m llm_summarizer summarize --model "$TRAINED" "$s/doc.txt" > "$s/summary.txt" || return 1
  [ -s "$s/summary.txt" ] || { echo "summarize printed nothing"; return 1; }
  echo "summary: $(cat "$s/summary.txt")"
  # started directly (not through a function) so that $! is the server itself
  said "$PY" -m llm_summarizer serve --model "$TRAINED" --port 0
  "$PY" -m llm_summarizer serve --model "$TRAINED" --port 0 > "$s/serve.out" 2> "$s/serve.err" &
  local pid=$! url="" i
  for i in $(seq 1 600); do
    url=$(grep -o 'http://[0-9.]*:[0-9]*' "$s/serve.out" 2>/dev/null | head -1)
    [ -n "$url" ] || ! kill -0 "$pid" 2>/dev/null && break
    sleep 0.2
  done
  [ -n "$url" ] || { tail -20 "$s/serve.err"; kill "$pid" 2>/dev/null; return 1; }
  check post "$url"; local rc=$?
  kill -TERM "$pid"; wait "$pid"  # SIGTERM: a background job of a script ignores SIGINT
  return $rc
}

stage_oom() {
  needs_model
  check oom-generate "$TRAINED" || return $?  # 77 (skipped, with the reason) without a CUDA GPU
  # The train command with this process's CUDA memory capped at 256 MiB and a batch far beyond it.
  local s=$WORK/oom && mkdir -p "$s"
  run "$PY" -c "import sys, torch; torch.cuda.set_per_process_memory_fraction(
256 * 2 ** 20 / torch.cuda.get_device_properties(0).total_memory)
from llm_summarizer.commands.main import main; sys.exit(main(sys.argv[1:]))" train "${TINY[@]}" \
    "output.dir=$s/out" "output.model_dir=$s/model" train.per_device_train_batch_size=1024 \
    train.max_steps=2 eval.rouge=false eval.base_eval=false > "$s/train.log" 2>&1
  echo $? > "$s/train.rc"
  tail -5 "$s/train.log"
  check check-oom-train "$s/train.log"
}

stage_resume() {
  local s=$WORK/resume half=$((RESUME_STEPS / 2))
  local args=("model.load_in_4bit=true" "train.max_steps=$RESUME_STEPS" "train.save_steps=$((RESUME_STEPS / 4))"
              "train.eval_steps=$RESUME_STEPS" "eval.rouge=false" "eval.base_eval=false" "train.save_total_limit=4")
  train "$s/full" "${args[@]}" || return 1
  local killed=("$PY" -m llm_summarizer train "${TINY[@]}" "output.dir=$s/killed/out" "output.model_dir=$s/killed/model"
                "${args[@]}")
  said "${killed[@]}"
  "${killed[@]}" > "$s/killed.log" 2>&1 &  # directly, so that $! is the training process itself
  local pid=$! i
  for i in $(seq 1 3000); do
    [ -f "$s/killed/out/checkpoint-$half/trainer_state.json" ] || ! kill -0 "$pid" 2>/dev/null && break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null && echo "killed (SIGKILL) once checkpoint-$half was written"
  wait "$pid" 2>/dev/null
  [ ! -f "$s/killed/model/adapter_model.safetensors" ] || { echo "the run ended before it could be killed"; return 1; }
  train "$s/killed" "${args[@]}" || return 1
  check compare-adapters "$s/full/model" "$s/killed/model"
}

stage_export() {
  needs_model
  local s=$WORK/export rc=0
  # merged-4bit first: it merges (and checks) the 16-bit model it quantizes, so it covers the dtype rule too
  for fmt in merged-4bit merged-16bit; do
    run "$PY" -m llm_summarizer export "$TRAINED" --format $fmt --output "$s/$fmt" --verify-examples 4 || { rc=1; continue; }
    check check-export "$s/$fmt" $fmt || rc=1
  done
  # llama.cpp's converter knows the pre-tokenizers of published tokenizers only, not the one trained for the
  # random-init model (seen in the dry run: "BPE pre-tokenizer was not recognized"); the GGUF path is checked by
  # the suite's real-model tests on a CPU. Whether llama.cpp is here at all is said too.
  local where="not on this machine (LLAMA_CPP_DIR unset, llama_cpp not importable)"
  { [ -n "${LLAMA_CPP_DIR:-}" ] || "$PY" -c "import llama_cpp" 2>/dev/null; } && where="here"
  echo "GGUF: not checked (llama.cpp is $where; its converter does not know the random-init model's tokenizer)" \
    | tee -a "$WORK/export.skips"
  return $rc
}

stage_torchrun() {
  local s=$WORK/torchrun
  run "$PY" -m torch.distributed.run --nproc_per_node=1 scripts/gpu_check.py collective || return 1
  run "$PY" -m torch.distributed.run --nproc_per_node=1 -m llm_summarizer train "${TINY[@]}" \
    "output.dir=$s/out" "output.model_dir=$s/model" "train.max_steps=$STEPS" "train.eval_steps=$STEPS" \
    "train.save_steps=$STEPS" eval.num_samples=4 || return 1
  [ -f "$s/model/adapter_model.safetensors" ] || { echo "no adapter written under torchrun"; return 1; }
}

# ---- the runner ----------------------------------------------------------------------------------------
declare -A BUDGETS=([env]=30 [load]=60 [train]=90 [train_tf]=90 [generate]=120 [oom]=75 [resume]=150 [export]=180
                    [torchrun]=75)
set -m  # each stage in its own process group, so that a stage over its budget is stopped with all it started
for stage in "${stages[@]}"; do
  if [ -z "${BUDGETS[$stage]:-}" ]; then
    echo "unknown stage $stage (${ALL_STAGES[*]})" >&2
    note "$stage" fail 0 0 "unknown stage"
    continue
  fi
  budget=$((BUDGETS[$stage] * SCALE))
  left=$((BUDGET - SECONDS))
  # A stage usually takes half its budget or less: it starts when that much is left, and stops at whichever
  # comes first, its budget or the end of BUDGET.
  if [ $((budget / 2)) -gt "$left" ]; then
    echo "== skip $stage: budget ${budget}s, ${left}s left of ${BUDGET}s"
    note "$stage" skip 0 "$budget" "would not fit: only ${left}s were left of the ${BUDGET}s budget (its own: ${budget}s)"
    continue
  fi
  [ "$budget" -le "$left" ] || budget=$left
  echo "== $stage (budget ${budget}s, ${SECONDS}s used)"
  sampler=""
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$WORK/$stage.mem" 2>/dev/null &
    sampler=$!
  fi
  t0=$SECONDS
  STAGE=$stage
  export GPU_CHECK_FACTS=$WORK/$stage.facts.json
  ( set -o pipefail; "stage_$stage" ) > "$WORK/$stage.log" 2>&1 &
  pid=$!
  ( sleep "$budget"; touch "$WORK/$stage.timeout"; kill -TERM -- "-$pid"; sleep 10; kill -KILL -- "-$pid" ) \
    >/dev/null 2>&1 &
  watchdog=$!
  disown "$watchdog"  # its end is ours to judge, not the shell's to report
  wait "$pid"
  rc=$?
  kill -- "-$watchdog" 2>/dev/null
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
  took=$((SECONDS - t0))
  reason=$(cat "$WORK/$stage.skips" 2>/dev/null | paste -sd ';' -)
  if [ -f "$WORK/$stage.timeout" ]; then
    status=timeout; reason="stopped at its ${budget}s budget"
  elif [ $rc = 0 ]; then
    status=pass
  elif [ $rc = 77 ]; then  # skipped: why is in its facts, or else the last line of its log
    status=skip; [ -s "$GPU_CHECK_FACTS" ] || reason=$(tail -1 "$WORK/$stage.log")
  else
    status=fail
  fi
  note "$stage" "$status" "$took" "$budget" "$reason"
  echo "== $stage: $status in ${took}s"
  [ "$status" = pass ] || tail -15 "$WORK/$stage.log"
done
summary
echo "== done in ${SECONDS}s; $OUT/gpu_check.json and $OUT/gpu_check.md"
failed=$(grep -c '"status": "\(fail\|timeout\)"' "$WORK/stages.jsonl")
[ "$failed" = 0 ]
