"""The training engine: mesh, state, optimizer, jitted steps, checkpoints, and the loop."""

from mmjax.train.checkpoint import Checkpointer, CheckpointError
from mmjax.train.loop import BatchError, build_run, evaluate_checkpoint, train_and_evaluate
from mmjax.train.mesh import make_mesh, maybe_initialize_distributed
from mmjax.train.optim import make_optimizer
from mmjax.train.state import TrainState
from mmjax.train.step import eval_step, train_step

__all__ = [
    "BatchError", "CheckpointError", "Checkpointer", "TrainState", "build_run", "eval_step",
    "evaluate_checkpoint", "make_mesh", "make_optimizer", "maybe_initialize_distributed",
    "train_and_evaluate", "train_step",
]
