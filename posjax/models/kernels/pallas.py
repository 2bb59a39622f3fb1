"""Flash attention as Pallas kernels, with the encoding's bias computed inside
them from each tile's positions (``model.attention='pallas'``).

Forward: one program per (row, head, query tile) walks the key tiles up to the
causal bound, skips tiles whose segment ranges do not overlap, and keeps the
online softmax in registers; the encoding's ``bias`` hook runs on the tile's
positions with the encoding's variables (kernel inputs), so no ``[B, H, L, S]``
bias array exists. It returns what ``flash``'s XLA forward returns (output and
log-sum-exp). Backward (FlashAttention-2): one kernel per (row, head, query tile)
gives dq and each program's share of the bias variables' gradient (the hook's VJP
on the tile, summed over programs outside); one per (row, head, key tile) gives dk
and dv. Every matmul is 2D (Triton takes no batch dimensions, Mosaic one). The
hook runs under ``encodings.in_kernel(h)``, so an encoding that reads its
per-head values through ``per_head`` gives only the program's head (one head's
arithmetic); any other hook gives all heads and the program keeps its own. dO
enters the backward kernels in the model's dtype, as in FlashAttention.

The inner tiles are walked two ways (``pallas_tiles.Walk``). On GPU (Triton, whose refs are
pointers) a program loops over them, reading each from a whole-row block. On TPU
(Mosaic, which copies every block to VMEM) the inner tile is the last grid axis
('arbitrary'), blocks are single tiles (VMEM use does not grow with the length),
the online-softmax state and the gradient accumulators live in VMEM scratch, and
the causal mask's skipped tiles map to the block already resident, so they are
neither fetched nor computed.

It serves encodings whose bias is a function of positions alone
(``bias_from_positions``: ALiBi, T5, Kerple, FIRE) and those with no bias or value
hook; the kernels never branch on names. T5's table and FIRE's MLP go through
``lookup`` and ``scalar_mlp``, loops over the table's rows and the hidden units
(``encodings.kernel_loops``), so the kernels do not grow with either. Tiles,
warps and stages per platform: ``tile_sizes`` and ``pallas_tiles.launch``.

Tested in interpret mode against ``dense`` (tests/test_fused.py) and lowered on CPU
for Triton and Mosaic (tests/test_lowering.py); never run on a device, so ``auto``
does not pick it.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from posjax.models.kernels import blocks, flash
from posjax.models.kernels import pallas_tiles as pt
from posjax.models.kernels.pallas_tiles import dot

_f32 = jnp.float32


def _scores(bias, q, k, mask, scale):
  """A tile's masked logits ``[bq, bk]``."""
  return jnp.where(mask, dot(q, k, (1, 1)) * scale + bias, blocks.NEG)


def _fwd_kernel(bias_fn, tiles, walk, scale, n_ops, *refs):
  """One (row, head, query tile): ``out`` ``[bq, Kv]`` and its log-sum-exp."""
  qpos_r, qidx_r, qseg_r, kpos_r, kidx_r, kseg_r, q_r, k_r, v_r = refs[:9]
  ops = [r[...] for r in refs[9:9 + n_ops]]
  out_r, lse_r = refs[9 + n_ops:11 + n_ops]
  h = pl.program_id(1)
  q, qpos, qidx, qseg = q_r[0, 0], qpos_r[0], qidx_r[0], qseg_r[0]
  bq, kv = q.shape[0], out_r.shape[-1]
  key = lambda r, j: r[0, :, walk.at(j)]  # noqa: E731

  def step(j, state):
    m, l, acc = state
    kpos, kidx, kseg = key(kpos_r, j), key(kidx_r, j), key(kseg_r, j)
    mask = blocks.allowed(qidx, kidx, qseg, kseg, tiles.span, qpos, kpos)
    s = _scores(bias_fn(*ops, qpos, kpos, mask, h), q, k_r[0, 0, walk.at(j)], mask[0], scale)
    m_new = jnp.maximum(m, s.max(-1))
    p = jnp.exp(s - m_new[:, None]) * mask[0]
    corr = jnp.exp(m - m_new)
    return m_new, l * corr + p.sum(-1), acc * corr[:, None] + dot(p, v_r[0, 0, walk.at(j)])

  def finish(state):
    m, l, acc = state
    safe = jnp.where(l == 0, 1.0, l)
    out_r[0, 0] = acc / safe[:, None]
    lse_r[0, 0] = jnp.where(l == 0, 0.0, m + jnp.log(safe))[None]

  init = lambda: (jnp.full((bq,), blocks.NEG, _f32), jnp.zeros((bq,), _f32),  # noqa: E731
                  jnp.zeros((bq, kv), _f32))
  visible = lambda j: blocks.nonempty(qseg, key(kseg_r, j), qidx, key(kidx_r, j),  # noqa: E731
                                     key(kpos_r, j), tiles.span)
  walk.run(tiles.nk, tiles.key_tiles(qidx), visible, step, init, finish, refs[11 + n_ops:])


def forward(module, variables, x: blocks.Inputs, scale: float, *, interpret: bool):
  """Output ``[B, Lp, H, Kv]`` float32 and log-sum-exp ``[B, Lp, H]``."""
  t = x.t
  B, Lp, H, K = x.q.shape
  Kv = x.v.shape[-1]
  bias_fn, ops, _ = pt.tile_bias(module, variables, x, H)
  grid = pt.grid_mode()
  walk = pt.Walk(grid, t.bk)
  outer, inner = pt.specs(grid, t.bk, x.k.shape[1])
  last = pt.clamp_keys(t)
  out, lse = pl.pallas_call(
      functools.partial(_fwd_kernel, bias_fn, t, walk, scale, len(ops)),
      grid=(B, H, t.nq, t.nk) if grid else (B, H, t.nq),
      in_specs=[outer(t.bq)] * 3 + [inner(None, last)] * 3
      + [outer(t.bq, K), inner(K, last), inner(Kv, last)] + pt.op_specs(ops),
      out_specs=[outer(t.bq, Kv), outer(t.bq, 'row')],
      out_shape=[jax.ShapeDtypeStruct((B, H, Lp, Kv), _f32),
                 jax.ShapeDtypeStruct((B, H, 1, Lp), _f32)],
      scratch_shapes=walk.scratch([(t.bq,), (t.bq,), (t.bq, Kv)]),
      interpret=interpret, compiler_params=pt.compiler_params(grid, t))(
          *pt.ints_of(x.qpos, x.qidx, x.qseg, x.kpos, x.kidx, x.kseg),
          pt.heads_first(x.q), pt.heads_first(x.k), pt.heads_first(x.v), *ops)
  return jnp.moveaxis(out, 1, 2), jnp.moveaxis(lse[:, :, 0], 1, 2)


# ------------------------------------------------------------------ backward


def _probs(bias, q, k, mask, lse, scale):
  """A tile's probabilities ``[bq, bk]`` from the forward's log-sum-exp ``[bq]``."""
  return jnp.exp(_scores(bias, q, k, mask, scale) - lse[:, None]) * mask


def _dq_kernel(bias_fn, n_consts, tiles, walk, scale, n_ops, *refs):
  """One (row, head, query tile): dq and this program's share of d(variables)."""
  qpos_r, qidx_r, qseg_r, kpos_r, kidx_r, kseg_r, q_r, k_r, v_r, do_r, lse_r, d_r = refs[:12]
  ops = [r[...] for r in refs[12:12 + n_ops]]
  n_leaves = n_ops - n_consts
  dq_r, dvar_rs = refs[12 + n_ops], refs[13 + n_ops:13 + n_ops + n_leaves]
  consts, leaves = ops[:n_consts], ops[n_consts:]
  h = pl.program_id(1)
  q, qpos, qidx, qseg = q_r[0, 0], qpos_r[0], qidx_r[0], qseg_r[0]
  do, lse, D = do_r[0, 0], lse_r[0, 0, 0], d_r[0, 0, 0]
  key = lambda r, j: r[0, :, walk.at(j)]  # noqa: E731

  def step(j, state):
    dq, dvars = state
    kpos, kidx, kseg = key(kpos_r, j), key(kidx_r, j), key(kseg_r, j)
    k, v = k_r[0, 0, walk.at(j)], v_r[0, 0, walk.at(j)]
    mask = blocks.allowed(qidx, kidx, qseg, kseg, tiles.span, qpos, kpos)
    bias_of = lambda *vs: bias_fn(*consts, *vs, qpos, kpos, mask, h)  # noqa: E731
    bias, vjp = jax.vjp(bias_of, *leaves)
    p = _probs(bias, q, k, mask[0], lse, scale)
    ds = p * (dot(do, v, (1, 1)) - D[:, None])
    return dq + dot(ds, k) * scale, [a + g for a, g in zip(dvars, vjp(ds))]

  def finish(state):
    dq, dvars = state
    dq_r[0, 0] = dq
    for r, g in zip(dvar_rs, dvars):
      r[...] = g[None, None, None]

  init = lambda: (jnp.zeros(q.shape, _f32), [jnp.zeros(a.shape, _f32) for a in leaves])  # noqa: E731
  visible = lambda j: blocks.nonempty(qseg, key(kseg_r, j), qidx, key(kidx_r, j),  # noqa: E731
                                     key(kpos_r, j), tiles.span)
  walk.run(tiles.nk, tiles.key_tiles(qidx), visible, step, init, finish,
           refs[13 + n_ops + n_leaves:])


def _dkv_kernel(bias_fn, tiles, walk, scale, n_ops, *refs):
  """One (row, head, key tile): dk and dv, over the query tiles that can see it."""
  kpos_r, kidx_r, kseg_r, k_r, v_r, qpos_r, qidx_r, qseg_r, q_r, do_r, lse_r, d_r = refs[:12]
  ops = [r[...] for r in refs[12:12 + n_ops]]
  dk_r, dv_r = refs[12 + n_ops:14 + n_ops]
  h = pl.program_id(1)
  k, v, kpos, kidx, kseg = k_r[0, 0], v_r[0, 0], kpos_r[0], kidx_r[0], kseg_r[0]
  bounds = pt.query_tiles(tiles, pl.program_id(2))  # (Program ids at the top level.)
  query = lambda r, j: r[0, :, walk.at(j)]  # noqa: E731

  def visible(j):
    return blocks.nonempty(query(qseg_r, j), kseg, query(qidx_r, j), kidx, kpos, tiles.span)

  def step(j, state):
    dk, dv = state
    qs = walk.at(j)
    qpos, qidx, qseg = query(qpos_r, j), query(qidx_r, j), query(qseg_r, j)
    q, do, lse, D = q_r[0, 0, qs], do_r[0, 0, qs], lse_r[0, 0, 0, qs], d_r[0, 0, 0, qs]
    mask = blocks.allowed(qidx, kidx, qseg, kseg, tiles.span, qpos, kpos)
    p = _probs(bias_fn(*ops, qpos, kpos, mask, h), q, k, mask[0], lse, scale)
    ds = p * (dot(do, v, (1, 1)) - D[:, None])
    return dk + dot(ds, q, (0, 0)) * scale, dv + dot(p, do, (0, 0))

  def finish(state):
    dk_r[0, 0], dv_r[0, 0] = state

  init = lambda: (jnp.zeros(k.shape, _f32), jnp.zeros(v.shape, _f32))  # noqa: E731
  walk.run(tiles.nq, bounds, visible, step, init, finish, refs[14 + n_ops:])


def backward(module, variables, x: blocks.Inputs, out, lse, dout, scale: float, *,
             interpret: bool):
  """``(dq, dk, dv, dvariables)`` float32, from the forward's output and lse."""
  t = x.t
  B, Lp, H, K = x.q.shape
  Sp, Kv = x.k.shape[1], x.v.shape[-1]
  bias_fn, ops, n_consts = pt.tile_bias(module, variables, x, H, grad=True)
  leaves = ops[n_consts:]
  D = jnp.sum(dout.astype(_f32) * out, -1)
  do = dout.astype(x.v.dtype)  # (As FlashAttention: dO in the model's dtype, half the memory.)
  q, k, v, do, lse, D = (pt.heads_first(a) for a in (x.q, x.k, x.v, do, lse, D))
  q_ints = pt.ints_of(x.qpos, x.qidx, x.qseg)
  k_ints = pt.ints_of(x.kpos, x.kidx, x.kseg)
  grid = pt.grid_mode()
  rank = 4 if grid else 3
  outer, inner = pt.specs(grid, t.bk, Sp)
  walk, last = pt.Walk(grid, t.bk), pt.clamp_keys(t)
  dvar_spec = lambda a: pl.BlockSpec(  # noqa: E731
      (1, 1, 1) + a.shape, lambda b, h, i, *j, n=a.ndim: (b, h, i) + (0,) * n)
  dq, *dvars = pl.pallas_call(
      functools.partial(_dq_kernel, bias_fn, n_consts, t, walk, scale, len(ops)),
      grid=(B, H, t.nq, t.nk)[:rank],
      in_specs=[outer(t.bq)] * 3 + [inner(None, last)] * 3
      + [outer(t.bq, K), inner(K, last), inner(Kv, last), outer(t.bq, Kv),
         outer(t.bq, 'row'), outer(t.bq, 'row')] + pt.op_specs(ops),
      out_specs=[outer(t.bq, K)] + [dvar_spec(a) for a in leaves],
      out_shape=[jax.ShapeDtypeStruct((B, H, Lp, K), _f32)]
      + [jax.ShapeDtypeStruct((B, H, t.nq) + a.shape, _f32) for a in leaves],
      scratch_shapes=walk.scratch([(t.bq, K)] + [a.shape for a in leaves]),
      interpret=interpret, compiler_params=pt.compiler_params(grid, t))(
          *q_ints, *k_ints, q, k, v, do, lse, D, *ops)
  bias_fn, ops, _ = pt.tile_bias(module, variables, x, H)
  outer, inner = pt.specs(grid, t.bq, Lp)
  walk, first = pt.Walk(grid, t.bq), pt.clamp_queries(t)
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, bias_fn, t, walk, scale, len(ops)),
      grid=(B, H, t.nk, t.nq)[:rank],
      in_specs=[outer(t.bk)] * 3 + [outer(t.bk, K), outer(t.bk, Kv)]
      + [inner(None, first)] * 3
      + [inner(K, first), inner(Kv, first), inner('row', first), inner('row', first)]
      + pt.op_specs(ops),
      out_specs=[outer(t.bk, K), outer(t.bk, Kv)],
      out_shape=[jax.ShapeDtypeStruct((B, H, Sp, K), _f32),
                 jax.ShapeDtypeStruct((B, H, Sp, Kv), _f32)],
      scratch_shapes=walk.scratch([(t.bk, K), (t.bk, Kv)]),
      interpret=interpret, compiler_params=pt.compiler_params(grid, t))(
          *k_ints, k, v, *q_ints, q, do, lse, D, *ops)
  dvars = jax.tree.unflatten(jax.tree.structure(variables), [
      g.sum((0, 1, 2)).reshape(a.shape) for g, a in zip(dvars, jax.tree.leaves(variables))])
  return tuple(jnp.moveaxis(a, 1, 2) for a in (dq, dk, dv)) + (dvars,)


def attend(*args, interpret: bool, **kwargs):
  """Flash attention (``flash.attend``'s arguments and custom VJP) with these
  kernels as its two passes; ``interpret``: Pallas interpret mode (any backend)."""
  passes = (functools.partial(forward, interpret=interpret),
            functools.partial(backward, interpret=interpret))
  return flash.attend(*args, passes=passes, **kwargs)
