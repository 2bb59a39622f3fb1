"""Flash attention as Pallas kernels, with the encoding's bias computed inside
them from each tile's positions (``model.attention='pallas'``).

Forward: one program per (row, head, query tile) walks the key tiles up to the
causal bound, skips tiles whose segment ranges do not overlap, and keeps the
online softmax in registers; the encoding's ``bias`` hook runs on the tile's
positions with the encoding's variables (kernel inputs), so no ``[B, H, L, S]``
bias array exists. It returns what ``flash._forward`` returns (output and
log-sum-exp). Backward (FlashAttention-2): one kernel per (row, head, query tile)
gives dq and each program's share of the bias variables' gradient (the hook's VJP
on the tile, summed over programs outside); one per (row, head, key tile) gives dk
and dv. Every matmul is 2D (Triton takes no batch dimensions, Mosaic one). The
hook runs under ``encodings.in_kernel(h)``, so an encoding that reads its
per-head values through ``per_head`` gives only the program's head (one head's
arithmetic); any other hook gives all heads and the program keeps its own.

It serves encodings whose bias is a function of positions alone
(``bias_from_positions``: ALiBi, T5, Kerple, FIRE) and those with no bias or value
hook; the kernels never branch on names. T5's table and FIRE's MLP go through
``lookup`` and ``scalar_mlp``: N selects and W unrolled hidden units per element.

Tested on CPU in Pallas interpret mode against ``dense`` (tests/test_fused.py),
and lowered on CPU for a GPU (Triton) and a TPU (Mosaic) (tests/test_lowering.py);
on a device it serves encodings that declare ``bias_in_kernel``. It has not run
on a device, so ``auto`` does not pick it.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.extend import core as jax_core

from posjax.encodings.base import in_kernel
from posjax.models import attention as att
from posjax.models import flash

_f32 = jnp.float32
# The lowering each backend gets: Triton on GPU (its refs are pointers, so a
# program reads one key tile at a time from a whole-row block), Mosaic on TPU.
PLATFORM = None  # None: jax.default_backend(); 'gpu' / 'tpu' to cross-lower.


def _compiler_params(grid_rank: int):
  platform = PLATFORM or jax.default_backend()
  if platform == 'gpu':
    from jax.experimental.pallas import triton as pl_triton
    return pl_triton.CompilerParams(num_warps=4, num_stages=2)
  if platform == 'tpu':
    from jax.experimental.pallas import tpu as pl_tpu
    return pl_tpu.CompilerParams(dimension_semantics=('parallel',) * grid_rank)
  return None


def _ints_of(*arrays):
  """Positions, slots and segments as ``[B, 1, n]``: blocks ``(1, 1, tile)`` meet
  Mosaic's rule on the last two block dimensions (full, or 8 x 128 multiples)."""
  return tuple(a[:, None, :] for a in arrays)


def _heads_first(a):
  """``[B, L, H, ...]`` -> ``[B, H, L, ...]``; ``[B, L, H]`` -> ``[B, H, 1, L]``."""
  return jnp.moveaxis(a, 1, 2) if a.ndim == 4 else jnp.moveaxis(a, 1, 2)[:, :, None]


def _int_spec(n: int, whole: bool = False):
  return pl.BlockSpec((1, 1, n), (lambda b, h, i: (b, 0, 0)) if whole else
                      (lambda b, h, i: (b, 0, i)))


def _head_spec(n: int, width: int, whole: bool = False):
  return pl.BlockSpec((1, 1, n, width), (lambda b, h, i: (b, h, 0, 0)) if whole else
                      (lambda b, h, i: (b, h, i, 0)))


def _op_specs(ops):
  return [pl.BlockSpec(a.shape, lambda b, h, i, n=a.ndim: (0,) * n) for a in ops]


def _dot(a, b, contract=(1, 0)):
  """A 2D matmul, float32 out: ``a @ b`` (contract (1, 0)), ``a @ b.T`` ((1, 1)) or
  ``a.T @ b`` ((0, 0)); operands in the narrower of their dtypes (bf16 for bf16
  models: probabilities meet values in bf16, as in FlashAttention)."""
  dtype = min(a.dtype, b.dtype, key=lambda d: jnp.finfo(d).bits)
  return jax.lax.dot_general(a.astype(dtype), b.astype(dtype),
                             (((contract[0],), (contract[1],)), ((), ())),
                             preferred_element_type=_f32)


def _tile_bias(module, variables, x: flash.Inputs, num_heads: int):
  """The encoding's bias of one tile for one head, ``fn(*ops, qpos, kpos, mask, h)
  -> [bq, bk]``, as a function of explicit operands only (Pallas kernels take
  arrays as inputs, never captured constants): the hook traced once at tile
  shapes under ``encodings.in_kernel(h)``, its constants hoisted next to the
  variables. Returns ``(fn, ops, n_consts)``."""
  t = x.t
  K = x.q.shape[-1]
  sample = (x.qpos[:1, :t.bq], x.kpos[:1, :t.bk], jnp.ones((1, t.bq, t.bk), bool),
            jnp.zeros((), jnp.int32))

  def bias(variables, qpos, kpos, mask, h):
    q, k = jnp.zeros((1, t.bq, num_heads, K), _f32), jnp.zeros((1, t.bk, num_heads, K), _f32)
    with in_kernel(h):
      out = module.apply(variables, q, k, qpos, kpos, mask, None, method='bias')[0]
    return jnp.zeros((1, 1, t.bq, t.bk), _f32) if out is None else out

  closed = jax.make_jaxpr(bias)(variables, *sample)
  n_consts = len(closed.consts)
  ops = [jnp.asarray(c) for c in closed.consts] + jax.tree.leaves(variables)
  shapes = [a.shape for a in ops]

  def fn(*args):
    ops = [a.reshape(shape) for a, shape in zip(args, shapes)]
    qpos, kpos, mask, h = args[len(shapes):]
    run = jax_core.jaxpr_as_fun(jax_core.ClosedJaxpr(closed.jaxpr, ops[:n_consts]))
    heads = run(*ops[n_consts:], qpos, kpos, mask, h)[0][0]  # [1, bq, bk], or [H, ...]
    if heads.shape[0] == 1:  # A hook that reads its heads through per_head.
      return heads[0]
    mine = jax.lax.broadcasted_iota(jnp.int32, heads.shape, 0) == h
    return jnp.sum(jnp.where(mine, heads, 0.0), axis=0)

  # Operands of rank < 2 travel as [1, n] (Mosaic lays out rank-1 blocks by chip).
  return fn, [a.reshape((1,) * (2 - a.ndim) + a.shape) for a in ops], n_consts


def _scores(bias, q, k, mask, scale):
  """A tile's masked logits ``[bq, bk]``."""
  return jnp.where(mask, _dot(q, k, (1, 1)) * scale + bias, att.NEG)


def _fwd_kernel(bias_fn, tiles, scale, n_ops, *refs):
  """One (row, head, query tile): ``out`` ``[bq, Kv]`` and its log-sum-exp."""
  qpos_r, qidx_r, qseg_r, kpos_r, kidx_r, kseg_r, q_r, k_r, v_r = refs[:9]
  ops = [r[...] for r in refs[9:9 + n_ops]]
  out_r, lse_r = refs[9 + n_ops:]
  h = pl.program_id(1)
  q, qpos, qidx, qseg = q_r[0, 0], qpos_r[0], qidx_r[0], qseg_r[0]
  bk = tiles.bk

  def key_tile(j, state):
    ks = pl.ds(j * bk, bk)
    kpos, kidx, kseg = kpos_r[0, :, ks], kidx_r[0, :, ks], kseg_r[0, :, ks]

    def step(state):
      m, l, acc = state
      mask = att.allowed(qidx, kidx, qseg, kseg, tiles.causal)
      s = _scores(bias_fn(*ops, qpos, kpos, mask, h), q, k_r[0, 0, ks], mask[0], scale)
      m_new = jnp.maximum(m, s.max(-1))
      p = jnp.exp(s - m_new[:, None]) * mask[0]
      corr = jnp.exp(m - m_new)
      return m_new, l * corr + p.sum(-1), acc * corr[:, None] + _dot(p, v_r[0, 0, ks])

    return jax.lax.cond(flash.nonempty(qseg, kseg, kidx), step, lambda s: s, state)

  bq, kv = q.shape[0], out_r.shape[-1]
  init = (jnp.full((bq,), att.NEG, _f32), jnp.zeros((bq,), _f32), jnp.zeros((bq, kv), _f32))
  m, l, acc = jax.lax.fori_loop(0, tiles.num_key_tiles(qidx), key_tile, init)
  safe = jnp.where(l == 0, 1.0, l)
  out_r[0, 0] = acc / safe[:, None]
  lse_r[0, 0] = jnp.where(l == 0, 0.0, m + jnp.log(safe))[None]


def forward(module, variables, x: flash.Inputs, scale: float, *, interpret: bool):
  """Output ``[B, Lp, H, Kv]`` float32 and log-sum-exp ``[B, Lp, H]``."""
  t = x.t
  B, Lp, H, K = x.q.shape
  Sp, Kv = x.k.shape[1], x.v.shape[-1]
  bias_fn, ops, _ = _tile_bias(module, variables, x, H)
  out, lse = pl.pallas_call(
      functools.partial(_fwd_kernel, bias_fn, t, scale, len(ops)), grid=(B, H, t.nq),
      in_specs=[_int_spec(t.bq)] * 3 + [_int_spec(Sp, whole=True)] * 3
      + [_head_spec(t.bq, K), _head_spec(Sp, K, whole=True), _head_spec(Sp, Kv, whole=True)]
      + _op_specs(ops),
      out_specs=[_head_spec(t.bq, Kv), pl.BlockSpec((1, 1, 1, t.bq), lambda b, h, i: (b, h, 0, i))],
      out_shape=[jax.ShapeDtypeStruct((B, H, Lp, Kv), _f32),
                 jax.ShapeDtypeStruct((B, H, 1, Lp), _f32)],
      interpret=interpret, compiler_params=_compiler_params(3))(
          *_ints_of(x.qpos, x.qidx, x.qseg, x.kpos, x.kidx, x.kseg),
          _heads_first(x.q), _heads_first(x.k), _heads_first(x.v), *ops)
  return jnp.moveaxis(out, 1, 2), jnp.moveaxis(lse[:, :, 0], 1, 2)


# ------------------------------------------------------------------ backward


def _probs(bias, q, k, mask, lse, scale):
  """A tile's probabilities ``[bq, bk]`` from the forward's log-sum-exp ``[bq]``."""
  return jnp.exp(_scores(bias, q, k, mask, scale) - lse[:, None]) * mask


def _dq_kernel(bias_fn, n_consts, tiles, scale, n_ops, *refs):
  """One (row, head, query tile): dq and this program's share of d(variables)."""
  qpos_r, qidx_r, qseg_r, kpos_r, kidx_r, kseg_r, q_r, k_r, v_r, do_r, lse_r, d_r = refs[:12]
  ops = [r[...] for r in refs[12:12 + n_ops]]
  dq_r, dvar_rs = refs[12 + n_ops], refs[13 + n_ops:]
  consts, leaves = ops[:n_consts], ops[n_consts:]
  h = pl.program_id(1)
  q, qpos, qidx, qseg = q_r[0, 0], qpos_r[0], qidx_r[0], qseg_r[0]
  do, lse, D = do_r[0, 0], lse_r[0, 0, 0], d_r[0, 0, 0]
  bk = tiles.bk

  def key_tile(j, state):
    ks = pl.ds(j * bk, bk)
    kpos, kidx, kseg = kpos_r[0, :, ks], kidx_r[0, :, ks], kseg_r[0, :, ks]

    def step(state):
      dq, dvars = state
      k, v = k_r[0, 0, ks], v_r[0, 0, ks]
      mask = att.allowed(qidx, kidx, qseg, kseg, tiles.causal)
      bias_of = lambda *vs: bias_fn(*consts, *vs, qpos, kpos, mask, h)  # noqa: E731
      bias, vjp = jax.vjp(bias_of, *leaves)
      p = _probs(bias, q, k, mask[0], lse, scale)
      ds = p * (_dot(do, v, (1, 1)) - D[:, None])
      dq = dq + _dot(ds, k) * scale
      return dq, [a + g for a, g in zip(dvars, vjp(ds))]

    return jax.lax.cond(flash.nonempty(qseg, kseg, kidx), step, lambda s: s, state)

  init = (jnp.zeros(q.shape, _f32), [jnp.zeros(a.shape, _f32) for a in leaves])
  dq, dvars = jax.lax.fori_loop(0, tiles.num_key_tiles(qidx), key_tile, init)
  dq_r[0, 0] = dq
  for r, g in zip(dvar_rs, dvars):
    r[...] = g[None, None, None]


def _dkv_kernel(bias_fn, tiles, scale, n_ops, *refs):
  """One (row, head, key tile): dk and dv, over the query tiles that can see it."""
  kpos_r, kidx_r, kseg_r, k_r, v_r, qpos_r, qidx_r, qseg_r, q_r, do_r, lse_r, d_r = refs[:12]
  ops = [r[...] for r in refs[12:12 + n_ops]]
  dk_r, dv_r = refs[12 + n_ops:]
  h = pl.program_id(1)
  k, v, kpos, kidx, kseg = k_r[0, 0], v_r[0, 0], kpos_r[0], kidx_r[0], kseg_r[0]
  first_key = jnp.min(jnp.where(kidx >= 0, kidx, jnp.iinfo(jnp.int32).max))
  bq = tiles.bq

  def query_tile(i, state):
    qs = pl.ds(i * bq, bq)
    qpos, qidx, qseg = qpos_r[0, :, qs], qidx_r[0, :, qs], qseg_r[0, :, qs]
    visible = flash.nonempty(qseg, kseg, kidx)
    if tiles.causal:
      visible &= jnp.max(qidx) >= first_key

    def step(state):
      dk, dv = state
      q, do = q_r[0, 0, qs], do_r[0, 0, qs]
      lse, D = lse_r[0, 0, 0, qs], d_r[0, 0, 0, qs]
      mask = att.allowed(qidx, kidx, qseg, kseg, tiles.causal)
      p = _probs(bias_fn(*ops, qpos, kpos, mask, h), q, k, mask[0], lse, scale)
      ds = p * (_dot(do, v, (1, 1)) - D[:, None])
      return dk + _dot(ds, q, (0, 0)) * scale, dv + _dot(p, do, (0, 0))

    return jax.lax.cond(visible, step, lambda s: s, state)

  init = (jnp.zeros(k.shape, _f32), jnp.zeros(v.shape, _f32))
  dk, dv = jax.lax.fori_loop(0, tiles.nq, query_tile, init)
  dk_r[0, 0], dv_r[0, 0] = dk, dv


def backward(module, variables, x: flash.Inputs, out, lse, dout, scale: float, *,
             interpret: bool):
  """``(dq, dk, dv, dvariables)`` float32, from the forward's output and lse."""
  t = x.t
  B, Lp, H, K = x.q.shape
  Sp, Kv = x.k.shape[1], x.v.shape[-1]
  bias_fn, ops, n_consts = _tile_bias(module, variables, x, H)
  leaves = ops[n_consts:]
  do = dout.astype(_f32)
  D = jnp.sum(do * out, -1)
  q, k, v, do, lse, D = (_heads_first(a) for a in (x.q, x.k, x.v, do, lse, D))
  q_ints = _ints_of(x.qpos, x.qidx, x.qseg)
  k_ints = _ints_of(x.kpos, x.kidx, x.kseg)
  row = lambda n: pl.BlockSpec((1, 1, 1, n), lambda b, h, i: (b, h, 0, i))  # noqa: E731
  whole_row = lambda n: pl.BlockSpec((1, 1, 1, n), lambda b, h, i: (b, h, 0, 0))  # noqa: E731
  dq, *dvars = pl.pallas_call(
      functools.partial(_dq_kernel, bias_fn, n_consts, t, scale, len(ops)), grid=(B, H, t.nq),
      in_specs=[_int_spec(t.bq)] * 3 + [_int_spec(Sp, whole=True)] * 3
      + [_head_spec(t.bq, K), _head_spec(Sp, K, whole=True), _head_spec(Sp, Kv, whole=True),
         _head_spec(t.bq, Kv), row(t.bq), row(t.bq)] + _op_specs(ops),
      out_specs=[_head_spec(t.bq, K)] + [pl.BlockSpec(
          (1, 1, 1) + a.shape, lambda b, h, i, n=a.ndim: (b, h, i) + (0,) * n) for a in leaves],
      out_shape=[jax.ShapeDtypeStruct((B, H, Lp, K), _f32)]
      + [jax.ShapeDtypeStruct((B, H, t.nq) + a.shape, _f32) for a in leaves],
      interpret=interpret, compiler_params=_compiler_params(3))(
          *q_ints, *k_ints, q, k, v, do, lse, D, *ops)
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, bias_fn, t, scale, len(ops)), grid=(B, H, t.nk),
      in_specs=[_int_spec(t.bk)] * 3 + [_head_spec(t.bk, K), _head_spec(t.bk, Kv)]
      + [_int_spec(Lp, whole=True)] * 3
      + [_head_spec(Lp, K, whole=True), _head_spec(Lp, Kv, whole=True), whole_row(Lp),
         whole_row(Lp)] + _op_specs(ops),
      out_specs=[_head_spec(t.bk, K), _head_spec(t.bk, Kv)],
      out_shape=[jax.ShapeDtypeStruct((B, H, Sp, K), _f32),
                 jax.ShapeDtypeStruct((B, H, Sp, Kv), _f32)],
      interpret=interpret, compiler_params=_compiler_params(3))(
          *k_ints, k, v, *q_ints, q, do, lse, D, *ops)
  dvars = jax.tree.unflatten(jax.tree.structure(variables), [
      g.sum((0, 1, 2)).reshape(a.shape) for g, a in zip(dvars, jax.tree.leaves(variables))])
  return tuple(jnp.moveaxis(a, 1, 2) for a in (dq, dk, dv)) + (dvars,)
