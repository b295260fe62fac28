"""Training: the run (run.py), TRL's SFTTrainer as we use it (trainer.py), generated summaries scored while
training and the other callbacks, crash-consistent checkpoints, guards, the training report, and the TrainerClass API.

    run.py          run(cfg): the whole story, one named step per call; opened_run and build_session, which
                    TrainerClass, the bench and each Ray worker use too
    trainer.py      sft_config (our config -> SFTConfig), SummarizationTrainer, build_trainer
    summary_eval.py generated summaries scored while training (SummaryEvaluator, SummaryEvalCallback), the samples,
                    the base comparison
    stopping.py     early stopping, the non-finite guard
    trial.py        a run that is a trial of `llm-summarizer tune` (TrialReporter, the pruner)
    checkpoints.py  staged publish, the resume scan
    guards.py       one run per directory; out of memory and disk full as clear messages
    summary.py      the end-of-run summary, as text (the train command and TrainerClass print it)
    report.py       report.md + plots after training
    api.py          TrainerClass (the original trainer script's class API)
"""
