"""Models: what a model directory is, the one loader (training and generation, both backends),
tokenizers, generation, and models built locally (random:<shape>).

    directory.py    a model directory described and checked from its files (no torch)
    backends.py     unsloth and transformers behind one table; the only import of unsloth
    tokenizer.py    chat template, pad token, padding side
    loading.py      load_for_training(cfg) and load_for_generation(model_dir)
    generation.py   batched generation that leaves the model as it found it; summarize()
    random_init.py  random:<shape> models with a tokenizer trained on the run's data
"""
