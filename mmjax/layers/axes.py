"""Parameters with logical axis names: flax layers whose initialisers are wrapped in
``nn.with_logical_partitioning`` (the MaxText / flax lm1b pattern), so every model's parameters can be
placed on a device mesh by rules in the config (:mod:`mmjax.train.mesh` lists the names and their default
mesh axes: ``embed``, ``mlp``, ``heads``, ``kv``, ``vocab``, ``features``, ``conv_in``, ``conv_out``,
``norm``, ``layers``).

The helpers return the plain flax modules (``nn.Dense``, ``nn.DenseGeneral``, ``nn.Embed``, ``nn.Conv``,
``nn.LayerNorm``, ``nn.GroupNorm``) with flax's default initialisers, so parameter names, shapes and
initial values are those of the unannotated layers; only the boxes around the values are new
(``nn.unbox`` removes them; :func:`mmjax.train.mesh.tree_shardings` reads them).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn

Axes = Sequence[str | None]

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
