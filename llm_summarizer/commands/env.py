"""What a bug report needs: llm-summarizer env [--json]

Package versions, the git commit, Python and the platform, the CPU (and whether it has bfloat16 in
hardware: Unsloth's CPU backend asks that), the GPU (name, memory, compute capability, native bfloat16), and
what this project picks from these facts (models/device.py): the training precision and weights of each ready
config as they will really run here, the generation dtype, the merged-export dtype rule.
"""

from __future__ import annotations

import argparse
import json

from . import boot

PROG = "llm-summarizer env"
DEVICE_NAMES = ("cpu", "t4", "v100", "l4", "a100", "h100")  # models/device.py KNOWN (no torch import here)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    ap = boot.parser(prog, __doc__)
    ap.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    ap.add_argument(
        "--device",
        choices=DEVICE_NAMES,
        help="also say what would run on this device instead of this machine's (e.g. t4: free Colab)",
    )
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
    out.update(decisions())
    out["merged_export_dtype"] = "the base checkpoint's bfloat16/float16; float16 for a float32 base (any machine)"
    return out


def decisions(device=None) -> dict:
    """What runs on this device (or the one described): the precision the default settings train in, and the
    generation dtype, from the one place that decides them."""
    # the device plan imports torch: only when asked
    from ..config_loading import load_config
    from ..errors import UserError
    from ..models.device import current, dtype_name, generation_batching, inference_dtype, training_plan

    device = device or current()
    cfg = load_config(None)
    try:
        training = training_plan(cfg, device, probe_optim=False).describe()
    except UserError as e:  # the defaults always run; said rather than failing the report
        training = f"refused: {e}"
    return {
        "device": device.describe(),
        "gpu_bf16_native": device.bf16_text(),
        "training_precision_auto": training,
        "generation_dtype": dtype_name(inference_dtype(cfg, device)),
        "generation_batching_unsloth": generation_batching("unsloth", cfg.eval.batching, device)[0],
        "generation_cpu_threads": generation_threads_text(cfg.eval.cpu_threads, device),
    }


def generation_threads_text(asked, device) -> str:
    """The torch threads generation uses here now (on a CPU: fewer while other processes keep cores busy)."""
    import torch  # the device plan imports torch: only when asked

    from ..models.device import generation_threads

    if device.cuda:
        return "not used (GPU)"
    n, why = generation_threads(asked, device)
    return f"torch's {torch.get_num_threads()}" if n is None else f"{n}: {why}"


def run(args, _cfg) -> int:
    f = facts()
    if args.device:
        # the device plan imports torch: only when asked
        from ..models.device import KNOWN

        f["described"] = decisions(KNOWN[args.device])
    if args.json:
        print(json.dumps(f, indent=2))
        return 0
    v = f.pop("versions")
    print("llm_summarizer environment")
    print("  versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    described = f.pop("described", None)
    for k, val in f.items():
        print(f"  {k}: {', '.join(val) if isinstance(val, list) else val}")
    if described:
        print(f"on a {args.device} (described, not this machine)")
        for k, val in described.items():
            print(f"  {k}: {val}")
    return 0


def main(argv=None, prog: str = PROG) -> int:
    return boot.run_command(build_parser(prog), run, argv)
