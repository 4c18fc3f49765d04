"""`charrnn train` in which one rank fails: CHARRNN_FAIL_RANK=r [CHARRNN_FAIL_STEP=n, default 1]
makes rank r raise a TrainingError after its step n. Launched by torchrun in test_distributed."""
import os
import sys

from charrnn_ext import cli
from charrnn_ext.errors import TrainingError
from charrnn_ext.train import Trainer

FAIL_RANK, FAIL_STEP = int(os.environ["CHARRNN_FAIL_RANK"]), int(os.environ.get("CHARRNN_FAIL_STEP", 1))
run = Trainer.run


def run_then_fail(self, callback=None):
    def fail(trainer, loss):
        if trainer.dist.rank == FAIL_RANK and trainer.step == FAIL_STEP:
            raise TrainingError(f"rank {FAIL_RANK} fails at step {FAIL_STEP} (CHARRNN_FAIL_RANK test hook)")
    return run(self, fail)


Trainer.run = run_then_fail
sys.argv[1:1] = ["train"]
cli.program()
