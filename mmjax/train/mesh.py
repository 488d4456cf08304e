"""Device mesh and sharding rules; multi-host initialisation.

The mesh has three named axes, ``("data", "fsdp", "tensor")``. The batch is split over ``data`` and
``fsdp``. Every parameter of every model carries logical axis names (``nn.with_logical_partitioning``, in
the style of MaxText and flax's lm1b); the rules that map them to mesh axes live in the config
(``config.mesh.rules``, defaults :data:`DEFAULT_RULES`, the only place they are written). The logical names
(:data:`LOGICAL_AXES`):

* ``embed``: the model width (residual stream, embedding columns) -> ``fsdp``
* ``mlp``: hidden width of feed-forward layers and MLP heads -> ``tensor``
* ``heads``: attention heads -> ``tensor``
* ``kv``: width of one attention head -> replicated
* ``vocab``: rows of a token vocabulary -> ``tensor``
* ``features``: a width set by the data or the task (input features, a flattened image, a latent, the
  classes) -> replicated
* ``conv_in`` / ``conv_out``: input / output channels of a convolution -> ``fsdp`` / ``tensor``
* ``norm``: scale and bias of a LayerNorm / GroupNorm -> replicated
* ``layers``: the stacked layer axis of a scanned stack (``nn.scan``) -> replicated

and of activations (:data:`mmjax.layers.axes.ACTIVATION_AXES`, pinned by ``axes.constrain`` inside the
engine's jitted steps): ``activation_batch`` -> ``data, fsdp`` (the batch split, as the input batch is),
``activation_heads`` and ``activation_mlp`` -> ``tensor`` (Megatron-style: attention heads and the MLP
hidden layer split where their weights are), ``activation_length``, ``activation_embed``,
``activation_kv`` -> replicated.

A dimension that its mesh axes do not divide (a head count of 4 on ``tensor = 8``, 10 classes) stays
replicated: sharding is an optimisation and never changes results, so small test configs run on any mesh.
The same code runs on one CPU and on a multi-host pod.
"""

from __future__ import annotations

import math
import os

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax.errors import UserError
from mmjax.layers import axes

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
# Logical axis name -> mesh axes, comma-separated ("" = replicated): the defaults of config.mesh.rules.
DEFAULT_RULES = {
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv": "",
    "vocab": "tensor",
    "features": "",
    "conv_in": "fsdp",
    "conv_out": "tensor",
    "norm": "",
    "layers": "",
    "activation_batch": "data,fsdp",
    "activation_length": "",
    "activation_embed": "",
    "activation_heads": "tensor",
    "activation_kv": "",
    "activation_mlp": "tensor",
}
LOGICAL_AXES = tuple(DEFAULT_RULES)


def parse_rules(rules=None) -> tuple[tuple[str, tuple[str, ...]], ...]:
  """``{logical: "mesh_axis[,mesh_axis]"}`` (a config's ``mesh.rules``; missing names take
  :data:`DEFAULT_RULES`) -> flax's rule list ``((logical, (mesh_axes...)), ...)``, replicated names left
  out. Unknown names are a ``ValueError`` (the config validation reports them as a ``ConfigError``)."""
  merged = dict(DEFAULT_RULES)
  merged.update(dict(rules or {}))
  out = []
  for logical, value in merged.items():
    if logical not in LOGICAL_AXES:
      raise ValueError(f"unknown logical axis {logical!r}; logical axes are {LOGICAL_AXES}")
    axes = tuple(a.strip() for a in str(value or "").split(",") if a.strip())
    unknown = [a for a in axes if a not in AXES]
    if unknown:
      raise ValueError(f"logical axis {logical!r} maps to unknown mesh axes {unknown}; mesh axes are {AXES}")
    if len(set(axes)) != len(axes):
      raise ValueError(f"logical axis {logical!r} names a mesh axis twice: {value!r}")
    if axes:
      out.append((logical, axes))
  return tuple(out)


def maybe_initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    multihost: bool = False,
) -> None:
  """Calls ``jax.distributed.initialize`` when a multi-process run is requested.

  * An explicit coordinator: arguments left ``None`` are read from ``MMJAX_COORDINATOR``,
    ``MMJAX_NUM_PROCESSES`` and ``MMJAX_PROCESS_ID``; all three must be known.
  * ``multihost`` without a coordinator: ``jax.distributed.initialize()`` discovers the cluster itself
    (SLURM's ``SLURM_*`` variables, Open MPI's ``OMPI_*``, a Cloud TPU pod slice's metadata).
  * Neither: a single-process run; nothing happens.

  On the CPU backend the gloo collectives are selected so that CPU processes can communicate.
  """
  coordinator_address = coordinator_address or os.environ.get("MMJAX_COORDINATOR")
  if num_processes is None and "MMJAX_NUM_PROCESSES" in os.environ:
    num_processes = int(os.environ["MMJAX_NUM_PROCESSES"])
  if process_id is None and "MMJAX_PROCESS_ID" in os.environ:
    process_id = int(os.environ["MMJAX_PROCESS_ID"])
  if coordinator_address is None and not multihost:
    return
  if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator_address is None:
    try:
      jax.distributed.initialize()
    except (ValueError, RuntimeError) as e:
      raise UserError(
          f"--multihost could not discover the cluster ({e}). Under SLURM launch one process per host with "
          "srun; under Open MPI with mpirun; on a TPU pod slice run the command on every host. Elsewhere "
          "pass --coordinator HOST:PORT --num_processes N --process_id I to every process.") from None
    return
  if num_processes is None or process_id is None:
    raise UserError(
        "a multi-process run needs the coordinator address, the number of processes and this process's id "
        "(--coordinator, --num_processes, --process_id, or MMJAX_COORDINATOR, MMJAX_NUM_PROCESSES, "
        "MMJAX_PROCESS_ID)")
  jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
  )


def make_mesh(shape: dict | None = None, devices=None) -> Mesh:
  """A ``Mesh`` with axes :data:`AXES`.

  Args:
    shape: sizes per axis name, e.g. ``{"data": -1, "fsdp": 1, "tensor": 1}``; one axis may be ``-1``
      (all remaining devices). Defaults to pure data parallelism over every device.
    devices: the devices to use (default: ``jax.devices()``, all processes).
  """
  devices = np.asarray(jax.devices() if devices is None else devices)
  shape = dict(shape or {"data": -1})
  unknown = set(shape) - set(AXES)
  if unknown:
    raise ValueError(f"unknown mesh axes {sorted(unknown)}; mesh axes are {AXES}")
  sizes = [int(shape.get(a, 1)) for a in AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1; got {shape}")
  if -1 in sizes:
    rest = math.prod(s for s in sizes if s != -1)
    if devices.size % rest:
      raise ValueError(f"{devices.size} devices cannot fill mesh {shape}")
    sizes[sizes.index(-1)] = devices.size // rest
  if math.prod(sizes) != devices.size:
    wanted = dict(zip(AXES, sizes, strict=True))
    raise ValueError(f"mesh {wanted} needs {math.prod(sizes)} devices but {devices.size} are available")
  return Mesh(devices.reshape(sizes), AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data-parallel axes, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  """Fully replicated sharding."""
  return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
  """Number of shards of the batch dimension."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def tree_shardings(boxed_abstract_tree, mesh: Mesh, rules=None):
  """``NamedSharding`` for every leaf of an abstract (``eval_shape``) tree that may hold flax
  ``LogicallyPartitioned`` boxes, placed by ``rules`` (a config's ``mesh.rules`` mapping, see
  :func:`parse_rules`; default :data:`DEFAULT_RULES`); unannotated leaves are replicated, and so is any
  dimension its mesh axes do not divide. The result has the structure of the *unboxed* tree."""
  # Per leaf, not nn.get_partition_spec: optax keeps the boxes of masked parameters (frozen ones, or those
  # without weight decay) around an empty MaskedNode, which must stay an empty node, not become a leaf.
  def spec(x):
    if not isinstance(x, nn.meta.AxisMetadata):
      return P()
    return x.get_partition_spec() if jax.tree_util.tree_leaves(x.unbox()) else x.unbox()

  boxed = lambda x: isinstance(x, nn.meta.AxisMetadata)
  specs = jax.tree_util.tree_map(spec, boxed_abstract_tree, is_leaf=boxed)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, list(parse_rules(rules)))
  shapes = nn.unbox(boxed_abstract_tree)
  return jax.tree_util.tree_map(
      lambda sh, x: NamedSharding(mesh, axes.divisible_spec(sh.spec, x.shape, mesh)), shardings, shapes)
