"""What a bug report needs: llm-summarizer env [--json]

Package versions, the git commit, Python and the platform, the CPU (and whether it has bfloat16 in
hardware: Unsloth's CPU backend asks that), the GPU (name, memory, compute capability, bf16), and
what this project picks from these facts: the training precision and the merged-export dtype rule.
"""

from __future__ import annotations

import argparse
import json

from . import boot

PROG = "llm-summarizer env"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    ap = boot.parser(prog, __doc__)
    ap.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    return ap


def facts() -> dict:
    # environment imports torch to describe the device: only when asked
    from ..environment import device_facts, git_commit, package_versions

    out = {"versions": package_versions(), "git_commit": git_commit(), **device_facts()}
    try:
        from unsloth_zoo.cpu import cpu_bf16_supported  # what Unsloth's CPU backend decides with (no unsloth import)

        out["unsloth_cpu_bf16"] = cpu_bf16_supported()
    except Exception as e:  # unsloth_zoo missing or too old: say so rather than fail the report
        out["unsloth_cpu_bf16"] = f"unknown ({type(e).__name__})"
    cuda = out["cuda_available"]
    out["training_precision_auto"] = (
        ("bf16" if out.get("gpu_bf16") else "fp16") if cuda else "fp32 (every CPU, whatever its bfloat16 support)"
    )
    out["merged_export_dtype"] = "the base checkpoint's bfloat16/float16; float16 for a float32 base (any machine)"
    return out


def run(args, _cfg) -> int:
    f = facts()
    if args.json:
        print(json.dumps(f, indent=2))
        return 0
    v = f.pop("versions")
    print("llm_summarizer environment")
    print("  versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    for k, val in f.items():
        print(f"  {k}: {', '.join(val) if isinstance(val, list) else val}")
    return 0


def main(argv=None, prog: str = PROG) -> int:
    return boot.run_command(build_parser(prog), run, argv)
