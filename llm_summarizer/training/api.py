"""The class-shaped API of the original summarizer trainer script, as a thin layer over the library.

    from llm_summarizer.trainer_class import TrainerClass    # imports unsloth first, as the original script did
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained("unsloth/Qwen2.5-0.5B-Instruct", max_seq_length=2048)
    model = FastLanguageModel.get_peft_model(model, r=16)
    trainer_class = TrainerClass(model, tokenizer, dataset_train, dataset_val, max_seq_length=2048,
                                 out_model_name="my-run", fine_tuned_model_dir="fine_tuned/my-run")
    trainer = trainer_class.trainer()
    trainer_class.Start_Training(trainer)      # resumes from outputs/my-run/checkpoint-* when present

Like `llm-summarizer train`, trainer() checks the output places, takes the run's lock (held until Start_Training
ends), joins the ranks under torchrun, and turns out-of-memory and a full disk into one message (TrainingStopped);
Start_Training pushes to the hub when output.push_to_hub is set.

Or from a config file, loading the model as the command line does:

    trainer_class = TrainerClass.from_config("demo", ["train.max_steps=50"])
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

from transformers import set_seed

from ..config import Config
from ..config_loading import load_config
from ..data.rows import load_raw_splits, raw_from_rows
from ..models.tokenizer import finish_tokenizer
from .run import build_session, load_model, opened_run, publish, train_and_save
from .summary import summary_lines


class TrainerClass:
    def __init__(
        self,
        model=None,
        tokenizer=None,
        dataset_train=None,
        dataset_val=None,
        max_seq_length: int = 2048,
        out_model_name: str = "summarizer",
        fine_tuned_model_dir: Optional[str] = None,
        config: Optional[Config] = None,
        overrides: Optional[list[str]] = None,
    ):
        if config is None:
            base = [f"model.max_seq_length={max_seq_length}", f"output.run_name={out_model_name}"]
            if fine_tuned_model_dir:
                base.append(f"output.model_dir={fine_tuned_model_dir}")
            config = load_config(None, base + list(overrides or []))
        self.cfg = config
        self.model, self.tokenizer = model, tokenizer
        self.dataset_train, self.dataset_val = dataset_train, dataset_val
        self.session = None
        self.result = None
        self._run = None  # the opened run (lock, error mapping) from trainer() to the end of Start_Training

    @classmethod
    def from_config(cls, path, overrides: Optional[list[str]] = None) -> "TrainerClass":
        return cls(config=load_config(path, overrides))

    def _raw(self) -> dict:
        if self.dataset_train is None:
            return load_raw_splits(self.cfg)
        raw = {"train": raw_from_rows(self.dataset_train, "train", self.cfg.data)}
        if self.dataset_val is not None:
            raw["validation"] = raw_from_rows(self.dataset_val, "validation", self.cfg.data)
        return raw

    def trainer(self):
        """Build and return the SFTTrainer (TRL; Unsloth's patched one on the unsloth backend)."""
        if self._run is not None:
            self._run.close()
        self._run = contextlib.ExitStack()
        try:
            with self._run:
                self._resume_from = self._run.enter_context(opened_run(self.cfg))
                self._build()
                self._run = self._run.pop_all()  # stays open until Start_Training ends
        except BaseException:
            self._run = None
            raise
        return self.session.trainer

    def _build(self) -> None:
        set_seed(self.cfg.train.seed)
        raw = self._raw()
        if self.model is None:
            self.model, self.tokenizer, info = load_model(self.cfg, raw)  # rank 0 first, as run() loads it
        else:
            if self.tokenizer is None:
                raise ValueError("TrainerClass: pass the tokenizer together with the model")
            self.tokenizer = finish_tokenizer(self.cfg, self.tokenizer, self.cfg.model.backend)
            info = {
                "base_model": getattr(self.model.config, "_name_or_path", "in-memory"),
                "backend": self.cfg.model.backend,
            }
        self.session = build_session(self.cfg, self.model, self.tokenizer, info, raw, resume_from=self._resume_from)

    def Start_Training(self, trainer=None):  # noqa: N802 - the name users of the original script know
        """Resume from the newest complete checkpoint (if any), train, and save the fine-tuned model."""
        if self.session is None or self._run is None:  # a second Start_Training opens the run again
            self.trainer()
        if trainer is not None and trainer is not self.session.trainer:
            self.session.trainer = trainer
        try:
            with self._run:  # the lock released and the errors mapped however training ends
                self.result = train_and_save(self.session)
        finally:
            self._run = None  # closed either way: a retry after a failure opens the run again
        publish(self.cfg, self.result)
        print("\n".join(summary_lines(self.result)))
        return self.result

    @property
    def fine_tuned_model_dir(self) -> Path:
        return self.cfg.model_dir
