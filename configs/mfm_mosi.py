"""MFM (Tsai et al., ICLR 2019) on CMU-MOSI with the paper's MOSI settings.

From the original configuration (``shared/reference/mfm.md``): sequences of 20 steps, batch 256, input
widths text 300 / audio 5 / vision 20 (the word-aligned features), discriminative factor width 64, 50
epochs, reconstruction and prior-matching (MMD) weights 0.1, L1 sentiment loss; reported with the MOSI
metrics (Acc2, F1, Acc7, MAE, Corr).

Data: the word-aligned pickle distributed with MulT (``cmu_mosi/aligned``), prepared once with
``mmjax data build cmu_mosi/aligned --manual_dir DIR``; its sequences are cut to their first 20 words
(``data.truncate``). Deviations: the encoders/decoders are mmjax's shared transformer / per-step MLP ones (the
original: LSTMs and a Memory Fusion Network), the generative factors have the discriminative factor's
width, training is one stage (the original has two), and Adam's learning rate (1e-3) and the hidden width
(64) are our choices (not given in the reference notes). ``FILE:unaligned`` uses the unaligned features
(each modality cut to 20 steps of its own rate).
"""

from mmjax.config import default_config

TRAIN_EXAMPLES = 1284  # CMU-MOSI train split
EPOCHS = 50


def get_config(arg=None):
  alignment = arg or "aligned"
  if alignment not in ("aligned", "unaligned"):
    raise ValueError(f"unknown config argument {arg!r}; use aligned (default) or unaligned")
  c = default_config()
  c.data.name = f"cmu_mosi/{alignment}"
  c.data.max_lengths = {"text": 20, "audio": 20, "vision": 20}
  c.data.truncate = True
  c.model.name = "mfm"
  c.model.kwargs = {"modalities": ("text", "audio", "vision"), "image_modalities": (), "num_classes": 1,
                    "width": 64, "factor_dim": 64, "prior_matching": "mmd", "recon_weight": 0.1,
                    "prior_weight": 0.1, "label_weight": 1.0}
  c.task.name = "vae"
  c.task.kwargs = {"metrics": "mosi"}
  c.batch_size = 256
  c.eval_batch_size = 256
  steps_per_epoch = TRAIN_EXAMPLES // c.batch_size
  c.num_steps = EPOCHS * steps_per_epoch
  c.optimizer.name = "adam"
  c.optimizer.lr = 1e-3
  c.log_every = steps_per_epoch
  c.eval_every = 5 * steps_per_epoch
  c.checkpoint_every = 5 * steps_per_epoch
  return c
