"""LMF (Liu et al., ACL 2018) on CMU-MOSI: sentiment regression, L1 loss (as the original), MOSI metrics.

Where the numbers come from: the original code (Justin1904/Low-rank-Multimodal-Fusion) tunes MOSI by a
random search over a grid (``train_mosi.py``: audio/visual hidden 4, 8, 16; text hidden 64, 128, 256 with
text output half of it; dropouts 0-0.5; factor and base learning rates 3e-4-3e-3; rank 1, 4, 8, 16;
batch 4-128; weight decay 0-0.01; up to 500 epochs, early stopping with patience 20), and neither the
paper nor ``hyperparams.txt`` (POM and IEMOCAP only) states the chosen MOSI setting. Taken here, all from
that grid: the TFN PyTorch widths (audio 4, visual 16, text 128 -> 64; dropout 0.3), rank 4 (the rank of
most ``hyperparams.txt`` rows, and the paper's observation that small ranks suffice), learning rate 1e-3,
batch 32, no weight decay, 100 epochs keeping the checkpoint with the best validation loss. One learning
rate for all parameters: the original's separate ``factor_lr`` has no counterpart in the mmjax optimizer.

Data as in configs/tfn_mosi.py (word-aligned MulT features, 20 steps); ``FILE:unaligned`` for the
unaligned ones. Deviations of the model: see mmjax/models/lmf.py.
"""

from mosi_common import mosi_base, parse_alignment


def get_config(arg=None):
  c = mosi_base(parse_alignment(arg), batch_size=32, epochs=100, lr=1e-3)
  c.model.name = "lmf"
  c.model.kwargs = {"modalities": ("audio", "vision", "text"), "subnets": ("mlp", "mlp", "lstm"),
                    "hidden_dims": (4, 16, 128), "out_dims": (4, 16, 64), "dropouts": (0.3, 0.3, 0.3),
                    "rank": 4, "output_dim": 1}
  return c
