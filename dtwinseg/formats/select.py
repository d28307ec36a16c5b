"""The ``select`` reasoning format (DTwinSeger zero-shot, paper sec. 3.2): JSON(D) + query -> ``Answer: [ids]``.

The LLM reads JSON(D) (paper eq. 5) and the query, may think briefly, and ends with one line
``Answer: [i, j, ...]`` (``Answer: []`` when nothing matches), parsed by
:func:`dtwinseg.parsing.parse_indices`. As a training target it is just that line (answer span: the list).
"""

from __future__ import annotations

from dtwinseg.formats.base import (
    Completion,
    Decoded,
    FormatConfig,
    Target,
    chat,
    check_options,
    linear_budget,
    register_format,
    twin_intro,
)
from dtwinseg.parsing import parse_indices
from dtwinseg.spatial import SpatialConfig, twin_json
from dtwinseg.twin import DigitalTwin

TASK = (
    "Given a query, decide which objects the query refers to. The answer may be several objects, or "
    "none. Think briefly if needed, then end with one line exactly of the form "
    "'Answer: [id, id, ...]' (use 'Answer: []' if no object matches)."
)


def system_prompt_for(spatial_cfg: SpatialConfig | None = None) -> str:
    """The default system message: the twin's layout (dtwinseg.spatial.describe_twin), then the task."""
    return twin_intro(spatial_cfg) + TASK


SYSTEM_PROMPT = system_prompt_for()
USER_TEMPLATE = "Digital Twin:\n{twin}\n\nQuery: {query}"
BASE_TOKENS = 512  # the brief reasoning the prompt allows
TOKENS_PER_ID = 4


def select_messages(twin: DigitalTwin, query: str, spatial_cfg: SpatialConfig | None = None, *,
                    system_prompt: str | None = None, user_template: str | None = None,
                    indent: int | None = None) -> list[dict]:
    """Chat messages asking for the ids that satisfy ``query``."""
    dump = twin_json(twin, spatial_cfg, indent=indent, query=query)
    user = (user_template or USER_TEMPLATE).format(twin=dump, query=query)
    return chat(system_prompt_for(spatial_cfg) if system_prompt is None else system_prompt, user)


def answer_completion(ids: list[int]) -> Completion:
    """``Answer: [i, j]`` with the list as the answer span."""
    lst = "[" + ", ".join(str(int(i)) for i in sorted(ids)) + "]"
    text = f"Answer: {lst}"
    return Completion(text, [], [(len(text) - len(lst), len(text))])


class SelectFormat:
    """Zero-shot DTwinSeger: ask for the ids that satisfy the query. No options."""

    name = "select"

    def __init__(self, config: FormatConfig | None = None):
        self.config = config or FormatConfig()
        check_options(self.name, self.config.options, {})

    def messages(self, twin: DigitalTwin, query: str) -> list[dict]:
        c = self.config
        return select_messages(twin, query, c.spatial, system_prompt=c.system_prompt,
                               user_template=c.user_template, indent=c.indent)

    def target(self, twin: DigitalTwin, target: Target) -> Completion:
        return answer_completion(target.answer)

    def parse(self, text: str, twin: DigitalTwin) -> Decoded:
        return Decoded(parse_indices(text, twin.ids))

    def budget(self, twin: DigitalTwin) -> int:
        """``base_tokens`` (512: brief prose) + 4 tokens per object (every id in the list)."""
        return linear_budget(self.config, twin, TOKENS_PER_ID, BASE_TOKENS)


register_format("select", SelectFormat)
