"""The GRPO summary reward (training/rewards.py): each component against values worked out by hand, the composite
against the sum of its parts, TRL's function form, and users' own components."""

from __future__ import annotations

import math

import pytest

from llm_summarizer.config import RLSection
from llm_summarizer.errors import UserError
from llm_summarizer.evaluation.scoring import protocol_for
from llm_summarizer.training.rewards import (
    COMPONENTS,
    Completion,
    SummaryReward,
    checked,
    copying_component,
    length_component,
    load_function,
)

DOC = "the cat sat on the mat"
REF = "a cat sat"


def reward(reference_density: float = 2.0, **rl) -> SummaryReward:
    return SummaryReward(RLSection(**rl), protocol_for([REF]), reference_density)


def test_a_copy_of_the_document():
    # ROUGE-L: LCS "cat sat" = 2, P 2/6, R 2/3 -> F 4/9; 6 words against 3: ratio 2.0 above the band's 1.6 ->
    # -(2.0 - 1.6) / 1.6; one copied fragment of 6 words: density 36/6 = 6 against 2 allowed -> -(6 - 2) / 6
    parts = reward().parts(Completion(DOC, DOC, REF))
    assert parts["similarity"] == pytest.approx(4 / 9)
    assert parts["length"] == pytest.approx(-0.25)
    assert parts["copying"] == pytest.approx(-2 / 3)
    assert parts["unsupported"] == parts["repetition"] == parts["cut"] == 0.0


def test_an_empty_completion_is_the_wrong_length_and_nothing_else():
    r = reward()
    parts = r.parts(Completion("", DOC, REF))
    assert parts == {
        "similarity": 0.0,
        "length": -1.0,
        "copying": 0.0,
        "unsupported": 0.0,
        "repetition": 0.0,
        "cut": 0.0,
    }
    assert r.total(Completion("", DOC, REF)) == pytest.approx(-0.5)  # length's default weight 0.5


def test_a_completion_cut_mid_word_gets_the_cut_penalty_and_keeps_its_other_parts():
    # "a cat sa": LCS "a cat" = 2 of 3 and 3 -> F 2/3; ratio 1 inside the band; only "cat" is copied (density 1/3)
    c = Completion("a cat sa", DOC, REF, cut=True)
    parts = reward().parts(c)
    assert parts["similarity"] == pytest.approx(2 / 3)
    assert parts["length"] == parts["copying"] == 0.0
    assert parts["cut"] == -1.0
    assert reward().total(c) == pytest.approx(2 / 3 - 1.0)
    assert reward().parts(Completion("a cat sa", DOC, REF, cut=False))["cut"] == 0.0


def test_a_number_or_a_name_not_in_the_document():
    doc = "Sales rose 5 percent in 2020 according to the report."
    r = SummaryReward(RLSection(), protocol_for(["Sales rose 5 percent."]), 2.0)
    assert r.parts(Completion("Sales rose 7 percent.", doc, "Sales rose 5 percent."))["unsupported"] == -0.5
    assert r.parts(Completion("Sales rose 5 percent.", doc, "Sales rose 5 percent."))["unsupported"] == 0.0
    # a number and a name (capitalised, not opening the sentence): -0.5 each; three or more: at most -1
    assert r.parts(Completion("Sales at Acme rose 7 percent.", doc, "x"))["unsupported"] == -1.0
    assert r.parts(Completion("Sales at Acme and Zeta rose 7 percent.", doc, "x"))["unsupported"] == -1.0


def test_chinese_text_is_scored_by_characters():
    doc, ref = "今天天气很好我们去公园散步", "天气很好"
    r = SummaryReward(RLSection(), protocol_for([ref]), 1.0)
    assert r.protocol.tokenizer == "chars"
    # no character in common with the reference; 4 characters against 4; one copied run of 4: density 16/4 = 4
    # against 1 allowed -> -(4 - 1) / 4
    parts = r.parts(Completion("公园散步", doc, ref))
    assert parts["similarity"] == 0.0 and parts["length"] == 0.0
    assert parts["copying"] == pytest.approx(-0.75)
    assert r.parts(Completion("天气很好", doc, ref))["similarity"] == pytest.approx(1.0)


def test_repetition_is_the_share_of_repeated_trigrams():
    # 6 words, 4 trigrams: "a b c", "b c a", "c a b", "a b c" (a repeat): 1 of 4
    assert reward().parts(Completion("a b c a b c", DOC, REF))["repetition"] == pytest.approx(-0.25)


@pytest.mark.parametrize(
    "ratio, value",
    [(None, -1.0), (0.0, -1.0), (0.3, -0.5), (0.6, 0.0), (1.0, 0.0), (1.6, 0.0), (2.4, -0.5), (10.0, -1.0)],
)
def test_length_band(ratio, value):
    assert length_component(ratio, (0.6, 1.6)) == pytest.approx(value)


@pytest.mark.parametrize("density, value", [(None, 0.0), (1.0, 0.0), (2.0, 0.0), (4.0, -0.5), (200.0, -0.99)])
def test_copying_never_saturates(density, value):
    assert copying_component(density, 2.0) == pytest.approx(value)


def test_copy_guard_follows_the_references_density_and_the_slack():
    assert reward(3.6, copy_slack=0.75).allowed_density == pytest.approx(2.7)
    assert reward(0.5).allowed_density == 1.0  # never below 1 (a summary copying single words)
    assert reward(None).allowed_density == 1.0


def test_without_a_reference_the_band_applies_to_target_words():
    r = reward(target_words=4)
    parts = r.parts(Completion("a cat sat here now", DOC, None))  # 5 words / 4 -> inside the band
    assert parts["similarity"] == 0.0 and parts["length"] == 0.0
    assert r.parts(Completion("a cat sat here now and then again and again and more", DOC, ""))["length"] < 0
    assert reward().parts(Completion("a cat", DOC, None))["length"] == 0.0  # no reference and no target: no opinion


def test_composite_is_the_weighted_sum_of_its_parts():
    weights = {"similarity": 2.0, "length": 0.3, "copying": 0.7, "unsupported": 0.0, "repetition": 1.0, "cut": 0.4}
    r = reward(weights=weights)
    for c in (Completion(DOC, DOC, REF), Completion("", DOC, REF), Completion("a cat sa", DOC, REF, cut=True)):
        parts = r.parts(c)
        assert r.total(c) == pytest.approx(sum(weights[k] * parts[k] for k in COMPONENTS))


def test_trl_functions_one_per_weighted_component_reading_one_pass():
    r = reward(weights={"unsupported": 0.0})
    funcs, weights = r.functions(is_cut=lambda ids: len(ids) >= 3)
    assert [f.__name__ for f in funcs] == ["similarity", "length", "copying", "repetition", "cut"]
    assert weights == [1.0, 0.5, 0.5, 0.5, 1.0]
    completions = [DOC, "a cat sa", ""]
    columns = dict(completion_ids=[[1, 2], [1, 2, 3], [1]], document=[DOC] * 3, summary=[REF] * 3)
    values = {f.__name__: f(prompts=["p"] * 3, completions=completions, **columns) for f in funcs}
    assert values["cut"] == [0.0, -1.0, 0.0]  # the middle completion reached the budget of 3 tokens
    assert values["similarity"] == pytest.approx([4 / 9, 2 / 3, 0.0])
    total = [sum(w * values[f.__name__][i] for f, w in zip(funcs, weights)) for i in range(3)]
    expected = [r.total(Completion(t, DOC, REF, cut=i == 1)) for i, t in enumerate(completions)]
    assert total == pytest.approx(expected)


# -- users' own components ---------------------------------------------------------------------------------------


def test_a_custom_component_from_a_file(tmp_path):
    f = tmp_path / "my_reward.py"
    f.write_text("def short(prompts, completions, **kw):\n    return [-len(c) / 100 for c in completions]\n")
    r = reward(custom=[{"function": f"{f}:short", "weight": 2.0}])
    funcs, weights = r.functions(is_cut=lambda ids: False)
    assert funcs[-1].__name__ == "short" and weights[-1] == 2.0
    assert funcs[-1](prompts=["p", "p"], completions=["ab", "abcd"], summary=["x", "y"]) == [-0.02, -0.04]


def test_a_custom_component_that_raises_names_itself():
    def broken(prompts, completions, **kw):
        raise KeyError("summary_v2")

    with pytest.raises(UserError, match=r"rl.custom reward 'broken' raised KeyError: 'summary_v2'.*2 completions"):
        checked(broken)(prompts=["p", "p"], completions=["a", "b"])


@pytest.mark.parametrize(
    "out, said",
    [
        ([1.0], "returned 1 values for 2 completions"),
        (3.0, "returned float for 2 completions"),
        ([1.0, math.nan], "returned nan for completion 1"),
        ([1.0, "good"], "returned 'good' for completion 1"),
    ],
)
def test_a_custom_component_of_the_wrong_shape(out, said):
    with pytest.raises(UserError, match=f"rl.custom reward 'mine' {said}"):
        checked(lambda prompts, completions, **kw: out, "mine")(prompts=["p", "p"], completions=["a", "b"])
    assert checked(lambda prompts, completions, **kw: [0.5, None], "ok")(prompts=["p"] * 2, completions=["a", "b"])


def test_custom_specs_that_cannot_load(tmp_path):
    with pytest.raises(UserError, match="no file"):
        load_function(f"{tmp_path / 'absent.py'}:f")
    with pytest.raises(UserError, match="could not be loaded: ModuleNotFoundError"):
        load_function("no_such_package_here.rewards:f")
    with pytest.raises(UserError, match="has no function 'nothing'"):
        load_function("math:nothing")
    bad = tmp_path / "bad.py"
    bad.write_text("def broken(:\n")
    with pytest.raises(UserError, match="could not be loaded: SyntaxError"):
        load_function(f"{bad}:f")
