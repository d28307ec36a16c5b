"""The SFTDT loss weight of each token kind (paper eq. 10; method.md sec. 3): the one home of the defaults.

Kept free of heavy imports: the ``dtwinseg`` CLI builds its ``--w-<kind>`` options from these fields at
startup. Re-exported by :mod:`dtwinseg.formats` (``from dtwinseg.formats import LossWeights``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LossWeights:
    """The SFTDT loss weight of each token kind; the one home of the defaults 0, 1, 2, 4 (method.md sec. 3).

    Configs keep their flat fields (``w_prompt``, ``w_completion``, ``w_decision``, ``w_answer``: YAML keys
    and HF TrainingArguments stay flat) and take their defaults from :data:`DEFAULT_LOSS_WEIGHTS`.
    """

    prompt: float = field(default=0.0, metadata={"help": "prompt tokens (system, query, twin)"})
    completion: float = field(default=1.0, metadata={"help": "the other completion tokens (reasoning text)"})
    decision: float = field(default=2.0, metadata={"help": "decision tokens (object ids, verdicts, scores)"})
    answer: float = field(default=4.0, metadata={"help": "the final answer's tokens (the id list)"})

    @classmethod
    def of(cls, config: Any) -> LossWeights:
        """The weights of a config with flat ``w_*`` fields (a missing ``w_prompt`` is the default 0)."""
        return cls(float(getattr(config, "w_prompt", DEFAULT_LOSS_WEIGHTS.prompt)), float(config.w_completion),
                   float(config.w_decision), float(config.w_answer))

    def by_kind(self) -> list[float]:
        """``[prompt, completion, decision, answer]``: index with a token kind."""
        return [self.prompt, self.completion, self.decision, self.answer]

    def flat(self) -> dict[str, float]:
        """``{"w_completion": ..., "w_decision": ..., "w_answer": ...}``: the trainer's flat fields."""
        return {"w_completion": self.completion, "w_decision": self.decision, "w_answer": self.answer}


DEFAULT_LOSS_WEIGHTS = LossWeights()
UNWEIGHTED_LOSS = LossWeights(decision=1.0, answer=1.0)
"""Every completion token weighs 1 (the unweighted ablation of Table 4)."""
