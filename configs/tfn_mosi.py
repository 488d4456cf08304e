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

from mosi_common import mosi_base, parse_alignment


def get_config(arg=None):
  c = mosi_base(parse_alignment(arg), batch_size=32, epochs=50, lr=1e-3)
  c.model.name = "tfn"
  c.model.kwargs = {"modalities": ("audio", "vision", "text"), "subnets": ("mlp", "mlp", "lstm"),
                    "hidden_dims": (4, 16, 128), "out_dims": (4, 16, 64), "dropouts": (0.3, 0.3, 0.3),
                    "post_fusion_dim": 32, "post_fusion_dropout": 0.3, "output_dim": 1,
                    "output_range": (-3.0, 3.0)}
  return c
