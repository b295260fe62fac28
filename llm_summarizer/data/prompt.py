"""From a row to token ids: the prompt (chat template or plain), the completion, and the token budget.

`Formatter` renders the template once around a sentinel, so prompt = prefix ids + document ids + suffix
ids; only the summary and one EOS carry loss; the document is cut (head, head_tail or drop) so that the
whole example fits `model.max_seq_length`; the summary is never cut.
"""

from __future__ import annotations

import hashlib
import json
from typing import Optional

from ..config import DataSection
from ..errors import UserError

_DOC = "\u2063DOCUMENT\u2063"
_SUM = "\u2063SUMMARY\u2063"


class Formatter:
    """Renders one example into prompt ids and completion ids under the token budget."""

    def __init__(self, tokenizer, data: DataSection, max_seq_length: int):
        self.tok = tokenizer
        self.data = data
        self.max_seq_length = max_seq_length
        self.use_chat = data.template != "plain" and bool(getattr(tokenizer, "chat_template", None))
        if data.template not in ("auto", "plain") and not self.use_chat:
            raise UserError(f"data.template={data.template!r} but the tokenizer has no chat template after applying it")
        self.eos_id = tokenizer.eos_token_id
        if self.eos_id is None:
            raise UserError("the tokenizer has no EOS token; the model could not learn where a summary ends")
        pre, post = self._prompt_text(_DOC).split(_DOC)
        self.pre_ids = self._enc(pre, first=True)
        self.post_ids = self._enc(post)
        c_pre, c_post = self._completion_text(_SUM).split(_SUM)
        self.c_pre, self.c_post = c_pre, c_post
        self.stop_ids = sorted({self.eos_id, *self._end_of_turn_ids()})
        self.ellipsis_ids = self._enc(" ... ")

    # text rendering -------------------------------------------------------------------------
    def user_text(self, document: str) -> str:
        return self.data.prompt_template.format(instruction=self.data.instruction, document=document)

    def _prompt_text(self, document: str) -> str:
        if self.use_chat:
            return self.tok.apply_chat_template(
                [{"role": "user", "content": self.user_text(document)}], tokenize=False, add_generation_prompt=True
            )
        return self.user_text(document) + self.data.plain_response_prefix

    def _completion_text(self, summary: str) -> str:
        if not self.use_chat:
            return summary
        msgs = [{"role": "user", "content": self.user_text("x")}]
        prompt = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        full = self.tok.apply_chat_template(msgs + [{"role": "assistant", "content": summary}], tokenize=False)
        if not full.startswith(prompt):
            raise UserError(
                "the chat template renders the prompt differently with and without the answer; "
                "set data.template to a named template (e.g. chatml) or 'plain'"
            )
        return full[len(prompt) :]

    def _end_of_turn_ids(self) -> list[int]:
        ids = []
        for t in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>"):
            if t in self.c_post:
                tid = self.tok.convert_tokens_to_ids(t)
                if isinstance(tid, int) and tid >= 0:
                    ids.append(tid)
        return ids

    def _enc(self, text: str, first: bool = False) -> list[int]:
        if not text:
            return []
        # Chat templates write BOS themselves; for plain prompts let the tokenizer add it.
        add = first and not self.use_chat
        return list(self.tok(text, add_special_tokens=add, verbose=False)["input_ids"])

    def _enc_many(self, texts: list[str]) -> list[list[int]]:
        """What _enc gives each text (not the first piece of a prompt), in one tokenizer call: a fast tokenizer
        encodes the whole batch in Rust. Long documents are cut later, by the budget, so no length warning."""
        if not texts:
            return []
        backend = getattr(self.tok, "backend_tokenizer", None) if getattr(self.tok, "is_fast", False) else None
        if (
            backend is not None
            and backend.truncation is None
            and backend.padding is None
            and bool(getattr(backend, "encode_special_tokens", False))
            == bool(getattr(self.tok, "split_special_tokens", False))
        ):  # the Rust tokenizer itself: the same ids without building attention masks etc.
            return [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]
        return [list(ids) for ids in self.tok(list(texts), add_special_tokens=False, verbose=False)["input_ids"]]

    # ids --------------------------------------------------------------------------------------
    def _summary_text(self, summary: str) -> str:
        return self.c_pre + summary.strip() + self.c_post.rstrip()

    def _with_one_eos(self, ids: list[int]) -> list[int]:
        # EOS exactly once, at the end (a chat template may already end the turn with it).
        ids = list(ids)
        while ids and ids[-1] == self.eos_id:
            ids.pop()
        return ids + [self.eos_id]

    def completion_ids(self, summary: str) -> list[int]:
        return self._with_one_eos(self._enc(self._summary_text(summary)))

    @property
    def template_tokens(self) -> int:
        return len(self.pre_ids) + len(self.post_ids)

    def doc_budget(self, n_completion: int) -> int:
        return self.max_seq_length - self.template_tokens - n_completion

    def fit_document(self, doc_ids: list[int], budget: int) -> tuple[Optional[list[int]], str]:
        """Return (ids, status) with status 'ok', 'truncated' or a drop reason."""
        if budget < 1:
            return None, "summary_too_long"
        if len(doc_ids) <= budget:
            return doc_ids, "ok"
        policy = self.data.truncation
        if policy == "drop":
            return None, "document_too_long"
        if policy == "head_tail" and budget > len(self.ellipsis_ids) + 2:
            keep = budget - len(self.ellipsis_ids)
            head = (keep + 1) // 2
            return doc_ids[:head] + self.ellipsis_ids + doc_ids[len(doc_ids) - (keep - head) :], "truncated"
        return doc_ids[:budget], "truncated"

    def prompt_ids(self, document: str, n_completion: int = 0) -> tuple[Optional[list[int]], str]:
        doc_ids = self._enc(document)
        fitted, status = self.fit_document(doc_ids, self.doc_budget(n_completion))
        if fitted is None:
            return None, status
        return self.pre_ids + fitted + self.post_ids, status

    def example(self, document: str, summary: str) -> tuple[Optional[dict], str]:
        return self.examples([document], [summary])[0]

    def examples(self, documents: list[str], summaries: list[str]) -> list[tuple[Optional[dict], str]]:
        """(token ids with the completion mask, status) per row: documents and summaries each encoded in one
        batched call, then the budget applied on the ids (the same ids as encoding row by row)."""
        docs = self._enc_many(documents)
        comps = [self._with_one_eos(c) for c in self._enc_many([self._summary_text(s) for s in summaries])]
        out = []
        for doc_ids, comp in zip(docs, comps):
            fitted, status = self.fit_document(doc_ids, self.doc_budget(len(comp)))
            if fitted is None:
                out.append((None, status))
                continue
            prompt = self.pre_ids + fitted + self.post_ids
            out.append(
                (
                    {
                        "input_ids": prompt + comp,
                        "completion_mask": [0] * len(prompt) + [1] * len(comp),
                        "prompt_len": len(prompt),
                    },
                    status,
                )
            )
        return out

    def generation_prompt(self, document: str, max_new_tokens: int) -> tuple[list[int], bool]:
        """Prompt ids for generation: the document is cut so prompt + max_new_tokens fit."""
        budget = self.doc_budget(max_new_tokens)
        doc_ids = self._enc(document)
        if budget < 1:
            budget = 1
        fitted = doc_ids[:budget] if len(doc_ids) > budget else doc_ids
        if len(doc_ids) > budget and self.data.truncation == "head_tail" and budget > len(self.ellipsis_ids) + 2:
            fitted, _ = self.fit_document(doc_ids, budget)
        return self.pre_ids + fitted + self.post_ids, len(doc_ids) > budget

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(
            json.dumps(
                [
                    self.pre_ids,
                    self.post_ids,
                    self.c_pre,
                    self.c_post,
                    self.stop_ids,
                    self.max_seq_length,
                    self.data.truncation,
                    self.eos_id,
                ],
                sort_keys=True,
            ).encode()
        )
        h.update(json.dumps(sorted(self.tok.get_vocab().items())[:50000:97]).encode())
        return h.hexdigest()[:16]
