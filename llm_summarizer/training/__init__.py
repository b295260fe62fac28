"""Training: the run (run.py), TRL's SFTTrainer as we use it (trainer.py), ROUGE while training and the
other callbacks, crash-consistent checkpoints, guards, the training report, and the TrainerClass API.

    run.py          run(cfg): the whole story, one step per call
    trainer.py      sft_config (our config -> SFTConfig), SummarizationTrainer, build_trainer
    callbacks.py    ROUGE on generated summaries, early stopping, the non-finite guard
    checkpoints.py  staged publish, the resume scan
    guards.py       one run per directory; out of memory and disk full as clear messages
    report.py       report.md + plots after training
    api.py          TrainerClass (the original trainer script's class API)
"""
