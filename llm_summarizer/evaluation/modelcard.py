"""The model card (README.md) written into every final model directory and every export.

Hub-style YAML front matter (base_model, library_name, tags, datasets, metrics, model-index with the
ROUGE scores), then what a reader needs to trust and use the model: ROUGE against the base model, how the
summaries relate to their documents (copying, numbers and names not in the document, length, endings:
diagnostics.py) beside the references' own values, the training data, the key hyperparameters, the evaluation
protocol, the W&B run link when there is one, and how to run it. Nothing secret goes in: the card is built from
the config, metrics and run info only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml

from ..config import Config, is_local_path
from ..contracts import RunMetrics
from ..metrics import BY_KEY, KEYS, LABELS
from . import diagnostics as D
from .report import f1, protocol_lines, score_table


def _is_hub_id(name: Optional[str]) -> bool:
    return bool(name) and not name.startswith("random:") and not is_local_path(name)


def _diagnostics_lines(metrics: RunMetrics, ev: Optional[dict]) -> list[str]:
    """The statistics of each summary against its document: the validation passes of training, and a test-set
    evaluation with intervals when there is one."""
    out = []
    before, after = metrics.labels
    table = D.markdown_table(
        {"references": metrics.references, before: metrics.base, after: metrics.final},
        (metrics.final_vs_base or {}).get("diagnostics_model_minus_base"),
    )
    if table:
        out += ["Validation split, mean per summary (the same examples as ROUGE above):", "", *table, ""]
    res = (ev or {}).get("results") or {}
    stats = lambda block: ((block or {}).get("diagnostics") or {}).get("stats")  # noqa: E731
    table = D.markdown_table(
        {
            "references": stats(res.get("references")),
            "base model": stats(res.get("base")),
            "fine-tuned": stats(res.get("model")),
        },
        res.get("diagnostics_model_minus_base"),
    )
    if table:
        d = ev.get("data") or {}
        out += [
            f"`{d.get('source')}` ({d.get('split')}, {d.get('examples')} examples; mean [bootstrap 95% interval]):",
            "",
            *table,
            "",
        ]
    if not out:
        return []
    warn = D.warnings(metrics.final, metrics.base, metrics.references, after, before)
    if metrics.is_grpo:
        similarity = ((metrics.stage or {}).get("reward") or {}).get("similarity_metric") or "rougeL"
        warn += D.gaming_warnings(metrics.base, metrics.final, metrics.final_vs_base, similarity, (before, after))
    return [
        "## Beyond ROUGE: each summary against its document",
        "",
        "Extractive fragment coverage and density (Grusky et al. 2018: how much and in how long pieces a summary "
        "copies its document), n-grams, numbers and name-like words not in the document, repetition, length "
        "against the reference, and summaries cut by max_new_tokens. String statistics: a number or a name "
        "absent from the document is worth checking, not proof of an error.",
        "",
        *out,
        *[f"**Note:** {w}." for w in warn],
        *([""] if warn else []),
    ]


def _tracking_lines(metrics: RunMetrics) -> list[str]:
    # only a URL others can open: an offline run's local folder means nothing to a reader of the card
    url = metrics.wandb_url
    return ["## Training run", "", f"Weights & Biases: {url}", ""] if url else []


def _source(s) -> str:
    if s is None:
        return "none"
    name = s.name or s.path
    extra = ", ".join(
        x
        for x in (
            f"config {s.config}" if s.config else "",
            f"split {s.split}" if s.split else "",
            f"first {s.limit} rows" if s.limit else "",
        )
        if x
    )
    return f"`{name}`" + (f" ({extra})" if extra else "")


def _data_lines(cfg: Config, metrics: RunMetrics) -> list[str]:
    d = cfg.data
    out = [f"- train: {_source(d.train)}"]
    if d.validation is not None:
        out.append(f"- validation: {_source(d.validation)}")
    elif d.validation_size:
        out.append(f"- validation: {d.validation_size} held out of train (split_seed {d.split_seed})")
    if d.test is not None:
        out.append(f"- test: {_source(d.test)}")
    for role, s in metrics.data.items():
        if not isinstance(s, dict):
            continue
        st = s.get("summary_tokens") or {}
        dropped = sum((s.get("dropped") or {}).values())
        out.append(
            f"- {role} rows: {s.get('rows')} used of {s.get('rows_read')} read"
            + (f", {dropped} dropped ({', '.join(f'{k} {v}' for k, v in s['dropped'].items())})" if dropped else "")
            + f", {s.get('truncated', 0)} documents truncated"
            + (f", summary length {st.get('mean')} tokens on average (p95 {st.get('p95')})" if st else "")
        )
    return out


def _hyper_rows(cfg: Config, metrics: RunMetrics, model_info: dict) -> list[str]:
    t, lo, m = cfg.train, cfg.lora, cfg.model
    tr = metrics.train
    steps = f"{tr.global_step}" + (
        f" (max_steps {t.max_steps})" if t.max_steps > 0 else f" ({t.num_train_epochs} epochs)"
    )
    stage = metrics.stage or {}
    grpo = _grpo_rows(cfg, stage) if metrics.is_grpo else []
    rows = [
        *([("started from", f"`{stage.get('started_from')}` ({stage.get('started_from_kind')})")] if grpo else []),
        (
            "base model",
            f"`{model_info.get('base_model') or m.name}`"
            + (
                f" (loaded from `{model_info['resolved_path']}`)"
                if model_info.get("resolved_path") not in (None, m.name)
                else ""
            ),
        ),
        ("backend", f"{m.backend}" + (f", precision {model_info['precision']}" if model_info.get("precision") else "")),
        ("quantization while training", "4-bit (QLoRA)" if m.load_in_4bit else "8-bit" if m.load_in_8bit else "none"),
        (
            "LoRA",
            f"r={lo.r}, alpha={lo.alpha}, dropout={lo.dropout}, targets {lo.target_modules}"
            + (", rsLoRA" if lo.use_rslora else "")
            + (", DoRA" if lo.use_dora else ""),
        ),
        (
            "trainable parameters",
            f"{model_info['trainable_params']:,} of {model_info['total_params']:,}"
            if model_info.get("trainable_params")
            else "n/a",
        ),
        ("steps", steps),
        (
            "learning rate",
            f"{t.learning_rate} ({t.lr_scheduler_type}, warmup "
            f"{t.warmup_steps if t.warmup_steps else f'{t.warmup_ratio:.0%}'})",
        ),
        ("batch", f"{t.per_device_train_batch_size} x {t.gradient_accumulation_steps} gradient accumulation"),
        ("optimizer", f"{t.optim}, weight decay {t.weight_decay}, max grad norm {t.max_grad_norm}"),
        (
            "sequence length",
            f"{m.max_seq_length} tokens; documents truncated (`{cfg.data.truncation}`), summaries never",
        ),
        *(grpo or [("loss", "on the summary tokens (and EOS) only")]),
        ("seed", f"{t.seed} (data split seed {cfg.data.split_seed})"),
        ("final training loss", f"{tr.train_loss:.4f}" if isinstance(tr.train_loss, (int, float)) else "n/a"),
    ]
    return ["| setting | value |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)]


def _grpo_rows(cfg: Config, stage: dict) -> list[tuple[str, str]]:
    rl, reward = cfg.rl, stage.get("reward") or {}
    parts = " + ".join(f"{w:g} x {name}" for name, w in (reward.get("components") or {}).items())
    rows = [
        ("stage", f"GRPO ({stage.get('trainer')}), loss {rl.loss_type}, KL beta {rl.beta}"),
        (
            "completions",
            f"{rl.num_generations} per prompt, temperature {rl.temperature}, top_p {rl.top_p}, budget "
            f"{stage.get('max_completion_length')} tokens (cut completions penalized, not masked)",
        ),
        ("reward", parts or "n/a"),
        (
            "reward guards",
            f"length band {list(rl.length_band)} x the reference; copying above density "
            f"{reward.get('allowed_density') or 0:.2f} (training references "
            f"{reward.get('reference_density') or 0:.2f} x {rl.copy_slack})",
        ),
    ]
    if stage.get("steps_per_minute"):
        rows.append(
            (
                "cost",
                f"{stage['steps_per_minute']:.2f} steps/min, sampling "
                f"{100 * (stage.get('generation_share') or 0):.0f}% of the training time",
            )
        )
    return rows


def _gguf_use_lines(export_info: dict) -> list[str]:
    f, fmt = export_info.get("file", "MODEL.gguf"), export_info.get("prompt_format") or {}
    pre, post, stop = fmt.get("prefix", ""), fmt.get("suffix", ""), fmt.get("stop", [])
    n, ctx = fmt.get("max_new_tokens", 128), fmt.get("n_ctx", 2048)
    return [
        "With Ollama (the `Modelfile` beside this file carries the training prompt, the stop token and greedy "
        "decoding; the document is the whole message):",
        "",
        "```bash",
        "ollama create my-summarizer -f Modelfile",
        'ollama run my-summarizer "$(cat article.txt)"',
        "```",
        "",
        "With llama-cpp-python (how this export was checked):",
        "",
        "```python",
        "from llama_cpp import Llama",
        f"llm = Llama({f!r}, n_ctx={ctx})",
        f"prompt = {pre!r} + document + {post!r}",
        f"out = llm.create_completion(prompt, max_tokens={n}, temperature=0.0, stop={stop!r})",
        'print(out["choices"][0]["text"])',
        "```",
        "",
        "With llama.cpp's own tools (build llama.cpp; `-no-cnv` feeds the prompt as it is):",
        "",
        "```bash",
        f"llama-completion -m {f} -c {ctx} -n {n} --temp 0 -no-cnv -e -p {(pre + '<document>' + post)!r}",
        "```",
        "",
    ]


def _use_lines(cfg: Config, kind: str, base_model: str, export_info: Optional[dict] = None) -> list[str]:
    prompt = cfg.data.prompt_template.format(instruction=cfg.data.instruction, document="<document>")
    fmt = (
        f"this user turn, followed by {cfg.data.plain_response_prefix!r}"
        if cfg.data.template == "plain"
        else f"this user turn inside the tokenizer's chat template (data.template `{cfg.data.template}`; when the "
        f"tokenizer has no chat template, the turn is followed by {cfg.data.plain_response_prefix!r})"
    )
    out = [
        "## Use",
        "",
        "```bash",
        "llm-summarizer summarize --model THIS_DIRECTORY article.txt",
        "llm-summarizer evaluate --model THIS_DIRECTORY --data test.jsonl --compare-base",
    ]
    if kind == "adapter":
        out.append("llm-summarizer export THIS_DIRECTORY --format merged-16bit")
    out += [
        "```",
        "",
        f"Prompts must be built as in training: {fmt}. The commands above do this from the saved config.yaml.",
        "",
        "```text",
        prompt,
        "```",
        "",
    ]
    if kind == "adapter":
        out += [
            "With plain transformers + PEFT:",
            "",
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f"base = AutoModelForCausalLM.from_pretrained({base_model!r})",
            'model = PeftModel.from_pretrained(base, "THIS_DIRECTORY")',
            'tokenizer = AutoTokenizer.from_pretrained("THIS_DIRECTORY")',
            "```",
            "",
        ]
    elif kind == "merged":
        out += [
            "With plain transformers (also loads in vLLM and TGI):",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            'model = AutoModelForCausalLM.from_pretrained("THIS_DIRECTORY", dtype="auto")',
            'tokenizer = AutoTokenizer.from_pretrained("THIS_DIRECTORY")',
            "```",
            "",
        ]
    elif kind == "gguf":
        out += _gguf_use_lines(export_info or {})
    return out


def write_model_card(
    path: Path,
    cfg: Config,
    metrics: Optional[RunMetrics],
    model_info: dict,
    kind: str = "adapter",
    export_info: Optional[dict] = None,
    eval_metrics: Optional[dict] = None,
) -> None:
    """README.md with YAML front matter. kind: adapter (a LoRA adapter), merged, or gguf."""
    metrics = metrics or RunMetrics()
    final = metrics.final or {}
    base_model = (model_info or {}).get("resolved_path") or cfg.model.name
    hub_base = (model_info or {}).get("base_model") or cfg.model.name
    hub_datasets = [s.name for s in (cfg.data.train, cfg.data.validation, cfg.data.test) if s is not None and s.name]
    local_datasets = [Path(s.path).name for s in (cfg.data.train, cfg.data.validation) if s is not None and s.path]
    tags = ["summarization", "llm_summarizer", "trl", "sft", "lora" if kind == "adapter" else "merged-lora"]
    tags += ["grpo"] if metrics.is_grpo else []
    tags += [
        t
        for t in (cfg.model.backend if cfg.model.backend == "unsloth" else None, "gguf" if kind == "gguf" else None)
        if t
    ]
    meta: dict = {}
    if _is_hub_id(hub_base):
        meta["base_model"] = hub_base
    if kind != "gguf":
        meta["library_name"] = "peft" if kind == "adapter" else "transformers"
    meta.update(
        {
            "pipeline_tag": "text-generation",
            "tags": tags,
            "datasets": hub_datasets or local_datasets,
            "metrics": list(dict.fromkeys(m.hub_id for m in BY_KEY.values() if m.hub_id)),
        }
    )
    if final:
        ds = (hub_datasets or local_datasets or ["validation"])[-1]
        meta["model-index"] = [
            {
                "name": cfg.output.run_name,
                "results": [
                    {
                        "task": {"type": "summarization", "name": "Summarization"},
                        "dataset": {"name": ds, "type": ds, "split": "validation"},
                        "metrics": [
                            {
                                "type": k,
                                "value": round(100 * f1(final[k]), 2),
                                "name": f"{LABELS[k]} {BY_KEY[k].measure} (x100)",
                            }
                            for k in KEYS
                            if BY_KEY[k].card_index and f1(final.get(k)) is not None
                        ],
                    }
                ],
            }
        ]
    what = {
        "adapter": "A LoRA adapter",
        "merged": "A merged model (LoRA folded into the base weights)",
        "gguf": "A GGUF file for llama.cpp / Ollama",
    }.get(kind, "A model")
    proto = metrics.eval_protocol
    before, after = metrics.labels
    how = (
        f"trained with GRPO on llm_summarizer's summary reward from `{(metrics.stage or {}).get('started_from')}` "
        f"(base `{hub_base}`; {cfg.model.backend} backend, TRL GRPOTrainer)"
        if metrics.is_grpo
        else f"fine-tuned from `{cfg.model.name}` with llm_summarizer ({cfg.model.backend} backend, TRL SFTTrainer, "
        "loss on the summary tokens only)"
    )
    body = [f"# {cfg.output.run_name}", "", f"{what} that summarizes text, {how}.", ""]
    if export_info:
        v = export_info.get("verification") or {}
        body += [
            "## Export",
            "",
            f"- format: {export_info.get('format')}"
            + (f", {export_info.get('dtype')}" if export_info.get("dtype") else ""),
            f"- from: `{export_info.get('source')}` ({export_info.get('method')})",
        ]
        if v:
            body.append(f"- checked: {v.get('summary')}")
        body.append("")
    body += [
        "## ROUGE on the validation split (F1 x 100, generated summaries)",
        "",
        *score_table(metrics.final or {}, metrics.base or {}, None, after, before),
        "",
    ]
    if eval_metrics:
        d = eval_metrics.get("data") or {}
        body += [
            f"## ROUGE on `{d.get('source')}` ({d.get('split')}, {d.get('examples')} examples; "
            f"F1 x 100 [bootstrap 95% interval])",
            "",
            *score_table(
                (eval_metrics.get("results") or {}).get("model") or {},
                (eval_metrics.get("results") or {}).get("base"),
                (eval_metrics.get("results") or {}).get("model_minus_base"),
                "fine-tuned",
            ),
            "",
        ]
    body += _diagnostics_lines(metrics, eval_metrics)
    body += [
        "## Training data",
        "",
        *_data_lines(cfg, metrics),
        "",
        "## Training procedure",
        "",
        *_hyper_rows(cfg, metrics, model_info or {}),
        "",
    ]
    if proto:
        body += [
            "## Evaluation protocol",
            "",
            "ROUGE is computed on summaries the model *generated* (not teacher-forced tokens):",
            "",
            *protocol_lines(proto),
            "",
        ]
    body += _tracking_lines(metrics)
    body += _use_lines(cfg, kind, base_model, export_info)
    body += [
        "## Limitations",
        "",
        "ROUGE measures word overlap with one reference summary; it does not check facts, and neither do the "
        "string statistics above (they flag copying and numbers or names missing from the document). Read a "
        "sample of the generated summaries (the evaluation's `predictions.jsonl`) before relying on the model.",
        "",
    ]
    text = "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + "\n".join(body)
    Path(path).write_text(text, encoding="utf-8")
