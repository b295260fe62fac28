"""A benchmark result as a row of BENCHMARKS.md and as a printed summary."""

from __future__ import annotations

from pathlib import Path

TABLE_HEADER = (
    "| date | device | model · mode · data | settings | non-pad tokens/s (min-max) | all tokens/s | s/step | "
    "peak memory GiB | MFU | ROUGE share | unsloth / transformers | versions | command |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


MARKER = "<!-- bench rows: llm-summarizer bench appends below -->"


def _pair(result: dict, key: str, fmt: str, spread: bool = False) -> str:
    cells = []
    for b, s in result["backends"].items():
        if s.get("failed"):
            cells.append(f"{b[0]}: failed")
            continue
        if key not in s:
            cells.append(f"{b[0]}: n/a")
            continue
        v = s[key]
        cell = f"{b[0]}: {format(v['median'], fmt)}"
        if spread and v["n"] > 1:
            cell += f" ({format(v['min'], fmt)}-{format(v['max'], fmt)})"
        cells.append(cell)
    return "<br>".join(cells)


def _settings(result: dict) -> str:
    c = result["config"]
    t = c["train"]
    parts = [
        f"batch {t['per_device_train_batch_size']}x{t['gradient_accumulation_steps']}",
        f"max_seq {c['model']['max_seq_length']}",
        f"r={c['lora']['r']}",
        f"steps {result['settings']['warmup_steps']}+{result['settings']['steps'] - result['settings']['warmup_steps']}"
        f" x{result['settings']['rounds']}",
        f"sampling {t.get('sampling', 'random')}",
    ]
    if result["settings"].get("threads"):
        parts.append(f"{result['settings']['threads']} CPU thread(s)")
    for b, s in result["backends"].items():
        eff = s["effective"]
        if not eff:
            continue
        feats = [k for k in ("padding_free", "packing") if eff.get(k)]
        parts.append(f"{b[0]}: {'+'.join(feats) or 'padded'}, {eff.get('attn_implementation')}, {eff.get('optim')}")
    return ", ".join(parts)


def table_row(result: dict) -> str:
    v = result["versions"]
    versions = ", ".join(f"{k} {v[k]}" for k in ("torch", "transformers", "trl", "peft", "unsloth") if k in v)
    ratios = result["ratios_unsloth_over_transformers"]
    names = {"tokens_per_s_nonpad": "non-pad tok/s", "s_per_step": "s/step", "peak_memory_gib": "memory"}
    ratio = ", ".join(f"{names[k]} {r:.2f}x" for k, r in ratios.items() if k in names)
    m, d = result["model"], result["data"]
    what = f"{m['shape'] or Path(m['dir']).name} · {m['mode']} · {d['name']}"
    cells = [
        result["date"],
        result["device"],
        what,
        _settings(result),
        _pair(result, "tokens_per_s_nonpad", ".0f", spread=True),
        _pair(result, "tokens_per_s_all", ".0f"),
        _pair(result, "s_per_step", ".3f", spread=True),
        _pair(result, "peak_memory_gib", ".2f"),
        _pair(result, "mfu", ".2%"),
        _pair(result, "rouge_share", ".1%"),
        ratio or "n/a",
        versions,
        f"`{result['command']}`",
    ]
    return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |\n"


def append_row(path: Path, result: dict) -> None:
    """Add the row at the end of the table under MARKER (made, with its header, when missing)."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if MARKER not in text:
        text = text.rstrip("\n") + "\n\n" + MARKER + "\n\n" + TABLE_HEADER
    head, tail = text.split(MARKER, 1)
    lines = tail.splitlines(True)
    i = next((k for k, l in enumerate(lines) if l.startswith("|")), len(lines))
    while i < len(lines) and lines[i].startswith("|"):
        i += 1
    if i and not lines[i - 1].endswith("\n"):
        lines[i - 1] += "\n"
    lines.insert(i, table_row(result))
    path.write_text(head + MARKER + "".join(lines), encoding="utf-8")


def render_summary(result: dict, out: Path) -> str:
    lines = [
        f"\n== llm_summarizer bench: {result['model']['shape'] or result['model']['dir']} "
        f"({result['model']['mode']}) on {result['data']['name']}, {result['device']}"
    ]
    for b, s in result["backends"].items():

        def g(k, fmt):
            return format(s[k]["median"], fmt) if k in s else "n/a"

        lines.append(
            f"   {b:<13} non-pad {g('tokens_per_s_nonpad', '.0f')} tok/s (all {g('tokens_per_s_all', '.0f')}), "
            f"{g('s_per_step', '.3f')} s/step, peak {g('peak_memory_gib', '.2f')} GiB, MFU {g('mfu', '.2%')}, "
            f"ROUGE share {g('rouge_share', '.1%')}, batch-vs-single loss rel. diff {g('loss_check_rel_diff', '.1e')}"
        )
    if result["ratios_unsloth_over_transformers"]:
        lines.append(
            "   unsloth/transformers: "
            + ", ".join(f"{k} {v:.2f}x" for k, v in result["ratios_unsloth_over_transformers"].items())
        )
    bad = [f"{r['backend']} round {r['round']}" for r in result["runs"] if not r.get("token_count_ok", True)]
    if bad:
        lines.append(f"   WARNING: token counts unreliable in {', '.join(bad)} (forwards seen != micro-batches)")
    lines.append(f"   result: {out}")
    return "\n".join(lines)
