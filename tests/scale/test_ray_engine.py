"""scale/ray_engine.py without a Ray cluster: what the driver settles before any worker starts. Paths made
absolute (workers run in Ray's own folders), an address that does not answer refused in seconds, and the
marker every worker must find in output.dir, written under the run lock and removed whatever happens.
(tests/training/test_distributed.py trains on a local Ray cluster end to end.)"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from llm_summarizer.config_loading import load_config
from llm_summarizer.errors import UserError
from llm_summarizer.scale import ray_engine
from llm_summarizer.training.guards import RunLock

from ..conftest import DEMO


def closed_port() -> int:
    """A local port nobody listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- paths ---------------------------------------------------------------------------------------------------------


def test_every_path_is_made_absolute_against_the_drivers_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "local-model").mkdir()
    cfg = load_config(
        None,
        [
            "output.dir=runs/o",
            "output.model_dir=ft",
            "model.cache_dir=~/models",
            "model.name=local-model",
            "data.train=data/train.jsonl",
            "data.validation={path: ./data/val.jsonl, limit: 5}",
            "data.test={name: org/dataset}",
        ],
    )
    a = ray_engine.absolute(cfg)
    assert a.output.dir == str(tmp_path / "runs" / "o") and a.output.model_dir == str(tmp_path / "ft")
    assert a.model.cache_dir == str(tmp_path / "home" / "models")
    assert a.model.name == str(tmp_path / "local-model")
    assert a.data.train.path == str(tmp_path / "data" / "train.jsonl")
    assert Path(a.data.validation.path) == tmp_path / "data" / "val.jsonl" and a.data.validation.limit == 5
    assert a.data.test.name == "org/dataset" and a.data.test.path is None  # a hub dataset is not a path
    # the user's config is left as it was (it is saved and printed as given)
    assert (cfg.output.dir, cfg.model.name, cfg.data.train.path) == ("runs/o", "local-model", "data/train.jsonl")


def test_defaults_and_hub_names_stay_what_they_mean(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["output.run_name=r1", "model.name=org/some-model"])
    a = ray_engine.absolute(cfg)
    assert a.output.dir == str(tmp_path / "outputs" / "r1") and a.output.model_dir == str(
        tmp_path / "fine_tuned" / "r1"
    )
    assert a.model.name == "org/some-model"  # no folder of that name here: a hub id, not a path
    assert a.model.cache_dir == str(tmp_path / "data" / "models")  # the schema's default, relative to here


# -- the cluster address -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("address", [None, "auto", "local"])
def test_addresses_that_name_no_host_are_not_dialled(address):
    ray_engine.check_reachable(address)


@pytest.mark.parametrize("form", ["{}", "ray://{}"])
def test_an_address_that_does_not_answer_is_refused_in_seconds(form):
    address = form.format(f"127.0.0.1:{closed_port()}")
    start = time.monotonic()
    with pytest.raises(UserError) as e:
        ray_engine.check_reachable(address)
    assert time.monotonic() - start < 5
    assert str(e.value) == (
        f"scale.address={address!r}: cannot connect to a Ray cluster there (ConnectionRefusedError); "
        f"start one with `ray start --head`, use address auto for the one running on this machine, "
        f"or null for a local one"
    )


@pytest.mark.parametrize("address", ["127.0.0.1:head", "headnode", "127.0.0.1:", "ray://"])
def test_an_address_without_a_usable_port_is_one_message(address):
    with pytest.raises(UserError) as e:
        ray_engine.check_reachable(address)
    assert str(e.value).startswith(f"scale.address={address!r}: cannot connect to a Ray cluster there (ValueError)")


@pytest.mark.parametrize("form", ["127.0.0.1:{}", "ray://127.0.0.1:{}", ":{}"])
def test_an_address_that_answers_is_accepted(form):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        ray_engine.check_reachable(form.format(server.getsockname()[1]))  # no host: this machine


# -- the marker ----------------------------------------------------------------------------------------------------


def fake_base_model(p: Path) -> Path:
    """A model directory as far as the driver looks (config and weight names; it loads nothing)."""
    p.mkdir()
    (p / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    (p / "model.safetensors").write_bytes(b"not read by the driver")
    return p


def test_the_driver_writes_the_marker_under_the_run_lock_and_removes_it(tmp_path, monkeypatch):
    port = closed_port()
    cfg = load_config(
        None,
        [
            f"model.name={fake_base_model(tmp_path / 'base')}",
            "model.load_in_4bit=false",
            f"data.train={DEMO / 'train.jsonl'}",
            f"data.validation={DEMO / 'validation.jsonl'}",
            f"output.dir={tmp_path / 'o'}",
            f"output.model_dir={tmp_path / 'ft'}",
            f"model.cache_dir={tmp_path / 'cache'}",
            "scale.engine=ray",
            "scale.num_workers=2",
            f"scale.address=127.0.0.1:{port}",
        ],
    )
    seen = {}
    real_check = ray_engine.check_reachable

    def check_reachable_watched(address):  # what a worker would find at the moment the driver dials the cluster
        out = tmp_path / "o"
        seen["markers"] = {m.name: json.loads(m.read_text()) for m in out.glob(".ray-driver-*")}
        try:
            RunLock(out).acquire().release()
            seen["lock"] = "free"
        except UserError as e:
            seen["lock"] = str(e)
        return real_check(address)

    monkeypatch.setattr(ray_engine, "check_reachable", check_reachable_watched)
    with pytest.raises(UserError, match=f"scale.address='127.0.0.1:{port}': cannot connect to a Ray cluster there"):
        ray_engine.run_on_ray(cfg, worker=None)
    [(name, content)] = seen["markers"].items()
    assert content == {"pid": os.getpid()}
    assert f"is in use by another run (process {os.getpid()})" in seen["lock"]
    assert not list((tmp_path / "o").glob(".ray-driver-*"))  # removed on the way out
    RunLock(tmp_path / "o").acquire().release()  # and the lock released
    assert not (tmp_path / "ft").exists()


def test_bad_data_is_refused_before_any_marker_or_cluster(tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"document": "d", "summary": "s"}\n{"document": \n')
    cfg = load_config(
        None,
        [
            f"model.name={fake_base_model(tmp_path / 'base')}",
            f"data.train={bad}",
            f"output.dir={tmp_path / 'o'}",
            f"output.model_dir={tmp_path / 'ft'}",
            f"model.cache_dir={tmp_path / 'cache'}",
            "scale.engine=ray",
            f"scale.address=127.0.0.1:{closed_port()}",
        ],
    )
    with pytest.raises(UserError, match=f"data file {bad}, line 2: invalid JSON"):
        ray_engine.run_on_ray(cfg, worker=None)
    assert not list((tmp_path / "o").glob(".ray-driver-*"))
