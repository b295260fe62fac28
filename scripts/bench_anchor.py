"""The raw-loop anchor of the GPU benchmark: the model our loader gives a backend (LoRA attached as training
gets it), trained by a bare PyTorch loop on random tokens: no Trainer, no data pipeline, no evaluation.
Run beside `llm-summarizer bench` in the same session, it turns the bench rows into ratios of the fastest
this model and backend go on this machine.

    python scripts/bench_anchor.py --backend unsloth --shape llama-1b --data .bench_data/dialogsum
    python scripts/bench_anchor.py --backend transformers --shape llama-1b --modes lora,qlora --out anchor.json
    python scripts/bench_anchor.py --backend unsloth --shape tiny --steps 3 --warmup 1   # a dry run on a CPU

Each mode (lora: 16-bit base; qlora: the base in NF4) is loaded in turn in this one process, with the schema
defaults (LoRA r, target modules, gradient checkpointing, precision) unless --config / overrides say otherwise.
Batch 4 x 2048 random token ids (the earlier anchors' shape), AdamW (fused on a GPU) on the LoRA weights,
bf16 autocast where the run's precision is bf16, as the trainer does. Prints one JSON object per mode.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", required=True, choices=("unsloth", "transformers"))
    ap.add_argument("--shape", default="llama-1b", help="random-init shape (the bench's --shape)")
    ap.add_argument("--model", help="a model directory instead of a random-init shape")
    ap.add_argument(
        "--data",
        default="demo",
        help="the bench's --data: a random shape's tokenizer is trained on it, "
        "so the bench and the anchor load the same cached model",
    )
    ap.add_argument("--modes", default="lora,qlora")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=15, help="optimizer steps, warm-up included")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--config", help="base YAML config (default: the schema defaults)")
    ap.add_argument("--out", help="also write the results here (JSON list)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)

    # Unsloth patches transformers, trl and peft when imported: first, and only for its own backend.
    from llm_summarizer.models.unsloth_first import import_unsloth

    if args.backend == "unsloth":
        import_unsloth()
    import torch

    from llm_summarizer.bench.harness import resolve_data
    from llm_summarizer.bench.measure import device_name
    from llm_summarizer.config import Config
    from llm_summarizer.config_loading import config_to_dict, load_config
    from llm_summarizer.data.rows import load_raw_splits
    from llm_summarizer.environment import package_versions
    from llm_summarizer.models.backends import for_training
    from llm_summarizer.models.loading import load_for_training

    cuda = torch.cuda.is_available()
    train, val, _ = resolve_data(args.data)
    results = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        cfg = load_config(args.config, args.overrides)
        cfg.model.name = str(Path(args.model).resolve()) if args.model else f"random:{args.shape}"
        cfg.model.backend = args.backend
        cfg.model.load_in_4bit = mode == "qlora"
        cfg.model.load_in_8bit = False
        cfg.model.max_seq_length = max(cfg.model.max_seq_length, args.seq)
        # the bench's data settings, so that a random shape's tokenizer is trained on the same rows (same cached model)
        cfg.data.train = {"path": str(train)}
        cfg.data.validation = {"path": str(val)} if val else None
        cfg.data.test = None
        cfg = Config.model_validate(config_to_dict(cfg))
        torch.manual_seed(cfg.train.seed)
        model, tok, info = load_for_training(cfg, load_raw_splits(cfg))
        for_training(model, args.backend)
        device = next(model.parameters()).device
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.train.learning_rate, fused=cuda)
        vocab = model.get_input_embeddings().weight.shape[0]
        gen = torch.Generator().manual_seed(cfg.train.seed)
        batches = [torch.randint(0, vocab, (args.batch, args.seq), generator=gen) for _ in range(args.steps)]
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and info["precision"] == "bf16")

        def now() -> float:
            if cuda:
                torch.cuda.synchronize()
            return time.perf_counter()

        if cuda:
            torch.cuda.reset_peak_memory_stats()
        losses, t_warm = [], None
        for step, ids in enumerate(batches):
            if step == args.warmup:
                t_warm = now()
            ids = ids.to(device)
            with autocast:
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        measured = args.steps - args.warmup
        seconds = now() - t_warm if t_warm is not None else float("nan")
        peak = (
            torch.cuda.max_memory_allocated() / 2**30
            if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        )
        res = {
            "anchor": "raw loop",
            "backend": args.backend,
            "mode": "QLoRA nf4" if mode == "qlora" else f"LoRA {info['precision']}",
            "model": cfg.model.name,
            "resolved": info["resolved_path"],
            "batch": f"{args.batch}x{args.seq}",
            "steps": args.steps,
            "warmup": args.warmup,
            "tokens_per_s": args.batch * args.seq * measured / seconds if measured > 0 else None,
            "s_per_step": seconds / measured if measured > 0 else None,
            "peak_memory_gib": round(peak, 3),
            "peak_memory_of": "CUDA max_memory_allocated" if cuda else "process RSS",
            "loss_first": losses[0],
            "loss_last": losses[-1],
            "trainable_params": info["trainable_params"],
            "gradient_checkpointing": cfg.model.gradient_checkpointing,
            "lora_r": cfg.lora.r,
            "device": device_name(),
            "versions": package_versions(),
        }
        print(json.dumps(res), flush=True)
        results.append(res)
        del model, opt, params, batches
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
