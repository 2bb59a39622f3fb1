"""Flash attention with a custom VJP: queries and keys both tiled, empty tiles skipped.

The portable implementation (any backend, and every encoding; the vendors' fused
kernels in ``posjax.models.kernels.vendor`` serve only encodings without a bias or value
hook, and ``posjax.models.kernels.pallas`` only those whose bias is a function of
positions). The forward pass keeps only the output and the
per-row log-sum-exp; the backward pass recomputes each tile's probabilities
(FlashAttention-2: ``D_i = dO_i . O_i``, ``dS = P * (dP - D)``), so memory is
linear in length in both passes.

For query tile i only key tiles that can hold an allowed pair are visited: the
loop stops at the last key tile whose first slot is <= the tile's last query
slot (causal), and a tile whose query and key segment-id ranges do not overlap
(packed documents, padding, an empty cache) is skipped (``lax.switch``); a tile
with no masked pair (below the diagonal, one segment) runs with a constant mask,
which XLA folds away.

Layouts are chosen for the dots (XLA's CPU dots transpose an operand whose
contracted axis is not where they want it): the forward pass accumulates its
output head-major ``[B, H, bq, Kv]``, the backward pass forms dQ head-major and
dK, dV key-minor ``[B, H, K, bk]`` (as ``Q^T dS`` and ``dO^T P``), so no
``[bq, bk]`` tile is ever transposed (the gradients' matmuls are written out,
not left to ``jax.vjp``), and only a tile's gradients pass through
the tile's ``lax.switch`` (whole dK / dV buffers there are copied on every
tile). Together these halve the CPU time of forward + backward at 8192 tokens
(``tests/test_flash.py`` checks the compiled program for both).

The encoding's hooks are evaluated per (query tile, key tile) from that tile's
positions, exactly as in ``blockwise.attend``: the hooks are the encoding's own
methods applied to its variables, which travel as an explicit argument so the
backward pass returns their gradient too (``jax.vjp`` of the tile's logits and
of the ``values`` hook). An encoding with a carry (CoPE's gate sums) sees the
key tiles of each query tile from the last to the first, as in blockwise
attention; the backward pass first replays the carries of the query tile, then
walks the key tiles the other way, passing the carry's cotangent along.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from posjax.models.kernels import blocks, stick_breaking
from posjax.models.kernels.blocks import Inputs, Tiles, pad

_f32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class _Hooks:
  """An encoding's ``bias``/``values``/``init_carry`` as pure functions of
  explicit variables: the same interface ``blocks.block`` calls."""
  module: Any
  variables: Any

  def _apply(self, method, *args):
    return self.module.apply(self.variables, *args, method=method)

  def bias(self, *args):
    return self._apply('bias', *args)

  def values(self, *args):
    return self._apply('values', *args)

  def init_carry(self, q):
    return self._apply('init_carry', q)


def _full(qidx_t, kidx_t, qseg_t, kseg_t, qpos_t, kpos_t, span):
  """True only if every (query, key) pair of the tile is allowed."""
  seg = qseg_t.min(1)
  ok = ((qseg_t.max(1) == seg) & (kseg_t.min(1) == seg) & (kseg_t.max(1) == seg)
        & span.tile_is_full(qidx_t, kidx_t, qpos_t, kpos_t))
  return jnp.all(ok)


def _tile_case(qidx_t, kidx_t, qseg_t, kseg_t, qpos_t, kpos_t, span):
  """0: no allowed pair (skipped); 1: some masked pairs; 2: no masked pair."""
  return jnp.where(blocks.nonempty(qseg_t, kseg_t, qidx_t, kidx_t, kpos_t, span),
                   1 + _full(qidx_t, kidx_t, qseg_t, kseg_t, qpos_t, kpos_t, span),
                   0).astype(jnp.int32)


def _by_case(case, masked_step, state, mask, skipped=lambda st: st):
  """``masked_step(mask, state)`` for tiles with an allowed pair, ``skipped(state)``
  for the others; the mask of a full tile is a constant, so XLA folds the
  masking away there."""
  return jax.lax.switch(case, [skipped, functools.partial(masked_step, mask),
                               functools.partial(masked_step, jnp.ones(mask.shape, bool))],
                        state)


def _zeros_of(step, mask, state):
  """Zeros shaped like ``step(mask, state)[0]``."""
  shapes = jax.eval_shape(step, mask, state)[0]
  return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)


class Softmax:
  """The normalizer: logits as they are, no carry of its own, rows normalised
  (``kernels.stick_breaking.Tiled`` is the other, with the same four methods)."""

  @staticmethod
  def init(q):
    return None

  @staticmethod
  def logits(z, mask, carry):
    return z, carry

  @staticmethod
  def finish(m, l, acc):
    """``(out [B, H, bq, Kv], lse [B, H, bq])`` of a query tile's final state."""
    safe = jnp.where(l == 0, 1.0, l)
    return acc / safe[..., None], jnp.where(l == 0, 0.0, m + jnp.log(safe))

  @staticmethod
  def row_dot(dout, out):
    """``D_i = dO_i . O_i`` ``[B, L, H]``."""
    return jnp.sum(dout.astype(_f32) * out, -1)


NORMALIZERS = {'softmax': Softmax, 'stick_breaking': stick_breaking.Tiled}


def _forward(module, variables, x: Inputs, scale, norm=Softmax):
  """Output ``[B, Lp, H, Kv]`` float32 and log-sum-exp ``[B, Lp, H]``."""
  t, hooks = x.t, _Hooks(module, variables)

  def query_tile(_, i):
    q, qpos, qidx, qseg = x.query(i)
    B, bq, H, _ = q.shape
    init = (jnp.full((B, H, bq), blocks.NEG, _f32), jnp.zeros((B, H, bq), _f32),
            jnp.zeros((B, H, bq, x.v.shape[-1]), _f32), (norm.init(q), hooks.init_carry(q)))
    first, end = t.key_tiles(qidx)

    def key_tile(s, state):
      k, v, kpos, kidx, kseg = x.key(end - 1 - s)  # Last tile first (CoPE's carry).
      mask = blocks.allowed(qidx, kidx, qseg, kseg, t.span, qpos, kpos)
      step = lambda mask, st: _online_step(hooks, norm, q, k, v, qpos, kpos, mask, st, scale)  # noqa: E731
      return _by_case(_tile_case(qidx, kidx, qseg, kseg, qpos, kpos, t.span), step, state, mask)

    m, l, acc, _ = jax.lax.fori_loop(0, end - first, key_tile, init)
    out, lse = norm.finish(m, l, acc)
    return None, (jnp.swapaxes(out, 1, 2), jnp.swapaxes(lse, 1, 2))

  _, (out, lse) = jax.lax.scan(query_tile, None, jnp.arange(t.nq))
  untile = lambda a: jnp.moveaxis(a, 0, 1).reshape((a.shape[1], -1) + a.shape[3:])  # noqa: E731
  return untile(out), untile(lse)


def _online_step(hooks, norm, q, k, v, qpos, kpos, mask, state, scale):
  """``blocks.block``'s online softmax with a head-major accumulator
  ``[B, H, bq, Kv]``, the layout in which XLA's CPU dots need no transposed tile."""
  m, l, acc, carry = state
  s, carry = _logits(hooks, norm, q, k, qpos, kpos, mask, carry, scale)
  m_new, p, corr = blocks.softmax_step(m, s, mask)
  out = jnp.einsum('bhls,bshk->bhlk', p, v.astype(_f32))
  extra = hooks.values(p, qpos, kpos)
  if extra is not None:
    out = out + jnp.swapaxes(extra.astype(_f32), 1, 2)
  return m_new, l * corr + p.sum(-1), acc * corr[..., None] + out, carry


def _qk(q, k, scale):
  """A tile's scaled ``q . k`` ``[B, H, bq, bk]`` float32 (q scaled: no tile-sized product)."""
  return jnp.einsum('blhk,bshk->bhls', q * jnp.asarray(scale, q.dtype), k,
                    preferred_element_type=_f32)


def _logits(hooks, norm, q, k, qpos, kpos, mask, carry, scale):
  """A tile's masked logits ``[B, H, bq, bk]`` and the next ``(normalizer, encoding)``
  carry."""
  norm_carry, enc_carry = carry
  bias, enc_carry = hooks.bias(q, k, qpos, kpos, mask, enc_carry)
  s, norm_carry = norm.logits(_masked(_qk(q, k, scale), bias, mask), mask, norm_carry)
  return s, (norm_carry, enc_carry)


def _masked(s, bias, mask):
  return jnp.where(mask[:, None], s if bias is None else s + bias, blocks.NEG)


def _replay_carries(hooks, norm, x, q, qpos, qidx, qseg, scale):
  """The carry entering each key tile of a query tile, ``[nk, ...]`` (None: no carry)."""
  carry0 = (norm.init(q), hooks.init_carry(q))
  if not jax.tree.leaves(carry0):
    return None
  buf = jax.tree.map(lambda c: jnp.zeros((x.t.nk,) + c.shape, c.dtype), carry0)

  first, end = x.t.key_tiles(qidx)

  def key_tile(s, state):
    carry, buf = state
    j = end - 1 - s
    k, _, kpos, kidx, kseg = x.key(j)
    buf = jax.tree.map(lambda b, c: b.at[j].set(c), buf, carry)
    mask = blocks.allowed(qidx, kidx, qseg, kseg, x.t.span, qpos, kpos)
    carry = _by_case(_tile_case(qidx, kidx, qseg, kseg, qpos, kpos, x.t.span),
                     lambda mask, c: _logits(hooks, norm, q, k, qpos, kpos, mask, c, scale)[1],
                     carry, mask)
    return carry, buf

  return jax.lax.fori_loop(0, end - first, key_tile, (carry0, buf))[1]


def _tile_grads(module, variables, norm, q, k, v, do, qpos, kpos, carry_in, lse_t, D,
                scale, mask, dcarry):
  """One tile's ``(dq [B, H, bq, K], dk, dv [B, H, K, bk], dvariables)`` float32 and
  the carry's cotangent entering it; dk and dv key-minor, dq head-major: the
  layouts in which XLA's CPU dots need no transposed ``[bq, bk]`` tile."""
  zeros = lambda a: jnp.zeros(a.shape, _f32)  # noqa: E731
  def bias(q, k, variables, carry):
    return _Hooks(module, variables).bias(q, k, qpos, kpos, mask, carry)
  (norm_in, carry_in), (dnorm, dcarry) = carry_in or (None, None), dcarry or (None, None)
  (b, carry_out), vjp_bias = jax.vjp(bias, q, k, variables, carry_in)
  z = _masked(_qk(q, k, scale), b, mask)
  (s, norm_out), vjp_norm = jax.vjp(lambda z, c: norm.logits(z, mask, c), z, norm_in)
  p = jnp.exp(s - lse_t[..., None]) * mask[:, None]
  dv = jnp.einsum('blhk,bhls->bhks', do, p)
  dp = jnp.einsum('blhk,bshk->bhls', do, v.astype(_f32))
  extra, vjp_values = jax.vjp(
      lambda p, variables: _Hooks(module, variables).values(p, qpos, kpos), p, variables)
  dvars = jax.tree.map(zeros, variables)
  if extra is not None:
    dp_extra, dvars = vjp_values(do.astype(extra.dtype))
    dp = dp + dp_extra
  ds, dnorm = vjp_norm((p * (dp - D[..., None]), dnorm))  # Zero where masked, as p is.
  dq = jnp.einsum('bhls,bshk->bhlk', ds, k.astype(_f32)) * scale
  dk = jnp.einsum('blhk,bhls->bhks', q.astype(_f32), ds) * scale
  if b is not None or carry_out is not None:
    dq_b, dk_b, dvars_bias, dcarry = vjp_bias(
        (None if b is None else ds, None if carry_out is None else dcarry))
    dq, dk = dq + jnp.swapaxes(dq_b, 1, 2), dk + jnp.transpose(dk_b, (0, 2, 3, 1))
    dvars = jax.tree.map(jnp.add, dvars, dvars_bias)
  grads = jax.tree.map(lambda g: g.astype(_f32), (dq, dk, dv, dvars))
  return grads, None if norm_out is None and carry_out is None else (dnorm, dcarry)


def _backward(module, variables, x: Inputs, out, lse, dout, scale, norm=Softmax):
  t = x.t
  D_BxLxH = norm.row_dot(dout, out)
  zeros = lambda a: jnp.zeros(a.shape, _f32)  # noqa: E731
  dvars0 = jax.tree.map(zeros, variables)

  def query_tile(acc, i):
    dk_all, dv_all, dvars = acc
    q, qpos, qidx, qseg = x.query(i)
    do = t.q(dout, i).astype(_f32)
    lse_t, D = (jnp.swapaxes(t.q(a, i), 1, 2) for a in (lse, D_BxLxH))  # [B, H, bq]
    first, end = t.key_tiles(qidx)
    carries = _replay_carries(_Hooks(module, variables), norm, x, q, qpos, qidx, qseg, scale)

    def key_tile(j, state):
      dq, dk_all, dv_all, dvars, dcarry = state
      k, v, kpos, kidx, kseg = x.key(j)
      mask = blocks.allowed(qidx, kidx, qseg, kseg, t.span, qpos, kpos)
      carry_in = None if carries is None else jax.tree.map(lambda b: b[j], carries)

      step = functools.partial(_tile_grads, module, variables, norm, q, k, v, do, qpos,
                               kpos, carry_in, lse_t, D, scale)
      # Only this tile's gradients pass through the switch (a skipped tile's are
      # zeros): whole dk / dv buffers there would be copied on every tile.
      case = _tile_case(qidx, kidx, qseg, kseg, qpos, kpos, t.span)
      grads, dcarry = _by_case(case, step, dcarry, mask,
                               skipped=lambda dc: (_zeros_of(step, mask, dc), dc))
      dq_t, dk, dv, dvars_tile = grads
      add = lambda a, d: jax.lax.dynamic_update_slice_in_dim(  # noqa: E731
          a, jax.lax.dynamic_slice_in_dim(a, j * t.bk, t.bk, axis=3) + d, j * t.bk, axis=3)
      return (dq + dq_t, add(dk_all, dk), add(dv_all, dv),
              jax.tree.map(jnp.add, dvars, dvars_tile), dcarry)

    dcarry0 = None if carries is None else jax.tree.map(lambda b: jnp.zeros_like(b[0]), carries)
    dq0 = jnp.zeros(jnp.swapaxes(q, 1, 2).shape, _f32)
    dq, dk_all, dv_all, dvars, dcarry = jax.lax.fori_loop(
        first, end, key_tile, (dq0, dk_all, dv_all, dvars, dcarry0))
    dq = jnp.swapaxes(dq, 1, 2)
    if carries is not None:  # The first carry may depend on q and the variables (PaTH's).
      _, vjp_init = jax.vjp(lambda q, v: (norm.init(q), _Hooks(module, v).init_carry(q)),
                            q, variables)
      dq_init, dvars_init = vjp_init(dcarry)
      dq, dvars = dq + dq_init.astype(_f32), jax.tree.map(jnp.add, dvars, dvars_init)
    return (dk_all, dv_all, dvars), dq

  key_minor = lambda a: jnp.zeros(jnp.transpose(a, (0, 2, 3, 1)).shape, _f32)  # noqa: E731
  init = (key_minor(x.k), key_minor(x.v), dvars0)
  (dk, dv, dvars), dq = jax.lax.scan(query_tile, init, jnp.arange(t.nq))
  dq = jnp.moveaxis(dq, 0, 1).reshape(x.q.shape)
  return dq, jnp.transpose(dk, (0, 3, 1, 2)), jnp.transpose(dv, (0, 3, 1, 2)), dvars


def attend(enc, q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, qpos_BxL, kpos_BxS, qidx_BxL, kidx_BxS,
           qseg_BxL, kseg_BxS, *, span, block_q: int, block_k: int, scale: float,
           sink_H=None, passes=None, normalizer: str = 'softmax'):
  """Flash attention; the same arguments and output as ``blockwise.attend``
  (without probabilities). ``enc`` is a bound encoding module. ``passes``: the
  ``(forward, backward)`` pair run under this custom VJP, by default this module's
  XLA loops (``posjax.models.kernels.pallas`` passes its kernels).

  ``sink_H``: a learned logit per head in every row's softmax (float32 ``[H]``),
  a key of value zero: applied to the passes' output and log-sum-exp
  (``out * sigmoid(lse - sink)``, ``lse' = logaddexp(lse, sink)``), so the
  backward passes, given those, need no change; its own gradient is
  ``-sum_i exp(sink - lse'_i) (dO_i . O_i)``."""
  norm = NORMALIZERS[normalizer]
  if passes is not None and norm is not Softmax:
    raise ValueError(f'normalizer={normalizer}: the XLA passes only (not the kernels\' passes)')
  forward, backward = passes or (functools.partial(_forward, norm=norm),
                                 functools.partial(_backward, norm=norm))
  module, variables = enc.unbind()
  L, S = q_BxLxHxK.shape[1], k_BxSxHxK.shape[1]
  bq, bk = min(block_q, L), min(block_k, S)
  tiles = Tiles(bq, bk, -(-L // bq), -(-S // bk), span)
  ints = tuple(a.astype(jnp.int32) for a in
               (qpos_BxL, kpos_BxS, qidx_BxL, kidx_BxS, qseg_BxL, kseg_BxS))

  @jax.custom_vjp
  def flash(variables, q, k, v, sink, ints):
    return fwd(variables, q, k, v, sink, ints)[0]

  def fwd(variables, q, k, v, sink, ints):
    out, lse = forward(module, variables, Inputs(tiles, q, k, v, *ints), scale)
    if sink is not None:
      out = out * jax.nn.sigmoid(lse - sink)[..., None]
      lse = jnp.logaddexp(lse, sink)
    return out[:, :L].astype(v.dtype), (variables, q, k, v, sink, ints, out, lse)

  def bwd(res, dout):
    variables, q, k, v, sink, ints, out, lse = res
    x = Inputs(tiles, q, k, v, *ints)
    dout = pad(dout, tiles.nq * tiles.bq, 0)
    dq, dk, dv, dvars = backward(module, variables, x, out, lse, dout, scale)
    dsink = None
    if sink is not None:
      D = jnp.sum(dout.astype(_f32) * out, -1)
      dsink = -jnp.sum(jnp.exp(sink - lse) * D, (0, 1))
    return (dvars, dq[:, :L].astype(q.dtype), dk[:, :S].astype(k.dtype),
            dv[:, :S].astype(v.dtype), dsink, jax.tree.map(lambda _: None, ints))

  flash.defvjp(fwd, bwd)
  return flash(variables, q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, sink_H, ints)
