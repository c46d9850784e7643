"""Prompt rendering and tokenisation shared by the backends that send token ids."""

from __future__ import annotations

from alignloop.generation import GenerationError, PromptItem


def encode_prompt(tokenizer, item: PromptItem, budget: int, truncation: str) -> list[int]:
    """Token ids of the rendered prompt (chat template for messages), at most `budget` long.

    A longer prompt is an error naming it, or with `truncation="keep_end"` loses its
    first tokens; never cut silently."""
    from alignloop.chat import prompt_token_ids

    ids = prompt_token_ids(tokenizer, item.prompt)  # the ids training and scoring use too
    if not ids:
        raise GenerationError(f"prompt {item.prompt_id!r} is empty")
    if len(ids) > budget:
        if truncation != "keep_end":
            raise GenerationError(
                f"prompt {item.prompt_id!r} has {len(ids)} tokens; with max_new_tokens the context "
                f"leaves {budget} (set generation.truncation=keep_end to keep its end)")
        ids = ids[-budget:]
    return ids
