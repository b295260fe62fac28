"""The model card (README.md) written into every final model directory."""

from __future__ import annotations

from pathlib import Path

import yaml

from .config import Config


def _rouge_rows(metrics: dict) -> list[str]:
    base, final = metrics.get("base") or {}, metrics.get("final") or {}
    rows = ["| metric | base model | fine-tuned | change |", "|---|---|---|---|"]
    for k in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        b, f = base.get(k), final.get(k)
        if f is None and b is None:
            continue
        fmt = lambda v: f"{100 * v:.2f}" if v is not None else "n/a"
        delta = f"{100 * (f - b):+.2f}" if (f is not None and b is not None) else "n/a"
        rows.append(f"| {k} | {fmt(b)} | {fmt(f)} | {delta} |")
    return rows


def write_model_card(path: Path, cfg: Config, metrics: dict, model_info: dict) -> None:
    final = metrics.get("final") or {}
    datasets = [s.name or Path(s.path).name for s in (cfg.data.train, cfg.data.validation) if s is not None]
    meta = {
        "base_model": cfg.model.name,
        "library_name": "peft",
        "pipeline_tag": "text-generation",
        "tags": ["summarization", "lora", "llm_summarizer", cfg.model.backend, "trl", "sft"],
        "datasets": datasets,
    }
    if final:
        meta["model-index"] = [{
            "name": cfg.output.run_name,
            "results": [{
                "task": {"type": "summarization", "name": "Summarization"},
                "dataset": {"name": datasets[-1] if datasets else "validation", "type": datasets[-1] if datasets else "local", "split": "validation"},
                "metrics": [{"type": k, "value": round(100 * final[k], 2), "name": f"{k} F1 (x100)"}
                            for k in ("rouge1", "rouge2", "rougeL", "rougeLsum") if k in final],
            }],
        }]
    t, lo = cfg.train, cfg.lora
    proto = metrics.get("eval_protocol") or {}
    body = [
        f"# {cfg.output.run_name}",
        "",
        f"A LoRA adapter that summarizes text, fine-tuned from `{cfg.model.name}` with llm_summarizer "
        f"({cfg.model.backend} backend, TRL SFTTrainer, loss on the summary tokens only).",
        "",
        "## ROUGE on the validation split (F1 x 100, generated summaries)",
        "",
        *_rouge_rows(metrics),
        "",
        "## Training",
        "",
        f"- data: train `{cfg.data.train.path or cfg.data.train.name}`"
        + (f", validation `{cfg.data.validation.path or cfg.data.validation.name}`" if cfg.data.validation else ""),
        "- rows used: " + ", ".join(f"{k} {v.get('rows')}" for k, v in (metrics.get("data") or {}).items()),
        f"- steps: {metrics.get('train', {}).get('global_step')}, learning rate {t.learning_rate}, "
        f"batch {t.per_device_train_batch_size} x {t.gradient_accumulation_steps} accumulation, "
        f"scheduler {t.lr_scheduler_type}, seed {t.seed}",
        f"- LoRA: r={lo.r}, alpha={lo.alpha}, dropout={lo.dropout}, targets {lo.target_modules}",
        f"- max_seq_length {cfg.model.max_seq_length}; documents truncated with policy `{cfg.data.truncation}`, "
        "summaries never truncated",
        f"- prompt: `{cfg.data.prompt_template!r}` with instruction `{cfg.data.instruction!r}`, template `{cfg.data.template}`",
        "",
        "## Evaluation protocol",
        "",
        *(f"- {k}: {v}" for k, v in proto.items()),
        "",
        "## Use",
        "",
        "```bash",
        "python -m llm_summarizer.summarize --model THIS_DIRECTORY FILE.txt",
        "```",
        "",
    ]
    text = "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n" + "\n".join(body)
    path.write_text(text, encoding="utf-8")
