"""Export a fine-tuned model for serving: llm-summarizer export MODEL_DIR --format FORMAT

The formats and how each export checks itself: see llm_summarizer/export/__init__.py (printed by --help).
"""

from __future__ import annotations

import argparse

from .. import export as export_package  # its __init__ is documentation only
from ..export.job import DTYPES16, FORMAT_NAMES, GGUF_DIRECT, GGUF_LIMITS, GGUF_QUANTIZED, ExportOptions
from . import boot

PROG = "llm-summarizer export"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    ap = boot.parser(prog, __doc__.split("\n")[0] + "\n\n" + "\n".join(export_package.__doc__.split("\n")[2:]))
    ap.add_argument("model", metavar="MODEL_DIR", help="saved model directory (a LoRA adapter; a merged model for "
                                                       "merged-4bit / gguf)")
    ap.add_argument("--format", required=True, choices=FORMAT_NAMES)
    ap.add_argument("--output", help="output directory (default MODEL_DIR-FORMAT beside the model)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --output (only once the new one is checked)")
    ap.add_argument("--backend", choices=["unsloth", "transformers"], help="default: the backend of the model's config")
    ap.add_argument("--base", help="base model of the adapter, when it is not where adapter_config.json says")
    ap.add_argument("--dtype", default="auto", choices=("auto",) + DTYPES16,
                    help="merged weights' dtype (default auto: the base's bfloat16/float16, float16 for a float32 "
                         "base; the same on every machine)")
    ap.add_argument("--verify-examples", type=int, default=8, help="fixed documents the export is checked on (default 8)")
    ap.add_argument("--verify-data", help="take those documents from this data source (default: the model's validation data)")
    ap.add_argument("--gguf-type", default="q8_0", help=f"GGUF type: {', '.join(GGUF_DIRECT + GGUF_QUANTIZED)} (default q8_0)")
    ap.add_argument("--llama-cpp", help="llama.cpp checkout holding convert_hf_to_gguf.py (default $LLAMA_CPP_DIR)")
    ap.add_argument("--min-4bit-agreement", type=float, default=0.8,
                    help="merged-4bit: least mean ROUGE-L between its and the adapter's greedy summaries (default 0.8)")
    ap.add_argument("--max-gguf-kl", type=float,
                    help="gguf: largest mean KL divergence (nats per token) of llama.cpp's next-token distributions "
                         "from the merged model's, teacher-forced on the fixed documents' summaries (default: "
                         f"measured per type, q8_0 {GGUF_LIMITS['q8_0'][0]:g}, f16 {GGUF_LIMITS['f16'][0]:g})")
    ap.add_argument("--min-gguf-top1", type=float,
                    help="gguf: least share of those positions where both put the same token first (default: "
                         f"measured per type, q8_0 {GGUF_LIMITS['q8_0'][1]:g}, f16 {GGUF_LIMITS['f16'][1]:g})")
    ap.add_argument("--min-gguf-agreement", type=float,
                    help="gguf: also require this mean ROUGE-L between llama.cpp's and the merged model's greedy "
                         "summaries (default: recorded, not required)")
    ap.add_argument("--logprob-tolerance", type=float, default=0.1,
                    help="adapter and 16-bit export must score the adapter's summaries within this many nats per "
                         "token (default 0.1; 16-bit rounding gives about 0.002 in float16, 0.03 in bfloat16)")
    ap.add_argument("--push-to-hub", action="store_true", help="upload the export (token from HF_TOKEN)")
    ap.add_argument("--hub-model-id", help="hub repository namespace/name (default output.hub_model_id of config.yaml)")
    ap.add_argument("--public", action="store_true", help="create the hub repository public (default private)")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. model.max_seq_length=1024")
    return ap


def run(args, _cfg) -> int:
    options = ExportOptions(verify_examples=args.verify_examples, verify_data=args.verify_data, dtype=args.dtype,
                            logprob_tolerance=args.logprob_tolerance, min_4bit_agreement=args.min_4bit_agreement,
                            min_gguf_agreement=args.min_gguf_agreement, max_gguf_kl=args.max_gguf_kl,
                            min_gguf_top1=args.min_gguf_top1,
                            gguf_type=args.gguf_type, llama_cpp=args.llama_cpp)
    boot.ml_stack(boot.saved_model_backend(args.model, args.backend))
    # after the arguments are checked: the export loads the ML stack
    from ..export.exporter import export_model

    res = export_model(args.model, args.format, args.output, args.backend, args.base, args.overrides, args.overwrite,
                       push_to_hub=True if args.push_to_hub else None, hub_model_id=args.hub_model_id,
                       hub_private=False if args.public else None, options=options)
    print(f"\n== llm_summarizer: export {args.format} written to {res.output_dir}/\n   {res.info['method']}\n"
          f"   check: {res.info['verification']['summary']}" + (f"\n   pushed to {res.hub_url}" if res.hub_url else ""))
    return 0


def main(argv=None, prog: str = PROG) -> int:
    return boot.run_command(build_parser(prog), run, argv)
