"""MCTN (Pham et al., AAAI 2019) on CMU-MOSI: the hierarchical (3-modality) MCTN of the paper's best setting,
text -> vision with the cycle back to text, then the joint representation -> audio; sentiment is predicted
from text alone.

Hyperparameters from the original code (hainow/MCTN, ``configs/hierarchical_mctn.yaml``, ``utils/args.py``,
the trimodal README command ``--feature t f c``): word-aligned sequences of 20 steps, LSTM widths 32
(encoders, decoders and the head's LSTM), encoder/decoder depth 1, bidirectional encoders, translation and
cycle loss weights 0.1 (MSE), the L1 (MAE) sentiment loss with weight 1, L2 0.01 on the output kernel, Adam
at 1e-4, batch 32, up to 200 epochs with early stopping after 20 epochs without a better validation loss;
the checkpoint with the lowest validation loss is the one to report (the original's
``ModelCheckpoint(save_best_only)`` and ``EarlyStopping(patience=20)`` on the validation loss, evaluated
once per epoch here too). The paper gives no other values.

Data: the word-aligned MOSI features distributed with MulT (``cmu_mosi/aligned``: GloVe text, COVAREP audio,
FACET vision), prepared once with ``mmjax data build cmu_mosi/aligned --manual_dir DIR``, cut to their first
20 words (``data.truncate``); the standard MOSI splits replace the original's 2/3 video split with 10 % of
it for validation. Deviation: the readouts are linear (``output_activation``); the original's ``tanh``
matched its inputs rescaled to [-1, 1] (FACET divided by its largest magnitude), which these features are not.
``FILE:unaligned`` uses the unaligned features (each modality cut to 20 steps of its own rate).
"""

from mosi_common import mosi_base, parse_alignment

EPOCHS = 200


def get_config(arg=None):
  c = mosi_base(parse_alignment(arg), batch_size=32, epochs=EPOCHS, lr=1e-4)
  c.model.name = "mctn"
  c.model.kwargs = {"source": "text", "targets": ("vision", "audio"), "num_classes": 1, "hidden_dim": 32,
                    "head_dim": 32, "encoder_layers": 1, "dropout": 0.0, "output_activation": "linear",
                    "translation_weight": 0.1, "cycle_weight": 0.1, "translation2_weight": 0.1,
                    "head_l2": 0.01}
  c.early_stopping_patience = 20
  return c
