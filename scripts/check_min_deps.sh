#!/usr/bin/env bash
# Build a fresh virtual environment with every runtime dependency at its lower bound (constraints-min.txt),
# probe the third-party APIs the engine relies on, and run the engine tests against it.
#   scripts/check_min_deps.sh [pytest args...]   (default: the engine tests below)
# Used by .ci/run; to re-check the bounds after a change, run it by hand (about 3-5 minutes on 2 cores).
# To find a bound again: install the newest of everything, lower one package, and run this probe and
# the same tests (see the log at the top of constraints-min.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d -t mmjax-min-venv.XXXXXX)
python3 -m venv "$venv"
. "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
start=$SECONDS
pip install --quiet -c constraints-min.txt -e ".[test]"
echo "== min venv installed in $((SECONDS - start))s:"
pip list 2>/dev/null | grep -iE "^(jax|jaxlib|flax|optax|orbax-checkpoint|tensorflow-datasets|grain|ml.collections|numpy|protobuf|tensorboardX|matplotlib) " | tr -s ' ' | paste -sd ';' -
start=$SECONDS
python - <<'PY'
# The APIs the engine uses or is about to use, each exercised once; a missing one names its package.
import sys
import tempfile

import numpy as np

failed = []


def check(name):
  def wrap(fn):
    try:
      fn()
      print(f"ok   {name}")
    except Exception as e:  # noqa: BLE001
      failed.append(name)
      print(f"FAIL {name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
  return wrap


@check("jax: make_array_from_process_local_data, tree_flatten_with_path, dot_product_attention")
def _():
  import jax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
  a = jax.make_array_from_process_local_data(NamedSharding(mesh, PartitionSpec("data")), np.ones((2, 3)))
  assert a.shape == (2, 3)
  leaves, _ = jax.tree_util.tree_flatten_with_path({"a": 1, "b": [2]})
  assert len(leaves) == 2
  q = np.ones((1, 4, 2, 8), np.float32)
  jax.nn.dot_product_attention(q, q, q, is_causal=True, key_value_seq_lengths=np.array([3], np.int32),
                               implementation=None)


@check("flax: nn.with_logical_partitioning, nn.logical_to_mesh_sharding")
def _():
  import flax.linen as nn
  import jax
  from jax.sharding import Mesh

  class M(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(4, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                                  ("embed", "mlp")))(x)

  abstract = jax.eval_shape(M().init, jax.random.PRNGKey(0), np.ones((1, 3), np.float32))
  mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "tensor"))
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh,
                                          [("embed", None), ("mlp", "tensor")])
  assert shardings["params"]["Dense_0"]["kernel"].spec == jax.sharding.PartitionSpec(None, "tensor")


@check("optax: optax.contrib.reduce_on_plateau")
def _():
  import jax.numpy as jnp
  import optax
  from optax import contrib
  tx = optax.chain(optax.adam(1e-3), contrib.reduce_on_plateau(factor=0.5, patience=1, cooldown=0))
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  for _ in range(4):
    _, state = tx.update({"w": jnp.ones(3)}, state, params, value=jnp.asarray(1.0))
  assert float(state[1].scale) < 1.0, state[1]


@check("orbax: CheckpointManagerOptions(preservation_policy=AnyPreservationPolicy([LatestN, BestN]))")
def _():
  import orbax.checkpoint as ocp
  from orbax.checkpoint.checkpoint_managers import preservation_policy as pp
  policy = pp.AnyPreservationPolicy([pp.LatestN(n=1), pp.BestN(get_metric_fn=lambda m: m["loss"], reverse=True, n=1)])
  with tempfile.TemporaryDirectory() as d:
    mgr = ocp.CheckpointManager(d, options=ocp.CheckpointManagerOptions(preservation_policy=policy))
    for step, loss in ((1, 3.0), (2, 1.0), (3, 2.0), (4, 5.0)):
      mgr.save(step, args=ocp.args.StandardSave({"x": np.full(2, step, np.float32)}), metrics={"loss": loss})
    mgr.wait_until_finished()
    assert sorted(mgr.all_steps()) == [2, 4], mgr.all_steps()
    mgr.close()


@check("grain: grain.MapDataset")
def _():
  import grain
  ds = grain.MapDataset.source(list(range(10))).shuffle(seed=0).map(lambda x: 2 * x).batch(4)
  assert sorted(np.concatenate(list(ds)).tolist()) == list(range(0, 20, 2))


@check("tfds: builder.as_data_source (array_record)")
def _():
  import tensorflow_datasets as tfds
  assert hasattr(tfds.core.DatasetBuilder, "as_data_source")
  import array_record  # noqa: F401  (the digits_av build in the tests exercises it for real)


@check("tensorboardX: SummaryWriter.add_scalar")
def _():
  from tensorboardX import SummaryWriter
  with tempfile.TemporaryDirectory() as d:
    w = SummaryWriter(d)
    w.add_scalar("loss", 1.5, 0)
    w.close()


@check("matplotlib: Agg PNG")
def _():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots()
  ax.plot([1, 2], [3, 4])
  with tempfile.TemporaryDirectory() as d:
    fig.savefig(f"{d}/x.png")


sys.exit(1 if failed else 0)
PY
echo "== API probe took $((SECONDS - start))s"
start=$SECONDS
if [ $# -eq 0 ]; then
  set -- -n 2 --dist loadfile tests/test_train.py tests/test_config.py tests/test_pipeline.py
fi
pytest -q -p no:cacheprovider "$@"
echo "== min-deps tests took $((SECONDS - start))s"
