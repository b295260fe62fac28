"""The next-token check that judges a quantized export (KL divergence and top-token agreement), on hand-made
distributions: no model, no llama.cpp."""

import math

import pytest
import torch

from llm_summarizer.errors import UserError
from llm_summarizer.export.gguf import alternatives, describe, passes
from llm_summarizer.export.job import GGUF_DIRECT, GGUF_LIMITS, GGUF_PRECISION, GGUF_QUANTIZED, ExportOptions
from llm_summarizer.export.verify import next_token_agreement


def logs(*rows):
    return torch.tensor(rows, dtype=torch.float64).log()


def test_identical_distributions_have_no_divergence_and_the_same_top_token():
    ref = [torch.randn(5, 40), torch.randn(3, 40)]
    s = next_token_agreement(ref, [r.clone() for r in ref])
    assert s["positions"] == 8 and s["top1_agreement"] == 1.0
    assert abs(s["mean_kl"]) < 1e-12 and abs(s["max_kl"]) < 1e-12


def test_kl_and_a_flipped_top_token_by_hand():
    p = logs([0.7, 0.2, 0.1], [0.5, 0.3, 0.2])
    q = logs([0.2, 0.6, 0.2], [0.5, 0.3, 0.2])  # first position: the top token flips
    kl0 = 0.7 * math.log(0.7 / 0.2) + 0.2 * math.log(0.2 / 0.6) + 0.1 * math.log(0.1 / 0.2)
    s = next_token_agreement([p], [q])
    assert s["top1_agreement"] == 0.5 and s["positions"] == 2
    assert s["max_kl"] == pytest.approx(kl0, rel=1e-9) and s["mean_kl"] == pytest.approx(kl0 / 2, rel=1e-9)
    # KL(P || Q) is not symmetric: the reference's probabilities weigh the log-ratio
    assert next_token_agreement([q], [p])["max_kl"] != pytest.approx(kl0)


def test_logits_are_normalised_so_any_shift_gives_the_same_answer():
    # float64 and a fixed seed: the comparison is of the check's normalisation, not of float32 rounding in the
    # test's own shifts (in float32 the two sides differed by up to ~2e-6 relative, on some draws)
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(4, 30, generator=g, dtype=torch.float64)
    other = ref + 0.1 * torch.randn(4, 30, generator=g, dtype=torch.float64)
    a = next_token_agreement([torch.log_softmax(ref, -1)], [torch.log_softmax(other, -1)])
    b = next_token_agreement([ref + 7.0], [other - 3.0])  # raw logits, as llama.cpp returns them
    assert a["mean_kl"] == pytest.approx(b["mean_kl"], rel=1e-6) and a["mean_kl"] > 0
    assert a["top1_agreement"] == b["top1_agreement"]


def test_tokens_the_reference_rules_out_cost_nothing_and_a_lost_token_costs_everything():
    p = logs([1.0, 0.0, 0.0])
    assert next_token_agreement([p], [logs([0.5, 0.25, 0.25])])["mean_kl"] == pytest.approx(math.log(2))
    s = next_token_agreement([logs([0.5, 0.5, 0.0])], [logs([1.0, 0.0, 0.0])])
    assert s["mean_kl"] == math.inf and not passes(s, 1e9, 0.0)


def test_a_broken_file_with_nan_logits_fails_any_limit():
    s = next_token_agreement([torch.randn(3, 10)], [torch.full((3, 10), float("nan"))])
    assert not passes(s, 1e9, 0.0)


def test_passes_and_describe_name_the_measure_and_the_limit():
    s = {"mean_kl": 0.08, "max_kl": 0.9, "top1_agreement": 0.931, "positions": 480}
    assert not passes(s, 0.05, 0.9) and not passes(s, 0.1, 0.95) and passes(s, 0.1, 0.9)
    assert describe("q8_0", s, 0.05, 0.95) == (
        "q8_0: mean KL 0.0800 nats/token (> 0.05), top token the same at 93.1% of 480 positions (< 95%)"
    )


def test_every_gguf_type_has_measured_limits_and_a_place_in_the_precision_order():
    types = set(GGUF_DIRECT + GGUF_QUANTIZED)
    assert set(GGUF_LIMITS) == types and set(GGUF_PRECISION) == types and len(GGUF_PRECISION) == len(types)
    # more bits never get looser limits
    kls = [GGUF_LIMITS[t][0] for t in GGUF_PRECISION]
    tops = [GGUF_LIMITS[t][1] for t in GGUF_PRECISION]
    assert kls == sorted(kls, reverse=True) and tops == sorted(tops)


def test_a_refused_type_tries_the_more_precise_direct_types():
    assert alternatives("q4_k_m") == ["q8_0", "f16"]
    assert alternatives("q8_0") == ["f16"]
    assert alternatives("bf16") == ["f16", "f32"]
    assert alternatives("f16") == ["f32"]
    assert alternatives("f32") == []


def test_limits_come_from_the_table_unless_given():
    o = ExportOptions()
    assert o.gguf_limits("q8_0")[:2] == GGUF_LIMITS["q8_0"]
    assert o.gguf_limits("f16")[2] == "f16's measured limits"
    o = ExportOptions(max_gguf_kl=0.5)
    kl, top1, source = o.gguf_limits("q4_k_m")
    assert (kl, top1) == (0.5, GGUF_LIMITS["q4_k_m"][1]) and "--max-gguf-kl given" in source


@pytest.mark.parametrize(
    "field,value,flag",
    [
        ("max_gguf_kl", -0.1, "--max-gguf-kl -0.1"),
        ("min_gguf_top1", 1.5, "--min-gguf-top1 1.5"),
        ("min_gguf_agreement", -1.0, "--min-gguf-agreement -1.0"),
    ],
)
def test_out_of_range_limits_are_refused_by_name(field, value, flag):
    with pytest.raises(UserError, match=flag):
        ExportOptions(**{field: value}).check()
