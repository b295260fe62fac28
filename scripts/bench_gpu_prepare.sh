#!/usr/bin/env bash
# Prepare the GPU benchmark on a machine that reaches the package registry, for a GPU machine that
# reaches nothing (its image has torch, transformers, peft, accelerate, triton; not unsloth, trl,
# datasets, bitsandbytes, torchao, pydantic, rouge-score: those travel as wheels, for Python 3.12).
#
#   bash scripts/bench_gpu_prepare.sh        # wheels -> .whl/, DialogSum + SciTLDR -> .bench_data/ (git-ignored)
#   # then, on the GPU machine, from the repository root, carrying .whl and .bench_data:
#   bash scripts/bench_gpu.sh                # see that script for what it runs and where results go
#   bash scripts/gpu_check.sh                # every GPU path of the project, in stages (.bench_data not needed)
#
# The wheels must stay under the GPU machine's transfer limit (64 MiB with the working tree), so two
# are slimmed: unsloth without studio/ (a web UI, 25 MB; the library is unsloth/ and unsloth_cli/),
# bitsandbytes with only its CUDA 13.0 and CPU libraries (the GPU image's torch is built for CUDA 13.0).
# WHEEL_DIR / DATA_DIR move the outputs; CUDA_LIB picks another bitsandbytes library (e.g. cuda128).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}
WHEEL_DIR=${WHEEL_DIR:-.whl}
DATA_DIR=${DATA_DIR:-.bench_data}
SHARED=${SHARED:-../shared/data}
CUDA_LIB=${CUDA_LIB:-cuda130}

# Pinned to what the lock file and setup_env.sh install here, so the GPU run measures the same stack.
WHEELS=(
  unsloth==2026.10.9 unsloth_zoo==2026.10.9 trl==1.15.0 datasets==4.8.5 bitsandbytes==0.50.2 torchao==0.18.0
  pydantic==2.14.4 "pydantic_core==$("$PY" -c 'import importlib.metadata as m; print(m.version("pydantic_core"))')"
  annotated-types typing-inspection
  nltk==3.10.4 dill==0.4.1 multiprocess==0.70.19
  cut_cross_entropy tyro==1.0.17 docstring-parser typeguard==4.6.1 shtab msgspec==0.22.0 json5==0.17.3
  structlog==26.1.0 nest-asyncio hf_transfer==0.1.9
  # rouge-score imports absl and six; serve (scripts/gpu_check.sh) needs starlette and uvicorn
  absl-py==2.5.1 six==1.17.0 starlette==1.10.0 uvicorn==0.54.0
)

rm -rf "$WHEEL_DIR" && mkdir -p "$WHEEL_DIR"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$WHEEL_DIR" "${WHEELS[@]}"
# rouge-score is published as a source archive only: build its (pure Python) wheel here.
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEEL_DIR" rouge-score==0.1.2

"$PY" - "$WHEEL_DIR" "$CUDA_LIB" <<'EOF'
import sys, zipfile, pathlib
wheel_dir, cuda = pathlib.Path(sys.argv[1]), sys.argv[2]

def slim(pattern, drop):
    for w in wheel_dir.glob(pattern):
        tmp = w.with_suffix(".tmp")
        with zipfile.ZipFile(w) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
            for item in src.infolist():
                if drop(item.filename):
                    continue
                data = src.read(item)
                if item.filename.endswith(".dist-info/RECORD"):
                    data = b"".join(l for l in data.splitlines(True) if not drop(l.split(b",")[0].decode()))
                dst.writestr(item, data)
        before, after = w.stat().st_size, tmp.stat().st_size
        tmp.replace(w)
        print(f"slimmed {w.name}: {before / 2**20:.1f} -> {after / 2**20:.1f} MiB")

slim("unsloth-*.whl", lambda f: f.startswith("studio/"))
slim("bitsandbytes-*.whl", lambda f: f.startswith("bitsandbytes/libbitsandbytes_")
     and not f.startswith((f"bitsandbytes/libbitsandbytes_{cuda}.", "bitsandbytes/libbitsandbytes_cpu.")))
EOF

mkdir -p "$DATA_DIR"
for name in dialogsum scitldr; do
  if [ -f "$SHARED/$name/train.jsonl" ]; then
    mkdir -p "$DATA_DIR/$name"
    cp "$SHARED/$name/train.jsonl" "$SHARED/$name/validation.jsonl" "$DATA_DIR/$name/"
  fi
done
[ -f "$DATA_DIR/dialogsum/train.jsonl" ] || echo "warning: $SHARED/dialogsum not found; the GPU run falls back to data/demo" >&2

# .whl/ and .bench_data/ are in .gitignore: never committed, taken to the GPU machine only when asked for.
# What travels: the working tree (tracked files, and untracked ones git does not ignore) and the two carried
# folders, under the 64 MiB limit.
du -sh "$WHEEL_DIR" "$DATA_DIR"
"$PY" - "$WHEEL_DIR" "$DATA_DIR" <<'EOF'
import os, subprocess, sys
tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True).stdout.decode().split("\0")
tree = sum(os.path.getsize(f) for f in tracked if f and os.path.isfile(f))
carried = sum(os.path.getsize(os.path.join(d, f)) for top in sys.argv[1:] for d, _, fs in os.walk(top) for f in fs)
total = (tree + carried) / 2 ** 20
print(f"travels: the working tree (tracked and not ignored) {tree / 2**20:.1f} MiB + {' + '.join(sys.argv[1:])} "
      f"{carried / 2**20:.1f} MiB "
      f"= {total:.1f} MiB (limit 64 MiB)")
sys.exit(0 if total < 64 else 1)
EOF
echo "ready: run scripts/bench_gpu.sh or scripts/gpu_check.sh on the GPU machine with carry [\"$WHEEL_DIR\", \"$DATA_DIR\"]"
