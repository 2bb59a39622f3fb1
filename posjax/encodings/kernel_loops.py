"""``lookup`` and ``scalar_mlp`` inside a Pallas kernel, as loops.

Neither Triton nor Mosaic gathers from a table held in registers, and a rank-4
matmul does not exist there, so inside a kernel a table read is a sum of selects
and a small MLP a sum over its hidden units. Unrolled, that made T5's kernels
~3x and FIRE's ~5x ALiBi's in Triton ops, and Triton did not finish compiling
them; here both are a ``fori_loop`` over the table rows / hidden units, so the
kernel does not grow with ``num_buckets`` or ``mlp_width``.

Differentiating a loop would stack one tile of residuals per iteration, so the
variants the backward kernel uses (``grad=True``) carry a custom VJP whose
backward is a loop as well: one pass over the rows / units, each adding its
tile's reductions to the gradient entry it owns. (Triton lowers no
``custom_vjp_call``; the forward kernels therefore trace the plain loops, and
the backward kernel only ever sees the VJP's two functions.)

``x`` tiles are ``[B, L, S]`` (one kernel program: B = 1); tables ``[N, 1]`` and
MLP weights ``[W]``, ``[W]``, ``[W, 1]`` are one head's (``per_head``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

_f32 = jnp.float32


def entry(x, n):
  """``x[n, 0...]`` as a scalar for a traced ``n``: a masked sum (neither backend
  slices a value at a dynamic offset)."""
  mine = jax.lax.broadcasted_iota(jnp.int32, x.shape, 0) == n
  return jnp.sum(jnp.where(mine, x, 0))


def _put(x, n, value):
  """``x`` with entry ``n`` (along axis 0) set to the scalar ``value``."""
  return jnp.where(jax.lax.broadcasted_iota(jnp.int32, x.shape, 0) == n, value, x)


def _loop_sum(n: int, term, like):
  return jax.lax.fori_loop(0, n, lambda u, acc: acc + term(u), jnp.zeros(like.shape, _f32))


def _lookup(table_Nx1, index_BxLxS):
  return _loop_sum(table_Nx1.shape[0],
                   lambda n: jnp.where(index_BxLxS == n, entry(table_Nx1, n), 0.), index_BxLxS)


def _lookup_bwd(res, g_BxLxS):
  table, index = res
  body = lambda n, dt: _put(dt, n, jnp.sum(jnp.where(index == n, g_BxLxS, 0.)))  # noqa: E731
  return jax.lax.fori_loop(0, table.shape[0], body, jnp.zeros(table.shape, _f32)), None


_lookup_vjp = jax.custom_vjp(_lookup)
_lookup_vjp.defvjp(lambda t, i: (_lookup(t, i), (t, i)), _lookup_bwd)


def lookup(table_Nx1, index_BxLxS, *, grad: bool):
  """``table[index, 0]`` ``[B, L, S]``."""
  return (_lookup_vjp if grad else _lookup)(table_Nx1, index_BxLxS)


def _weights(w1, b1, w2, u):
  """Hidden unit ``u``'s input weight, bias and output weight, as scalars."""
  return entry(w1, u), entry(b1, u), entry(w2, u)


def _mlp(x_BxLxS, w1_W, b1_W, w2_Wx1):
  def term(u):
    a, b, c = _weights(w1_W, b1_W, w2_Wx1, u)
    return jax.nn.relu(x_BxLxS * a + b) * c
  return _loop_sum(w1_W.shape[0], term, x_BxLxS)


def _mlp_bwd(res, g):
  x, w1, b1, w2 = res

  def body(u, grads):
    dx, dw1, db1, dw2 = grads
    a, b, c = _weights(w1, b1, w2, u)
    pre = x * a + b
    g_pre = jnp.where(pre > 0, g * c, 0.)
    mine = jax.lax.broadcasted_iota(jnp.int32, w1.shape, 0) == u
    return (dx + g_pre * a, jnp.where(mine, jnp.sum(g_pre * x), dw1),
            jnp.where(mine, jnp.sum(g_pre), db1),
            _put(dw2, u, jnp.sum(g * jax.nn.relu(pre))))

  return jax.lax.fori_loop(0, w1.shape[0], body, tuple(jnp.zeros(a.shape, _f32) for a in res))


_mlp_vjp = jax.custom_vjp(_mlp)
_mlp_vjp.defvjp(lambda *a: (_mlp(*a), a), _mlp_bwd)


def scalar_mlp(x_BxLxS, w1_W, b1_W, w2_Wx1, *, grad: bool):
  """``relu(x * w1 + b1) @ w2[:, 0]`` of each scalar of ``x``, ``[B, L, S]``."""
  return (_mlp_vjp if grad else _mlp)(x_BxLxS, w1_W, b1_W, w2_Wx1)
