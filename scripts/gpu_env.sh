# The GPU machine's Python, shared by scripts/bench_gpu.sh and scripts/gpu_check.sh (sourced, not run).
#
#   source scripts/gpu_env.sh
#   gpu_env_install                  # .whl/*.whl -> $GPU_SITE once, on PYTHONPATH (no network there)
#   gpu_env_check MODULE...          # torch + CUDA + these imports, all missing ones named at once; 1 if any
#                                    # (GPU_ENV_FIND_ONLY=1: looked up only, not imported: gpu_check's warm process
#                                    #  imports them once, and says so there if one fails)
#
# The GPU image has torch, transformers, peft, accelerate and triton; what it lacks travels as wheels built by
# scripts/bench_gpu_prepare.sh (pure Python, or for Python 3.12), installed with --no-deps into GPU_SITE (default
# $TMPDIR/site, else /tmp/site) so that the image's own packages stay as they are. On a CPU (a dry run) the project's
# .venv is used instead.
# Sets PY (the interpreter every stage runs) and exports the offline settings.

PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
REQUIRE_GPU=${REQUIRE_GPU:-1}
GPU_SITE=${GPU_SITE:-${TMPDIR:-/tmp}/site}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

gpu_env_install() {
  # found, not imported: unsloth_zoo refuses to be imported before unsloth
  if [ -d .whl ] && ! "$PY" -c "import importlib.util as u, sys; sys.exit(not all(map(u.find_spec, ('unsloth_zoo', 'trl'))))"; then
    local t0=$SECONDS
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$GPU_SITE" .whl/*.whl \
      || { echo "gpu_env: installing .whl/ into $GPU_SITE failed" >&2; return 1; }
    echo "gpu_env: installed $(ls .whl/*.whl | wc -l) wheels into $GPU_SITE in $((SECONDS - t0)) s"
  fi
  [ -d "$GPU_SITE" ] && export PYTHONPATH="$PYTHONPATH:$GPU_SITE"
  return 0
}

gpu_env_check() {  # gpu_env_check MODULE... : fails in seconds, naming every missing module
  REQUIRE_GPU=$REQUIRE_GPU GPU_ENV_FIND_ONLY=${GPU_ENV_FIND_ONLY:-0} "$PY" - "$@" <<'EOF'
import importlib, importlib.util, os, sys

def found(m):
    try:
        return importlib.util.find_spec(m) is not None
    except ImportError:  # its parent package is missing
        return False

# Looked up first, imported after: a package that is not there at all is named in a second, not after the stack loads.
absent = [m for m in ["torch", *sys.argv[1:]] if not found(m)]
if absent:
    print("\n".join(f"gpu_env: MISSING {m}: not installed" for m in absent))
    sys.exit(1)
import torch
cuda = torch.cuda.is_available()
print(f"gpu_env: python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"GPU {torch.cuda.get_device_name(0) if cuda else 'none'}")
problems = [] if cuda or os.environ["REQUIRE_GPU"] == "0" else ["no CUDA GPU visible (REQUIRE_GPU=0 for a dry run on a CPU)"]
for m in sys.argv[1:] if os.environ["GPU_ENV_FIND_ONLY"] != "1" else []:
    try:
        importlib.import_module(m)
    except Exception as e:  # a missing module, or one that fails on import: either way the stages cannot run
        problems.append(f"{m}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
found_only = os.environ["GPU_ENV_FIND_ONLY"] == "1"
print("\n".join(f"gpu_env: MISSING {p}" for p in problems)
      or f"gpu_env: {'found' if found_only else 'imports ok'} ({len(sys.argv) - 1} modules)")
sys.exit(1 if problems else 0)
EOF
}
