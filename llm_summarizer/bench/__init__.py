"""Benchmark the project's own training path: backend unsloth against backend transformers, in one run.

    llm-summarizer bench --threads 1                         # CPU: tiny random-init Llama, ~8 min
    llm-summarizer bench --steps 8 --warmup-steps 2 --rounds 1 eval.num_samples=4   # a quick look
    llm-summarizer bench --shape llama-1b --data ../shared/data/dialogsum   # GPU: Llama-3.2-1B shape, bf16 LoRA
    llm-summarizer bench --shape llama-1b --data ../shared/data/dialogsum --qlora
    llm-summarizer bench --model /path/to/model --data path/to/data_dir train.padding_free=true
    llm-summarizer bench --from-json outputs/bench/RESULT.json   # append that result's row again
    bash scripts/bench_gpu.sh                                          # the GPU rows of BENCHMARKS.md

Both backends run what `llm-summarizer train` runs: the same Config, data preparation and trainer
(through training.run.build_session, so the ROUGE callback is in), from the same model
directory, on the same examples in the same order. Each measured run is a child process of its own,
because importing unsloth patches transformers for the rest of a process; the parent alternates
which backend goes first from round to round, so drift of the machine falls on both.

Per run, over the optimizer steps after --warmup-steps and without the time spent evaluating:
tokens/s counting every token the model is fed and counting non-padding tokens only (read by a
forward pre-hook on the model, so from the batches the model really sees: Unsloth's trainer calls
the collator twice per step), seconds per optimizer step, and MFU (model FLOPs of the non-padding
tokens, LoRA's frozen base: 4 x matmul parameters + 6 x LoRA parameters per token + causal
attention, over a bf16 (GPU) or fp32 (CPU) matmul ceiling measured in the same process). Over the
whole of trainer.train(): peak GPU memory (peak RSS of the process on CPU) and the ROUGE callback's
share of the wall time. After training, the loss of one real training batch (padding-free or packed
when the config says so) is compared with the same examples run one at a time. Checkpoint saving is
off; everything else is the config's (--config, else the schema defaults: what a user gets untuned).
The JSON result goes to --out; one row per invocation is appended to BENCHMARKS.md.

    harness.py   the parent: resolve model and data, alternate child runs, aggregate
    measure.py   the child: one measured training run (token meter, step clock, MFU, loss check)
    results.py   the JSON result as a BENCHMARKS.md row and a printed summary
"""
