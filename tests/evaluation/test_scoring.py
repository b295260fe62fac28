"""ROUGE as the protocol states it: rouge-score's own examples, stemming, and the ROUGE-Lsum sentence rule."""

import pytest

from llm_summarizer.evaluation.scoring import score_corpus, score_pair, split_sentences


def test_rouge_known_values():
    # rouge-score's own examples: unigram overlap, stemming, and Lsum's sentence-level LCS.
    s = score_pair("testing one two", "testing")
    assert s["rouge1"] == pytest.approx(0.5) and s["rouge2"] == 0.0
    assert score_pair("the runner was running", "the runners were run")["rouge1"] == pytest.approx(0.75)
    s = score_pair("The cat sat. The dog ran.", "The dog ran. The cat sat.")
    assert s["rougeL"] == pytest.approx(0.5)
    assert s["rougeLsum"] == pytest.approx(1.0)
    assert split_sentences("First one. Second one! Third?\nFourth") == "First one.\nSecond one!\nThird?\nFourth"
    assert split_sentences("Prices rose approx. three percent. then fell") == "Prices rose approx. three percent. then fell"
    means, per = score_corpus(["a b c", "x y"], ["a b c", "z"])
    assert means["rouge1"] == pytest.approx(0.5) and per[1]["rouge1"] == 0.0
