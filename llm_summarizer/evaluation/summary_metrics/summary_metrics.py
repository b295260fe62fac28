"""llm_summarizer's summary metrics as a Hugging Face `evaluate` module, loaded from this folder with no network:

    import evaluate
    from llm_summarizer.evaluation.diagnostics import EVALUATE_MODULE

    metric = evaluate.load(str(EVALUATE_MODULE))
    metric.compute(predictions=preds, references=refs, documents=docs)

It returns every metric of llm_summarizer/metrics.py under its key (ROUGE: rouge-score F1 with stemming, in any
language, `rouge_tokenizer` as the config's eval.rouge_tokenizer, `lsum_split` as eval.rouge_lsum_split, means
over examples; each other metric as its entry says) and, with `documents`, the
statistics of each summary against its document (llm_summarizer/evaluation/diagnostics.py: extractive fragment
coverage, density and compression, novel n-grams, repeated trigrams, unsupported numbers and names, lead copy),
the length against the reference, and with `hit_max_new_tokens` the share cut by max_new_tokens: the numbers
`llm-summarizer score` prints for the same predictions, under the same names. A statistic no example has a value
for is None. `per_example=True` adds every example's values.
"""

import datasets
import evaluate

from llm_summarizer.evaluation import diagnostics, scoring

_CITATION = """\
@inproceedings{grusky-etal-2018-newsroom,
    title = "{N}ewsroom: A Dataset of 1.3 Million Summaries with Diverse Extractive Strategies",
    author = "Grusky, Max and Naaman, Mor and Artzi, Yoav",
    booktitle = "Proceedings of NAACL-HLT 2018",
    year = "2018",
    pages = "708--719",
}
@inproceedings{lin-2004-rouge,
    title = "{ROUGE}: A Package for Automatic Evaluation of Summaries",
    author = "Lin, Chin-Yew",
    booktitle = "Text Summarization Branches Out",
    year = "2004",
    pages = "74--81",
}
"""

_DESCRIPTION = __doc__

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated summaries (str).
    references: list of reference summaries (str), one per prediction.
    documents: optional list of the documents summarized (str), one per prediction; without them only ROUGE,
        repetition and length are returned.
    hit_max_new_tokens: optional list of bools, True where generation stopped at max_new_tokens.
    rouge_tokenizer: "auto" (default), "default", "unicode" or "chars" (llm_summarizer's eval.rouge_tokenizer).
    lsum_split: "regex" (default), "punkt" or "newline" (eval.rouge_lsum_split).
    per_example: also return each example's values under "per_example".
Returns:
    each metric of llm_summarizer/metrics.py (rouge1, rouge2, rougeL, rougeLsum: mean F1; ...), the statistics by
    their llm_summarizer names (mean over the
    examples with a value; None when none has one), "rouge_tokenizer" (the resolved name) and "notes" (why values
    are missing, counted).
Examples:
    >>> metric = evaluate.load(str(EVALUATE_MODULE))
    >>> metric.compute(predictions=["the cat sat"], references=["the cat sat down"],
    ...                documents=["the cat sat down on the mat"])["coverage"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SummaryMetrics(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            codebase_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
            reference_urls=["https://aclanthology.org/N18-1065/", "https://aclanthology.org/W04-1013/"],
        )

    def _compute(
        self,
        predictions,
        references,
        documents=None,
        hit_max_new_tokens=None,
        rouge_tokenizer="auto",
        lsum_split="regex",
        per_example=False,
    ):
        protocol = scoring.protocol_for(references, rouge_tokenizer, lsum_split)
        means, per_rouge = scoring.score_corpus(list(references), list(predictions), protocol)
        per = diagnostics.corpus(list(predictions), documents, list(references), hit_max_new_tokens, protocol.tokenizer)
        out = {
            **{k: float(v) for k, v in means.items()},
            **diagnostics.means(per),
            "rouge_tokenizer": protocol.tokenizer,
            "notes": diagnostics.note_counts(per),
        }
        if per_example:
            out["per_example"] = [{**r, **d} for r, d in zip(per_rouge, per)]
        return out
