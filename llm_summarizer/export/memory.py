"""What an export needs in memory, said before it starts, and where each model goes so that it fits.

An export holds one model at a time: the source (the adapter on its 16-bit base, for the reference summaries), then
the merged weights, then the model the check loads in a separate process. On a GPU whose memory holds the 16-bit
model (what the merge folds the adapter into) everything runs there, as before. Where it does not (an 8B model is
16 GiB in 16 bits; a free Colab T4 has 14.7 GiB) but the run trained it in 4 bits:
- the source and the check load the 16-bit model with the layers that do not fit kept in CPU memory (accelerate's
  offload: slower, exact), on the transformers backend (Unsloth places every layer on the GPU);
- the merge reads the base's safetensors shards one at a time and folds the adapter into each tensor in CPU memory
  (merged.stream_merge), so no whole model is ever held for it.
`llm-summarizer export --merge load|stream` chooses the merge; the default (auto) follows this plan.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..models.device import GIB, Device
from .merged import stream_plan

# Of a GPU's memory, what a model's weights may take: the rest is the CUDA context, activations and the KV cache of
# generation (a few hundred MiB on these models).
GPU_SHARE = 0.85
_SAFETENSORS_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}


def safetensors_parameters(directory) -> Optional[int]:
    """The number of parameters in a directory's safetensors files, read from their headers (nothing is loaded);
    None when there are none."""
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, t in header.items():
            if name == "__metadata__":
                continue
            numel = 1
            for d in t["shape"]:
                numel *= d
            total += numel
    return total


def largest_shard_bytes(directory) -> int:
    return max((f.stat().st_size for f in Path(directory).glob("*.safetensors")), default=0)


def stored_quantized(directory) -> bool:
    """A checkpoint stored quantized (bitsandbytes 4/8-bit, GPTQ, ...): its tensors are not the 16-bit weights."""
    conf = Path(directory) / "config.json"
    return conf.is_file() and bool(json.loads(conf.read_text(encoding="utf-8")).get("quantization_config"))


@dataclass
class ExportMemory:
    """Where the models of an export go. `placement`: gpu (everything on the GPU), offload (the GPU holds what fits,
    CPU memory the rest), cpu (no GPU). `merge`: load (the adapter folded into the loaded model) or stream (shard by
    shard from the base's files)."""

    device: Device
    parameters: Optional[int]
    placement: str
    merge: str
    gpu_budget_gib: Optional[float] = None
    largest_shard_gib: Optional[float] = None
    notes: list = field(default_factory=list)

    @property
    def gib16(self) -> Optional[float]:
        return None if self.parameters is None else self.parameters * 2 / GIB

    @property
    def gib4(self) -> Optional[float]:
        # NF4: half a byte a weight plus its block scales, about 0.56 byte; embeddings and norms stay 16-bit, which
        # this rounds up to cover
        return None if self.parameters is None else self.parameters * 0.6 / GIB

    def load_kwargs(self) -> dict:
        """from_pretrained's placement arguments for the 16-bit models (the source's base and the check's)."""
        if self.placement == "gpu":
            return {"device_map": {"": 0}}
        if self.placement == "offload":
            return {"device_map": "auto", "max_memory": {0: f"{self.gpu_budget_gib:.2f}GiB", "cpu": "1000GiB"}}
        return {}

    def record(self) -> dict:
        """What export_info.json says of it."""
        return {
            "device": self.device.describe(),
            "parameters": self.parameters,
            "gib_16bit": None if self.gib16 is None else round(self.gib16, 2),
            "gib_4bit": None if self.gib4 is None else round(self.gib4, 2),
            "placement": self.placement,
            "merge": self.merge,
            "notes": list(self.notes),
        }

    def describe(self, fmt: str) -> str:
        size = (
            f"{self.parameters / 1e9:.2f}B parameters: {self.gib16:.1f} GiB in 16 bits, about {self.gib4:.1f} GiB "
            f"in 4 bits"
            if self.parameters
            else "size unknown (no safetensors files to read)"
        )
        if self.placement == "gpu":
            where = f"on the {self.device.name} ({self.device.memory_gib:.1f} GiB), one model at a time"
        elif self.placement == "offload":
            where = (
                f"the 16-bit model does not fit the {self.device.name} ({self.gpu_budget_gib:.1f} of its "
                f"{self.device.memory_gib:.1f} GiB for weights): the source and the check keep "
                f"{self.gib16 - self.gpu_budget_gib:.1f} GiB of layers in CPU memory (slower), one model at a time"
            )
        else:
            where = "in CPU memory (no GPU), one model at a time"
        merge = (
            f"merge: shard by shard from the base's files (largest shard {self.largest_shard_gib:.1f} GiB of CPU "
            f"memory)"
            if self.merge == "stream"
            else "merge: into the loaded model"
        )
        notes = "".join(f"; {n}" for n in self.notes)
        return f"export {fmt}: the model has {size}; {where}; {merge}{notes}"


def plan_export(
    device: Device,
    base_dir: Optional[str],
    adapter_dir: Optional[Path] = None,
    merge: str = "auto",
) -> ExportMemory:
    """Where an export's models go on `device`: the 16-bit model is `base_dir` (the adapter's base, or the merged
    source; None when its files are not on this machine). `adapter_dir`: the adapter to fold into it, when the format
    merges one. `merge` is --merge: auto, load or stream."""
    here = bool(base_dir) and Path(base_dir).is_dir()
    params = safetensors_parameters(base_dir) if here else None
    notes = []
    placement, budget = "cpu", None
    if device.cuda:
        budget = (device.memory_gib or 0) * GPU_SHARE
        placement = "gpu" if params is None or params * 2 / GIB <= budget else "offload"
    why = "this export merges no adapter"
    if adapter_dir is not None:
        why = (
            "the base's safetensors files are not on this machine"
            if params is None
            else "the base is stored quantized (its tensors are not the 16-bit weights)"
            if stored_quantized(base_dir)
            else stream_plan(base_dir, adapter_dir)[1]
        )
    if merge == "auto":
        merge = "stream" if placement == "offload" and not why else "load"
        if placement == "offload" and why and adapter_dir is not None:
            notes.append(f"the merge cannot go shard by shard ({why}): it folds the adapter into the loaded model")
    elif merge == "stream" and why:
        notes.append(f"--merge stream is not possible here ({why}): merged into the loaded model")
        merge = "load"
    shard = largest_shard_bytes(base_dir) / GIB if merge == "stream" else None
    return ExportMemory(device, params, placement, merge, budget, shard, notes)
