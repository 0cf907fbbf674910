"""The task prompts of a model file: its own (edgegemma's converter stores the checkpoint's), or
EmbeddingGemma's published ones for files that carry none (llama.cpp's converter writes no prompts)."""
from __future__ import annotations

from . import formats as F
from .gguf_file import StringArray

# The model card's task prompts, under plain names; the converter adds those a checkpoint does not name.
CARD_TASK_PROMPTS: dict[str, str] = {
    "question_answering": "task: question answering | query: ",
    "fact_checking": "task: fact checking | query: ",
    "classification": "task: classification | query: ",
    "clustering": "task: clustering | query: ",
    "sentence_similarity": "task: sentence similarity | query: ",
    "code_retrieval": "task: code retrieval | query: ",
    "search_result": "task: search result | query: ",
}
# google/embeddinggemma-300m's config_sentence_transformers.json, in its order, then the card's prompts it does
# not name: what edgegemma's converter writes for this checkpoint.
EMBEDDINGGEMMA_PROMPTS: dict[str, str] = {
    "query": "task: search result | query: ",
    "document": "title: none | text: ",
    "BitextMining": "task: search result | query: ",
    "Clustering": "task: clustering | query: ",
    "Classification": "task: classification | query: ",
    "InstructionRetrieval": "task: code retrieval | query: ",
    "MultilabelClassification": "task: classification | query: ",
    "PairClassification": "task: sentence similarity | query: ",
    "Reranking": "task: search result | query: ",
    "Retrieval": "task: search result | query: ",
    "Retrieval-query": "task: search result | query: ",
    "Retrieval-document": "title: none | text: ",
    "STS": "task: sentence similarity | query: ",
    "Summarization": "task: summarization | query: ",
    **CARD_TASK_PROMPTS,
}


def file_prompts(meta: dict) -> dict[str, str] | None:
    """The prompts a file stores (name -> text), or None when it stores none; ValueError when they are malformed."""
    names, texts = meta.get(F.KEY_PROMPT_NAMES), meta.get(F.KEY_PROMPT_TEXTS)
    if names is None and texts is None:
        return None
    if not (isinstance(names, StringArray) and isinstance(texts, StringArray) and len(names) == len(texts)):
        raise ValueError(f"metadata keys {F.KEY_PROMPT_NAMES} and {F.KEY_PROMPT_TEXTS} should be string arrays of one length")
    return dict(zip(names, texts))


def prompts_for(meta: dict) -> dict[str, str]:
    """The file's prompts, else EmbeddingGemma's."""
    stored = file_prompts(meta)
    return dict(EMBEDDINGGEMMA_PROMPTS) if stored is None else stored


def resolve_name(prompts: dict[str, str], name: str) -> str:
    """The key of `prompts` that `name` means, matched case-insensitively ("sts" is "STS") in every face (library,
    CLI, server); ValueError when it names none (or, differing only in case, several)."""
    if name in prompts:
        return name
    folded = [p for p in prompts if p.casefold() == name.casefold()]
    if len(folded) != 1:
        raise ValueError(f"unknown prompt_name {name!r}; this model has: {', '.join(prompts)}")
    return folded[0]
