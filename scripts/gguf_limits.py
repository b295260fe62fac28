"""Measure what each GGUF type, and bitsandbytes NF4 (merged-4bit), changes in a fine-tuned model's next-token
distributions: the numbers behind the limits of `llm-summarizer export --format gguf` and `--format merged-4bit`
(llm_summarizer/export/job.py GGUF_LIMITS, NF4_LIMITS).

    .venv/bin/python scripts/gguf_limits.py fine_tuned/demo                        # every type, 8 documents
    .venv/bin/python scripts/gguf_limits.py fine_tuned/demo --types f16,q8_0,q4_k_m --verify-examples 4
    .venv/bin/python scripts/gguf_limits.py fine_tuned/demo --types nf4            # merged-4bit only

The export's own check, one type after another on one merge: the adapter summarizes the fixed documents
greedily and is merged once (float16 for a float32 base, as merged-16bit does); each type is converted by
llama.cpp (k-quants quantized from f16) and run by llama-cpp-python on the same teacher-forced token ids as
the merged model in float32; then its greedy summaries are compared with the merged model's (float32 too).
Prints one JSON line per type, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a saved LoRA adapter directory (fine_tuned/...)")
    ap.add_argument("--types", default="f32,f16,bf16,q8_0,q6_k,q5_k_m,q5_1,q5_0,q4_k_m,q4_1,q4_0,q3_k_m,q2_k")
    ap.add_argument("--verify-examples", type=int, default=8)
    args = ap.parse_args(argv)

    from llm_summarizer.commands import boot

    boot.setup_logging()
    boot.ml_stack(boot.saved_model_backend(args.model, None))
    from llm_summarizer.config_loading import config_to_yaml
    from llm_summarizer.export import gguf
    from llm_summarizer.export.job import GGUF_LIMITS
    from llm_summarizer.export.merged import merge_16bit, merged_dtype
    from llm_summarizer.export.verify import agreement, next_token_agreement, run_worker, verification_documents
    from llm_summarizer.models.generation import default_max_new_tokens, summarize_texts
    from llm_summarizer.models.loading import load_for_generation

    forced = ["model.load_in_4bit=false", "model.load_in_8bit=false", "eval.num_beams=1", "eval.do_sample=false"]
    loaded = load_for_generation(args.model, None, None, forced)
    if loaded.info.kind != "adapter":
        raise SystemExit(f"{args.model}: expected a LoRA adapter directory")
    max_new = default_max_new_tokens(loaded)[0]
    docs, source = verification_documents(loaded.cfg, args.verify_examples)
    reference = [g.text for g in summarize_texts(loaded, docs, max_new)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="gguf-limits-") as tmp:
        scratch = Path(tmp)
        merged = scratch / "merged"
        dtype, _ = merged_dtype(loaded, "auto")
        merge_16bit(loaded, merged, scratch, dtype)
        (merged / "config.yaml").write_text(config_to_yaml(loaded.cfg), encoding="utf-8")
        loaded.model = None
        merged_texts = run_worker(
            {
                "action": "greedy",
                "model_dir": str(merged),
                "config": str(merged / "config.yaml"),
                "documents": docs,
                "max_new_tokens": max_new,
                "dtype": "float32",
            },
            scratch,
            "the merged model",
        )["texts"]
        job = SimpleNamespace(loaded=loaded, docs=docs, reference=reference, max_new_tokens=max_new, scratch=scratch)
        seqs, starts = gguf.teacher_forced(job)
        ref = gguf.reference_distributions(job, merged, seqs, starts)
        for t in args.types.split(","):
            t0 = time.time()
            if t == "nf4":  # merged-4bit: bitsandbytes NF4 of the same merge, run by plain transformers
                rows.append(nf4_row(merged, scratch, job, seqs, starts, ref, merged_texts, docs, max_new, t0))
                continue
            path = gguf._convert_gguf(merged, scratch, "m", t, gguf.find_llama_cpp(None, t), scratch)
            llm = gguf.open_gguf(job, path, seqs)
            stats = next_token_agreement(ref, gguf.gguf_distributions(llm, seqs, starts, ref[0].shape[-1]))
            texts = gguf.greedy_summaries(job, llm)
            del llm
            row = {
                "type": t,
                "mb": round(path.stat().st_size / 2**20, 1),
                **stats,
                "greedy_rougeL_vs_merged": agreement(merged_texts, texts),
                "identical": sum(a == b for a, b in zip(merged_texts, texts)),
                "documents": len(docs),
                "limits": GGUF_LIMITS[t],
                "seconds": round(time.time() - t0, 1),
            }
            path.unlink()
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(f"\n{args.model}: {len(docs)} documents ({source}), merged {dtype}\n")
    print(
        "| type | file MB | mean KL (nats/token) | max KL | top-1 agreement | positions | greedy ROUGE-L vs merged "
        "(identical) | limits (KL, top-1) |\n|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['type']} | {r['mb']} | {r['mean_kl']:.5f} | {r['max_kl']:.3f} | {r['top1_agreement']:.4f} | "
            f"{r['positions']} | {r['greedy_rougeL_vs_merged']:.3f} ({r['identical']}/{r['documents']}) | "
            f"{r['limits'][0]:g}, {r['limits'][1]:g} |"
        )
    return 0


def nf4_row(merged, scratch, job, seqs, starts, ref, merged_texts, docs, max_new, t0) -> dict:
    """The merged-4bit export's own check on the same merge: quantized to NF4, its next-token distributions against
    the merged model's in float32, and its greedy summaries against the merged model's."""
    from llm_summarizer.export.job import NF4_LIMITS
    from llm_summarizer.export.merged import stored_dtype
    from llm_summarizer.export.quantized import distributions
    from llm_summarizer.export.verify import agreement, next_token_agreement, run_worker

    q = scratch / "nf4"
    run_worker(
        {"action": "quantize-4bit", "model_dir": str(merged), "dest": str(q), "dtype": stored_dtype(str(merged))},
        scratch,
        "4-bit quantization",
    )
    (q / "config.yaml").write_text((merged / "config.yaml").read_text(), encoding="utf-8")
    stats = next_token_agreement(ref, distributions(job, [q], seqs, starts)[0])
    texts = run_worker(
        {
            "action": "greedy",
            "model_dir": str(q),
            "config": str(q / "config.yaml"),
            "documents": docs,
            "max_new_tokens": max_new,
        },
        scratch,
        "the 4-bit model",
    )["texts"]
    row = {
        "type": "nf4",
        "mb": round(sum(f.stat().st_size for f in q.glob("*.safetensors")) / 2**20, 1),
        **stats,
        "greedy_rougeL_vs_merged": agreement(merged_texts, texts),
        "identical": sum(a == b for a, b in zip(merged_texts, texts)),
        "documents": len(docs),
        "limits": NF4_LIMITS,
        "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    sys.exit(main())
