#!/usr/bin/env bash
# Every GPU path of the project in one prepared command, for a machine with one CUDA GPU and no network: one
# 10-minute call pays off.
#
#   bash scripts/bench_gpu_prepare.sh              # first, where the package registry is reachable (.whl/)
#   bash scripts/gpu_check.sh                      # on the GPU machine, repository root, .whl/ beside: all stages
#   bash scripts/gpu_check.sh t4 export            # only these stages (in the order given)
#   REQUIRE_GPU=0 bash scripts/gpu_check.sh        # the dry run on a CPU: every stage that can run there
#
# The stages, their order and budgets are in scripts/gpu_check.py (BUDGETS, and its docstring says what each
# checks): ordered by what users meet first (the T4's settings forced on the big card, then this card's defaults,
# generate, export, out-of-memory, resume), budgets summing to at most 560 s. The stages that can share a process
# run in one warm Python process (env load t4 train generate export oom: Unsloth and the stack imported once); resume
# (it SIGKILLs a run), train_tf (a process without Unsloth) and torchrun run their own. A stage starts only when half
# its budget is left of BUDGET, else it is skipped and the summary says so; it is stopped at its budget or at the
# end of BUDGET, whichever comes first. Every stage uses the random-init tiny model built here from data/demo.
#
# Results: $OUT/gpu_check.json and $OUT/gpu_check.md (stage, pass/fail/skip, seconds, peak GiB, the versions that
# ran against the lock, what could not be checked here and why, the last lines of a failed stage's log). OUT
# defaults to outputs/gpu_check; logs and run directories go to WORK (default $TMPDIR/gpu_check, else
# /tmp/gpu_check). BUDGET (default the stages' sum) bounds the whole run; SCALE multiplies every stage budget (a dry
# run on a CPU: 4, and BUDGET 4 times as long). A missing package stops everything within seconds, naming it
# (GPU_CHECK_MODULES adds modules to that check).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/gpu_env.sh
OUT=${OUT:-outputs/gpu_check}
WORK=${WORK:-${TMPDIR:-/tmp}/gpu_check}
if [ "$REQUIRE_GPU" = 0 ]; then SCALE=${SCALE:-4}; else SCALE=${SCALE:-1}; fi
declare -A BUDGETS=()
ALL_STAGES=()
while read -r name budget; do BUDGETS[$name]=$budget; ALL_STAGES+=("$name"); done < <("$PY" scripts/gpu_check.py budgets)
total=0
for s in "${ALL_STAGES[@]}"; do total=$((total + BUDGETS[$s])); done
BUDGET=${BUDGET:-$((total * SCALE))}
WARM_STAGES=" env load t4 train generate export oom "
# The kill/resume run needs steps slow enough to be killed between two checkpoints: many on a GPU, few on a CPU.
RESUME_STEPS=${RESUME_STEPS:-$([ "$REQUIRE_GPU" = 0 ] && echo 24 || echo 200)}
STEPS=${STEPS:-$([ "$REQUIRE_GPU" = 0 ] && echo 12 || echo 200)}
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=("${ALL_STAGES[@]}")
rm -rf "$WORK" && mkdir -p "$WORK" "$OUT"
MODELS=$WORK/models        # the random-init tiny model, built once by the first stage that needs it
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

# ---- fail in seconds when something is missing (looked up, not imported: the warm process imports once) ----------
gpu_env_install || { note setup fail 0 0 "installing .whl/ failed"; summary; exit 1; }
read -r -a extra_modules <<< "${GPU_CHECK_MODULES:-}"
if ! GPU_ENV_FIND_ONLY=1 gpu_env_check unsloth unsloth_zoo pydantic yaml datasets trl peft accelerate bitsandbytes \
    rouge_score starlette uvicorn safetensors "${extra_modules[@]}" > "$WORK/setup.log" 2>&1; then
  cat "$WORK/setup.log"
  note setup fail "$SECONDS" 0 "$(grep MISSING "$WORK/setup.log" | sed 's/gpu_env: MISSING //' | paste -sd ';' -)"
  summary >/dev/null
  echo "gpu_check: stopped after ${SECONDS}s: a package is missing (see above); results in $OUT"
  exit 1
fi
cat "$WORK/setup.log"

# ---- the stages that run in their own processes ------------------------------------------------------------------
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
QLORA=("model.load_in_4bit=true" "train.optim=adamw_8bit" "model.gradient_checkpointing=unsloth" "train.precision=auto"
       "train.max_steps=$STEPS" "train.eval_steps=$((STEPS / 2))" "train.save_steps=$((STEPS / 2))" "eval.num_samples=8")

stage_resume() {
  local s=$WORK/resume half=$((RESUME_STEPS / 2))
  local args=("model.load_in_4bit=true" "train.max_steps=$RESUME_STEPS" "train.save_steps=$((RESUME_STEPS / 4))"
              "train.eval_steps=$RESUME_STEPS" "eval.generate=false" "eval.base_eval=false" "train.save_total_limit=4")
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

stage_train_tf() {
  train "$WORK/train_tf" model.backend=transformers "${QLORA[@]}" || return 1
  check check-train "$WORK/train_tf/out" "$WORK/train_tf/model" --backend transformers --four-bit --optim adamw_8bit
}

stage_torchrun() {
  local s=$WORK/torchrun
  run "$PY" -m torch.distributed.run --nproc_per_node=1 scripts/gpu_check.py collective || return 1
  run "$PY" -m torch.distributed.run --nproc_per_node=1 -m llm_summarizer train "${TINY[@]}" \
    "output.dir=$s/out" "output.model_dir=$s/model" "train.max_steps=$STEPS" "train.eval_steps=$STEPS" \
    "train.save_steps=$STEPS" eval.num_samples=4 || return 1
  [ -f "$s/model/adapter_model.safetensors" ] || { echo "no adapter written under torchrun"; return 1; }
}

stage_warm() {  # the in-process stages of this run, in one warm process that keeps to its budgets and the deadline
  run "$PY" scripts/gpu_check.py warm "$WORK" "$OUT" "${warm[@]}" --deadline "$(($(date +%s) + wbudget))" \
    --scale "$SCALE" --require-gpu "$REQUIRE_GPU"
}

# ---- the runner --------------------------------------------------------------------------------------------------
set -m  # each stage in its own process group, so that a stage over its budget is stopped with all it started
supervise() {  # supervise NAME BUDGET: run stage_NAME in the background, stopped at its budget; sets status, took
  local name=$1 budget=$2 sampler="" t0=$SECONDS
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$WORK/$name.mem" 2>/dev/null &
    sampler=$!
  fi
  STAGE=$name
  export GPU_CHECK_FACTS=$WORK/$name.facts.json
  ( set -o pipefail; "stage_$name" ) > "$WORK/$name.log" 2>&1 &
  local pid=$!
  ( sleep "$budget"; touch "$WORK/$name.timeout"; kill -TERM -- "-$pid"; sleep 10; kill -KILL -- "-$pid" ) \
    >/dev/null 2>&1 &
  local watchdog=$!
  disown "$watchdog"  # its end is ours to judge, not the shell's to report
  wait "$pid"
  rc=$?
  kill -- "-$watchdog" 2>/dev/null
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
  took=$((SECONDS - t0))
}

warm=()
for stage in "${stages[@]}"; do
  [ -n "${BUDGETS[$stage]:-}" ] || { echo "unknown stage $stage (${ALL_STAGES[*]})" >&2; note "$stage" fail 0 0 "unknown stage"; continue; }
  [[ "$WARM_STAGES" == *" $stage "* ]] && warm+=("$stage")
done
if [ ${#warm[@]} -gt 0 ]; then
  wbudget=0
  for s in "${warm[@]}"; do wbudget=$((wbudget + BUDGETS[$s] * SCALE)); done
  left=$((BUDGET - SECONDS)); [ "$wbudget" -le "$left" ] || wbudget=$left
  echo "== warm process: ${warm[*]} (budget ${wbudget}s)"
  supervise warm $((wbudget + 15))  # its own timers stop each stage; this stops a process that hangs outside them
  cat "$WORK/warm.log"
  ended="the warm process ended first (exit $rc)"
  [ -f "$WORK/warm.timeout" ] && ended="the warm process was stopped at its budget"
  for s in "${warm[@]}"; do  # a stage the process never reached (killed, crashed) is recorded as failed
    grep -q "\"stage\": \"$s\"" "$WORK/stages.jsonl" 2>/dev/null || note "$s" fail 0 "$((BUDGETS[$s] * SCALE))" "$ended"
  done
fi
for stage in "${stages[@]}"; do
  [[ "$WARM_STAGES" == *" $stage "* ]] && continue
  [ -n "${BUDGETS[$stage]:-}" ] || continue
  budget=$((BUDGETS[$stage] * SCALE))
  left=$((BUDGET - SECONDS))
  if [ $((budget / 2)) -gt "$left" ]; then
    echo "== skip $stage: budget ${budget}s, ${left}s left of ${BUDGET}s"
    note "$stage" skip 0 "$budget" "would not fit: only ${left}s were left of the ${BUDGET}s budget (its own: ${budget}s)"
    continue
  fi
  [ "$budget" -le "$left" ] || budget=$left
  echo "== $stage (budget ${budget}s, ${SECONDS}s used)"
  supervise "$stage" "$budget"
  reason=$(cat "$WORK/$stage.skips" 2>/dev/null | paste -sd ';' -)
  if [ -f "$WORK/$stage.timeout" ]; then
    status=timeout; reason="stopped at its ${budget}s budget"
  elif [ $rc = 0 ]; then
    status=pass
  elif [ $rc = 77 ]; then
    status=skip; reason=$(tail -1 "$WORK/$stage.log")
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
