"""TensorBoard: event files under <output.dir>/tensorboard; a resumed run drops the steps a killed run
logged after the checkpoint it resumes from."""

from __future__ import annotations

import json

from torch.utils.tensorboard import SummaryWriter

from .base import Tracker, run_config

TENSORBOARD_DIR = "tensorboard"


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, cfg, output_dir, prior, resume_step):
        super().__init__(cfg, output_dir, prior, resume_step)
        self.dir = self.output_dir / TENSORBOARD_DIR
        # purge_step: TensorBoard drops what a killed run logged after the checkpoint we resume from
        self.writer = SummaryWriter(log_dir=str(self.dir), purge_step=None if resume_step is None else resume_step + 1)
        if resume_step is None:
            self.writer.add_text("config", "```\n" + json.dumps(run_config(cfg), indent=2) + "\n```", 0)

    def log(self, values, step):
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self, failed):
        self.writer.close()

    def info(self):
        return {"logdir": str(self.dir)}
