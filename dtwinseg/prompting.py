"""Prompts of the zero-shot reasoning strategies, built on JSON(D) (paper eq. 5).

- ``select`` (DTwinSeger zero-shot): the LLM reads JSON(D) and the query and answers with the ids of
  the objects that satisfy the query, as ``Answer: [i, j, ...]`` (parsed by
  :func:`dtwinseg.parsing.parse_indices`).
- ``score`` (Rea2Seg-style comparative reasoning, seed 003): the LLM scores every object 0-10 against
  the query and answers with a JSON object ``{"<id>": score}`` (parsed by
  :func:`dtwinseg.parsing.parse_scores`); the reasoner reranks.

The SFTDT reasoning-path prompt lives with its renderer/parser in ``dtwinseg.paths`` (training and
inference must share it). Every prompt is a list of chat messages ``[{"role", "content"}]``; the text
pieces are fields of :class:`PromptConfig` so an ablation or another wording is a config change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from dtwinseg.spatial import SpatialConfig, twin_json
from dtwinseg.twin import DigitalTwin

SELECT_SYSTEM = (
    "You are a precise visual reasoning assistant. An image has been converted into a Digital Twin: a JSON "
    "object whose keys are object ids. For each object, \"spatial\" gives its bounding box "
    "[x_min, y_min, x_max, y_max] in pixels, its area as a percentage of the image and its spatial "
    "relations to nearby objects (by id); \"semantic\" describes what the object is. "
    "Given a query, decide which objects the query refers to. The answer may be several objects, or "
    "none. Think briefly if needed, then end with one line exactly of the form "
    "'Answer: [id, id, ...]' (use 'Answer: []' if no object matches)."
)
SELECT_USER = "Digital Twin:\n{twin}\n\nQuery: {query}"

SCORE_SYSTEM = (
    "You are a precise visual reasoning assistant. An image has been converted into a Digital Twin: a JSON "
    "object whose keys are object ids. For each object, \"spatial\" gives its bounding box "
    "[x_min, y_min, x_max, y_max] in pixels, its area as a percentage of the image and its spatial "
    "relations to nearby objects (by id); \"semantic\" describes what the object is. "
    "Compare all objects against the query and score how well each one matches it, from 0 (certainly "
    "not) to 10 (certainly the target). Score every object. Answer with one JSON object mapping every "
    "object id to its score, e.g. {\"0\": 2, \"1\": 9}, and nothing else."
)
SCORE_USER = "Digital Twin:\n{twin}\n\nQuery: {query}\n\nScore every object from 0 to 10."


@dataclass
class PromptConfig:
    """Wording of the zero-shot prompts.

    select_system / select_user: system message and user template (``{twin}`` = JSON(D), ``{query}``)
        of the ``select`` strategy.
    score_system / score_user: the same for the ``score`` strategy.
    indent: JSON(D) indentation (None = compact, the fewest tokens).
    """

    select_system: str = SELECT_SYSTEM
    select_user: str = SELECT_USER
    score_system: str = SCORE_SYSTEM
    score_user: str = SCORE_USER
    indent: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _messages(system: str, user: str) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": user}]


def select_messages(twin: DigitalTwin, query: str, spatial_cfg: SpatialConfig | None = None,
                    cfg: PromptConfig | None = None) -> list[dict]:
    """Chat messages asking for the ids that satisfy ``query`` (``select`` strategy)."""
    cfg = cfg or PromptConfig()
    user = cfg.select_user.format(twin=twin_json(twin, spatial_cfg, indent=cfg.indent), query=query)
    return _messages(cfg.select_system, user)


def score_messages(twin: DigitalTwin, query: str, spatial_cfg: SpatialConfig | None = None,
                   cfg: PromptConfig | None = None) -> list[dict]:
    """Chat messages asking for a 0-10 score of every object against ``query`` (``score`` strategy)."""
    cfg = cfg or PromptConfig()
    user = cfg.score_user.format(twin=twin_json(twin, spatial_cfg, indent=cfg.indent), query=query)
    return _messages(cfg.score_system, user)


def render_plain(messages: list[dict]) -> str:
    """Plain-text fallback for tokenizers without a chat template (BERT / MiniLM, raw base models).

    Format (documented, stable; identical to the SFTDT training data's ``PLAIN_TEMPLATE`` in
    data_builders/sft_dataset.py, so a model fine-tuned on it sees the same prompt at inference)::

        ### System:\n<system>\n\n### User:\n<user>\n\n### Assistant:\n

    The generation continues after the final ``### Assistant:\n``; a trailing assistant message (a
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
        (no special token added, exactly as the SFTDT training data); "template" requires a template; "plain" always uses the plain format. A template that rejects the system role gets
        the system text folded into the first user message.
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
