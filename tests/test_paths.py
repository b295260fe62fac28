"""paths.py: the one rule for where a command writes. Each refusal is one UserError naming the key, and the
folders it names are left as they were."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_summarizer.errors import UserError
from llm_summarizer.files import OWNER_FILE, atomic_directory
from llm_summarizer.paths import Place, check_places, claim, owner_of


def refused(places, sources=()) -> str:
    with pytest.raises(UserError) as e:
        check_places(places, sources)
    return str(e.value)


def folder(p: Path, *names: str, record: dict | None = None) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    for n in names:
        (p / n).write_text(n)
    if record is not None:
        (p / OWNER_FILE).write_text(json.dumps(record))
    return p


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}


def model_record(*entries) -> dict:
    return {"written_by": "llm_summarizer", "kind": "model", "entries": sorted(entries)}


# -- 1. outputs apart ----------------------------------------------------------------------------------------------


def test_two_outputs_in_the_same_place_are_refused_naming_both_keys(tmp_path):
    msg = refused([Place("output.dir", tmp_path / "o", "run"), Place("output.model_dir", tmp_path / "o", "model")])
    assert "output.dir and output.model_dir are the same place" in msg


def test_the_same_place_through_a_symlink_or_a_dot_dot_is_the_same_place(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    msg = refused([Place("output.dir", tmp_path / "real", "run"), Place("--output", tmp_path / "link", "export")])
    assert "same place" in msg
    msg = refused(
        [Place("output.dir", tmp_path / "a", "run"), Place("--output", tmp_path / "b" / ".." / "a", "export")]
    )
    assert "same place" in msg


@pytest.mark.parametrize("order", [0, 1])
def test_an_output_inside_another_is_refused_whichever_comes_first(tmp_path, order):
    places = [Place("output.dir", tmp_path / "o", "run"), Place("output.model_dir", tmp_path / "o" / "final", "model")]
    msg = refused(places[::-1] if order else places)
    assert f"output.model_dir ({tmp_path / 'o' / 'final'}) is inside output.dir ({tmp_path / 'o'})" in msg


def test_a_cache_is_apart_from_the_outputs_too(tmp_path):
    msg = refused([Place("output.dir", tmp_path / "o", "run"), Place("model.cache_dir", tmp_path / "o" / "c", "cache")])
    assert "model.cache_dir" in msg and "is inside output.dir" in msg


def test_side_by_side_outputs_with_a_common_prefix_are_apart(tmp_path):
    # "out" and "out2": a string prefix, not a folder inside another
    check_places(
        [
            Place("output.dir", tmp_path / "out", "run"),
            Place("output.model_dir", tmp_path / "out2", "model"),
            Place("model.cache_dir", tmp_path / "models", "cache"),
            Place("--report", None, "file"),
        ]
    )


# -- 2. outputs apart from sources ---------------------------------------------------------------------------------


def test_an_output_that_is_a_source_is_refused(tmp_path):
    model = folder(tmp_path / "base", "config.json", "model.safetensors")
    before = snapshot(model)
    msg = refused([Place("--output", model, "export", replaced=True)], [("--model", model)])
    assert f"--output {model} is --model itself" in msg
    assert snapshot(model) == before


def test_an_output_holding_a_source_is_refused(tmp_path):
    data = folder(tmp_path / "work" / "data", "train.jsonl")
    msg = refused([Place("output.dir", tmp_path / "work", "run")], [("data.train", data / "train.jsonl")])
    assert "output.dir" in msg and "holds data.train" in msg and "choose a output.dir outside it" in msg


def test_an_output_inside_a_source_is_refused(tmp_path):
    model = folder(tmp_path / "base", "config.json", "model.safetensors")
    msg = refused([Place("output.model_dir", model / "fine_tuned", "model", replaced=True)], [("model.name", model)])
    assert "output.model_dir" in msg and "is inside model.name" in msg and "so the source stays as it is" in msg
    assert not (model / "fine_tuned").exists()


def test_a_source_named_through_a_symlink_is_still_that_source(tmp_path):
    model = folder(tmp_path / "base", "config.json", "model.safetensors")
    (tmp_path / "base-link").symlink_to(model)
    msg = refused([Place("--output", model / "gguf", "export")], [("--model", tmp_path / "base-link")])
    assert "--output" in msg and "is inside --model" in msg
    # and an output named through a symlink into the source
    msg = refused([Place("--output", tmp_path / "base-link" / "gguf", "export")], [("--model", model)])
    assert "is inside --model" in msg


def test_sources_that_do_not_exist_and_hub_ids_are_not_places(tmp_path):
    check_places(
        [Place("output.dir", tmp_path / "o", "run")],
        [
            ("model.name", "HuggingFaceTB/SmolLM2-135M-Instruct"),
            ("data.train", tmp_path / "o" / "missing"),
            ("data.test", None),
        ],
    )


def test_a_cache_may_hold_the_model_it_built(tmp_path):
    # model.cache_dir holds the random-init or converted model that model.name then points into: allowed
    cache = folder(tmp_path / "models")
    built = folder(cache / "random-tiny-abc", "config.json", "model.safetensors")
    check_places([Place("model.cache_dir", cache, "cache")], [("model.name", built)])


# -- 3. new, empty or ours -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", ["missing", "empty", "only-record"])
def test_a_new_or_empty_folder_is_accepted(tmp_path, make):
    p = tmp_path / "fine_tuned"
    if make != "missing":
        p.mkdir()
    if make == "only-record":
        (p / OWNER_FILE).write_text(json.dumps({"kind": "run"}))  # another kind, but nothing else in it
    check_places([Place("output.model_dir", p, "model", replaced=True)])


@pytest.mark.parametrize("replaced,words", [(True, "would replace that whole folder"), (False, "writes there")])
def test_a_folder_of_someone_elses_files_is_refused_and_left_alone(tmp_path, replaced, words):
    home = folder(tmp_path / "home", "thesis.tex", "photo.jpg")
    before = snapshot(home)
    msg = refused([Place("output.model_dir", home, "model", replaced=replaced)])
    assert msg.startswith(f"output.model_dir {home} holds files this project did not write (photo.jpg, thesis.tex)")
    assert words in msg and "Choose a new or empty folder" in msg
    assert snapshot(home) == before


def test_a_long_list_of_foreign_files_is_shortened(tmp_path):
    home = folder(tmp_path / "home", *[f"f{i}" for i in range(8)])
    msg = refused([Place("--output", home, "export", replaced=True)])
    assert "(f0, f1, f2, f3, f4 and 3 more)" in msg


def test_a_folder_of_ours_of_the_same_kind_is_accepted(tmp_path):
    target = tmp_path / "fine_tuned"
    with atomic_directory(target, owner="model") as tmp:
        (tmp / "adapter_model.safetensors").write_text("w")
    check_places([Place("output.model_dir", target, "model", replaced=True)])


def test_a_folder_of_another_kind_is_refused_naming_both_kinds(tmp_path):
    run = tmp_path / "outputs"
    claim(run, "run")
    (run / "checkpoint-20").mkdir()
    msg = refused([Place("output.model_dir", run, "model", replaced=True)])
    assert msg == (
        f"output.model_dir {run} holds a training run's checkpoints and logs (output.dir of `llm-summarizer "
        f"train`), not a fine-tuned model written by `llm-summarizer train`; choose another "
        f"output.model_dir so that it stays as it is"
    )
    assert (run / "checkpoint-20").is_dir()


def test_an_unknown_kind_in_a_record_is_named_as_written(tmp_path):
    p = folder(tmp_path / "x", "f", record={"kind": "spaceship", "entries": ["f"]})
    assert "holds spaceship, not an export" in refused([Place("--output", p, "export")])


# -- 4. a folder replaced whole holds only what we wrote ------------------------------------------------------------


def test_replacing_our_folder_with_a_users_file_added_is_refused_naming_the_file(tmp_path):
    target = folder(
        tmp_path / "fine_tuned",
        "adapter_model.safetensors",
        "notes.txt",
        record=model_record("adapter_model.safetensors"),
    )
    before = snapshot(target)
    msg = refused([Place("output.model_dir", target, "model", replaced=True)])
    assert "output.model_dir" in msg and "also holds files this project did not write there (notes.txt)" in msg
    assert "replacing it would delete" in msg
    assert snapshot(target) == before


def test_a_folder_written_into_may_hold_more_than_its_record(tmp_path):
    # output.dir is written into, not replaced: the user's extra file stays and is no reason to refuse
    run = folder(
        tmp_path / "outputs",
        "checkpoint-5",
        "my_notes.txt",
        record={"written_by": "llm_summarizer", "kind": "run", "entries": ["checkpoint-5"]},
    )
    check_places([Place("output.dir", run, "run")])


def test_many_foreign_entries_are_shortened(tmp_path):
    target = folder(
        tmp_path / "e", "model.gguf", *[f"u{i}" for i in range(7)], record={"kind": "export", "entries": ["model.gguf"]}
    )
    msg = refused([Place("--output", target, "export", replaced=True)])
    assert "(u0, u1, u2, u3, u4 ...)" in msg


# -- folders written before the owner record existed ---------------------------------------------------------------

LEGACY = {
    "export": ["export_info.json", "model.gguf"],
    "model": ["config.yaml", "adapter_config.json", "adapter_model.safetensors", "run_info.json"],
    "run": ["checkpoint-40", "config.yaml"],
    "evaluation": ["eval_settings.json", "metrics.json"],
    "tune": ["study.db", "best.yaml"],
}


@pytest.mark.parametrize("kind", sorted(LEGACY))
def test_a_legacy_folder_is_recognised_by_its_files(tmp_path, kind):
    p = folder(tmp_path / kind, *LEGACY[kind])
    assert owner_of(p) == (kind, None)
    check_places([Place("--output", p, kind, replaced=True)])  # a rerun replaces it
    other = "run" if kind != "run" else "model"
    assert f"not {'a training run' if other == 'run' else 'a fine-tuned model'}" in refused(
        [Place("--output", p, other, replaced=True)]
    )


@pytest.mark.parametrize(
    "names,kind",
    [
        (["config.yaml", "config.json", "model.safetensors", "metrics.json"], "model"),  # a merged final model
        (["base_metrics.json"], "run"),
        (["eval_predictions"], "run"),
        ([".staging"], "run"),
        (["trial-0003"], "tune"),
        (["config.yaml", "config.json", "model.safetensors"], None),  # a model someone else saved with its config
        (["checkpoint-x"], None),
        (["metrics.json"], None),
    ],
)
def test_legacy_recognition_needs_files_only_this_project_writes(tmp_path, names, kind):
    p = folder(tmp_path / "f", *names)
    assert owner_of(p)[0] == kind


def test_an_unreadable_record_falls_back_to_the_files(tmp_path):
    p = folder(tmp_path / "f", "export_info.json")
    (p / OWNER_FILE).write_text("{not json")
    assert owner_of(p) == ("export", None)
    (p / OWNER_FILE).write_text("[1, 2]")  # JSON, but not an object
    assert owner_of(p) == ("export", None)


# -- file outputs --------------------------------------------------------------------------------------------------


def test_a_file_output_that_is_a_directory_is_refused(tmp_path):
    assert refused([Place("--report", tmp_path, "file")]) == f"--report {tmp_path} is a directory; give a file name"


def test_a_file_output_below_a_file_is_refused(tmp_path):
    (tmp_path / "notes").write_text("x")
    msg = refused([Place("--predictions", tmp_path / "notes" / "p.jsonl", "file")])
    assert msg.startswith(
        f"--predictions {tmp_path / 'notes' / 'p.jsonl'}: {tmp_path / 'notes'} is a file, not a directory"
    )


def test_a_file_output_may_replace_a_file_and_may_be_deep_below_new_folders(tmp_path):
    (tmp_path / "scores.json").write_text("{}")
    check_places(
        [
            Place("--output", tmp_path / "scores.json", "file"),
            Place("--predictions", tmp_path / "new" / "deeper" / "p.jsonl", "file"),
        ]
    )


def test_a_file_output_is_still_apart_from_its_source(tmp_path):
    data = tmp_path / "test.jsonl"
    data.write_text("{}\n")
    assert "is data.test itself" in refused([Place("--predictions", data, "file")], [("data.test", data)])


# -- folders that cannot be folders --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["cache", "model"])
def test_a_folder_output_that_is_a_file_is_refused(tmp_path, kind):
    f = tmp_path / "models"
    f.write_text("x")
    msg = refused([Place("model.cache_dir", f, kind)])
    assert msg.startswith(f"model.cache_dir {f} is a file; expected a directory")


def test_a_folder_output_below_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    msg = refused([Place("output.dir", tmp_path / "f" / "run", "run")])
    assert f"output.dir {tmp_path / 'f' / 'run'}: {tmp_path / 'f'} is a file, not a directory" in msg


def test_a_cache_with_files_of_its_own_is_not_checked_for_ownership(tmp_path):
    cache = folder(tmp_path / "models", "something-else", "random-tiny-abc")
    check_places([Place("model.cache_dir", cache, "cache")])


# -- claim ---------------------------------------------------------------------------------------------------------


def test_claim_records_a_folder_once(tmp_path):
    run = tmp_path / "a" / "outputs"
    claim(run, "run")
    assert json.loads((run / OWNER_FILE).read_text()) == {"written_by": "llm_summarizer", "kind": "run"}
    assert owner_of(run) == ("run", None)
    (run / OWNER_FILE).write_text(json.dumps({"kind": "run", "entries": ["x"]}))
    claim(run, "evaluation")  # a record that is there stays as it is
    assert owner_of(run) == ("run", {"x"})


def test_a_runs_lock_alone_does_not_make_a_folder_someone_elses(tmp_path):
    # a run that holds output.dir's lock before writing anything, or one killed then: the next one gets to the lock
    home = folder(tmp_path / "outputs", ".lock")
    check_places([Place("output.dir", home, "run")])
    (home / "keep.txt").write_text("mine")
    assert "holds files this project did not write (.lock, keep.txt)" in refused([Place("output.dir", home, "run")])
