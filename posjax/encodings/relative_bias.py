"""Relative logit biases: T5 buckets, ALiBi, KERPLE (log / power) and FIRE.

Each bias is a function of (query position, key position, head) evaluated per
key block from explicit int32 positions, in float32; nothing is sized by the
full sequence. Distances are ``|k - q|``: for a decoder the visible keys have
k <= q, so this is ``q - k`` there and the mask removes the rest, and encoders
get the symmetric form. Only T5 (buckets) tells the two directions apart.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from posjax.encodings.base import (BIAS, Array, Encoding, lookup, per_head, relative,
                                   scalar_mlp)
from posjax.encodings.registry import register


def t5_relative_position_bucket(relative_position: Array, *, bidirectional: bool,
                                num_buckets: int = 32, max_distance: int = 128
                                ) -> Array:
  """T5's bucket of ``key - query`` (mesh-tensorflow ``_relative_position_bucket``).

  Bidirectional: the upper half of the buckets holds keys after the query.
  Distances below ``max_exact`` get their own bucket, larger ones are
  log-spaced up to ``max_distance`` and clipped to the last bucket.
  """
  n = -jnp.asarray(relative_position, jnp.int32)
  if bidirectional:
    num_buckets //= 2
    ret, n = jnp.where(n < 0, num_buckets, 0), jnp.abs(n)
  else:
    ret, n = 0, jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  if max_exact < 1 or max_distance <= max_exact:
    raise ValueError(f'need num_buckets >= {4 if bidirectional else 2} and '
                     f'max_distance > {max_exact}; got {num_buckets=}, {max_distance=}')
  # Float32 as the reference; n == 0 is small, the max only avoids log(0).
  n_f = jnp.maximum(n, 1).astype(jnp.float32) / max_exact
  large = max_exact + (jnp.log(n_f) / math.log(max_distance / max_exact)
                       * (num_buckets - max_exact)).astype(jnp.int32)
  return ret + jnp.where(n < max_exact, n, jnp.minimum(large, num_buckets - 1))


def alibi_slopes(num_heads: int) -> Array:
  """ALiBi's per-head slopes ``[num_heads]`` (the paper's ``get_slopes``)."""
  return jnp.asarray(_slopes(num_heads), jnp.float32)


def _slopes(num_heads: int) -> np.ndarray:
  """``alibi_slopes`` as static float32 numpy (a constant, also inside a trace)."""
  if num_heads < 1:
    raise ValueError(f'alibi_slopes: num_heads must be >= 1, got {num_heads}')
  geometric = lambda n: [2 ** (-8 * (i + 1) / n) for i in range(n)]
  p = 2 ** int(math.floor(math.log2(num_heads)))
  return np.asarray(geometric(p) + geometric(2 * p)[::2][:num_heads - p], np.float32)


def _distance(qpos_BxL: Array, kpos_BxS: Array) -> Array:
  """``|k - q|`` as float32 ``[B, 1, L, S]`` (exact up to 2**24)."""
  return jnp.abs(relative(qpos_BxL, kpos_BxS)).astype(jnp.float32)[:, None]


def _check(ok: bool, field: str, allowed: str, value) -> None:
  if not ok:
    raise ValueError(f'model.posenc_args.{field}: got {value!r}; allowed: {allowed}')


@register('t5')
class T5Bias(Encoding):
  """A learned ``[num_buckets, num_heads]`` bias table indexed by T5 buckets.

  Initialised as t5x's ``RelativePositionBiases`` (variance_scaling(1, fan_avg,
  uniform)), added after the 1/sqrt(K) logit scale: at init this equals T5's
  unscaled logits with the 1/sqrt(K) folded into the query init. What differs
  is the optimiser: t5x notes the fold is "equivalent under Adafactor", whose
  steps are relative; Adam moves every entry by ~lr per step, so the few units
  of locality bias that ALiBi starts with took thousands of steps and a short
  run trained like NoPE. The table is therefore stored divided by
  ``table_scale``, so the bias moves ~``table_scale * lr`` per step (the init of
  the bias is unchanged). Measured on configs/lm.py:runlocal (200 steps, lr
  1e-3), eval perplexity at L=128: 18.61 at scale 1 (NoPE 18.68, ALiBi 16.72),
  17.66 at 10, 16.47 at 30, 15.44 at 100, 15.76 at 300.
  """
  num_buckets: int = 32
  max_distance: int = 128
  table_scale: float = 100.0

  acts_at = (BIAS,)
  shared_across_layers = True
  translation_invariant = True
  has_params = True
  bias_from_positions = True
  bias_in_kernel = True

  def __post_init__(self):
    super().__post_init__()
    min_buckets = 2 if self.causal else 4
    _check(self.num_buckets >= min_buckets, 'num_buckets',
           f'>= {min_buckets} ({"decoder" if self.causal else "encoder"})', self.num_buckets)
    max_exact = self.num_buckets // (2 if self.causal else 4)
    _check(self.max_distance > max_exact, 'max_distance',
           f'> num_buckets // {2 if self.causal else 4} = {max_exact}', self.max_distance)
    _check(self.table_scale > 0, 'table_scale', '> 0', self.table_scale)

  def setup(self):
    t5x_init = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')
    self.table_raw = self.param(
        'rel_bias_raw', nn.with_logical_partitioning(
            lambda *a: t5x_init(*a) / self.table_scale, ('buckets', 'heads')),
        (self.num_buckets, self.num_heads), jnp.float32)

  def bias(self, q_BxLxHxK, k_BxSxHxK, qpos_BxL, kpos_BxS, mask_BxLxS, carry):
    del q_BxLxHxK, k_BxSxHxK, mask_BxLxS
    bucket_BxLxS = t5_relative_position_bucket(
        relative(qpos_BxL, kpos_BxS), bidirectional=not self.causal,
        num_buckets=self.num_buckets, max_distance=self.max_distance)
    table = per_head(self.table_scale * self.table_raw.astype(jnp.float32), axis=1)
    return lookup(table, bucket_BxLxS), carry


@register('alibi')
class ALiBi(Encoding):
  """``-slope_h * |k - q|`` with the paper's fixed slopes; no parameters.

  ``num_alibi_heads`` (None: all): only the first ``num_alibi_heads`` heads are
  biased, with the slopes of that many heads, and the others get slope 0, as
  x-transformers' ``alibi_num_heads`` (its ``AlibiPositionalBias`` pads the bias
  of the remaining heads with zeros).
  """
  num_alibi_heads: int | None = None

  acts_at = (BIAS,)
  translation_invariant = True
  bias_from_positions = True
  bias_in_kernel = True

  def __post_init__(self):
    super().__post_init__()
    n = self.num_alibi_heads
    _check(n is None or (isinstance(n, int) and 1 <= n <= self.num_heads), 'num_alibi_heads',
           f'None (all heads) or an integer in [1, num_heads = {self.num_heads}]', n)

  def slopes(self) -> Array:
    """``[num_heads]`` float32: ALiBi's slopes for the biased heads, then zeros."""
    n = self.num_heads if self.num_alibi_heads is None else self.num_alibi_heads
    # Static (numpy): a constant of the kernels, no zero-size concatenate in them.
    return jnp.asarray(np.pad(_slopes(n), (0, self.num_heads - n)))

  def bias(self, q_BxLxHxK, k_BxSxHxK, qpos_BxL, kpos_BxS, mask_BxLxS, carry):
    del q_BxLxHxK, k_BxSxHxK, mask_BxLxS
    slope_H = per_head(self.slopes())
    return -slope_H[:, None, None] * _distance(qpos_BxL, kpos_BxS), carry


# KERPLE's reference code clamps its parameters to >= 1e-2 (and the power to
# <= 2) in place after every step. We keep them in range by reparametrising
# instead (softplus; 2 * sigmoid for the power), so gradients never die at the
# boundary, and initialise so the effective values follow the reference init:
# the multiplier of the log kernel and the power ~ U(0, 2), the rest ~ U(0, 1),
# clipped into range.
_KERPLE_EPS = 1e-2


def _softplus_uniform(high: float):
  """Init of a raw parameter whose softplus is ~ U(eps, high)."""
  def init(key, shape, dtype=jnp.float32):
    u = jnp.maximum(jax.random.uniform(key, shape, dtype, 0., high), _KERPLE_EPS)
    return u + jnp.log(-jnp.expm1(-u))  # Inverse softplus.
  return init


def _power_init(key, shape, dtype=jnp.float32):
  """Init of a raw parameter whose ``2 * sigmoid`` is ~ U(eps, 2 - eps)."""
  u = jnp.clip(jax.random.uniform(key, shape, dtype, 0., 2.), _KERPLE_EPS, 2. - _KERPLE_EPS)
  return jnp.log(u) - jnp.log(2. - u)  # Inverse of 2 * sigmoid.


class _Kerple(Encoding):
  """Per-head positive (r1, r2) from raw parameters; subclasses give the kernel."""
  acts_at = (BIAS,)
  translation_invariant = True
  has_params = True
  bias_from_positions = True
  bias_in_kernel = True
  r1_high = 2.0

  def setup(self):
    heads = lambda init: nn.with_logical_partitioning(init, ('heads',))
    self.r1_raw = self.param('r1_raw', heads(_softplus_uniform(self.r1_high)),
                             (self.num_heads,), jnp.float32)
    self.r2_raw = self.param('r2_raw', heads(self.r2_init), (self.num_heads,), jnp.float32)

  def bias(self, q_BxLxHxK, k_BxSxHxK, qpos_BxL, kpos_BxS, mask_BxLxS, carry):
    del q_BxLxHxK, k_BxSxHxK, mask_BxLxS
    r1_H = per_head(jax.nn.softplus(self.r1_raw.astype(jnp.float32)))
    kernel_BxHxLxS = self.kernel(_distance(qpos_BxL, kpos_BxS),
                                 per_head(self.r2_raw.astype(jnp.float32))[:, None, None])
    return -r1_H[:, None, None] * kernel_BxHxLxS, carry


@register('kerple_log')
class KerpleLog(_Kerple):
  """``-r1_h * log(1 + r2_h |k - q|)``; r1 ~ U(0, 2), r2 ~ U(0, 1) at init."""
  r2_init = staticmethod(_softplus_uniform(1.0))

  @staticmethod
  def kernel(d, r2_raw):
    return jnp.log1p(jax.nn.softplus(r2_raw) * d)


@register('kerple_power')
class KerplePower(_Kerple):
  """``-r1_h * |k - q| ** r2_h``, 0 < r2 < 2; r1 ~ U(0, 1), r2 ~ U(0, 2) at init."""
  r1_high = 1.0
  r2_init = staticmethod(_power_init)

  @staticmethod
  def kernel(d, r2_raw):
    return jnp.power(d, 2. * jax.nn.sigmoid(r2_raw))


def _torch_uniform(fan_in: int):
  """U(+-1/sqrt(fan_in)), PyTorch's Linear init as in the FIRE reference; a
  zero first-layer bias would make the MLP linear in its input ``>= 0``."""
  bound = 1. / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
      key, shape, dtype, -bound, bound)


@register('fire')
class FIRE(Encoding):
  """FIRE: ``f(psi(|i - j|) / psi(max(i, L)))`` with ``psi(x) = log(|c| x + 1)``.

  i is the query position, ``f`` a 1 -> mlp_width -> num_heads ReLU MLP, c a
  learned scalar (init ``init_c``) and ``L = |L_multiplier * init_L|`` with a
  learned multiplier (init 1), as in the paper's reference code. The output
  layer has no bias (the reference's is inert: a per-head constant added to a
  whole row of logits cancels in the softmax, so it only drifts under Adam's
  normalised noise). Not translation invariant: the normaliser depends on the
  query position by design.
  """
  mlp_width: int = 32
  init_c: float = 0.1
  init_L: float = 512.0
  eps: float = 1e-6

  acts_at = (BIAS,)
  has_params = True
  bias_from_positions = True
  bias_in_kernel = True

  def __post_init__(self):
    super().__post_init__()
    _check(self.mlp_width >= 1, 'mlp_width', '>= 1', self.mlp_width)
    _check(self.init_c > 0, 'init_c', '> 0', self.init_c)
    _check(self.init_L > 0, 'init_L', '> 0', self.init_L)
    _check(self.eps > 0, 'eps', '> 0', self.eps)

  def setup(self):
    p = lambda name, init, shape, names: self.param(
        name, nn.with_logical_partitioning(init, names), shape, jnp.float32)
    w = self.mlp_width
    self.c = p('c', nn.initializers.constant(self.init_c), (), ())
    self.L_multiplier = p('L_multiplier', nn.initializers.ones, (), ())
    self.w1 = p('w1', _torch_uniform(1), (w,), ('mlp',))
    self.b1 = p('b1', _torch_uniform(1), (w,), ('mlp',))
    self.w2 = p('w2', _torch_uniform(w), (w, self.num_heads), ('mlp', 'heads'))

  def bias(self, q_BxLxHxK, k_BxSxHxK, qpos_BxL, kpos_BxS, mask_BxLxS, carry):
    del q_BxLxHxK, k_BxSxHxK, mask_BxLxS
    f32 = lambda x: x.astype(jnp.float32)
    c = jnp.abs(f32(self.c))
    threshold = jnp.abs(f32(self.L_multiplier) * self.init_L)
    norm_BxL = jnp.log1p(c * jnp.maximum(f32(qpos_BxL), threshold)) + self.eps
    dist_BxLxS = jnp.log1p(c * _distance(qpos_BxL, kpos_BxS)[:, 0]) / norm_BxL[..., None]
    w2 = per_head(f32(self.w2), axis=1)
    return scalar_mlp(dist_BxLxS, f32(self.w1), f32(self.b1), w2), carry
