"""``zero_shot``: zero-shot classification, image-text retrieval and a linear probe for dual encoders
(:mod:`mmjax.models.clip`).

* **Zero-shot classification** (Radford et al., ICML 2021, sec. 3.1; the idea of classifying unseen classes
  through a shared image-text space: Socher et al., NeurIPS 2013): each class is described by prompts, the
  builder's caption templates filled with its name ("this is a seven .", "a handwritten seven .", ...);
  the class embedding is the normalised mean of its prompts' text embeddings (CLIP's prompt ensembling,
  sec. 3.1.4), and an image is given the class of the most similar class embedding. Reported on the
  held-out classes (``held_out``, classes never captioned in training under ``data.keep_labels``; chance
  ``1 / len(held_out)``), on the seen classes (chance ``1 / len(seen)``) and on all classes (chance 1/10),
  each among its own set of candidate classes.
* **Retrieval** on the split (one caption per image: the ``one_template`` captions): image -> text and
  text -> image Recall@K, K in ``ks``. Captions are templated, so many are the same text; a retrieved
  caption (image) counts as a hit when its text equals the query's own caption (when its caption's text
  equals the query caption): identical captions are indistinguishable, so no model could rank the paired
  one above its copies.
* **Linear probe** (the supervised comparison, Radford et al. sec. 3.2): multinomial logistic regression
  on the frozen, standardised image embeddings of ``probe_split`` with all classes' labels (full-batch
  Adam, ``probe_steps`` steps, L2 ``probe_l2``), scored on the split among the same candidate classes as
  the zero-shot accuracies. It uses the held-out classes' labels, which zero-shot never sees.

Metrics: ``zero_shot/held_out``, ``zero_shot/seen``, ``zero_shot/all``, ``probe/held_out``, ``probe/seen``,
``probe/all``, ``retrieval/i2t/R@K``, ``retrieval/t2i/R@K`` (fractions); the whole result also goes to
``<workdir>/zero_shot/NAME-stepN.json``.

kwargs: ``dataset`` (default ``digits_av_captions``: one caption per image; the training dataset's other
data settings are kept, ``keep_labels`` is dropped), ``split`` (``test``), ``probe_split`` (``train``),
``held_out`` (``"7,8,9"``), ``ks`` (``(1, 5, 10)``), ``probe_steps`` (500), ``probe_l2`` (1e-4),
``batch_size`` (``eval_batch_size``), ``class_names`` (the digit names ``zero`` .. ``nine``; class ``c`` is
``label == c``), ``templates`` (the builder's caption templates, ``{digit}`` standing for the name). Runs
on one process (the prompts are not split over processes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmjax.data import pipeline
from mmjax.data.builders.digits_av import LABEL_NAMES
from mmjax.data.builders.digits_av_captions import caption_templates, encode_caption
from mmjax.errors import ConfigError
from mmjax.evaluators.registry import Result, register
from mmjax.files import write_json


def class_prompts(class_names, templates, max_length: int) -> tuple[np.ndarray, np.ndarray]:
  """Token ids ``[C * P, max_length]`` and mask of every template filled with every class name (class
  major: rows ``c * P .. c * P + P - 1`` are class ``c``)."""
  rows = [encode_caption(t.format(digit=name)) for name in class_names for t in templates]
  if max(len(r) for r in rows) > max_length:
    raise ConfigError(f"zero_shot: a prompt is longer than data.max_lengths ({max_length} tokens)")
  tokens = np.zeros((len(rows), max_length), np.int32)
  for i, r in enumerate(rows):
    tokens[i, :len(r)] = r
  return tokens, tokens != 0


def class_embeddings(prompt_embeddings, num_classes: int) -> np.ndarray:
  """``[C * P, D]`` prompt embeddings -> ``[C, D]``: the normalised mean over each class's ``P`` prompts."""
  e = np.asarray(prompt_embeddings, np.float64).reshape(num_classes, -1, prompt_embeddings.shape[-1]).mean(1)
  return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def accuracy_among(scores, labels, classes) -> float:
  """Accuracy on the examples whose label is in ``classes`` of the argmax of ``scores [N, C]`` restricted to
  the columns ``classes``."""
  classes = np.asarray(classes)
  rows = np.isin(labels, classes)
  if not rows.any():
    return float("nan")
  predicted = classes[np.argmax(np.asarray(scores)[rows][:, classes], axis=1)]
  return float(np.mean(predicted == labels[rows]))


def recall_at_k(similarity, relevant, ks) -> dict[int, float]:
  """Recall@K of each query (row of ``similarity [Q, N]``): whether one of its ``K`` most similar items is
  relevant (``relevant [Q, N]`` bool). Ties are broken by item order (a stable sort)."""
  order = np.argsort(-np.asarray(similarity), axis=1, kind="stable")
  hits = np.take_along_axis(np.asarray(relevant), order, axis=1)
  return {k: float(np.mean(hits[:, :k].any(axis=1))) for k in ks}


def linear_probe(train_x, train_y, num_classes: int, *, steps: int = 500, l2: float = 1e-4, lr: float = 0.05):
  """Multinomial logistic regression on standardised features: returns ``predict(x) -> scores [N, C]``."""
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  x = jnp.asarray((train_x - mean) / std, jnp.float32)
  y = jax.nn.one_hot(jnp.asarray(train_y), num_classes)
  params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
  tx = optax.adam(lr)

  def loss_fn(p):
    logits = x @ p["w"] + p["b"]
    return optax.softmax_cross_entropy(logits, y).mean() + l2 * jnp.sum(p["w"] ** 2)

  @jax.jit
  def fit(p):
    def step(carry, _):
      p, s = carry
      g = jax.grad(loss_fn)(p)
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.lax.scan(step, (p, tx.init(p)), None, length=steps)
    return p

  params = jax.device_get(fit(params))
  return lambda features: ((features - mean) / std) @ params["w"] + params["b"]


@register("zero_shot")
class ZeroShot:
  """Zero-shot accuracy, retrieval Recall@K and a linear probe of a dual encoder (module docstring)."""

  def __init__(self, run, dataset: str = "digits_av_captions", split: str = "test",
               probe_split: str = "train", held_out: str = "7,8,9", ks=(1, 5, 10), probe_steps: int = 500,
               probe_l2: float = 1e-4, batch_size: int | None = None, class_names=None, templates=None):
    self.run = run
    self.data = run.config.data.copy_and_resolve_references()
    self.data.name = dataset
    self.data.keep_labels = ""
    self.split, self.probe_split = split, probe_split
    self.held_out = pipeline.parse_labels(held_out)
    self.class_names = tuple(class_names or LABEL_NAMES)
    self.templates = tuple(templates or caption_templates())
    self.ks = tuple(int(k) for k in ks)
    self.probe_steps, self.probe_l2 = int(probe_steps), float(probe_l2)
    self.batch_size = batch_size or run.config.eval_batch_size
    model = run.model
    self.image_key = getattr(model, "image_key", "image")
    self.text_key = getattr(model, "text_key", "caption_tokens")
    if self.text_key not in self.data.max_lengths:
      raise ConfigError(f"zero_shot: data.max_lengths has no {self.text_key!r} (the model's text_key)")
    bad = [c for c in self.held_out if not 0 <= c < len(self.class_names)]
    if bad:
      raise ConfigError(f"zero_shot: held_out classes {bad} are not class ids 0..{len(self.class_names) - 1}")
    if not all("{digit}" in t for t in self.templates):
      raise ConfigError(f"zero_shot: every template needs a {{digit}} field for the class name; got "
                        f"{self.templates}")
    self._embed = jax.jit(lambda params, batch: self._embed_fn(params, batch))

  def _embed_fn(self, params, batch):
    _, aux = self.run.model.apply({"params": params}, batch, train=False,
                                  rngs={"latent": jax.random.PRNGKey(0)})
    return aux["image"], aux["text"]

  def embeddings(self, params, split: str) -> dict[str, np.ndarray]:
    """Image and text embeddings, labels and caption tokens of the real examples of ``split``."""
    keep = []
    for local in pipeline.eval_batches(self.data, split, global_batch_size=self.batch_size,
                                       process_index=jax.process_index(), process_count=jax.process_count()):
      x, y = jax.device_get(self._embed(params, self.run.global_batch(local)))
      self._image_shape = np.shape(local[self.image_key])[1:]
      keep.append({"image": np.asarray(x), "text": np.asarray(y), "label": np.asarray(local["label"]),
                   "tokens": np.asarray(local[self.text_key]), "_valid": np.asarray(local["_valid"])})
    out = {k: np.concatenate([b[k] for b in keep]) for k in keep[0]}
    valid = out.pop("_valid") > 0
    return {k: v[valid] for k, v in out.items()}

  def prompt_embeddings(self, params, image_shape) -> np.ndarray:
    """``[C, D]`` class embeddings from the caption templates filled with each digit name."""
    tokens, mask = class_prompts(self.class_names, self.templates, int(self.data.max_lengths[self.text_key]))
    batch = {self.image_key: np.zeros((len(tokens), *image_shape), np.float32), self.text_key: tokens,
             f"{self.text_key}_mask": mask}
    _, y = jax.device_get(self._embed(params, batch))
    return class_embeddings(np.asarray(y), len(self.class_names))

  def scores(self, params) -> dict:
    test = self.embeddings(params, self.split)
    classes = self.prompt_embeddings(params, self._image_shape)
    labels = test["label"]
    all_classes = list(range(len(self.class_names)))
    seen = [c for c in all_classes if c not in self.held_out]
    zs = test["image"] @ classes.T
    metrics = {"zero_shot/held_out": accuracy_among(zs, labels, self.held_out),
               "zero_shot/seen": accuracy_among(zs, labels, seen),
               "zero_shot/all": accuracy_among(zs, labels, all_classes)}
    sim = test["image"] @ test["text"].T  # [images, captions]
    same = (test["tokens"][:, None, :] == test["tokens"][None, :, :]).all(-1)  # identical caption text
    for direction, s in (("i2t", sim), ("t2i", sim.T)):
      for k, r in recall_at_k(s, same, self.ks).items():
        metrics[f"retrieval/{direction}/R@{k}"] = r
    train = self.embeddings(params, self.probe_split)
    predict = linear_probe(train["image"], train["label"], len(self.class_names), steps=self.probe_steps,
                           l2=self.probe_l2)
    ps = predict(test["image"])
    metrics.update({"probe/held_out": accuracy_among(ps, labels, self.held_out),
                    "probe/seen": accuracy_among(ps, labels, seen),
                    "probe/all": accuracy_among(ps, labels, all_classes)})
    return metrics

  def evaluate(self, params, *, step: int, name: str) -> Result:
    metrics = self.scores(params)
    result = Result(metrics)
    if self.run.is_main:
      doc = {"split": self.split, "step": step, "held_out": list(self.held_out), "ks": list(self.ks),
             "chance": {"held_out": 1 / len(self.held_out), "all": 1 / len(self.class_names)},
             "metrics": metrics}
      result.files.append(write_json(self.run.workdir / "zero_shot" / f"{name}-step{step:06d}.json", doc))
    return result


__all__ = ["ZeroShot", "accuracy_among", "class_embeddings", "class_prompts", "linear_probe", "recall_at_k"]
