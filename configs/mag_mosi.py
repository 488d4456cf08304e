"""MAG-BERT (Rahman et al., ACL 2020) on CMU-MOSI with the original code's hyperparameters.

Where the numbers come from (WasifurRahman/BERT_multimodal_transformer, ``multimodal_driver.py`` defaults and
``bert.py``): bert-base-uncased, MAG on the embedding output (``injection_layer = 0``; the original's
MAG-BERT calls MAG on ``embeddings(...)`` before the encoder), ``beta_shift = 1.0`` and MAG dropout 0.5,
batch 48, 40 epochs, AdamW with lr 1e-5, eps 1e-6 (transformers' AdamW default), weight decay 0.01 on all
but biases and LayerNorms, a linear schedule with 10 % warm-up, no gradient clipping, sequences of 50,
the ``[CLS]`` pooler + dropout 0.1 + ``Linear(768, 1)`` trained with MSE (task ``regression``). Epochs are
converted to steps with MOSI's 1,284 training examples (26 updates per epoch, as the original counts them).
The original scores the test split after every epoch and logs the best test accuracy; here the checkpoint
with the best validation loss is the one to report (``metrics.json["best"]``).

How the paper's BERT setting maps to ours, and what differs:

* BERT weights: ``config.init`` loads a LOCAL Hugging Face ``bert-base-uncased`` directory (``config.json``
  + ``model.safetensors``, e.g. a hub snapshot you download yourself; nothing is fetched) through the
  ``hf_bert`` loader into the ``text`` subtree; set ``--config.init.path=DIR`` (default
  ``checkpoints/bert-base-uncased``). ``--config.init.format=''`` trains from scratch. BERT is fine-tuned,
  as in the paper; ``FILE:frozen`` (``optimizer.frozen = "text/.*"``) keeps it fixed.
* Text input: the original tokenises the raw words with BERT's WordPiece and repeats each word's features over
  its pieces, with ``[CLS]``/``[SEP]`` around them. The ``cmu_mosi`` builder (the MulT pickles) carries no raw
  words, only 300-d GloVe vectors per word, so here a learned ``text_proj`` maps them to BERT's 768 in place
  of the word embeddings (positions, token types and the embedding LayerNorm are BERT's), and the pooler reads
  the first word's state (there is no ``[CLS]``). This is NOT the paper's input; its numbers should not be
  expected from this config.
* Nonverbal features: the MulT ``aligned`` pickles give MOSI COVAREP audio of 5 dims and Facet vision of 20
  (the original MAG data has 74 and 47); they are word-aligned, so MAG takes them as they are.
* Splits: the MulT pickles' 1,284 / 229 / 686 (the standard CMU-MOSI folds, as the original's).

Published numbers (MAG-BERT on CMU-MOSI, BERT input from raw text): see the report / README table; they come
from the paper's Table 1 and from MMSA's re-run, not from this config.
"""

from mmjax.config import default_config

N_TRAIN = 1284  # CMU-MOSI training examples
BATCH = 48
EPOCHS = 40
BERT_DIR = "checkpoints/bert-base-uncased"


def get_config(arg=None):
  """``arg``: empty (BERT fine-tuned, as the paper) or ``frozen`` (BERT kept fixed: only MAG, the
  ``text_proj`` and the head learn)."""
  if arg not in (None, "", "frozen"):
    raise ValueError(f"configs/mag_mosi.py takes no argument or 'frozen'; got {arg!r}")
  c = default_config()
  c.data.name = "cmu_mosi/aligned"
  c.data.max_lengths = {"text": 50, "audio": 50, "vision": 50}
  c.model.name = "mag"
  c.model.kwargs = {"output_dim": 1, "text_model": "bert", "bert": {}, "injection_layer": 0,
                    "beta_shift": 1.0, "eps": 1e-6, "dropout": 0.5, "modalities": ("text", "audio", "vision"),
                    "alignment": "error", "pool": "cls"}  # bert: {} = bert-base-uncased's shape
  c.task.name = "regression"
  c.batch_size = BATCH
  c.eval_batch_size = 128
  steps_per_epoch = N_TRAIN // BATCH
  c.num_steps = steps_per_epoch * EPOCHS
  c.optimizer.name = "adamw"
  c.optimizer.lr = 1e-5
  c.optimizer.eps = 1e-6
  c.optimizer.weight_decay = 0.01
  c.optimizer.schedule = "linear"
  c.optimizer.warmup_steps = int(0.1 * c.num_steps)
  c.optimizer.clip_norm = 0.0
  c.init.format = "hf_bert"
  c.init.path = BERT_DIR
  c.init.source = ""
  c.init.target = "text"
  c.log_every = max(steps_per_epoch // 2, 1)
  c.eval_every = steps_per_epoch
  c.checkpoint_every = steps_per_epoch
  c.keep_checkpoints = 3
  c.best_metric = "validation/loss"
  c.best_mode = "min"
  if arg == "frozen":
    c.optimizer.frozen = "text/.*"
  return c
