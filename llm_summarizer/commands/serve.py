"""Try a fine-tuned model in a browser: llm-summarizer serve --model DIR [--compare-base]

    llm-summarizer serve --model fine_tuned/demo                     # http://127.0.0.1:8000
    llm-summarizer serve --model fine_tuned/demo --compare-base      # the base model's summary beside it
    curl -s localhost:8000/summarize -H 'Content-Type: application/json' -d '{"document": "..."}'
    curl -s localhost:8000/v1/chat/completions -d '{"messages": [{"role": "user", "content": "..."}]}'
    OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused").chat.completions.create(model=..., messages=...)

A page (paste or upload a document, get the summary with its generation time) and a JSON API (POST
/summarize; OpenAI-style GET /v1/models and POST /v1/chat/completions, plain or streamed, whose last user
message is the document) over the saved model, with the prompt format and token budget it was trained with.
It listens on 127.0.0.1 unless --host says otherwise (there is no authentication: do not expose it). --port 0
picks a free port. One request generates at a time; up to --max-queue more wait their turn, and beyond that a
request gets 503 with Retry-After. Ctrl-C stops it (exit code 0: stopping is how a server ends).
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import UserError
from . import boot

log = logging.getLogger("llm_summarizer.serve")

PROG = "llm-summarizer serve"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    ap = boot.parser(prog, __doc__)
    ap.add_argument("--model", required=True, help="saved model directory (LoRA adapter or merged model)")
    ap.add_argument(
        "--compare-base",
        action="store_true",
        help="also show the base model's summary (an adapter: the same weights with it switched off)",
    )
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    ap.add_argument("--max-chars", type=int, default=100_000, help="longest document accepted (default 100000)")
    ap.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help="requests that may wait while one generates (default 64); more get 503 with Retry-After",
    )
    ap.add_argument("--backend", choices=["unsloth", "transformers"], help="default: the backend of the model's config")
    ap.add_argument("--base", help="base model of an adapter, when it moved")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. eval.max_new_tokens=120 eval.num_beams=4")
    return ap


def run(args, _cfg) -> int:
    if args.max_chars < 1:
        raise UserError(f"--max-chars {args.max_chars}: must be at least 1")
    if args.max_queue < 0:
        raise UserError(f"--max-queue {args.max_queue}: must be 0 or more")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: must be between 0 and 65535")
    try:
        return _serve(args)
    except KeyboardInterrupt:  # Ctrl-C before the server listened (while the model loads)
        print("interrupted before the server started", file=sys.stderr, flush=True)
        return 130


def _serve(args) -> int:
    boot.ml_stack(boot.saved_model_backend(args.model, args.backend))
    # after the arguments are checked: the ML stack loads only for a valid command
    from ..models.loading import load_for_generation
    from ..serve.server import Summarizer, make_server

    loaded = load_for_generation(args.model, args.backend, args.base, args.overrides)
    if args.compare_base and loaded.info.kind != "adapter":
        raise UserError(
            f"--compare-base: {args.model} is a merged model; serve its adapter directory to compare "
            f"with the base (the same weights with the adapter switched off)"
        )
    try:
        served = make_server(
            Summarizer(loaded, args.compare_base, args.max_chars), args.host, args.port, args.max_queue
        )
    except OSError as e:
        raise UserError(
            f"--host {args.host} --port {args.port}: cannot listen there ({e.strerror}); "
            f"choose another --port (0 picks a free one)"
        ) from None
    host, port = served.address
    print(
        f"serving {loaded.info.path.name} on http://{host}:{port}/  (POST /summarize, POST /v1/chat/completions; "
        f"Ctrl-C to stop)",
        flush=True,
    )
    try:
        served.run()  # on Ctrl-C: stops taking requests, finishes the one generating, then returns or raises
    except KeyboardInterrupt:
        pass
    print("stopped", flush=True)
    return 0


def main(argv=None, prog: str = PROG) -> int:
    return boot.run_command(build_parser(prog), run, argv)
