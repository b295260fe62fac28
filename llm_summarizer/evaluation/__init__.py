"""Evaluation: ROUGE as published results compute it, bootstrap intervals, evaluating a saved model,
reports with plots, and model cards.

    scoring.py    rouge-score F1 with stemming; ROUGE-Lsum sentence splitting; the protocol written down
    diagnostics.py  each summary against its document: extractive fragments (coverage, density, compression),
                  novel n-grams, repetition, unsupported numbers and names, lead copy, length, endings (STATS)
    bootstrap.py  95% intervals, paired differences against the base model
    evaluate.py   evaluate_model(model_dir, data): resumable predictions, metrics.json, report
    report.py     plots and report.md (the training report builds on them)
    modelcard.py  README.md with hub front matter for every model directory and export
    summary_metrics/  ROUGE + the statistics as a Hugging Face `evaluate` module (evaluate.load of the folder)
"""
