"""The training engine: mesh, state, optimizer, jitted steps, checkpoints, runs and the loop.

``build_run`` / ``restore_run`` (:mod:`mmjax.train.run`) build or restore a run; ``train_and_evaluate``
(:mod:`mmjax.train.loop`) trains one. The engine names no model and no evaluator: it reaches both through
their registries (:mod:`mmjax.models`, :mod:`mmjax.evaluators`).
"""

from mmjax.train.checkpoint import Checkpointer, CheckpointError
from mmjax.train.loop import NonFiniteLossError, evaluate_checkpoint, train_and_evaluate
from mmjax.train.mesh import make_mesh, maybe_initialize_distributed
from mmjax.train.optim import Optimizer, make_optimizer
from mmjax.train.run import BatchError, Run, build_run, restore_run
from mmjax.train.state import TrainState
from mmjax.train.step import eval_step, train_step

__all__ = [
    "BatchError", "CheckpointError", "Checkpointer", "NonFiniteLossError", "Optimizer", "Run", "TrainState",
    "build_run", "eval_step", "evaluate_checkpoint", "make_mesh", "make_optimizer",
    "maybe_initialize_distributed", "restore_run", "train_and_evaluate", "train_step",
]
