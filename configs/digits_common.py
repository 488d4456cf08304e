"""Settings shared by the configs on the embedded ``digits_av`` dataset (not a config itself)."""

from mmjax.config import default_config
from mmjax.data.vocab import Vocabulary

MODALITIES = ("image", "audio", "text")
VOCAB_SIZE = len(Vocabulary.digits_av())  # rows of the token embedding


def base(arg=None):
  """digits_av data, optimizer and schedule; ``arg`` may hold a modality name (unimodal baseline)
  and/or ``runlocal`` (a few-second run for smoke tests), comma-separated."""
  c = default_config()
  c.data.name = "digits_av"
  c.data.max_lengths = {"audio": 80, "text": 20}  # longest in the data: 79, 20
  c.batch_size = 64
  c.num_steps = 600
  c.optimizer.lr = 2e-3
  c.optimizer.schedule = "warmup_cosine"
  c.optimizer.warmup_steps = 50
  c.optimizer.weight_decay = 1e-4
  c.optimizer.clip_norm = 1.0
  c.log_every = 50
  c.eval_every = 200
  c.checkpoint_every = 200
  c.best_metric = "validation/loss"  # metrics.json["best"]: the checkpoint with the lowest validation loss
  c.best_mode = "min"
  return c


def with_robustness(c):
  """Adds the ``robustness`` evaluator: the test accuracy as each modality is dropped or noised, at the
  end of training (``<workdir>/robustness/``)."""
  c.evaluators.robustness = {"name": "robustness", "every": 0, "kwargs": {"split": "test"}}
  return c


def shrink(c):
  """``runlocal``: a few steps of a narrow model, no progress bar, no best checkpoint, no robustness."""
  c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 6, 2, 4, 3
  c.batch_size, c.eval_batch_size = 8, 64
  c.progress = False
  c.best_metric = ""
  if "robustness" in c.evaluators:
    del c.evaluators["robustness"]
  return c


def apply_arg(c, arg):
  """Applies the comma-separated config argument (a modality name and/or ``runlocal``)."""
  for part in (arg or "").split(","):
    if part in MODALITIES:
      c.model.kwargs.modalities = (part,)
    elif part == "runlocal":
      shrink(c)
      c.model.kwargs.width = 16
    elif part:
      raise ValueError(f"unknown config argument {part!r}; use one of {MODALITIES} or 'runlocal'")
  return c


# Workdirs of the unimodal classifiers that score cross-modal coherence (relative to the current directory).
CLASSIFIERS = {"image": "runs/classifiers/image", "audio": "runs/classifiers/audio"}


def generative(model: str, arg=None, **model_kwargs):
  """A generative model (``mfm``, ``mvae``, ``mmvae``) on digits_av, trained with the ``vae`` task
  (reconstruction of every modality, prior matching, the label loss).

  Two ``cross_modal`` evaluators report cross-modal coherence (speech -> image, text -> image, image ->
  speech) scored by the unimodal classifiers in :data:`CLASSIFIERS`: ``coherence`` on the validation split
  at every evaluation (with a speech -> image PNG grid in ``<workdir>/samples``) and ``test_coherence`` on
  the test split at the end. Train the classifiers first:
  ``mmjax train --config configs/late_fusion_digits.py:image --workdir runs/classifiers/image`` (and
  ``:audio``), or pass ``--config.evaluators.coherence.kwargs.pairs='' --config.evaluators.test_coherence.
  kwargs.pairs=''``. ``runlocal`` turns coherence off (the grid stays).
  """
  c = base()
  c.model.name = model
  c.model.kwargs = {"modalities": MODALITIES, "num_classes": 10, "vocab_size": VOCAB_SIZE, "width": 64,
                    **model_kwargs}
  c.task.name = "vae"
  pairs = "audio->image,text->image,image->audio"
  scored = {"pairs": pairs, "classifiers": dict(CLASSIFIERS)}
  c.evaluators.coherence = {"name": "cross_modal", "every": c.eval_every,
                            "kwargs": {"split": "validation", **scored, "grid": "audio->image"}}
  c.evaluators.test_coherence = {"name": "cross_modal", "every": 0, "kwargs": {"split": "test", **scored}}
  c = apply_arg(c, arg)
  if "runlocal" in (arg or "").split(","):
    c.evaluators.coherence.every = c.eval_every
    c.evaluators.coherence.kwargs.pairs = ""
    del c.evaluators["test_coherence"]
  return c
