"""Export a fine-tuned model for serving: llm-summarizer export MODEL_DIR --format FORMAT

    llm-summarizer export fine_tuned/demo --format merged-16bit        # -> fine_tuned/demo-merged-16bit/
    llm-summarizer export fine_tuned/demo --format adapter --output release/demo-lora
    llm-summarizer export fine_tuned/demo --format merged-4bit         # bitsandbytes (a GPU, or 0.50 on a CPU)
    llm-summarizer export fine_tuned/demo --format gguf --gguf-type q8_0 --llama-cpp ~/llama.cpp
    HF_TOKEN=hf_... llm-summarizer export fine_tuned/demo --format merged-16bit --push-to-hub --hub-model-id you/demo

Formats:
  adapter       the LoRA adapter + tokenizer (base_model_name_or_path resolved), for PEFT / vLLM LoRA serving
  merged-16bit  LoRA folded into the base weights, saved in the base's 16-bit dtype (float16 for a float32
                base, on every machine; --dtype overrides): Unsloth's save_pretrained_merged on a GPU, PEFT
                merge_and_unload otherwise; loads with plain transformers, vLLM, TGI
  merged-4bit   the merged model quantized to bitsandbytes NF4, computing in the merged weights' dtype (on a
                CUDA GPU, or on a CPU with bitsandbytes 0.50)
  gguf          the merged model converted by llama.cpp's convert_hf_to_gguf.py (f16, bf16, q8_0 directly;
                k-quants such as q4_k_m through llama-quantize), for llama.cpp and Ollama

Every export checks itself before it appears: a fixed set of documents is summarized greedily by the
adapter, then by the export loaded in a separate process with plain transformers (no Unsloth patches).
merged-16bit and adapter exports must reproduce the adapter's summaries and give the adapter's summaries
the same log-probabilities (within --logprob-tolerance nats per token: 16-bit rounding of the merged
weights moves them by about 0.002 in float16); a greedy summary may differ only at a near-tie, which that
second test tells apart from a wrong merge. merged-4bit must agree with the adapter's summaries to
--min-4bit-agreement (mean ROUGE-L). Any failure exits non-zero and leaves no output: the export is
written under a temporary name and renamed into place only when complete and checked.

    exporter.py   export_model(): checks, the fixed documents, the table of formats, the atomic write
    job.py        what every format writer works on
    adapter.py, merged.py, quantized.py, gguf.py   one module per format
    verify.py     the plain-transformers process and the comparison with the adapter
"""
