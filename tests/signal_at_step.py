"""Run a module (``-m dtwinseg.cli ...`` or ``-m dtwinseg.training.run ...``) and send this process a real
signal when its trainer reaches a step: the deterministic stand-in for a scheduler's SIGTERM.

    SIGNAL_AT_STEP=3 [SIGNAL_NAME=SIGTERM] [SIGNAL_RANK=1] python tests/signal_at_step.py -m MODULE ARGS...

The signal goes out at the beginning of step ``SIGNAL_AT_STEP`` (after SIGNAL_AT_STEP - 1 optimizer steps)
on every rank, or only on rank ``SIGNAL_RANK``. Nothing of the trainer is replaced: a callback is added.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys

from dtwinseg.training import trainer as _trainer
from transformers import TrainerCallback

AT = int(os.environ["SIGNAL_AT_STEP"])
SIG = getattr(signal, os.environ.get("SIGNAL_NAME", "SIGTERM"))
RANK = os.environ.get("SIGNAL_RANK")


class SignalAtStep(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == AT - 1 and (RANK is None or os.environ.get("RANK", "0") == RANK):
            os.kill(os.getpid(), SIG)


_init = _trainer.SFTDTTrainer.__init__


def _init_with_signal(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.add_callback(SignalAtStep())


_trainer.SFTDTTrainer.__init__ = _init_with_signal

if __name__ == "__main__":
    assert sys.argv[1] == "-m", "usage: signal_at_step.py -m MODULE ARGS..."
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
