"""Every prompt the perception stage sends to a VLM, in one place, plus the parsers of the answers.

Two uses (method.md sec. 1): the granularity decision L = F_VLM(x_img, x_txt) and the semantic assignment
S_i = F_VLM(x_img, x_txt, m_i, {m_j}), the latter with the three prompting strategies of the paper's
Table 4: ``direct``, ``in_context`` and ``system`` (the VLM first summarises what it observes, then selects
the final description), each in two forms: eq. 4 as the paper writes it (``others``: the region is numbered
on a whole image where every other mask {m_j} is outlined and numbered too, and the other masks are listed
with box, area and relation to the region) or the per-mask form (``none``: the region alone). In-context
examples are text only. Parsers are total: they never raise, and report whether they fell back.
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

_VIEWS_CONTEXT = (
    "You get two images: first a crop around one region (pixels outside the region are dimmed), then the "
    "whole image with that region outlined in red and labelled {index}, and every other region of the "
    "image outlined in cyan and labelled with its number."
)

CONTEXT_INTRO = ("The other regions (number: box [x_min, y_min, x_max, y_max], area, where it is relative to "
                 "region {index}):")

SEMANTIC_DIRECT = """{views}
The user's query about the image is: "{query}"
{context}
Describe {label} in one short phrase. Answer with the phrase only."""

SEMANTIC_IN_CONTEXT = """{views}
The user's query about the image is: "{query}"
{context}
Examples of good answers:
- a crop of a dog's head outlined on a photo of a park -> "head of a brown dog"
- a crop of a glass on a table -> "transparent drinking glass half full of water"
- a crop of several parked cars -> "row of parked cars"
- a crop of the handle of a mug, the whole mug being another region -> "handle of the white mug"

Describe {label} in one short phrase in the same style. Answer with the phrase only."""

SEMANTIC_SYSTEM_STRATEGY = """{views}
The user's query about the image is: "{query}"
{context}
First summarise what you observe in {label} and around it, including how it relates to any other
regions (one or two sentences, starting with "Observation:"). Then select the best short description of
{label}, on a last line starting with "Description:"."""

_TEMPLATES = {"direct": SEMANTIC_DIRECT, "in_context": SEMANTIC_IN_CONTEXT, "system": SEMANTIC_SYSTEM_STRATEGY}
CONTEXTS = ("others", "none")
MAX_SEMANTIC_CHARS = 120


def semantic_messages(query: str, strategy: str, index: int | None = None,
                      others: list[str] | None = None) -> tuple[str, str]:
    """(system, user) text of one mask's semantic request for ``strategy``.

    Per-mask form (``others`` None, the project's first form): the region alone. Eq. 4 form: ``index`` is
    the region's number on the outlined whole image and ``others`` the lines describing the other masks
    {m_j} (the caller decides how many; an empty list says there are none).
    """
    if strategy not in _TEMPLATES:
        raise ValueError(f"semantic strategy must be one of {STRATEGIES}, got {strategy!r}")
    if others is None:
        views, context, label = _VIEWS, "", "the outlined region"
    else:
        label = f"region {index}"
        views = _VIEWS_CONTEXT.format(index=index)
        lines = [CONTEXT_INTRO.format(index=index)] + [f"- {o}" for o in others] if others else \
            ["There are no other regions in the image."]
        context = "\n" + "\n".join(lines) + "\n"
    return SEMANTIC_SYSTEM, _TEMPLATES[strategy].format(views=views, query=query, context=context, label=label)


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
