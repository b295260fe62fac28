"""Export a fine-tuned model for serving: llm-summarizer export MODEL_DIR --format FORMAT

The formats and how each export checks itself: see llm_summarizer/export/__init__.py (printed by --help).
"""

from __future__ import annotations

import argparse
import dataclasses

from .. import export as export_package  # its __init__ is documentation only
from ..export.job import FORMAT_NAMES, ExportOptions
from . import boot

PROG = "llm-summarizer export"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    ap = boot.parser(prog, __doc__.split("\n")[0] + "\n\n" + "\n".join(export_package.__doc__.split("\n")[2:]))
    ap.add_argument(
        "model",
        metavar="MODEL_DIR",
        help="saved model directory (a LoRA adapter; a merged model for merged-4bit / gguf)",
    )
    ap.add_argument("--format", required=True, choices=FORMAT_NAMES)
    ap.add_argument("--output", help="output directory (default MODEL_DIR-FORMAT beside the model)")
    ap.add_argument(
        "--overwrite", action="store_true", help="replace an existing --output (only once the new one is checked)"
    )
    ap.add_argument("--backend", choices=["unsloth", "transformers"], help="default: the backend of the model's config")
    ap.add_argument("--base", help="base model of the adapter, when it is not where adapter_config.json says")
    for f in dataclasses.fields(ExportOptions):  # one flag per export option, as ExportOptions declares it
        m = f.metadata
        ap.add_argument(
            "--" + f.name.replace("_", "-"), type=m["type"], default=f.default, choices=m["choices"], help=m["help"]
        )
    ap.add_argument("--push-to-hub", action="store_true", help="upload the export (token from HF_TOKEN)")
    ap.add_argument("--hub-model-id", help="hub repository namespace/name (default output.hub_model_id of config.yaml)")
    ap.add_argument("--public", action="store_true", help="create the hub repository public (default private)")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. model.max_seq_length=1024")
    return ap


def run(args, _cfg) -> int:
    options = ExportOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ExportOptions)})
    boot.ml_stack(boot.saved_model_backend(args.model, args.backend))
    # after the arguments are checked: the export loads the ML stack
    from ..export.exporter import export_model

    res = export_model(
        args.model,
        args.format,
        args.output,
        args.backend,
        args.base,
        args.overrides,
        args.overwrite,
        push_to_hub=True if args.push_to_hub else None,
        hub_model_id=args.hub_model_id,
        hub_private=False if args.public else None,
        options=options,
    )
    print(
        f"\n== llm_summarizer: export {args.format} written to {res.output_dir}/\n   {res.info['method']}\n"
        f"   check: {res.info['verification']['summary']}" + (f"\n   pushed to {res.hub_url}" if res.hub_url else "")
    )
    return 0


def main(argv=None, prog: str = PROG) -> int:
    return boot.run_command(build_parser(prog), run, argv)
