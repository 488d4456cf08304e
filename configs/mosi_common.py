"""CMU-MOSI settings shared by the regression configs of TFN, LMF, MCTN and MBT (not a config itself)."""

from mmjax.config import default_config

TRAIN_EXAMPLES = 1284  # CMU-MOSI train split


def parse_alignment(arg) -> str:
  """``aligned`` (default) or ``unaligned``: the ``cmu_mosi`` builder config a MOSI config reads."""
  alignment = arg or "aligned"
  if alignment not in ("aligned", "unaligned"):
    raise ValueError(f"unknown config argument {arg!r}; use aligned (default) or unaligned")
  return alignment


def mosi_base(alignment: str, *, batch_size: int, epochs: int, lr: float, max_lengths=None,
              truncate: bool = True):
  """The ``cmu_mosi/<alignment>`` data (20 steps per modality, truncated, unless ``max_lengths`` says
  otherwise), sentiment regression with the L1 loss and the MOSI metrics, Adam at ``lr``, ``epochs`` epochs
  of ``batch_size``, and logging, evaluation and checkpoints once per epoch, keeping the checkpoint with the
  lowest validation loss."""
  c = default_config()
  c.data.name = f"cmu_mosi/{alignment}"
  c.data.max_lengths = dict(max_lengths or {"text": 20, "audio": 20, "vision": 20})
  c.data.truncate = truncate
  c.task.name = "regression"
  c.task.kwargs = {"loss_type": "l1", "metrics": "mosi"}
  c.batch_size = batch_size
  c.eval_batch_size = 256
  steps_per_epoch = TRAIN_EXAMPLES // batch_size
  c.num_steps = epochs * steps_per_epoch
  c.optimizer.name = "adam"
  c.optimizer.lr = lr
  c.log_every = c.eval_every = c.checkpoint_every = steps_per_epoch
  c.keep_checkpoints = 3
  c.best_metric = "validation/loss"
  c.best_mode = "min"
  return c
