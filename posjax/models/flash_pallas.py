"""Flash attention as Pallas kernels, with the encoding's bias computed inside
them from each tile's positions (``model.attention='pallas'``).

Forward: one program per (row, query tile) walks the key tiles up to the causal
bound, skips tiles whose segment ranges do not overlap, and keeps the online
softmax in registers; the encoding's ``bias`` hook runs on the tile's positions
with the encoding's variables (kernel inputs), so no ``[B, H, L, S]`` bias array
exists. It returns what ``flash._forward`` returns (output and log-sum-exp).
Backward (FlashAttention-2): one kernel per (row, query tile) gives dq and each
program's share of the bias variables' gradient (the hook's VJP on the tile,
summed over programs outside); one per (row, key tile) gives dk and dv.

It serves encodings whose bias is a function of positions alone
(``bias_from_positions``: ALiBi, T5, Kerple, FIRE) and those with no bias or value
hook; the kernels never branch on names.

Tested on CPU in Pallas interpret mode against ``dense``. Not yet compiled for a
GPU (Triton) or TPU (Mosaic): no device was lent, so ``auto`` never picks it.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.extend import core as jax_core

from posjax.models import attention as att
from posjax.models import flash

_f32 = jnp.float32


def _kernel(bias_fn, treedef, tiles, scale, n_operands, *refs):
  """One (row, query tile): ``out`` ``[1, bq, H, Kv]`` and ``lse`` ``[1, bq, H]``."""
  qpos_r, qidx_r, qseg_r, kpos_r, kidx_r, kseg_r, q_r, k_r, v_r = refs[:9]
  operand_refs, (out_r, lse_r) = refs[9:9 + n_operands], refs[9 + n_operands:]
  operands = jax.tree.unflatten(treedef, [r[...] for r in operand_refs])
  hooks = _Bias(functools.partial(bias_fn, *operands))
  q, qpos, qidx, qseg = q_r[...], qpos_r[...], qidx_r[...], qseg_r[...]
  _, bq, H, _ = q.shape
  bk = tiles.bk

  def key_tile(j, state):
    ks = pl.ds(j * bk, bk)
    kpos, kidx, kseg = kpos_r[:, ks], kidx_r[:, ks], kseg_r[:, ks]

    def step(state):
      k, v = k_r[:, ks], v_r[:, ks]
      mask = att.allowed(qidx, kidx, qseg, kseg, tiles.causal)
      return att.block(hooks, q, k, v, qpos, kpos, mask, (*state, None), scale)[0][:3]

    return jax.lax.cond(flash.nonempty(qseg, kseg, kidx), step, lambda s: s, state)

  init = (jnp.full((1, H, bq), att.NEG, _f32), jnp.zeros((1, H, bq), _f32),
          jnp.zeros(out_r.shape, _f32))
  m, l, acc = jax.lax.fori_loop(0, tiles.num_key_tiles(qidx), key_tile, init)
  safe = jnp.where(l == 0, 1.0, l)
  out_r[...] = acc / jnp.swapaxes(safe, 1, 2)[..., None]
  lse_r[...] = jnp.swapaxes(jnp.where(l == 0, 0.0, m + jnp.log(safe)), 1, 2)


class _Bias:
  """A tile's bias as ``attention.block`` calls the hooks (no values, no carry)."""

  def __init__(self, fn):
    self.fn = fn

  def bias(self, q, k, qpos, kpos, mask, carry):
    return self.fn(q, k, qpos, kpos, mask), carry

  def values(self, *args):
    del args
    return None


def _tile_bias(module, variables, x: flash.Inputs):
  """The encoding's bias of one tile as a function of explicit operands only
  (Pallas kernels take arrays as inputs, never as captured constants): the
  hook traced once at tile shapes, its constants hoisted next to the variables."""
  t = x.t
  sample = (x.q[:1, :t.bq], x.k[:1, :t.bk], x.qpos[:1, :t.bq], x.kpos[:1, :t.bk],
            jnp.ones((1, t.bq, t.bk), bool))

  def bias(variables, q, k, qpos, kpos, mask):
    out = module.apply(variables, q, k, qpos, kpos, mask, None, method='bias')[0]
    return jnp.zeros((1, q.shape[2], q.shape[1], k.shape[1]), _f32) if out is None else out

  closed = jax.make_jaxpr(bias)(variables, *sample)
  leaves = jax.tree.leaves(variables)
  n_consts = len(closed.consts)

  def fn(*operands_and_tile):
    consts, rest = operands_and_tile[:n_consts], operands_and_tile[n_consts:]
    return jax_core.jaxpr_as_fun(jax_core.ClosedJaxpr(closed.jaxpr, list(consts)))(*rest)[0]

  return fn, [jnp.asarray(c) for c in closed.consts] + leaves, n_consts


def forward(module, variables, x: flash.Inputs, scale: float, *, interpret: bool):
  """Output ``[B, Lp, H, Kv]`` float32 and log-sum-exp ``[B, Lp, H]``."""
  t = x.t
  B, Lp, H, K = x.q.shape
  Sp, Kv = x.k.shape[1], x.v.shape[-1]
  bias_fn, operands, _ = _tile_bias(module, variables, x)
  leaves, treedef = jax.tree.flatten(operands)
  rows = lambda *block: pl.BlockSpec(block, lambda b, i: (b,) + (0,) * (len(block) - 1))  # noqa: E731
  tile = lambda *block: pl.BlockSpec(block, lambda b, i: (b, i) + (0,) * (len(block) - 2))  # noqa: E731
  whole = [pl.BlockSpec(a.shape, lambda b, i, n=a.ndim: (0,) * n) for a in leaves]
  kernel = functools.partial(_kernel, bias_fn, treedef, t, scale, len(leaves))
  out, lse = pl.pallas_call(
      kernel, grid=(B, t.nq),
      in_specs=[tile(1, t.bq)] * 3 + [rows(1, Sp)] * 3
      + [tile(1, t.bq, H, K), rows(1, Sp, H, K), rows(1, Sp, H, Kv)] + whole,
      out_specs=[tile(1, t.bq, H, Kv), tile(1, t.bq, H)],
      out_shape=[jax.ShapeDtypeStruct((B, Lp, H, Kv), _f32),
                 jax.ShapeDtypeStruct((B, Lp, H), _f32)],
      interpret=interpret)(x.qpos, x.qidx, x.qseg, x.kpos, x.kidx, x.kseg, x.q, x.k, x.v,
                           *leaves)
  return out, lse


# ------------------------------------------------------------------ backward


def _probs(bias, q, k, qpos, kpos, mask, lse, scale):
  """A tile's probabilities ``[1, H, bq, bk]`` from the forward's log-sum-exp."""
  s = jnp.einsum('blhk,bshk->bhls', q, k, preferred_element_type=_f32) * scale
  s = jnp.where(mask[:, None], s + bias, att.NEG)
  return jnp.exp(s - lse[..., None]) * mask[:, None]


def _heads_first(a):
  return jnp.swapaxes(a, 1, 2)  # [1, b, H] -> [1, H, b]


def _dq_kernel(bias_fn, n_consts, tiles, scale, n_ops, *refs):
  """One (row, query tile): dq and this program's share of d(variables)."""
  qpos_r, qidx_r, qseg_r, kpos_r, kidx_r, kseg_r, q_r, k_r, v_r, do_r, lse_r, d_r = refs[:12]
  ops = [r[...] for r in refs[12:12 + n_ops]]
  dq_r, dvar_rs = refs[12 + n_ops], refs[13 + n_ops:]
  consts, leaves = ops[:n_consts], ops[n_consts:]
  q, qpos, qidx, qseg = q_r[...], qpos_r[...], qidx_r[...], qseg_r[...]
  do, lse, D = do_r[...], _heads_first(lse_r[...]), _heads_first(d_r[...])
  bk = tiles.bk

  def key_tile(j, state):
    ks = pl.ds(j * bk, bk)
    kpos, kidx, kseg = kpos_r[:, ks], kidx_r[:, ks], kseg_r[:, ks]

    def step(state):
      dq, dvars = state
      k, v = k_r[:, ks], v_r[:, ks]
      mask = att.allowed(qidx, kidx, qseg, kseg, tiles.causal)
      bias_of = lambda *vs: bias_fn(*consts, *vs, q, k, qpos, kpos, mask)  # noqa: E731
      bias, vjp = jax.vjp(bias_of, *leaves)
      p = _probs(bias, q, k, qpos, kpos, mask, lse, scale)
      dp = jnp.einsum('blhk,bshk->bhls', do, v.astype(_f32))
      ds = p * (dp - D[..., None])
      dq = dq + jnp.einsum('bhls,bshk->blhk', ds, k.astype(_f32)) * scale
      return dq, [a + g for a, g in zip(dvars, vjp(ds))]

    return jax.lax.cond(flash.nonempty(qseg, kseg, kidx), step, lambda s: s, state)

  init = (jnp.zeros(q.shape, _f32), [jnp.zeros(a.shape, _f32) for a in leaves])
  dq, dvars = jax.lax.fori_loop(0, tiles.num_key_tiles(qidx), key_tile, init)
  dq_r[...] = dq
  for r, g in zip(dvar_rs, dvars):
    r[...] = g[None, None]


def _dkv_kernel(bias_fn, n_consts, tiles, scale, n_ops, *refs):
  """One (row, key tile): dk and dv, over the query tiles that can see it."""
  kpos_r, kidx_r, kseg_r, k_r, v_r, qpos_r, qidx_r, qseg_r, q_r, do_r, lse_r, d_r = refs[:12]
  ops = [r[...] for r in refs[12:12 + n_ops]]
  dk_r, dv_r = refs[12 + n_ops:]
  k, v, kpos, kidx, kseg = k_r[...], v_r[...], kpos_r[...], kidx_r[...], kseg_r[...]
  first_key = jnp.min(jnp.where(kidx >= 0, kidx, jnp.iinfo(jnp.int32).max))
  bq = tiles.bq

  def query_tile(i, state):
    qs = pl.ds(i * bq, bq)
    qpos, qidx, qseg = qpos_r[:, qs], qidx_r[:, qs], qseg_r[:, qs]
    visible = flash.nonempty(qseg, kseg, kidx)
    if tiles.causal:
      visible &= jnp.max(qidx) >= first_key

    def step(state):
      dk, dv = state
      q, do = q_r[:, qs], do_r[:, qs]
      lse, D = _heads_first(lse_r[:, qs]), _heads_first(d_r[:, qs])
      mask = att.allowed(qidx, kidx, qseg, kseg, tiles.causal)
      bias = bias_fn(*ops, q, k, qpos, kpos, mask)
      p = _probs(bias, q, k, qpos, kpos, mask, lse, scale)
      dv = dv + jnp.einsum('bhls,blhk->bshk', p, do)
      ds = p * (jnp.einsum('blhk,bshk->bhls', do, v.astype(_f32)) - D[..., None])
      return dk + jnp.einsum('bhls,blhk->bshk', ds, q.astype(_f32)) * scale, dv

    return jax.lax.cond(visible, step, lambda s: s, state)

  init = (jnp.zeros(k.shape, _f32), jnp.zeros(v.shape, _f32))
  dk_r[...], dv_r[...] = jax.lax.fori_loop(0, tiles.nq, query_tile, init)


def backward(module, variables, x: flash.Inputs, out, lse, dout, scale: float, *,
             interpret: bool):
  """``(dq, dk, dv, dvariables)`` float32, from the forward's output and lse."""
  t = x.t
  B, Lp, H, K = x.q.shape
  Sp, Kv = x.k.shape[1], x.v.shape[-1]
  bias_fn, ops, n_consts = _tile_bias(module, variables, x)
  leaves = ops[n_consts:]
  do = dout.astype(_f32)
  D = jnp.sum(do * out, -1)
  whole = [pl.BlockSpec(a.shape, lambda b, i, n=a.ndim: (0,) * n) for a in ops]
  rows = lambda *block: pl.BlockSpec(block, lambda b, i: (b,) + (0,) * (len(block) - 1))  # noqa: E731
  tile = lambda *block: pl.BlockSpec(block, lambda b, i: (b, i) + (0,) * (len(block) - 2))  # noqa: E731
  q_side = (x.qpos, x.qidx, x.qseg)
  k_side = (x.kpos, x.kidx, x.kseg)
  dq, *dvars = pl.pallas_call(
      functools.partial(_dq_kernel, bias_fn, n_consts, t, scale, len(ops)), grid=(B, t.nq),
      in_specs=[tile(1, t.bq)] * 3 + [rows(1, Sp)] * 3
      + [tile(1, t.bq, H, K), rows(1, Sp, H, K), rows(1, Sp, H, Kv), tile(1, t.bq, H, Kv),
         tile(1, t.bq, H), tile(1, t.bq, H)] + whole,
      out_specs=[tile(1, t.bq, H, K)] + [tile(1, 1, *a.shape) for a in leaves],
      out_shape=[jax.ShapeDtypeStruct((B, Lp, H, K), _f32)]
      + [jax.ShapeDtypeStruct((B, t.nq) + a.shape, _f32) for a in leaves],
      interpret=interpret)(*q_side, *k_side, x.q, x.k, x.v, do, lse, D, *ops)
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, bias_fn, n_consts, t, scale, len(ops)), grid=(B, t.nk),
      in_specs=[tile(1, t.bk)] * 3 + [tile(1, t.bk, H, K), tile(1, t.bk, H, Kv)]
      + [rows(1, Lp)] * 3 + [rows(1, Lp, H, K), rows(1, Lp, H, Kv), rows(1, Lp, H),
                             rows(1, Lp, H)] + whole,
      out_specs=[tile(1, t.bk, H, K), tile(1, t.bk, H, Kv)],
      out_shape=[jax.ShapeDtypeStruct((B, Sp, H, K), _f32),
                 jax.ShapeDtypeStruct((B, Sp, H, Kv), _f32)],
      interpret=interpret)(*k_side, x.k, x.v, *q_side, x.q, do, lse, D, *ops)
  dvars = jax.tree.unflatten(jax.tree.structure(variables), [g.sum((0, 1)) for g in dvars])
  return dq, dk, dv, dvars
