"""Parameters with logical axis names: flax layers whose initialisers are wrapped in
``nn.with_logical_partitioning`` (the MaxText / flax lm1b pattern), so every model's parameters can be
placed on a device mesh by rules in the config (:mod:`mmjax.train.mesh` lists the names and their default
mesh axes: ``embed``, ``mlp``, ``heads``, ``kv``, ``vocab``, ``features``, ``conv_in``, ``conv_out``,
``norm``, ``layers``).

Activations carry names too (:data:`ACTIVATION_AXES`, MaxText's ``activation_*``): :func:`constrain` pins
the residual stream, the attention heads and the MLP hidden layer to the mesh while the engine traces a step
inside :func:`activation_sharding`, so XLA's partitioner keeps the batch split over the data axes and the
heads / MLP width over ``tensor`` instead of guessing a layout from the parameters. Outside that context
(a model applied on its own) :func:`constrain` returns its input unchanged.

The helpers return the plain flax modules (``nn.Dense``, ``nn.DenseGeneral``, ``nn.Embed``, ``nn.Conv``,
``nn.LayerNorm``, ``nn.GroupNorm``) with flax's default initialisers, so parameter names, shapes and
initial values are those of the unannotated layers; only the boxes around the values are new
(``nn.unbox`` removes them; :func:`mmjax.train.mesh.tree_shardings` reads them).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

Axes = Sequence[str | None]
# Logical names of activation dimensions (their default mesh axes: mmjax.train.mesh.DEFAULT_RULES).
ACTIVATION_AXES = ("activation_batch", "activation_length", "activation_embed", "activation_heads",
                   "activation_kv", "activation_mlp")
BATCH_LENGTH_EMBED = ("activation_batch", "activation_length", "activation_embed")
BATCH_LENGTH_HEADS_KV = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
BATCH_LENGTH_MLP = ("activation_batch", "activation_length", "activation_mlp")
_ACTIVATION_CONTEXT = contextvars.ContextVar("mmjax_activation_sharding", default=None)

default_kernel_init = nn.initializers.lecun_normal()
default_embed_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)


def logical(init, axes: Axes):
  """``init`` whose parameter carries the logical axis names ``axes`` (one per dimension)."""
  return nn.with_logical_partitioning(init, tuple(axes))


def dense(features: int, axes: Axes, *, name: str | None = None, dtype=None, use_bias: bool = True,
          kernel_init=default_kernel_init, **kw) -> nn.Dense:
  """``nn.Dense`` with kernel axes ``axes = (in, out)`` and bias axes ``(out,)``."""
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name, kernel_init=logical(kernel_init, axes),
                  bias_init=logical(nn.initializers.zeros_init(), axes[-1:]), **kw)


def dense_general(features, axes: Axes, *, name: str, axis=-1, dtype=None, kernel_init=default_kernel_init,
                  **kw) -> nn.DenseGeneral:
  """``nn.DenseGeneral`` with kernel axes ``axes`` (contracted dims, then output dims); the bias takes the
  output dims' names."""
  n_out = len(features) if isinstance(features, (tuple, list)) else 1
  return nn.DenseGeneral(features, axis=axis, dtype=dtype, name=name, kernel_init=logical(kernel_init, axes),
                         bias_init=logical(nn.initializers.zeros_init(), tuple(axes)[-n_out:]), **kw)


def embed(num: int, features: int, *, name: str | None = None, axes: Axes = ("vocab", "embed"), dtype=None,
          embedding_init=default_embed_init) -> nn.Embed:
  """``nn.Embed`` with table axes ``axes`` (rows, columns)."""
  return nn.Embed(num, features, dtype=dtype, name=name, embedding_init=logical(embedding_init, axes))


def conv(features: int, kernel_size, *, name: str, axes: Axes = ("conv_in", "conv_out"), dtype=None,
         use_bias: bool = True, kernel_init=default_kernel_init, **kw) -> nn.Conv:
  """``nn.Conv``; ``axes`` names the (input, output) channels, the spatial dimensions are replicated."""
  spatial = (None,) * len(kernel_size)
  return nn.Conv(features, kernel_size, use_bias=use_bias, dtype=dtype, name=name,
                 kernel_init=logical(kernel_init, (*spatial, *axes)),
                 bias_init=logical(nn.initializers.zeros_init(), tuple(axes)[-1:]), **kw)


def layer_norm(*, name: str, dtype=None, **kw) -> nn.LayerNorm:
  """``nn.LayerNorm`` with scale and bias on the ``norm`` axis (statistics are computed in float32 even
  when ``dtype`` is bfloat16: flax promotes them)."""
  return nn.LayerNorm(dtype=dtype, name=name, scale_init=logical(nn.initializers.ones_init(), ("norm",)),
                      bias_init=logical(nn.initializers.zeros_init(), ("norm",)), **kw)


def group_norm(num_groups: int, *, name: str, dtype=None, **kw) -> nn.GroupNorm:
  """``nn.GroupNorm`` with scale and bias on the ``norm`` axis."""
  return nn.GroupNorm(num_groups=num_groups, dtype=dtype, name=name,
                      scale_init=logical(nn.initializers.ones_init(), ("norm",)),
                      bias_init=logical(nn.initializers.zeros_init(), ("norm",)), **kw)


def divisible_spec(spec: P, shape, mesh) -> P:
  """``spec`` with the mesh axes of every dimension they do not divide dropped (that dimension replicated):
  sharding is an optimisation and must never refuse a shape (4 heads on ``tensor = 8``, 10 classes)."""
  dims = []
  for i, names in enumerate(tuple(spec) + (None,) * (len(shape) - len(spec))):
    names_t = (names,) if isinstance(names, str) else tuple(names or ())
    size = math.prod(mesh.shape[a] for a in names_t)
    dims.append(names if names_t and shape[i] % size == 0 else None)
  return P(*dims)


@contextlib.contextmanager
def activation_sharding(mesh, rules):
  """While tracing inside this context, :func:`constrain` places activations on ``mesh`` by ``rules``
  (flax's rule list ``((logical, mesh_axes), ...)``, as :func:`mmjax.train.mesh.parse_rules` returns)."""
  token = _ACTIVATION_CONTEXT.set((mesh, tuple(rules)))
  try:
    yield
  finally:
    _ACTIVATION_CONTEXT.reset(token)


def current_mesh():
  """The mesh of the enclosing :func:`activation_sharding` context (the engine's step being traced), or
  None outside it. Losses with explicit collectives (SigLIP's ring, ``mmjax.tasks.contrastive``) read it."""
  context = _ACTIVATION_CONTEXT.get()
  return None if context is None else context[0]


def constrain(x: jax.Array, names: Axes) -> jax.Array:
  """``x`` with a sharding constraint from the logical names ``names`` (one per dimension, ``None`` =
  unconstrained replicated) inside :func:`activation_sharding`; ``x`` itself outside it. Dimensions their
  mesh axes do not divide stay replicated."""
  context = _ACTIVATION_CONTEXT.get()
  if context is None:
    return x
  if len(names) != x.ndim:
    raise ValueError(f"constrain: {len(names)} logical names {tuple(names)} for an array of shape {x.shape}")
  mesh, rules = context
  spec = divisible_spec(nn.logical_to_mesh_axes(tuple(names), rules), x.shape, mesh)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
