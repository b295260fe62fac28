"""Experiment tracking: Weights & Biases, TensorBoard and MLflow, all fed from one callback.

    llm-summarizer train --config demo tracking.report_to=[wandb]
    llm-summarizer train --config demo tracking.report_to=[tensorboard,mlflow]
    tensorboard --logdir outputs/demo/tensorboard
    mlflow ui --backend-store-uri sqlite:///outputs/demo/mlflow.db
    wandb sync outputs/demo/wandb/offline-run-*-RUNID      # upload a run that was logged offline

W&B goes offline by itself when there is no API key (WANDB_API_KEY, `wandb login`, a Colab secret)
or its server cannot be reached; the run prints, once, the `wandb sync` command that uploads it later.

Why our own callback rather than transformers' `report_to` integrations: every tracker gets the same
name for each scalar (train/loss, eval/loss, eval/rougeL, ...); the base model's ROUGE (step 0) and
the samples table go through the same path as the trainer's logs; the run config is our resolved
config with secrets removed, not every TrainingArguments field; and a resumed run continues the SAME
W&B and MLflow runs (their ids are kept in <output.dir>/tracking.json), with TensorBoard dropping the
steps logged after the checkpoint it resumes from.

    base.py                  the Tracker interface and the scalar names every tracker uses
    wandb_tracker.py, tensorboard_tracker.py, mlflow_tracker.py   one class per tracker
    trackers.py              the trackers of one run: opened from tracking.report_to, fed by one callback
"""
