"""Every GPU decision on a CPU machine, with the device described (models/device.py): a T4 (free Colab: compute
capability 7.5, no native bfloat16), an A100, an H100 and the CPU are each a parameter. The trainer's precision check
run here is the code of the installed Unsloth (its generated SFTTrainer.__init__), not a copy of its rules."""

import ast
import inspect
import os
import types
from pathlib import Path
from unittest.mock import ANY

import pytest
import torch

from llm_summarizer.config_loading import load_config
from llm_summarizer.errors import UserError
from llm_summarizer.models import device as dev
from llm_summarizer.models.device import KNOWN

GPUS = ("t4", "v100", "l4", "a100", "h100")
WANT = {  # (precision, weights) that train.precision=auto gives with model.dtype=auto
    "cpu": ("fp32", torch.float32),
    "t4": ("fp16", torch.float16),
    "v100": ("fp16", torch.float16),
    "l4": ("bf16", torch.bfloat16),
    "a100": ("bf16", torch.bfloat16),
    "h100": ("bf16", torch.bfloat16),
}


def cfg_of(*overrides, config="default"):
    return load_config(config, list(overrides))


@pytest.mark.parametrize("name", list(WANT))
@pytest.mark.parametrize("config", ["default", "demo", "tiny"])
def test_auto_precision_and_every_dtype_follow_the_device(name, config):
    device = KNOWN[name]
    cfg = cfg_of(config=config)
    plan = dev.training_plan(cfg, device, probe_optim=False)
    assert (plan.precision, plan.dtype) == WANT[name]
    assert (plan.bf16, plan.fp16) == (WANT[name][0] == "bf16", WANT[name][0] == "fp16")
    # nothing runs in bfloat16 on a GPU without it: 4-bit compute, generation, a float32 load's 4-bit compute
    if device.cuda and not device.bf16:
        assert torch.bfloat16 not in (
            plan.dtype,
            plan.compute_dtype_4bit,
            dev.inference_dtype(cfg, device),
            dev.compute_dtype_4bit(torch.float32, device),
            dev.compute_dtype_4bit(torch.bfloat16, device),
        )
    assert dev.inference_dtype(cfg, device) == (torch.float32 if name == "cpu" else WANT[name][1])
    assert plan.compute_dtype_4bit == WANT[name][1]


def test_what_a_t4_user_reads_says_fp16_and_why():
    plan = dev.training_plan(cfg_of(), KNOWN["t4"], probe_optim=False)
    assert plan.describe() == (
        "fp16 mixed precision, float16 weights (Tesla T4, compute capability 7.5: no native bfloat16)"
    )
    assert KNOWN["t4"].bf16_text().startswith("no (compute capability 7.5; bfloat16 needs 8.0 or newer")
    h100 = dev.training_plan(cfg_of(), KNOWN["h100"], probe_optim=False)
    assert (
        h100.describe()
        == "bf16 mixed precision, bfloat16 weights (NVIDIA H100 80GB HBM3, compute capability 9.0, 79.2 GiB)"
    )
    assert plan.nonfinite_advice().endswith(
        "train.precision=fp32 (float32 weights: slower, twice the memory) instead of fp16"
    )
    assert h100.nonfinite_advice().endswith(
        "train.precision=fp32 (float32 weights: slower, twice the memory) instead of bf16"
    )
    h100_fp16 = dev.training_plan(cfg_of("train.precision=fp16"), KNOWN["h100"], probe_optim=False)
    assert "train.precision=bf16 instead of fp16" in h100_fp16.nonfinite_advice()


@pytest.mark.parametrize(
    "name,overrides,precision,dtype",
    [
        ("h100", ["train.precision=fp16"], "fp16", torch.float16),  # reaches the loader: float16 weights
        ("h100", ["train.precision=fp32"], "fp32", torch.float32),
        ("h100", ["model.dtype=float16"], "fp16", torch.float16),
        ("h100", ["model.dtype=float32"], "bf16", torch.float32),  # autocast over float32 master weights
        ("h100", ["train.precision=bf16", "model.dtype=float32"], "bf16", torch.float32),
        ("t4", ["train.precision=fp32"], "fp32", torch.float32),
        ("t4", ["model.dtype=float32"], "fp16", torch.float32),  # the usual V100/T4 recipe
        ("t4", ["train.precision=fp16", "model.dtype=float16"], "fp16", torch.float16),
        ("cpu", ["model.dtype=bfloat16"], "fp32", torch.bfloat16),
    ],
)
def test_precision_and_dtype_reach_the_plan(name, overrides, precision, dtype):
    plan = dev.training_plan(cfg_of(*overrides), KNOWN[name], probe_optim=False)
    assert (plan.precision, plan.dtype) == (precision, dtype)
    assert plan.keep_float32 == (precision == "fp32" and name != "cpu")


@pytest.mark.parametrize(
    "name,overrides,words",
    [
        ("t4", ["train.precision=bf16"], "train.precision=bf16: the Tesla T4 (compute capability 7.5) has no native"),
        ("t4", ["model.dtype=bfloat16"], "model.dtype=bfloat16: the Tesla T4 (compute capability 7.5) has no native"),
        ("v100", ["train.precision=bf16"], "Use train.precision=auto (fp16 on this GPU)"),
        ("h100", ["train.precision=fp16", "model.dtype=bfloat16"], "train.precision=fp16 with model.dtype=bfloat16"),
        ("h100", ["train.precision=bf16", "model.dtype=float16"], "Set model.dtype=auto (bfloat16 is loaded)"),
        ("a100", ["train.precision=fp32", "model.dtype=float16"], "fp32 training needs float32 weights"),
        ("cpu", ["train.precision=fp16"], "train.precision=fp16 needs a CUDA GPU"),
        ("cpu", ["train.precision=bf16"], "train.precision=bf16 needs a CUDA GPU"),
    ],
)
def test_a_pair_that_cannot_run_is_refused_with_one_message(name, overrides, words):
    with pytest.raises(UserError, match=words.replace("(", r"\(").replace(")", r"\)")):
        dev.training_plan(cfg_of(*overrides), KNOWN[name], probe_optim=False)


def test_generation_dtype_never_bfloat16_on_a_gpu_without_it():
    cfg = cfg_of("model.dtype=bfloat16")  # a model trained on an A100, summarized on Colab
    assert dev.inference_dtype(cfg, KNOWN["t4"]) == torch.float16
    assert dev.inference_dtype(cfg, KNOWN["a100"]) == torch.bfloat16
    assert dev.inference_dtype(cfg, KNOWN["cpu"]) == torch.bfloat16  # model.dtype wins on the CPU, as before


@pytest.mark.parametrize("name", list(WANT))
def test_continuous_batching_falls_back_to_static_on_unsloths_cuda_decoder_only(name):
    device = KNOWN[name]
    batching, why = dev.generation_batching("unsloth", "continuous", device)
    assert batching == ("static" if device.cuda else "continuous")
    assert (why is not None) == device.cuda and (not why or "Unsloth's CUDA fast decoder" in why)
    assert dev.generation_batching("transformers", "continuous", device) == ("continuous", None)
    assert dev.generation_batching("unsloth", "static", device) == ("static", None)


# ---- the installed Unsloth's own trainer check, run against every plan ---------------------------------------


def unsloth_precision_check() -> str:
    """The precision code Unsloth generates into its SFTTrainer.__init__ (unsloth/models/rl.py builds it as one
    string, `mixed_precision`), read from the installed package."""
    from unsloth.models import rl

    tree = ast.parse(inspect.getsource(rl))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and [getattr(t, "id", None) for t in node.targets] == ["mixed_precision"]
            and isinstance(node.value, ast.Constant)
        ):
            code = node.value.value
            assert "Model is in float16 precision but you want to use bfloat16" in code
            return code
    raise AssertionError("the precision check was not found in unsloth/models/rl.py: Unsloth changed; read it again")


def unsloth_loads(dtype, device) -> torch.dtype:
    """The dtype Unsloth's FastLanguageModel.from_pretrained loads for `dtype` on `device` (unsloth/models/loader.py:
    None by capability, bfloat16 on a card without it changed to float16, anything else as given)."""
    if dtype is None:
        return torch.bfloat16 if device.bf16 else torch.float16
    if dtype == torch.bfloat16 and not device.bf16:
        return torch.float16
    return dtype


def run_unsloth_check(monkeypatch, device, args, model_dtype, forced_float32=False):
    """Unsloth's trainer check on `device` (torch answers is_bf16_supported() as it does there: yes on every CUDA
    card, by emulation on those without bfloat16); returns the precision the trainer would run, or raises."""
    import unsloth_zoo.device_type as zoo_device

    monkeypatch.setattr(zoo_device, "device_is_bf16_supported", lambda: device.cuda)
    monkeypatch.setattr(zoo_device, "DEVICE_TYPE", "cuda")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "unset")
    monkeypatch.delenv("UNSLOTH_FORCE_FLOAT32", raising=False)
    monkeypatch.delenv("UNSLOTH_MIXED_PRECISION", raising=False)
    model = types.SimpleNamespace(
        config=types.SimpleNamespace(dtype=model_dtype),
        _unsloth_full_finetuning=False,
        _unsloth_forced_float32=forced_float32,
        _unsloth_user_float32=model_dtype == torch.float32,
    )
    exec(unsloth_precision_check(), {"torch": torch, "os": os, "args": args, "model": model, "print": lambda *a: None})
    return {"bf16": args.bf16, "fp16": args.fp16, "accelerate": os.environ["ACCELERATE_MIXED_PRECISION"]}


def plans():
    for name in GPUS:
        for precision in ("auto", "bf16", "fp16", "fp32"):
            for dtype in ("auto", "bfloat16", "float16", "float32"):
                cfg = cfg_of(f"train.precision={precision}", f"model.dtype={dtype}")
                try:
                    yield name, precision, dtype, dev.training_plan(cfg, KNOWN[name], probe_optim=False)
                except UserError:
                    continue


@pytest.mark.parametrize("name,precision,dtype,plan", list(plans()), ids=lambda x: getattr(x, "precision", x))
def test_unsloths_trainer_accepts_every_plan_and_runs_what_it_says(monkeypatch, name, precision, dtype, plan):
    from llm_summarizer.training.trainer import sft_kwargs

    kwargs = sft_kwargs(cfg_of(f"train.precision={precision}", f"model.dtype={dtype}"), plan, "out", True, [])
    args = types.SimpleNamespace(fp16=kwargs["fp16"], bf16=kwargs["bf16"], fp16_full_eval=False, bf16_full_eval=False)
    loaded = unsloth_loads(plan.dtype, plan.device)
    assert loaded == plan.dtype, "Unsloth would load another dtype than the plan hands it"
    ran = run_unsloth_check(monkeypatch, plan.device, args, loaded, forced_float32=plan.keep_float32)
    assert ran == {
        "bf16": plan.precision == "bf16",
        "fp16": plan.precision == "fp16",
        "accelerate": {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[plan.precision],
    }


def test_what_todays_choices_meet_in_unsloths_trainer(monkeypatch):
    """Why the plan hands Unsloth its dtype and marks fp32: left to choose (dtype=None), Unsloth loads a T4 in float16,
    and bf16 arguments (what is_bf16_supported() suggested there) raise; an fp32 run on a GPU is turned into mixed
    precision unless the model is marked to stay in float32."""
    t4, h100 = KNOWN["t4"], KNOWN["h100"]
    args = types.SimpleNamespace(fp16=False, bf16=True, fp16_full_eval=False, bf16_full_eval=False)
    with pytest.raises(TypeError, match="Model is in float16 precision but you want to use bfloat16"):
        run_unsloth_check(monkeypatch, t4, args, unsloth_loads(None, t4))
    args = types.SimpleNamespace(fp16=False, bf16=False, fp16_full_eval=False, bf16_full_eval=False)
    assert run_unsloth_check(monkeypatch, h100, args, torch.float32)["accelerate"] == "bf16"
    args = types.SimpleNamespace(fp16=False, bf16=False, fp16_full_eval=False, bf16_full_eval=False)
    assert run_unsloth_check(monkeypatch, h100, args, torch.float32, forced_float32=True)["accelerate"] == "no"


# ---- the device described through the loader, the trainer's arguments, env: torch.cuda answering as a T4 -----


@pytest.fixture
def as_t4(monkeypatch):
    """torch.cuda answering as a Colab T4 does (is_bf16_supported() says yes: the emulation answer). Patched after
    the package and Unsloth are imported (Unsloth probes the device at import)."""
    props = types.SimpleNamespace(name="Tesla T4", total_memory=int(14.7 * 2**30), major=7, minor=5)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=None: props)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    return KNOWN["t4"]


def test_a_t4_gets_fp16_everywhere(as_t4, monkeypatch, tmp_path):
    from llm_summarizer.commands.env import decisions
    from llm_summarizer.models import backends, loading
    from llm_summarizer.training.trainer import sft_kwargs

    assert dev.current() == as_t4
    cfg = cfg_of(f"model.name={tmp_path}", f"output.dir={tmp_path / 'out'}")
    plan = dev.training_plan(cfg, probe_optim=False)
    kwargs = sft_kwargs(cfg, plan, tmp_path, True, [])
    assert (kwargs["fp16"], kwargs["bf16"]) == (True, False)
    assert backends.nf4_config(torch.float32).bnb_4bit_compute_dtype == torch.float16
    assert dev.inference_dtype(cfg) == torch.float16
    said = decisions()
    assert said["training_precision_auto"].startswith("fp16 mixed precision, float16 weights (Tesla T4")
    assert said["gpu_bf16_native"].startswith("no") and said["generation_dtype"] == "float16"

    # what the loader hands Unsloth: float16 explicitly (today's dtype=None let Unsloth choose)
    seen = {}

    class Loaded(Exception):
        pass

    def capture(spec):
        seen["spec"] = spec
        raise Loaded

    monkeypatch.setattr(backends, "BACKENDS", {**backends.BACKENDS, "unsloth": backends.BACKENDS["unsloth"]})
    monkeypatch.setitem(
        backends.BACKENDS,
        "unsloth",
        backends.BACKENDS["unsloth"].__class__("unsloth", capture, None, None, loads_adapters=True),
    )
    monkeypatch.setattr(loading, "resolve_model_path", lambda cfg, raw=None: str(tmp_path))
    monkeypatch.setattr(loading, "check_quantized_training", lambda cfg: None)
    with pytest.raises(Loaded):
        loading.load_for_training(cfg)
    assert seen["spec"].dtype == torch.float16 and seen["spec"].load_in_4bit


def test_env_describes_a_t4_on_any_machine(capsys):
    from llm_summarizer.commands.env import main

    assert main(["--device", "t4"]) == 0
    out = capsys.readouterr().out
    assert "on a t4 (described, not this machine)" in out
    assert (
        "training_precision_auto: fp16 mixed precision, float16 weights (Tesla T4, compute capability 7.5: no " in out
    )
    assert "generation_batching_unsloth: static" in out


@pytest.mark.parametrize(
    "others,threads,cores,want",
    [(0, 2, 2, None), (1, 2, 2, 1), (2, 2, 2, 1), (2, 2, 16, None), (13, 4, 16, 3), (15, 2, 16, 1), (1, 1, 2, None)],
)
def test_a_busy_cpu_generates_on_the_cores_other_processes_leave_free(others, threads, cores, want):
    """The load described (mocked), not this machine's."""
    load = dev.CpuLoad(others, threads, cores)
    n, why = dev.generation_threads("auto", KNOWN["cpu"], load)
    assert n == want
    assert (why is not None) == (want is not None)
    if why:
        assert why.startswith(f"generation on {want} of {threads} torch thread(s): the CPU is busy ({others} runnable")
        assert "eval.cpu_threads" in why
    # a number is used whatever the load; a GPU's generation leaves torch's CPU threads alone
    assert dev.generation_threads(1, KNOWN["cpu"], load) == ((None, None) if threads == 1 else (1, ANY))
    assert dev.generation_threads(threads, KNOWN["cpu"], load) == (None, None)
    assert dev.generation_threads("auto", KNOWN["t4"], load) == (None, None)
    assert dev.generation_threads(3, KNOWN["t4"], load) == (None, None)
    # continuous batching stays the choice on a busy CPU (it measured faster than static batches there too)
    assert dev.generation_batching("transformers", "auto", KNOWN["cpu"]) == ("continuous", None)
    assert dev.generation_batching("transformers", "auto", KNOWN["t4"]) == ("continuous", None)
    assert dev.generation_batching("unsloth", "auto", KNOWN["t4"])[0] == "static"


def test_cpu_load_reads_this_machine(monkeypatch):
    """Linux only (reads /proc): the other processes' runnable threads, the least of the looks."""
    if not Path("/proc/stat").exists():
        pytest.skip("no /proc/stat on this machine")
    looks = iter([5, 3, 4])
    monkeypatch.setattr(dev, "_running_threads", lambda stat: next(looks))
    monkeypatch.setattr(dev, "_own_running", lambda: 1)
    load = dev.cpu_load(looks=3, gap_s=0)
    assert load.others == 2 and load.threads == torch.get_num_threads() and load.cores >= 1
