"""Chat messages -> the exact prompt text a local model sees (its chat template, or the plain layout).

The formats (dtwinseg/formats/) build the messages; this module only renders them, the same way for
training data (data_builders/sft_dataset.py) and for generation (dtwinseg/reasoning/backends.py).
Tokenizers without a chat template (BERT / MiniLM, raw base models) use :data:`PLAIN_TEMPLATE`.
"""

from __future__ import annotations

from typing import Any

PLAIN_TEMPLATE = "### System:\n{system}\n\n### User:\n{user}\n\n### Assistant:\n{assistant}"
"""Plain conversation layout (system, user, assistant); training appends the EOS (or SEP) token."""


def render_plain(messages: list[dict]) -> str:
    """Plain-text rendering for tokenizers without a chat template.

    Format (documented, stable; :data:`PLAIN_TEMPLATE` for a system + user conversation, so a model
    fine-tuned on it sees the same prompt at inference)::

        ### System:\\n<system>\\n\\n### User:\\n<user>\\n\\n### Assistant:\\n

    The generation continues after the final ``### Assistant:\\n``; a trailing assistant message (a
    prefilled answer) is appended after it.
    """
    parts = [f"### {str(m.get('role', 'user')).capitalize()}:\n{m.get('content', '')}" for m in messages]
    text = "\n\n".join(parts)
    if not messages or messages[-1].get("role") != "assistant":
        text += ("\n\n" if parts else "") + "### Assistant:\n"
    return text


def merge_system(messages: list[dict]) -> list[dict]:
    """Fold a leading system message into the first user message (for templates without a system role)."""
    if not messages or messages[0].get("role") != "system":
        return list(messages)
    system, rest = messages[0]["content"], list(messages[1:])
    if rest and rest[0].get("role") == "user":
        rest[0] = {"role": "user", "content": f"{system}\n\n{rest[0]['content']}"}
        return rest
    return [{"role": "user", "content": system}] + rest


def chat_prompt(tokenizer: Any, messages: list[dict], chat_template: str = "auto") -> str:
    """The exact prompt text a local model sees; tokenize it with ``add_special_tokens=False``.

    chat_template: "auto" uses the tokenizer's chat template when it has one, else :func:`render_plain`
        (no special token added, exactly as the SFTDT training data); "template" requires a template;
        "plain" always uses the plain format. A template that rejects the system role gets the system
        text folded into the first user message.
    """
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat_template == "template" and not has_template:
        raise ValueError("chat_template='template' but the tokenizer has no chat template")
    if chat_template != "plain" and has_template:
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - jinja TemplateError ("system role not supported") and kin
            text = tokenizer.apply_chat_template(merge_system(messages), tokenize=False,
                                                 add_generation_prompt=True)
        return str(text)
    return render_plain(messages)
