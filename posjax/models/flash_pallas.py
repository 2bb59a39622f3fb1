"""The forward pass of flash attention as one Pallas kernel, with the encoding's
bias computed inside it from each tile's positions (``model.attention='pallas'``).

One program per (row, query tile) walks the key tiles up to the causal bound,
skips tiles whose segment ranges do not overlap, and keeps the online softmax in
registers; the encoding's ``bias`` hook runs on the tile's positions with the
encoding's variables (kernel inputs), so no ``[B, H, L, S]`` bias array exists.
It serves encodings whose bias is a function of positions alone
(``bias_from_positions``: ALiBi, T5, Kerple, FIRE) and those with no bias or value
hook; the kernel never branches on names. It returns what ``flash._forward``
returns (output and log-sum-exp), so ``flash.attend``'s backward pass (XLA,
recomputing each tile) is shared.

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

  return fn, [jnp.asarray(c) for c in closed.consts] + leaves


def forward(module, variables, x: flash.Inputs, scale: float, *, interpret: bool):
  """Output ``[B, Lp, H, Kv]`` float32 and log-sum-exp ``[B, Lp, H]``."""
  t = x.t
  B, Lp, H, K = x.q.shape
  Sp, Kv = x.k.shape[1], x.v.shape[-1]
  bias_fn, operands = _tile_bias(module, variables, x)
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
