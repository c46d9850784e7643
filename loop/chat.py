"""Rendering prompts and responses to text and token ids, the one way every stage does it
(training, the reference pass, generation, scoring), so a response's tokens are the same
wherever they are counted.

A prompt is plain text or a list of chat messages. How plain text is rendered (`as one
user turn` or `as written`) is recorded on the tokenizer by `alignloop.models.load_tokenizer`
from `data.chat_template`; see `set_plain_prompts`.
"""

from __future__ import annotations

from alignloop.records import Prompt

# --------------------------------------------------------------------------- rendering text


# How a plain-text prompt is rendered, recorded on the tokenizer by `load_tokenizer` so
# every stage that renders with it (training, reference, generation, scoring) agrees.
CHAT_TEMPLATE_MODES = ("auto", "always", "never")
_PLAIN_PROMPTS = "alignloop_plain_prompts"  # "chat" (one user turn) or "text" (as written)


def set_plain_prompts(tokenizer, mode: str, ref: str = "") -> None:
    """Record how `tokenizer` renders plain-text prompts, from `data.chat_template`:

    - `auto`: as one user turn when the tokenizer has a chat template (an instruct or chat
      model), as written otherwise (a base model);
    - `always`: as one user turn; a tokenizer without a chat template is an error;
    - `never`: as written, a raw continuation (what TRL does with plain-text rows).

    Chat-message prompts always go through the chat template."""
    if mode not in CHAT_TEMPLATE_MODES:
        raise ValueError(f"data.chat_template must be one of {list(CHAT_TEMPLATE_MODES)}, "
                         f"got {mode!r}")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if mode == "always" and not has_template:
        from alignloop.models import ModelReferenceError

        raise ModelReferenceError(
            f"data.chat_template is 'always' but the tokenizer of {ref or 'this model'} has no "
            "chat template; use 'auto' or 'never' to send plain-text prompts as written")
    as_chat = mode == "always" or (mode == "auto" and has_template)
    setattr(tokenizer, _PLAIN_PROMPTS, "chat" if as_chat else "text")


def as_messages(tokenizer, prompt: Prompt) -> Prompt:
    """`prompt` as `tokenizer` renders it: a plain-text prompt becomes one user turn when
    the tokenizer is set to (see `set_plain_prompts`; a tokenizer that was not set follows
    `auto`); chat messages and text for a raw continuation are returned unchanged."""
    if not isinstance(prompt, str):
        return prompt
    mode = getattr(tokenizer, _PLAIN_PROMPTS, None)
    if mode is None:
        mode = "chat" if getattr(tokenizer, "chat_template", None) else "text"
    return [{"role": "user", "content": prompt}] if mode == "chat" else prompt


def _check_chat(tokenizer, messages: list) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this tokenizer has no chat template, so chat-message prompts cannot "
                         "be rendered; use plain-text prompts or a chat model")
    if not messages:
        raise ValueError("a chat prompt needs at least one message")


def render_prompt(tokenizer, prompt: Prompt) -> str:
    """The text a response follows: chat messages (and plain text the tokenizer renders
    as a user turn, see `as_messages`) through the chat template with the generation
    prompt (the assistant header) appended; text for a raw continuation unchanged."""
    prompt = as_messages(tokenizer, prompt)
    if isinstance(prompt, str):
        return prompt
    _check_chat(tokenizer, prompt)
    return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)


def render_response(tokenizer, prompt: Prompt, response: str) -> str:
    """The exact text that follows `render_prompt(tokenizer, prompt)` for `response`.

    Chat prompts: the assistant turn as the template writes it, end-of-turn
    marker included (SmolLM2: `response + "<|im_end|>\\n"`), found by rendering
    the whole conversation and removing the rendered prompt in front of it.
    Plain prompts rendered as written: `response + eos_token`.
    """
    prompt = as_messages(tokenizer, prompt)
    if isinstance(prompt, str):
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has no EOS token to end a plain-text response")
        return response + tokenizer.eos_token
    head = render_prompt(tokenizer, prompt)
    full = tokenizer.apply_chat_template(
        [*prompt, {"role": "assistant", "content": response}], tokenize=False)
    if not full.startswith(head):
        raise ValueError(
            "the chat template renders the conversation with the assistant reply differently "
            "from the prompt with a generation prompt, so the reply cannot be separated "
            f"(prompt ends {head[-60:]!r}, conversation starts {full[:len(head)][-60:]!r})")
    return full[len(head):]


# --------------------------------------------------------------------------- token ids
# The one tokenisation of a prompt and a response, shared by training (batching),
# scoring (log-probs, evaluation) and generation, so every stage sees the same ids.


def prompt_token_ids(tokenizer, prompt: Prompt) -> list[int]:
    """Token ids of `render_prompt(tokenizer, prompt)`.

    A chat template writes its own BOS, so chat prompts get no special tokens
    (no doubled BOS); a plain-text prompt gets the tokenizer's usual specials
    (SmolLM2 adds none).
    """
    prompt = as_messages(tokenizer, prompt)
    text = render_prompt(tokenizer, prompt)
    return list(tokenizer(text, add_special_tokens=isinstance(prompt, str))["input_ids"])


def response_token_ids(tokenizer, prompt: Prompt, response: str) -> list[int]:
    """Token ids of `render_response(tokenizer, prompt, response)`, end-of-turn (or EOS)
    included and no special tokens added: they continue `prompt_token_ids(tokenizer, prompt)`."""
    text = render_response(tokenizer, prompt, response)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
