"""Time the data pipeline on a large corpus: N rows of DialogSum-sized examples, tokenized and budgeted.

    .venv/bin/python scripts/bench_data.py                       # 100,000 rows from ../shared/data/dialogsum
    .venv/bin/python scripts/bench_data.py --rows 20000 --source data/demo/train.jsonl

Rows are the source's rows repeated (with distinct ids and a counter in the document so the
duplicate filter keeps them). Prints rows/s for reading+validation and for tokenization, cold and
cached, with the number of processes used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--source", default=str(ROOT.parent / "shared" / "data" / "dialogsum" / "train.jsonl"))
    ap.add_argument("--max-seq-length", type=int, default=1024)
    ap.add_argument("--num-proc", type=int, default=None)
    ap.add_argument(
        "--config",
        default="tiny",
        help="ready config or YAML: its tokenizer is the one timed (tiny: a BPE trained on the data; demo: SmolLM2's)",
    )
    args = ap.parse_args(argv)

    from llm_summarizer.config_loading import load_config
    from llm_summarizer.data import rows as R
    from llm_summarizer.data import tokenize as TK
    from llm_summarizer.data.readers import RawSplit
    from llm_summarizer.data.tokenize import _num_proc
    from llm_summarizer.models.loading import load_tokenizer

    src = [json.loads(l) for l in Path(args.source).read_text(encoding="utf-8").splitlines() if l.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big.jsonl"
        with open(big, "w", encoding="utf-8") as f:
            for i in range(args.rows):
                r = src[i % len(src)]
                f.write(
                    json.dumps({"id": f"r{i}", "document": f"[{i}] {r['document']}", "summary": r["summary"]}) + "\n"
                )
        overrides = [
            f"data.train={big}",
            "data.validation=null",
            "data.test=null",
            "data.validation_size=0",
            f"model.max_seq_length={args.max_seq_length}",
            f"model.cache_dir={tmp}/models",
        ]
        if args.num_proc:
            overrides.append(f"data.num_proc={args.num_proc}")
        cfg = load_config(args.config, overrides)
        t0 = time.perf_counter()
        raw = R.load_raw_splits(cfg)
        t_read = time.perf_counter() - t0
        # The tokenizer (trained on a slice of the data for random:tiny), outside the timing.
        small = {"train": RawSplit("train", "slice", raw["train"].rows[:2000])}
        tok = load_tokenizer(cfg, small)
        cache = Path(tmp) / "cache"
        t0 = time.perf_counter()
        prep = TK.prepare(cfg, tok, raw, cache_dir=cache)
        t_tok = time.perf_counter() - t0
        t0 = time.perf_counter()
        TK.prepare(cfg, tok, raw, cache_dir=cache)
        t_cached = time.perf_counter() - t0
        n = prep.stats["train"].rows_kept
        nproc = _num_proc(cfg.data, args.rows) or 1
        result = {
            "rows": args.rows,
            "kept": n,
            "cpus": os.cpu_count(),
            "num_proc": nproc,
            "read_validate_s": round(t_read, 2),
            "read_rows_per_s": round(args.rows / t_read),
            "tokenize_s": round(t_tok, 2),
            "tokenize_rows_per_s": round(args.rows / t_tok),
            "cached_s": round(t_cached, 2),
            "truncated": prep.stats["train"].truncated,
        }
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
