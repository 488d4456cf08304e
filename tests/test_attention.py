"""Every attention kernel against a float64 numpy reference (forward and gradients), errors, auto, memory."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.layers import attention as A
from mmjax.layers.dropout import dropout_keep

CASES = {
    # name: (Lq, Lk, H, K, D, lengths, dense mask, causal)
    "cross_lengths_gqa": (13, 37, 4, 2, 16, (37, 20), False, False),
    "cross_rev_lengths": (37, 13, 2, 1, 16, (13, 5), False, False),
    "cross_odd_nopad": (7, 21, 2, 2, 8, None, False, False),
    "dense_mask": (9, 21, 4, 4, 8, None, True, False),
    "causal_gqa": (19, 19, 4, 2, 16, None, False, True),
    "causal_cross_lengths": (11, 23, 2, 1, 8, (23, 15), False, True),
}
PALLAS_CASES = {"cross_lengths_gqa", "cross_rev_lengths", "causal_gqa"}  # interpret mode is slow
BF16_CASES = {"cross_lengths_gqa", "causal_cross_lengths"}  # keep the suite fast


def _inputs(case, dtype):
  lq, lk, h, kv, d, lengths, dense, causal = CASES[case]
  rng = np.random.default_rng(abs(hash(case)) % 2**32)
  b = 2
  # round to the test dtype first so the float64 reference sees the same numbers
  cast = lambda a: np.asarray(jnp.asarray(a, dtype).astype(jnp.float32))  # noqa: E731
  q, k, v = (cast(rng.standard_normal(s)) for s in ((b, lq, h, d), (b, lk, kv, d), (b, lk, kv, d)))
  ct = rng.standard_normal((b, lq, h, d))
  full = np.ones((b, h, lq, lk), bool)
  kw = dict(causal=causal)
  if lengths is not None:
    kw["key_lengths"] = jnp.asarray(lengths)
    full &= (np.arange(lk)[None] < np.asarray(lengths)[:, None])[:, None, None, :]
  if dense:
    m = rng.random((b, 1, lq, lk)) < 0.6
    m[..., 0] = True  # every query sees at least one key
    kw["mask"] = jnp.asarray(m)
    full &= m
  if causal:
    full &= np.arange(lk)[None, :] <= np.arange(lq)[:, None]
  return q, k, v, ct, full, kw


def _reference(q, k, v, ct, full):
  """float64 attention and its gradients of ``sum(out * ct)`` w.r.t. q, k, v, from the equations."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  h, kv, d = q.shape[2], k.shape[2], q.shape[3]
  g = h // kv
  kr, vr = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
  s = np.einsum("bqhd,bkhd->bhqk", q, kr) / np.sqrt(d)
  s = np.where(full, s, -np.inf)
  w = np.exp(s - s.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  out = np.einsum("bhqk,bkhd->bqhd", w, vr)
  dw = np.einsum("bqhd,bkhd->bhqk", ct, vr)
  ds = w * (dw - (dw * w).sum(-1, keepdims=True)) / np.sqrt(d)
  dq = np.einsum("bhqk,bkhd->bqhd", ds, kr)
  group = lambda t: t.reshape(*t.shape[:2], kv, g, d).sum(3)  # noqa: E731
  dk = group(np.einsum("bhqk,bqhd->bkhd", ds, q))
  dv = group(np.einsum("bhqk,bqhd->bkhd", w, ct))
  return out, (dq, dk, dv)


TOL = {jnp.float32: (3e-5, 2e-4), jnp.bfloat16: (3e-2, 8e-2)}  # (forward, gradient) absolute


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", ["xla", "jax", "chunked", "pallas", "cudnn", "auto"])
def test_kernel_matches_float64_reference(impl, case, dtype):
  if impl == "cudnn" and jax.default_backend() != "gpu":
    pytest.skip("cudnn needs a GPU; this backend is " + jax.default_backend())
  on_gpu = jax.default_backend() == "gpu"
  if impl == "pallas" and not on_gpu and (case not in PALLAS_CASES or dtype != jnp.float32):
    pytest.skip("pallas in interpret mode is slow on CPU: a subset of cases, float32 only")
  if dtype == jnp.bfloat16 and case not in BF16_CASES and not on_gpu:
    pytest.skip("bfloat16 on CPU: a subset of cases keeps the suite fast")
  if impl == "auto" and case != "dense_mask" and not on_gpu:
    pytest.skip("auto is xla at these sizes on CPU; one case checks the dispatch")
  q, k, v, ct, full, kw = _inputs(case, dtype)
  interpret = impl == "pallas" and jax.default_backend() != "gpu"
  why = A.unsupported_reason(impl, query_shape=q.shape, key_shape=k.shape, dtype=dtype,
                             has_mask="mask" in kw, has_lengths="key_lengths" in kw, causal=kw["causal"],
                             interpret=interpret)
  if why is not None:
    with pytest.raises(ValueError, match="kernels that can serve"):
      A.dot_product_attention(q.astype(dtype), k.astype(dtype), v.astype(dtype), implementation=impl,
                              interpret=interpret, **kw)
    pytest.skip(why)
  ref_out, ref_grads = _reference(q, k, v, ct, full)

  def loss(q, k, v):
    out = A.dot_product_attention(q, k, v, implementation=impl, chunk_size=16, interpret=interpret, **kw)
    return (out.astype(jnp.float32) * ct).sum(), out

  args = [jnp.asarray(a, dtype) for a in (q, k, v)]
  grads, out = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(*args)
  assert out.dtype == dtype and out.shape == q.shape
  fwd_tol, grad_tol = TOL[dtype]
  np.testing.assert_allclose(np.asarray(out, np.float64), ref_out, atol=fwd_tol, rtol=fwd_tol)
  for name, got, want in zip("qkv", grads, ref_grads, strict=True):
    scale = max(1.0, np.abs(want).max())
    np.testing.assert_allclose(np.asarray(got, np.float64) / scale, want / scale, atol=grad_tol,
                               err_msg=f"d{name}")


def test_chunked_dropout_is_deterministic_and_exact():
  rng = np.random.default_rng(1)
  b, lq, lk, h, kv, d, rate, bk = 2, 6, 21, 2, 1, 8, 0.3, 8
  q, k, v = (jnp.asarray(rng.standard_normal(s), jnp.float32)
             for s in ((b, lq, h, d), (b, lk, kv, d), (b, lk, kv, d)))
  key = jax.random.PRNGKey(3)
  lengths = jnp.array([21, 11])

  def chunked(q, k, v):
    return A.dot_product_attention(q, k, v, key_lengths=lengths, dropout_rate=rate, dropout_rng=key,
                                   implementation="chunked", chunk_size=bk)

  # the dense kernel draws the same mask (block j of chunked's is block j of xla's); check it by hand too
  keep = jnp.concatenate(
      [A.chunked_dropout_keep(key, rate, (b, kv, h // kv, lq, bk), lk, j) for j in range(-(-lk // bk))], -1
  )[..., :lk]
  np.testing.assert_array_equal(keep, dropout_keep(key, rate, (b, kv, h // kv, lq, lk)))
  keep = keep.reshape(b, h, lq, lk)

  def xla(q, k, v):
    return A.dot_product_attention(q, k, v, key_lengths=lengths, dropout_rate=rate, dropout_rng=key,
                                   implementation="xla")

  def dense(q, k, v):
    kr, vr = jnp.repeat(k, h // kv, axis=2), jnp.repeat(v, h // kv, axis=2)
    s = jnp.einsum("bqhd,bkhd->bhqk", q, kr) / np.sqrt(d)
    w = jax.nn.softmax(jnp.where(A.lengths_mask(lengths, lk), s, -jnp.inf), axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", jnp.where(keep, w / (1 - rate), 0.0), vr)

  np.testing.assert_allclose(xla(q, k, v), dense(q, k, v), atol=2e-5)
  np.testing.assert_array_equal(chunked(q, k, v), chunked(q, k, v))
  np.testing.assert_allclose(chunked(q, k, v), dense(q, k, v), atol=2e-5)
  gc = jax.jit(jax.grad(lambda *a: (chunked(*a) ** 2).sum(), argnums=(0, 1, 2)))(q, k, v)
  gd = jax.jit(jax.grad(lambda *a: (dense(*a) ** 2).sum(), argnums=(0, 1, 2)))(q, k, v)
  gx = jax.jit(jax.grad(lambda *a: (xla(*a) ** 2).sum(), argnums=(0, 1, 2)))(q, k, v)
  for x, y, z in zip(gc, gd, gx, strict=True):
    np.testing.assert_allclose(x, y, atol=1e-4)
    np.testing.assert_allclose(z, y, atol=1e-4)


def test_errors_name_the_reason_and_the_alternatives():
  q = jnp.zeros((1, 4, 2, 8), jnp.float32)
  with pytest.raises(ValueError, match=r"'jax' has no attention dropout.*\['xla', 'chunked'\]"):
    A.dot_product_attention(q, q, q, dropout_rate=0.1, dropout_rng=jax.random.PRNGKey(0),
                            implementation="jax")
  with pytest.raises(ValueError, match="not dense masks"):
    A.dot_product_attention(q, q, q, mask=jnp.ones((4, 4), bool), implementation="pallas", interpret=True)
  if jax.default_backend() != "gpu":
    with pytest.raises(ValueError, match="'cudnn' needs a GPU"):
      A.dot_product_attention(q.astype(jnp.bfloat16), q, q, implementation="cudnn")
    with pytest.raises(ValueError, match="'pallas' needs a GPU"):
      A.dot_product_attention(q, q, q, implementation="pallas", interpret=False)


def test_auto_policy_and_log(caplog):
  small, big = (1, 512, 8, 64), (1, 8192, 8, 64)
  assert A.select_implementation(small, small, jnp.float32, backend="cpu")[0] == "xla"
  name, reason = A.select_implementation(big, big, jnp.float32, backend="cpu")
  assert name == "chunked" and "MiB" in reason
  assert A.select_implementation(small, small, jnp.bfloat16, backend="gpu")[0] == "cudnn"
  assert A.select_implementation(small, small, jnp.bfloat16, backend="gpu", has_mask=True)[0] == "xla"
  assert A.select_implementation(small, small, jnp.bfloat16, backend="gpu", dropout=True)[0] == "xla"
  assert A.select_implementation(small, small, jnp.float32, backend="gpu")[0] == "xla"
  # auto serves everything xla serves (dropout, dense masks) and logs its choice once
  A._logged_choices.clear()
  q = jnp.ones((1, 3, 2, 8))
  with caplog.at_level(logging.INFO, logger="mmjax.layers.attention"):
    for _ in range(2):
      A.dot_product_attention(q, q, q, mask=jnp.ones((3, 3), bool), dropout_rate=0.5,
                              dropout_rng=jax.random.PRNGKey(0), implementation="auto")
  assert sum("attention 'auto' -> 'xla'" in r.getMessage() for r in caplog.records) == 1


def _temp_bytes(impl, length, d=64):
  spec = jax.ShapeDtypeStruct((1, length, 1, d), jnp.float32)

  def loss(q, k, v):
    return A.dot_product_attention(q, k, v, implementation=impl).sum()

  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  return step.lower(spec, spec, spec).compile().memory_analysis().temp_size_in_bytes


def test_chunked_fits_where_xla_does_not():
  """Forward+backward temporaries (B=H=1, D=64): xla's grow with L^2, chunked's with L.

  Measured on CPU (jax 0.10.2): xla 1.0 GiB at L=8192 and 256 MiB at 4096; chunked 90 MiB at 8192 and
  180 MiB at 16384. In a 256 MiB budget xla fits L=4096 at most, chunked L=16384 (4x longer).
  """
  budget = 256 * 2**20
  xla, chunked = _temp_bytes("xla", 8192), _temp_bytes("chunked", 8192)
  assert chunked < budget and xla >= 4 * budget, (xla, chunked)
  assert _temp_bytes("chunked", 4 * 4096) < budget
