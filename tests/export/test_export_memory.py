"""Exports that fit the card: the memory each export needs said before it starts, the 16-bit model offloaded where
the GPU cannot hold it, the adapter merged shard by shard, one model in memory at a time (export/memory.py)."""

import json
import logging
import struct

import pytest

from llm_summarizer.models.device import KNOWN, Device

from .test_export import hidden


def header_only_checkpoint(d, parameters: int, dtype="BF16"):
    """A directory whose safetensors header describes `parameters` weights (no data: only the header is read)."""
    d.mkdir(parents=True, exist_ok=True)
    rows = parameters // 4096
    header = json.dumps({"w": {"dtype": dtype, "shape": [rows, 4096], "data_offsets": [0, rows * 4096 * 2]}}).encode()
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "dtype": "bfloat16"}))
    return d


@pytest.mark.parametrize(
    "name,placement",
    [("t4", "offload"), ("v100", "offload"), ("l4", "gpu"), ("a100", "gpu"), ("h100", "gpu"), ("cpu", "cpu")],
)
def test_an_8b_model_is_offloaded_where_16_bits_do_not_fit(tmp_path, name, placement):
    from llm_summarizer.export.memory import plan_export

    base = header_only_checkpoint(tmp_path / "llama-8b", 8_030_000_000)
    plan = plan_export(KNOWN[name], str(base))
    assert plan.parameters == 8_030_000_000 // 4096 * 4096 and plan.placement == placement
    assert plan.merge == "load"  # no adapter to merge: nothing to stream
    text = plan.describe("merged-4bit")
    assert text.startswith("export merged-4bit: the model has 8.03B parameters: 15.0 GiB in 16 bits, about 4.5 GiB")
    if placement == "offload":
        assert f"does not fit the {KNOWN[name].name}" in text and "in CPU memory (slower), one model at a time" in text
        kw = plan.load_kwargs()
        assert kw["device_map"] == "auto" and kw["max_memory"][0] == f"{KNOWN[name].memory_gib * 0.85:.2f}GiB"
    elif placement == "gpu":
        assert plan.load_kwargs() == {"device_map": {"": 0}} and "one model at a time" in text
    else:
        assert plan.load_kwargs() == {} and "in CPU memory (no GPU)" in text
    assert plan.record()["placement"] == placement and plan.record()["gib_16bit"] == 14.96


def test_the_merge_streams_where_the_gpu_cannot_hold_the_base(tiny_run):
    from llm_summarizer.export.memory import plan_export
    from llm_summarizer.models.directory import describe_model_dir

    info = describe_model_dir(tiny_run.model_dir)
    small = Device("cuda", "a GPU smaller than the tiny model", (7, 5), 0.001, 1)
    plan = plan_export(small, info.base, info.path)
    assert (plan.placement, plan.merge) == ("offload", "stream") and plan.largest_shard_gib is not None
    assert "merge: shard by shard from the base's files (largest shard" in plan.describe("merged-16bit")
    assert plan_export(KNOWN["h100"], info.base, info.path).merge == "load"
    assert plan_export(KNOWN["cpu"], info.base, info.path, merge="stream").merge == "stream"
    # a merge that cannot stream says why and merges into the loaded model
    quantized = header_only_checkpoint(info.path.parent / "q-base", 1_000_000)
    conf = json.loads((quantized / "config.json").read_text())
    (quantized / "config.json").write_text(json.dumps({**conf, "quantization_config": {"load_in_4bit": True}}))
    q = plan_export(KNOWN["cpu"], str(quantized), info.path, merge="stream")
    assert q.merge == "load" and "the base is stored quantized" in q.notes[0]


def test_stream_merge_equals_the_loaded_merge_and_one_model_is_held_at_a_time(tiny_run, tmp_path, monkeypatch, caplog):
    import torch
    from safetensors.torch import load_file

    from llm_summarizer.export import exporter, merged

    loads, held_at_check = [], []
    real_load, real_worker = exporter.load_for_generation, merged.run_worker

    def load(*a, **k):
        loads.append(real_load(*a, **k))
        return loads[-1]

    def worker(spec, *a, **k):
        held_at_check.append(loads[-1].model is not None)
        return real_worker(spec, *a, **k)

    monkeypatch.setattr(exporter, "load_for_generation", load)
    monkeypatch.setattr(merged, "run_worker", worker)
    caplog.set_level(logging.INFO, logger="llm_summarizer")
    out = {}
    for how in ("load", "stream"):
        res = exporter.export_model(
            tiny_run.model_dir, "merged-16bit", output=tmp_path / how, verify_examples=2, merge=how
        )
        out[how] = load_file(str(tmp_path / how / "model.safetensors"))
        assert res.info["memory"]["merge"] == how and res.info["memory"]["placement"] == "cpu"
        assert res.info["verification"]["matched"] == 2
    assert held_at_check == [False, False]  # the source was freed before the check's process loaded its own
    assert out["stream"].keys() == out["load"].keys()
    worst = max((out["stream"][k].float() - out["load"][k].float()).abs().max().item() for k in out["load"])
    assert worst == 0.0 and all(t.dtype == torch.float16 for t in out["stream"].values())
    info = json.loads((tmp_path / "stream" / "export_info.json").read_text())
    assert info["method"].startswith("merged shard by shard from the base's safetensors files")
    # said before anything loaded: the plan line comes before the loader's
    messages = [r.getMessage() for r in caplog.records]
    plan_at = next(i for i, m in enumerate(messages) if m.startswith("export merged-16bit: the model has"))
    load_at = next(i for i, m in enumerate(messages) if m.startswith("loaded "))
    assert plan_at < load_at
    assert not hidden(tmp_path)
