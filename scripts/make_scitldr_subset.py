"""Write data/scitldr/: the small SciTLDR subset the demo trains on (Apache-2.0, attribution in its README).

    python scripts/make_scitldr_subset.py --source ../shared/data/scitldr
    # -> data/scitldr/{train,validation,test}.jsonl

The source is SciTLDR-A as JSONL with id/document/summary per line (the first reference TLDR); this
keeps the first --train/--validation/--test rows of each split in source order, verbatim.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True, help="folder with train/validation/test.jsonl of SciTLDR-A")
    ap.add_argument("--out", default=str(ROOT / "data" / "scitldr"))
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--validation", type=int, default=100)
    ap.add_argument("--test", type=int, default=200)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation", "test"):
        rows = [
            json.loads(l)
            for l in (Path(args.source) / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
            if l.strip()
        ][: getattr(args, split)]
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for r in rows:
                f.write(
                    json.dumps({"id": r["id"], "document": r["document"], "summary": r["summary"]}, ensure_ascii=False)
                    + "\n"
                )
        print(f"{out / split}.jsonl: {len(rows)} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
