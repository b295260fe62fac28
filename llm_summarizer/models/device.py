"""Where tensors run, and every choice that depends on it, made in one place from a small description of the device.

    device = current()                      # a Device: the CPU, or a CUDA GPU with its compute capability and memory
    plan = training_plan(cfg, device)       # precision, the load dtype, 4-bit compute dtype, optimizer, checkpointing
    plan.describe()                         # "fp16 mixed precision, float16 weights (Tesla T4, compute capability 7.5:
                                            #  no native bfloat16)"
    inference_dtype(cfg, device)            # the dtype a saved model is loaded in for generation
    generation_batching(backend, ev.batching, device)   # continuous or static, and why

A T4, an A100, an H100 and a CPU are each a `Device` (`KNOWN`), so every decision is tested on a machine without a GPU
by describing one. Native bfloat16 means compute capability 8.0 or newer (Ampere), which is what Unsloth decides by
(`SUPPORTS_BFLOAT16`); `torch.cuda.is_bf16_supported()` is never asked: by default it answers yes on a T4 by creating
an (emulated) bfloat16 tensor, and a T4 run that believed it died after its model loaded.

What the loader and the trainer are given always agree, because both come from one plan: Unsloth is handed the dtype
explicitly (never None, which would let it choose by itself), and its trainer's own check (a float16 model with bf16
arguments, or a bfloat16 model with fp16 arguments, raises TypeError) accepts every plan (tests/models/test_device.py
runs that check's code from the installed Unsloth on each device described).
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Optional, Union

import torch

from ..config import Config, EvalSection
from ..errors import UserError

log = logging.getLogger("llm_summarizer.device")

GIB = 2**30
BF16_CAPABILITY = (8, 0)  # Ampere: the first compute capability with bfloat16 in hardware


@dataclass(frozen=True)
class Device:
    """What the decisions need to know about a device: a CUDA GPU (name, compute capability, memory, how many) or
    the CPU."""

    type: str  # "cuda" or "cpu"
    name: str
    capability: Optional[tuple[int, int]] = None
    memory_gib: Optional[float] = None
    count: int = 0

    @property
    def cuda(self) -> bool:
        return self.type == "cuda"

    @property
    def bf16(self) -> bool:
        """bfloat16 in hardware (compute capability 8.0 or newer); never true of a CPU here (see cpu_dtype_rule)."""
        return self.cuda and self.capability is not None and tuple(self.capability) >= BF16_CAPABILITY

    @property
    def capability_text(self) -> str:
        return ".".join(map(str, self.capability)) if self.capability else "unknown"

    def describe(self) -> str:
        if not self.cuda:
            return "CPU"
        memory = f", {self.memory_gib:.1f} GiB" if self.memory_gib else ""
        return f"{self.name}, compute capability {self.capability_text}{memory}"

    def bf16_text(self) -> str:
        """Whether bfloat16 runs natively, in words a user can check against their card."""
        if not self.cuda:
            return "no (the CPU trains in float32 whatever its bfloat16 support)"
        if self.bf16:
            return f"yes (compute capability {self.capability_text})"
        return (
            f"no (compute capability {self.capability_text}; bfloat16 needs 8.0 or newer, an Ampere card or later: "
            f"it would only be emulated here, so float16 is used)"
        )


# Devices users train on, described: each is a parameter of the device tests. Memory is what torch reports.
KNOWN = {
    "cpu": Device("cpu", "CPU"),
    "t4": Device("cuda", "Tesla T4", (7, 5), 14.7, 1),  # free Colab
    "v100": Device("cuda", "Tesla V100-SXM2-16GB", (7, 0), 15.8, 1),
    "l4": Device("cuda", "NVIDIA L4", (8, 9), 22.0, 1),
    "a100": Device("cuda", "NVIDIA A100-SXM4-40GB", (8, 0), 39.4, 1),
    "h100": Device("cuda", "NVIDIA H100 80GB HBM3", (9, 0), 79.2, 1),
}


def current() -> Device:
    """This process's device: its current CUDA GPU, or the CPU. Reads facts only (capability, memory), never
    is_bf16_supported()."""
    if not torch.cuda.is_available():
        return KNOWN["cpu"]
    i = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(i)
    major, minor = torch.cuda.get_device_capability(i)
    return Device(
        "cuda", props.name, (int(major), int(minor)), round(props.total_memory / GIB, 1), torch.cuda.device_count()
    )


# ---------------------------------------------------------------------------------------------
# Precision: what the trainer runs and what the weights are loaded in, one decision

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
PRECISION_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PRECISION_OF_DTYPE = {"bfloat16": "bf16", "float16": "fp16"}


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


@dataclass(frozen=True)
class TrainingPlan:
    """Every device-dependent choice of a training run. `precision` is what really runs (what run_info.json records
    and the log prints); `dtype` is handed to the loader as it is (Unsloth included: never None)."""

    device: Device
    precision: str  # bf16 / fp16 (mixed precision over the weights) or fp32
    dtype: torch.dtype  # the weights' dtype at load (for 4-bit and 8-bit loads: the unquantized layers')
    compute_dtype_4bit: torch.dtype  # what NF4 layers compute in
    keep_float32: bool  # fp32 on a GPU on the unsloth backend: Unsloth is told to keep float32 (see unsloth_float32)
    optim: str
    gradient_checkpointing: object  # as the backend gets it: "unsloth" (offloaded), True, False
    backend: str

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    @property
    def fp16(self) -> bool:
        return self.precision == "fp16"

    def describe(self) -> str:
        what = {"bf16": "bf16 mixed precision", "fp16": "fp16 mixed precision", "fp32": "fp32"}[self.precision]
        text = f"{what}, {dtype_name(self.dtype)} weights"
        if self.device.cuda and not self.device.bf16:
            return f"{text} ({self.device.name}, compute capability {self.device.capability_text}: no native bfloat16)"
        return f"{text} ({self.device.describe()})"

    def nonfinite_advice(self) -> str:
        """What to try when the loss or gradients stop being finite, among what runs on this device."""
        lower = "a lower train.learning_rate or train.max_grad_norm"
        if not self.device.cuda or self.precision == "fp32":
            return lower
        fp32 = "train.precision=fp32 (float32 weights: slower, twice the memory)"
        other = "train.precision=bf16" if self.precision == "fp16" and self.device.bf16 else fp32
        return f"{lower}, or {other} instead of {self.precision}"


def _refuse_bf16(device: Device, what: str) -> UserError:
    return UserError(
        f"{what}: the {device.name} (compute capability {device.capability_text}) has no native bfloat16 (it needs "
        f"8.0 or newer: an A100, L4, H100 or RTX 30xx); Unsloth would load the model in float16 and its trainer refuse "
        f"bf16. Use train.precision=auto (fp16 on this GPU) and model.dtype=auto"
    )


def resolve_precision(cfg: Config, device: Device) -> tuple[str, torch.dtype]:
    """(precision, load dtype) from train.precision and model.dtype on this device, or one message for a pair
    that cannot run here. auto follows model.dtype when it is set, else the device: bf16 on GPUs with native
    bfloat16, fp16 on the others, fp32 on any CPU (whatever its bfloat16 support: CPU results must not depend on
    the machine)."""
    want, dtype = cfg.train.precision, cfg.model.dtype
    if not device.cuda:
        if want in ("bf16", "fp16"):
            raise UserError(
                f"train.precision={want} needs a CUDA GPU; this machine has none (use train.precision=auto)"
            )
        return "fp32", DTYPES[dtype] if dtype != "auto" else torch.float32
    if device.cuda and not device.bf16:
        if want == "bf16":
            raise _refuse_bf16(device, "train.precision=bf16")
        if dtype == "bfloat16":
            raise _refuse_bf16(device, "model.dtype=bfloat16")
    if want == "auto":
        if dtype in PRECISION_OF_DTYPE:
            want = PRECISION_OF_DTYPE[dtype]
        else:  # auto or float32 weights: mixed precision in what the device runs natively
            want = "bf16" if device.bf16 else "fp16"
    if dtype == "auto":
        return want, PRECISION_DTYPE[want]
    pair_ok = {"bf16": ("bfloat16", "float32"), "fp16": ("float16", "float32"), "fp32": ("float32",)}[want]
    if dtype not in pair_ok:
        fix = {
            "bf16": "model.dtype=auto (bfloat16 is loaded) or train.precision=fp16",
            "fp16": "model.dtype=auto (float16 is loaded) or train.precision=bf16",
            "fp32": "model.dtype=auto (float32 is loaded) or train.precision=auto",
        }[want]
        raise UserError(
            f"train.precision={want} with model.dtype={dtype}: {want} training needs "
            f"{' or '.join(pair_ok)} weights (Unsloth's trainer refuses a {dtype} model with {want}). Set {fix}"
        )
    return want, DTYPES[dtype]


def compute_dtype_4bit(dtype: torch.dtype, device: Device, precision: Optional[str] = None) -> torch.dtype:
    """What NF4 layers compute in: the load dtype; a float32 load on a GPU computes in the GPU's 16-bit type (unless
    the run is fp32); bfloat16 never on a GPU without it; float32 on a CPU, like every CPU path here (exact, and the
    same on every CPU)."""
    if not device.cuda:
        return dtype
    if dtype == torch.bfloat16 and not device.bf16:
        return torch.float16
    if dtype == torch.float32 and precision != "fp32":
        return torch.bfloat16 if device.bf16 else torch.float16
    return dtype


def training_plan(cfg: Config, device: Optional[Device] = None, probe_optim: bool = True) -> TrainingPlan:
    """Every device-dependent choice of a training run, or a UserError naming the setting that cannot run here.
    `probe_optim=False` takes train.optim as given (no bitsandbytes probe, no warning)."""
    device = device or current()
    precision, dtype = resolve_precision(cfg, device)
    backend = cfg.model.backend
    gc = cfg.model.gradient_checkpointing
    return TrainingPlan(
        device=device,
        precision=precision,
        dtype=dtype,
        compute_dtype_4bit=compute_dtype_4bit(dtype, device, precision),
        keep_float32=device.cuda and backend == "unsloth" and precision == "fp32",
        optim=resolve_optim(cfg, device) if probe_optim else cfg.train.optim,
        gradient_checkpointing=gc if backend == "unsloth" else bool(gc),
        backend=backend,
    )


def names_only_plan(cfg: Config) -> TrainingPlan:
    """A plan that never refuses, for what depends on the names of the trainer's arguments only (which SFTConfig
    fields this project sets)."""
    return TrainingPlan(
        KNOWN["cpu"], "fp32", torch.float32, torch.float32, False, cfg.train.optim, False, cfg.model.backend
    )


def unsloth_float32(model, plan: TrainingPlan) -> None:
    """fp32 on a GPU with Unsloth: its trainer turns a float32 model with neither bf16 nor fp16 into mixed precision
    (bf16 wherever torch says bfloat16 is supported, a T4 included) unless the model is marked as one that must stay
    in float32, which is how Unsloth keeps the families that cannot run in float16. train.precision=fp32 asks for
    exactly that, so the model is marked the same way."""
    if plan.keep_float32:
        model._unsloth_forced_float32 = True


def inference_dtype(cfg: Config, device: Optional[Device] = None) -> torch.dtype:
    """The dtype a saved model is loaded in for generation: float32 on the CPU (exact, and faster there than 16-bit);
    bfloat16 on GPUs that have it, else float16; model.dtype wins, but bfloat16 is never used on a GPU without it
    (a model trained in bfloat16 on an A100 and summarized on a T4 runs in float16)."""
    device = device or current()
    if cfg.model.dtype != "auto":
        dtype = DTYPES[cfg.model.dtype]
        if dtype == torch.bfloat16 and device.cuda and not device.bf16:
            log.info("model.dtype=bfloat16: the %s has no native bfloat16; generating in float16", device.name)
            return torch.float16
        return dtype
    if device.cuda:
        return torch.bfloat16 if device.bf16 else torch.float16
    return torch.float32


# ---------------------------------------------------------------------------------------------
# Optimizer and generation


def resolve_optim(cfg: Config, device: Optional[Device] = None) -> str:
    """train.optim as asked, but for bitsandbytes' optimizers on a CPU. There the transformers backend runs them
    (bitsandbytes 0.50 steps 8-bit optimizers on the CPU; paged ones without paging, which it says), and falls
    back to adamw_torch where bitsandbytes cannot; Unsloth's CPU trainer replaces them with its fused AdamW
    whatever we pass. Either replacement is a warning that says why."""
    device = device or current()
    optim = cfg.train.optim
    if not ("8bit" in optim or optim.startswith("paged_")) or device.cuda:
        return optim
    if cfg.model.backend == "unsloth":
        log.warning(
            "train.optim=%s: Unsloth's CPU backend runs bitsandbytes' optimizers on a GPU only and trains "
            "with AdamW instead (model.backend=transformers runs %s on the CPU)",
            optim,
            optim,
        )
        return "adamw_torch"
    why = cpu_8bit_optim_ready()
    if why:
        log.warning("train.optim=%s: %s; using adamw_torch on this CPU", optim, why)
        return "adamw_torch"
    return optim


@dataclass(frozen=True)
class CpuLoad:
    """How contended this machine's CPU is right now: other processes' runnable threads, the threads torch uses
    here, and the cores this process may run on."""

    others: int
    threads: int
    cores: int

    @property
    def oversubscribed(self) -> bool:
        return self.others + self.threads > self.cores

    def describe(self) -> str:
        return (
            f"{self.others} runnable thread(s) of other processes beside torch's {self.threads} on {self.cores} core(s)"
        )


def _running_threads(stat: str) -> int:
    for line in stat.splitlines():
        if line.startswith("procs_running"):
            return int(line.split()[1])
    raise ValueError("no procs_running in /proc/stat")


def _own_running() -> int:
    n = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        n += state == "R"
    return n


def cpu_load(looks: int = 5, gap_s: float = 0.02) -> Optional[CpuLoad]:
    """The CPU's contention now, from /proc (Linux): runnable threads (procs_running) less this process's own, the
    least of a few looks `gap_s` apart (a process that keeps the CPU busy is runnable in every look; a passing one is
    not); None where /proc is not there. About 0.1 s."""
    try:
        others = []
        for k in range(looks):
            if k:
                time.sleep(gap_s)
            others.append(max(0, _running_threads(Path("/proc/stat").read_text()) - _own_running()))
    except (OSError, ValueError):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return CpuLoad(min(others), torch.get_num_threads(), cores)


_last_load: list = [None, -1e9]  # (CpuLoad or None, when it was measured: time.monotonic())


def recent_cpu_load(max_age_s: float = 5.0) -> Optional[CpuLoad]:
    """cpu_load(), measured again when the last measure is older than `max_age_s` (a server answering many small
    requests does not pay 0.1 s for each)."""
    now = time.monotonic()
    if now - _last_load[1] > max_age_s:
        _last_load[:] = [cpu_load(), now]
    return _last_load[0]


def generation_batching(backend: str, asked: str, device: Optional[Device] = None) -> tuple[str, Optional[str]]:
    """(batching, why it differs from what was asked, or None). Continuous batching feeds the model a cache it
    rebuilds as rows leave and join; on a GPU Unsloth decodes through private buffers of its own (and CUDA graphs)
    that this has not been run against on a GPU yet, so there static batches run until a GPU run says otherwise.
    `auto` (the default) is continuous otherwise, a busy CPU included: under measured load (other processes
    spinning on one or both of 2 cores, or another torch process) continuous batching stayed 1.1-1.3x faster than
    static batches; what slows a busy CPU down is torch's thread count, which generation_threads() sets."""
    device = device or current()
    wanted = "continuous" if asked == "auto" else asked
    if wanted == "continuous" and backend == "unsloth" and device.cuda:
        return "static", (
            "eval.batching=continuous: static batches on Unsloth's CUDA fast decoder (continuous batching is not yet "
            "verified against its decode buffers on a GPU; model.backend=transformers batches continuously)"
        )
    return wanted, None


def generation_threads(
    asked: Union[str, int], device: Optional[Device] = None, load: Optional[CpuLoad] = None
) -> tuple[Optional[int], Optional[str]]:
    """(torch threads for a generation on a CPU, why; or None, None: leave torch's threads as they are).

    torch's CPU threads meet at the end of every operation, so a generation step is as slow as the slowest of them:
    one that shares its core with another process's thread gets half that core, and every operation waits for it.
    With other processes keeping `others` cores busy, `auto` uses one thread per core they leave free (at least 1):
    measured on 2 cores with one spinning process beside, chunked summarization took 46.5 s on 1 thread against
    86.6 s on 2 (1.9x; quiet, 1 thread 47.4 s and 2 threads 32.3 s). A number asks for that many threads."""
    device = device or current()
    if device.cuda:
        return None, None
    if asked != "auto":
        n, threads = int(asked), load.threads if load else torch.get_num_threads()
        return (None, None) if n == threads else (n, f"generation on {n} torch thread(s) (eval.cpu_threads={n})")
    load = load or recent_cpu_load()
    if load is None or not load.oversubscribed:
        return None, None
    free, threads = max(1, load.cores - load.others), load.threads
    if free >= threads:
        return None, None
    return free, (
        f"generation on {free} of {threads} torch thread(s): the CPU is busy ({load.describe()}); a thread sharing "
        f"its core with another process would stall the others at every operation (eval.cpu_threads sets a number)"
    )


@contextmanager
def threads_for_generation(asked: Union[str, int], device: Optional[Device] = None):
    """torch's threads as generation_threads() says while the block runs (its reason logged once), then as before."""
    n, why = generation_threads(asked, device)
    if n is None:
        yield
        return
    say_once(why)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_said: set = set()


def say_once(message: Optional[str]) -> None:
    """A decision's reason, logged once per process (generation runs many times in a run); measured numbers in
    parentheses do not make it a new reason."""
    key = message.split(" (")[0] if message else None
    if key and key not in _said:
        _said.add(key)
        log.info(message)


def effective_batching(backend: str, ev: EvalSection, asked: Optional[str] = None) -> str:
    batching, why = generation_batching(backend, asked or ev.batching)
    say_once(why)
    return batching


# ---------------------------------------------------------------------------------------------
# What bitsandbytes can do on a CPU (probed once per call; cheap)


def cpu_4bit_ready() -> Optional[str]:
    """None when bitsandbytes quantizes to NF4 on this CPU (0.50 does; older releases have no CPU kernels),
    else why not, from a quantization of one small block tried here."""
    try:
        # bitsandbytes is optional (4-bit only): probed, not required
        import bitsandbytes.functional as bnbf

        packed, state = bnbf.quantize_4bit(torch.ones(64, 2), blocksize=64, quant_type="nf4")
        back = bnbf.dequantize_4bit(packed, state, quant_type="nf4")
        if not torch.allclose(back, torch.ones(64, 2)):
            return "its CPU NF4 round trip does not give the weights back"
    except Exception as e:  # an old bitsandbytes without CPU kernels fails in many ways; all mean the same here
        try:
            version = metadata.version("bitsandbytes")
        except metadata.PackageNotFoundError:
            return "bitsandbytes is not installed"
        return (
            f"bitsandbytes {version} cannot quantize to NF4 on the CPU ({type(e).__name__}: "
            f"{(str(e).strip().splitlines() or [''])[0][:200]}); bitsandbytes 0.50 can"
        )
    return None


def cpu_8bit_optim_ready() -> Optional[str]:
    """None when bitsandbytes' 8-bit optimizers step on this CPU (0.50's do), else why not, from one step of
    AdamW8bit on one small parameter tried here."""
    try:
        # bitsandbytes is optional (8-bit optimizers only): probed, not required
        import bitsandbytes as bnb

        p = torch.nn.Parameter(torch.ones(4096))  # bitsandbytes keeps 8-bit state from 4096 elements on
        opt = bnb.optim.AdamW8bit([p], lr=0.1)
        p.grad = torch.ones_like(p)
        opt.step()
        if opt.state[p]["state1"].dtype != torch.uint8 or not bool((p < 1).all()):
            return "its 8-bit AdamW step did not run as 8-bit"
    except Exception as e:  # as for cpu_4bit_ready: any failure means the same here
        return f"bitsandbytes cannot run 8-bit optimizers on the CPU ({type(e).__name__}: {str(e)[:200]})"
    return None
