"""Settings shared by the MulT configs on CMU-MOSI, CMU-MOSEI and IEMOCAP (not a config itself).

Hyperparameters follow Table 5 of Tsai et al. (ACL 2019) (``mmjax.models.mult.VARIANTS``): batch size,
learning rate, width 40, 4 cross-modal layers, heads, kernel sizes, dropouts, gradient clipping, epochs
(converted to steps with the training-split sizes below). As in the original training script, the
validation split is evaluated once per epoch, the learning rate drops by 10x when the validation loss has
not improved for 20 epochs (PyTorch's ``ReduceLROnPlateau(factor=0.1, patience=20)``, which reduces on the
21st epoch without improvement; ``optax.contrib.reduce_on_plateau`` counts the reducing evaluation itself,
hence ``patience = 21`` here), and the checkpoint with the best validation loss is the one to report
(``metrics.json["best"]``, ``mmjax eval --step best``). The final state is evaluated too.
"""


from mmjax.config import default_config
from mmjax.models.mult import VARIANTS

# dataset: (tfds name, train examples, batch, lr, clip, epochs, task)
DATASETS = {
    "mosi": ("cmu_mosi", 1284, 128, 1e-3, 0.8, 100, "regression"),
    "mosei": ("cmu_mosei", 16326, 16, 1e-3, 1.0, 20, "regression"),
    "iemocap": ("iemocap", 2717, 32, 2e-3, 0.8, 30, "multilabel_binary"),
}
# Sequence lengths of the original pickles (text, audio, vision), reference notes.
LENGTHS = {
    ("mosi", "aligned"): (50, 50, 50), ("mosi", "unaligned"): (50, 375, 500),
    ("mosei", "aligned"): (50, 50, 50), ("mosei", "unaligned"): (50, 500, 500),
    ("iemocap", "aligned"): (50, 50, 50), ("iemocap", "unaligned"): (20, 400, 500),
}


def get_mult_config(dataset: str, arg=None):
  """MulT on ``dataset`` with ``arg`` = ``aligned`` | ``unaligned`` (default), optionally followed by
  ``,lonly`` / ``,aonly`` / ``,vonly`` (single-target ablations)."""
  parts = [p for p in (arg or "unaligned").split(",") if p]
  alignment = "aligned" if "aligned" in parts else "unaligned"
  unknown = set(parts) - {"aligned", "unaligned", "lonly", "aonly", "vonly"}
  if unknown:
    raise ValueError(f"unknown config argument(s) {sorted(unknown)}; "
                     "use aligned|unaligned[,lonly|aonly|vonly]")
  name, n_train, batch, lr, clip, epochs, task = DATASETS[dataset]
  c = default_config()
  c.seed = 1111  # the original's default seed
  c.data.name = f"{name}/{alignment}"
  c.data.max_lengths = dict(zip(("text", "audio", "vision"), LENGTHS[dataset, alignment], strict=True))
  c.model.name = "mult"
  c.model.kwargs = dict(VARIANTS[dataset])
  only = {"lonly": ("text",), "aonly": ("audio",), "vonly": ("vision",)}
  for p in parts:
    if p in only:
      c.model.kwargs.target_modalities = only[p]
  c.task.name = task
  c.batch_size = batch
  c.eval_batch_size = 256
  steps_per_epoch = n_train // batch
  c.num_steps = steps_per_epoch * epochs
  c.optimizer.name = "adam"
  c.optimizer.lr = lr
  c.optimizer.clip_norm = clip
  c.log_every = max(steps_per_epoch // 2, 1)
  c.eval_every = steps_per_epoch
  c.checkpoint_every = steps_per_epoch
  c.keep_checkpoints = 5
  c.optimizer.plateau.factor = 0.1
  c.optimizer.plateau.patience = 21  # = PyTorch's patience 20 (see the module docstring)
  c.optimizer.plateau.metric = "validation/loss"
  c.optimizer.plateau.mode = "min"
  c.best_metric = "validation/loss"
  c.best_mode = "min"
  return c
