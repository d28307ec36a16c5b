"""SFTDT training: the weighted-loss trainer, recipes and launch.

``from dtwinseg.training import SFTDTConfig, SFTDTTrainer`` is the public entry; ``dtwinseg.training.run.train_from_recipe``
runs a recipe (YAML or dict) in this process; ``training.launch.launch`` builds the ``accelerate launch``
command for multi-process / DeepSpeed runs.
"""

from dtwinseg.training.trainer import SFTDTConfig, SFTDTTrainer, WeightedCollator

__all__ = ["SFTDTConfig", "SFTDTTrainer", "WeightedCollator"]
