"""Summarization data: readers (files, hub), rows and splits, prompt + token budget, tokenizing, preview.

    readers.py    local files and hub datasets into rows of {id, document, summary}
    rows.py       bad rows dropped by reason; train / validation / test splits
    prompt.py     Formatter: chat template or plain prompt, loss on the summary only, token budget
    tokenize.py   whole splits to token ids (batched, multi-process, cached) with statistics
    preview.py    what training would see, rendered for people
    documents.py  documents to summarize from files, directories, table columns or stdin

Nothing here imports a model: the tokenizer comes in as an argument (see llm_summarizer.models).
"""
