"""The non-finite guard under fp16 mixed precision, with a real loss scaler: torch's GradScaler on the CPU, wrapped by
accelerate as the Trainer wraps it on a GPU (accelerate itself uses no scaler on a CPU, so the trainer's step is
played here in the Trainer's own order: backward of the scaled loss, unscale + clip when max_grad_norm > 0, the
guard's on_pre_optimizer_step, the scaler's step, the guard's on_optimizer_step)."""

import types

import pytest
import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from transformers import TrainerControl, TrainerState

from llm_summarizer.errors import TrainingStopped
from llm_summarizer.training.stopping import NonFiniteGuard, first_nonfinite_grad


class Run:
    """One parameter vector trained by SGD under a real GradScaler, the guard watching it as it watches the trainer."""

    def __init__(self, guard: NonFiniteGuard, max_grad_norm: float, init_scale: float = 2.0**16):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(4, 1, bias=False)
        self.model.weight.data.fill_(1e-10)
        acc = Accelerator(cpu=True)
        acc.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
        sgd = torch.optim.SGD(self.model.parameters(), lr=1e-40)
        self.taken = 0  # the steps the optimizer really took (the scaler calls it only when nothing overflowed)
        real_step = sgd.step

        def counted(*a, **k):
            self.taken += 1
            return real_step(*a, **k)

        sgd.step = counted
        self.opt = AcceleratedOptimizer(sgd, scaler=acc.scaler)
        acc._optimizers.append(self.opt)
        self.trainer = types.SimpleNamespace(accelerator=acc, step_losses=[])
        self.guard, self.max_grad_norm = guard, max_grad_norm
        guard.watch(self.trainer)
        self.args = types.SimpleNamespace(output_dir="outputs/run")
        self.state, self.control = TrainerState(), TrainerControl()
        self.updated = []  # per step: did the optimizer take it

    def step(self, grad_factor: float, loss_nan: bool = False) -> None:
        """One optimizer step whose gradient is grad_factor per input unit (its loss stays finite unless loss_nan)."""
        before = self.taken
        x = torch.ones(1, 4) * 1e9
        loss = (self.model(x) * (grad_factor / 1e9)).sum()
        if loss_nan:
            loss = loss * float("nan")
        self.trainer.step_losses.append(loss.detach())
        self.trainer.accelerator.scaler.scale(loss).backward()
        if self.max_grad_norm > 0:  # accelerate's clip_grad_norm_: unscale first, then clip
            self.trainer.accelerator.scaler.unscale_(self.opt.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.guard.on_pre_optimizer_step(self.args, self.state, self.control, model=self.model)
        self.opt.step()
        self.guard.on_optimizer_step(self.args, self.state, self.control, model=self.model)
        self.opt.zero_grad()
        self.state.global_step += 1
        self.updated.append(self.taken > before)

    @property
    def scale(self) -> float:
        return self.trainer.accelerator.scaler.get_scale()


@pytest.mark.parametrize("max_grad_norm", [1.0, 0.0])
def test_overflow_steps_the_scaler_skips_do_not_stop_the_run(max_grad_norm):
    """Gradients of 3e34 overflow float32 at the scaler's first scales (65536, 32768, 16384): those steps are skipped
    by the scaler and the run goes on under on_nonfinite=stop; the guard clears nothing (with max_grad_norm=0 a
    cleared gradient made the scaler's step raise "No inf checks were recorded")."""
    run = Run(NonFiniteGuard("stop", 0), max_grad_norm)
    for _ in range(6):
        run.step(3e34)
    assert run.updated == [False, False, False, True, True, True]
    assert run.guard.scaler_skips == 3 and run.guard.skipped == 0 and run.scale == 2.0**13
    assert run.trainer.step_losses == []  # taken at every optimizer step


def test_the_skip_policy_leaves_overflow_to_the_scaler():
    run = Run(NonFiniteGuard("skip", 1), 0.0)
    for _ in range(5):
        run.step(3e34)  # raised AssertionError "No inf checks were recorded for this optimizer" before
    assert run.guard.skipped == 0 and run.guard.scaler_skips == 3 and run.updated[-2:] == [True, True]


def test_a_nonfinite_loss_under_the_scaler_stops_the_run_or_is_skipped():
    run = Run(NonFiniteGuard("stop", 0, advice="train.precision=fp32"), 1.0, init_scale=1.0)
    run.step(1.0)
    with pytest.raises(
        TrainingStopped, match=r"non-finite loss at step 2 \(fp16 mixed precision\)\. .*train\.precision=fp32"
    ):
        run.step(1.0, loss_nan=True)
    skipping = Run(NonFiniteGuard("skip", 1), 1.0, init_scale=1.0)
    skipping.step(1.0, loss_nan=True)  # skipped by the scaler, counted against the budget
    assert skipping.guard.skipped == 1 and skipping.updated == [False]
    with pytest.raises(TrainingStopped, match="non-finite loss at step 2 .*after skipping 1 step"):
        skipping.step(1.0, loss_nan=True)


def test_a_scaler_that_skips_until_its_scale_falls_below_1_stops_the_run():
    """Gradients that overflow even unscaled (1e39 per unit): skipped 17 times as the scale halves from 65536 to 0.5,
    then the run stops with what happened, keeping its checkpoint."""
    run = Run(NonFiniteGuard("stop", 0), 1.0)
    with pytest.raises(TrainingStopped) as e:
        for _ in range(30):
            run.step(1e39)
    assert "skipped 17 steps in a row up to step 17 and its scale fell to 0.5" in str(e.value)
    assert "the last complete checkpoint in outputs/run is kept" in str(e.value)
    assert not any(run.updated)


def test_the_guards_state_survives_a_resume():
    guard = NonFiniteGuard("skip", 3, advice="x")
    guard.skipped, guard.scaler_skips, guard.scaler_run = 1, 5, 2
    saved = guard.state()
    again = NonFiniteGuard(**saved["args"])  # how transformers restores a callback from trainer_state.json
    for k, v in saved["attributes"].items():
        setattr(again, k, v)
    assert (again.policy, again.max_skips, again.advice, again.skipped, again.scaler_skips) == ("skip", 3, "x", 1, 5)


def test_without_a_scaler_the_first_nonfinite_gradient_is_named():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    model(torch.ones(1, 2)).sum().backward()
    assert first_nonfinite_grad(model) is None
    model[1].weight.grad[0, 0] = float("inf")
    assert first_nonfinite_grad(model) == "1.weight"
