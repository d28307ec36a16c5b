"""Every prompt the perception stage sends to a VLM, in one place, plus the parsers of the answers.

Two uses (method.md sec. 1): the granularity decision L = F_VLM(x_img, x_txt) and the semantic assignment
S_i = F_VLM(x_img, x_txt, m_i, {m_j}), the latter with the three prompting strategies of the paper's
Table 4: ``direct``, ``in_context`` and ``system`` (the VLM first summarises what it observes, then selects
the final description). Parsers are total: they never raise, and report whether they fell back.
"""

from __future__ import annotations

import re

STRATEGIES = ("direct", "in_context", "system")

# --- granularity -----------------------------------------------------------------------------------

GRANULARITY_SYSTEM = (
    "You help a segmentation system decide at which granularity to segment an image so that the "
    "answer to a user's query can be found."
)

GRANULARITY_USER = """Query: "{query}"

Look at the image. At which level must the image be segmented to answer the query?
0 = a group of several objects (e.g. "all the books on the shelf", "the crowd")
1 = a single whole object (e.g. "the dog", "something to sit on")
2 = a part of an object (e.g. "the handle of the mug", "the roof of the house")

Answer with a single digit: 0, 1 or 2."""

_LEVEL_WORDS = {"group": 0, "groups": 0, "object": 1, "whole": 1, "part": 2, "parts": 2}


def granularity_messages(query: str) -> tuple[str, str]:
    """(system, user) text of the granularity request; the whole image goes with the user turn."""
    return GRANULARITY_SYSTEM, GRANULARITY_USER.format(query=query)


def parse_granularity(answer: str, fallback: int = 1) -> tuple[int, bool]:
    """The level in an answer -> (level, fell_back). First standalone digit 0-2, else a level word."""
    text = answer or ""
    m = re.search(r"(?<![\d.])([012])(?!\d|\.\d)", text)
    if m:
        return int(m.group(1)), False
    words = re.findall(r"[a-z]+", text.lower())
    hits = {_LEVEL_WORDS[w] for w in words if w in _LEVEL_WORDS}
    if len(hits) == 1:
        return hits.pop(), False
    return fallback, True


# --- semantic assignment ---------------------------------------------------------------------------

SEMANTIC_SYSTEM = (
    "You describe image regions for a reasoning-segmentation system. A description names the object "
    "(or part, or group) and its distinguishing attributes: category, colour, material, state, function. "
    "Keep it to one short phrase."
)

_VIEWS = (
    "You get two images: first a crop around one region (pixels outside the region are dimmed), then the "
    "whole image with the region outlined in red."
)

SEMANTIC_DIRECT = _VIEWS + """
The user's query about the image is: "{query}"

Describe the outlined region in one short phrase. Answer with the phrase only."""

SEMANTIC_IN_CONTEXT = _VIEWS + """
The user's query about the image is: "{query}"

Examples of good answers:
- a crop of a dog's head outlined on a photo of a park -> "head of a brown dog"
- a crop of a glass on a table -> "transparent drinking glass half full of water"
- a crop of several parked cars -> "row of parked cars"

Describe the outlined region in one short phrase in the same style. Answer with the phrase only."""

SEMANTIC_SYSTEM_STRATEGY = _VIEWS + """
The user's query about the image is: "{query}"

First summarise what you observe in the region and around it (one or two sentences, starting with
"Observation:"). Then select the best short description of the region, on a last line starting with
"Description:"."""

_TEMPLATES = {"direct": SEMANTIC_DIRECT, "in_context": SEMANTIC_IN_CONTEXT, "system": SEMANTIC_SYSTEM_STRATEGY}
MAX_SEMANTIC_CHARS = 120


def semantic_messages(query: str, strategy: str) -> tuple[str, str]:
    """(system, user) text of one mask's semantic request for ``strategy``."""
    if strategy not in _TEMPLATES:
        raise ValueError(f"semantic strategy must be one of {STRATEGIES}, got {strategy!r}")
    return SEMANTIC_SYSTEM, _TEMPLATES[strategy].format(query=query)


def parse_semantic(answer: str, strategy: str) -> tuple[str, bool]:
    """The description in an answer -> (text, fell_back). ``system`` answers keep the Description line;
    empty or unusable answers give ("", True)."""
    text = (answer or "").strip()
    if strategy == "system":
        m = re.findall(r"description\s*:\s*(.+)", text, flags=re.IGNORECASE)
        if m:
            text = m[-1]
        else:
            text = re.sub(r"(?is)^observation\s*:.*?(\n|$)", "", text).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = line.strip(" \t\"'`*-.").strip()
    if not re.search(r"[A-Za-z\u00c0-\uffff]", line):
        return "", True
    return line[:MAX_SEMANTIC_CHARS], False
