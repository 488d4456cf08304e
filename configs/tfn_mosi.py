"""TFN (Zadeh et al., EMNLP 2017) on CMU-MOSI: sentiment regression in [-3, 3], L1 loss, the MOSI metrics.

Hyperparameters are the defaults of the PyTorch original (Justin1904/TensorFusionNetworks ``train.py``,
also the model's defaults in mmjax/models/tfn.py): subnetwork widths audio 4, visual 16, language LSTM 128
with a 64-d output; dropout 0.3 in every subnetwork and before the post-fusion network; 32 post-fusion
units; output ``-3 + 6 sigmoid(.)``; Adam at PyTorch's default learning rate 1e-3, batch 32, 50 epochs
(its ``--epochs`` default) with sequences cut to 20 steps (``--max_len``); the checkpoint with the best
validation L1 loss is the one to report (the original early-stops with patience 20 and keeps the best).
The authors' Theano code (A2Zadeh/TensorFusionNetwork ``tf_mosi.py``) uses wider modality vectors
(acoustic 32, visual 32, language LSTM 128 -> 64), two post-fusion layers of 160 units, dropout 0.2, the
output range (-4, 4), batch 128 and Adamax; override ``model.kwargs`` to follow it instead.

Data: the word-aligned CMU-MOSI features distributed with MulT (``cmu_mosi/aligned``; 300-d GloVe words,
COVAREP and FACET features), prepared once with ``mmjax data build cmu_mosi/aligned --manual_dir DIR``,
cut to their first 20 words. The originals read the CMU Multimodal SDK's features of 2017 (not available
here): the numbers are not directly comparable. Deviations of the model: see mmjax/models/tfn.py.
``FILE:unaligned`` uses the unaligned features (each modality cut to 20 steps of its own rate).
"""

from mmjax.config import default_config

TRAIN_EXAMPLES = 1284  # CMU-MOSI train split


def mosi_base(arg, batch_size: int, epochs: int, lr: float):
  """The CMU-MOSI data, regression task, Adam and per-epoch evaluation shared by tfn_mosi and lmf_mosi."""
  alignment = arg or "aligned"
  if alignment not in ("aligned", "unaligned"):
    raise ValueError(f"unknown config argument {arg!r}; use aligned (default) or unaligned")
  c = default_config()
  c.data.name = f"cmu_mosi/{alignment}"
  c.data.max_lengths = {"text": 20, "audio": 20, "vision": 20}
  c.data.truncate = True
  c.task.name = "regression"
  c.task.kwargs = {"loss_type": "l1", "metrics": "mosi"}
  c.batch_size = batch_size
  c.eval_batch_size = 256
  steps_per_epoch = TRAIN_EXAMPLES // batch_size
  c.num_steps = epochs * steps_per_epoch
  c.optimizer.name = "adam"
  c.optimizer.lr = lr
  c.log_every = steps_per_epoch
  c.eval_every = steps_per_epoch
  c.checkpoint_every = steps_per_epoch
  c.keep_checkpoints = 3
  c.best_metric = "validation/loss"
  c.best_mode = "min"
  return c


def get_config(arg=None):
  c = mosi_base(arg, batch_size=32, epochs=50, lr=1e-3)
  c.model.name = "tfn"
  c.model.kwargs = {"modalities": ("audio", "vision", "text"), "subnets": ("mlp", "mlp", "lstm"),
                    "hidden_dims": (4, 16, 128), "out_dims": (4, 16, 64), "dropouts": (0.3, 0.3, 0.3),
                    "post_fusion_dim": 32, "post_fusion_dropout": 0.3, "output_dim": 1,
                    "output_range": (-3.0, 3.0)}
  return c
