"""Contrastive image-text losses over the global batch: CLIP's symmetric InfoNCE, SigLIP's pairwise sigmoid.

The model (e.g. :mod:`mmjax.models.clip`) returns ``aux = {"image": x [B, D], "text": y [B, D], "scale": s,
"bias": b}`` with L2-normalised rows; pair ``i`` is ``(x_i, y_i)``.

* ``loss_type="clip"`` (Radford et al., ICML 2021, Fig. 3): ``logits = s x y^T [B, B]``; the loss is the
  mean of the cross-entropy of each row (image -> its text) and each column (text -> its image).
* ``loss_type="sigmoid"`` (Zhai et al., ICCV 2023, eq. 1 / Algorithm 1): every pair is a binary problem,
  ``z_ij = 1`` if ``i = j`` else ``-1``: ``L = -1/B sum_i sum_j log sigmoid(z_ij (s <x_i, y_j> + b))``.

The global batch. Under the engine's ``jit`` the batch is split over the mesh's data axes, but the loss is
written on the whole ``[B, B]`` logits, so XLA gathers the embeddings it needs and the gradient flows back to
every device's examples: no hand-written "all-gather with gradient" (as data-parallel PyTorch code needs) is
required, and the loss and gradients on a mesh equal those on one device (tests/test_clip.py checks it).

SigLIP's chunked form (paper sec. 3.3, Fig. 1). With ``chunked=True`` and a mesh whose data axes hold more
than one device, the sigmoid loss runs in :func:`sigmoid_loss_chunked`: a ``jax.shard_map`` over the batch
axes where each device keeps its ``b = B / n`` image embeddings, computes the ``b x b`` block against the
text embeddings it holds, and passes those texts to its neighbour (``jax.lax.ppermute``) ``n - 1`` times;
the positives are only in the first (own) block. No device forms the ``B x B`` logits. The mesh is the one
the engine traces the step under (:func:`mmjax.layers.axes.current_mesh`); without one (a model applied
on its own, evaluation) the dense form runs, which is mathematically the same.

Padding: examples with ``batch["_valid"] == 0`` (filling the last evaluation batch) take part in no pair:
their rows and columns are masked, and the loss is normalised by the number of real examples.

Evaluation (``eval_sums``): the loss of each evaluation batch times its real examples, so the split loss is
a mean of per-batch losses (a contrastive loss depends on the batch it is computed in; evaluation batches
are ``eval_batch_size`` examples), and ``i2t_accuracy`` / ``t2i_accuracy``: how often an image's own
caption is the best-scoring caption of its batch (and vice versa; a batch holds several images of a digit
with the same caption text, so these stay well below 1 even for a perfect model). With ``accum_steps > 1``
each micro-batch is its own contrastive batch (fewer negatives): the update is not that of the full batch.
Zero-shot classification and retrieval over a whole split are :mod:`mmjax.evaluators.zero_shot`.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from mmjax.layers import axes
from mmjax.tasks.checks import LabelError

NEG = -1e9  # logit of a masked (padding) column


def _weights(batch: dict, n: int):
  w = batch.get("_valid")
  return jnp.ones((n,), jnp.float32) if w is None else w.astype(jnp.float32)


def clip_loss(x, y, scale, w=None):
  """Symmetric InfoNCE of ``x, y [B, D]`` with logit scale ``scale``; ``w [B]`` example weights (0/1)."""
  x, y = x.astype(jnp.float32), y.astype(jnp.float32)
  n = x.shape[0]
  w = jnp.ones((n,), jnp.float32) if w is None else w
  logits = scale * jnp.einsum("id,jd->ij", x, y)
  valid = (w > 0)
  row = jnp.where(valid[None, :], logits, NEG)  # image i against the real texts
  col = jnp.where(valid[:, None], logits, NEG)  # text j against the real images
  diag = jnp.diagonal(logits)
  i2t = jax.nn.logsumexp(row, axis=1) - diag
  t2i = jax.nn.logsumexp(col, axis=0) - diag
  per_example = 0.5 * (i2t + t2i)
  return (per_example * w).sum() / jnp.maximum(w.sum(), 1.0)


def sigmoid_loss(x, y, scale, bias, w=None):
  """SigLIP's loss of ``x, y [B, D]``: ``-1/B sum_ij log sigmoid(z_ij (scale <x_i, y_j> + bias))``."""
  x, y = x.astype(jnp.float32), y.astype(jnp.float32)
  n = x.shape[0]
  w = jnp.ones((n,), jnp.float32) if w is None else w
  logits = scale * jnp.einsum("id,jd->ij", x, y) + bias
  z = 2.0 * jnp.eye(n, dtype=jnp.float32) - 1.0
  pair_w = w[:, None] * w[None, :]
  return -(jax.nn.log_sigmoid(z * logits) * pair_w).sum() / jnp.maximum(w.sum(), 1.0)


def sigmoid_loss_chunked(x, y, scale, bias, w=None, *, mesh, batch_axes=("data", "fsdp")):
  """:func:`sigmoid_loss` computed blockwise on ``mesh``: each device of the ``batch_axes`` holds its
  images; the texts go round the ring (``ppermute``), one ``b x b`` block per step (SigLIP sec. 3.3).

  ``B`` must be divisible by the number of devices on ``batch_axes``; other mesh axes hold copies."""
  batch_axes = tuple(a for a in batch_axes if a in mesh.shape)
  n = math.prod(mesh.shape[a] for a in batch_axes)
  if x.shape[0] % n:
    raise ValueError(f"chunked sigmoid loss: batch {x.shape[0]} is not divisible by the {n} devices of the "
                     f"mesh axes {batch_axes}")
  w = jnp.ones((x.shape[0],), jnp.float32) if w is None else w
  ring = [(i, (i + 1) % n) for i in range(n)]
  spec = P(batch_axes)

  @functools.partial(jax.shard_map, mesh=mesh, in_specs=(spec, spec, P(), P(), spec), out_specs=P())
  def blocks(xb, yb, s, b, wb):
    xb, yb = xb.astype(jnp.float32), yb.astype(jnp.float32)
    yw = wb  # the weights of the texts this device holds
    total = jnp.zeros((), jnp.float32)
    eye = jnp.eye(xb.shape[0], dtype=jnp.float32)
    for step in range(n):  # after `step` hops this device holds the texts of device (index - step) mod n
      z = 2.0 * eye - 1.0 if step == 0 else -jnp.ones_like(eye)  # positives only in the own block
      logits = s * jnp.einsum("id,jd->ij", xb, yb) + b
      total += (jax.nn.log_sigmoid(z * logits) * (wb[:, None] * yw[None, :])).sum()
      if step + 1 < n:
        yb, yw = jax.lax.ppermute((yb, yw), batch_axes, ring)
    return -jax.lax.psum(total, batch_axes) / jnp.maximum(jax.lax.psum(wb.sum(), batch_axes), 1.0)

  return blocks(x, y, jnp.asarray(scale, jnp.float32), jnp.asarray(bias, jnp.float32), w)


def retrieval_accuracy(x, y, w):
  """In-batch top-1 ``(image -> text, text -> image)`` correctness ``[B]`` each, over the real examples."""
  logits = jnp.einsum("id,jd->ij", x.astype(jnp.float32), y.astype(jnp.float32))
  valid = w > 0
  idx = jnp.arange(x.shape[0])
  i2t = jnp.argmax(jnp.where(valid[None, :], logits, NEG), axis=1) == idx
  t2i = jnp.argmax(jnp.where(valid[:, None], logits, NEG), axis=0) == idx
  return i2t.astype(jnp.float32), t2i.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Contrastive:
  """CLIP (``loss_type="clip"``) or SigLIP (``loss_type="sigmoid"``) loss on the model's ``aux``."""

  loss_type: str = "clip"  # or "sigmoid" (a field cannot be called `loss`: that is the method)
  chunked: bool = False  # SigLIP only: the ring (shard_map + ppermute) form on the engine's mesh

  def __post_init__(self):
    if self.loss_type not in ("clip", "sigmoid"):
      raise ValueError(f"contrastive task: loss_type {self.loss_type!r} is not 'clip' or 'sigmoid' (set "
                       "task.kwargs.loss_type)")
    if self.chunked and self.loss_type != "sigmoid":
      raise ValueError("contrastive task: chunked=True is the SigLIP ring form; set "
                       "task.kwargs.loss_type='sigmoid'")

  def _loss(self, aux, w):
    x, y, s, b = aux["image"], aux["text"], aux["scale"], aux["bias"]
    if self.loss_type == "clip":
      return clip_loss(x, y, s, w)
    mesh = axes.current_mesh()
    if self.chunked and mesh is not None:
      n = math.prod(mesh.shape[a] for a in ("data", "fsdp") if a in mesh.shape)
      if n > 1 and x.shape[0] % n == 0:
        return sigmoid_loss_chunked(x, y, s, b, w, mesh=mesh)
    return sigmoid_loss(x, y, s, b, w)

  def loss(self, outputs, aux, batch):
    """The contrastive loss of the batch, the scale and bias, and (not with ``chunked``, whose point is
    never to form the ``[B, B]`` similarities) the in-batch retrieval accuracies."""
    del outputs
    w = _weights(batch, aux["image"].shape[0])
    loss = self._loss(aux, w)
    metrics = {"loss": loss, "scale": aux["scale"], "bias": aux["bias"]}
    if not self.chunked:
      i2t, t2i = retrieval_accuracy(aux["image"], aux["text"], w)
      n = jnp.maximum(w.sum(), 1.0)
      metrics.update(i2t_accuracy=(i2t * w).sum() / n, t2i_accuracy=(t2i * w).sum() / n)
    return loss, metrics

  def eval_sums(self, outputs, aux, batch):
    """Per-batch loss times the real examples, in-batch retrieval hits, and the count (module docstring)."""
    del outputs
    w = _weights(batch, aux["image"].shape[0])
    n = w.sum()
    i2t, t2i = retrieval_accuracy(aux["image"], aux["text"], w)
    dense = dataclasses.replace(self, chunked=False)
    return {"loss": dense._loss(aux, w) * n, "i2t_accuracy": (i2t * w).sum(), "t2i_accuracy": (t2i * w).sum(),
            "count": n}

  def check_batch(self, batch: dict, outputs_shape: tuple) -> None:
    """A contrastive batch needs at least two examples (a single pair has no negatives)."""
    del batch
    if int(outputs_shape[0]) < 2:
      raise LabelError(f"contrastive task: a batch of {outputs_shape[0]} example has no negative pairs; use "
                       "batch_size >= 2")
