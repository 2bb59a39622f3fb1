"""DAPE: Zheng et al. 2024, "DAPE: Data-Adaptive Positional Encoding for Length
Extrapolation" (NeurIPS 2024, arXiv 2405.14722).

At every (query i, key j) a small MLP over the heads reads the attention logits
of all heads and a static base bias of all heads, and its output is added to
both (the paper's DAPE, Eq. 2, with the residual and concatenation its code and
ablations use; the authors' ``AliBi_C`` / ``ParallelKerpleLog_C`` / ``FIRE_C``):

  logits_h(i, j) = A_h(i, j) + B_h(i, j) + f([A(i, j), B(i, j)])_h
  f(x) = W2 leaky_relu(W1 x + b1),   x in R^{2H},  W1: 2H -> W,  W2: W -> H

A = q_i . k_j / sqrt(K) is the scaled logit the softmax sees (the reference
adds its bias after the 1/sqrt(K) of ``baddbmm``); B is any registered bias-only
encoding (``base_posenc``, ALiBi by default, with ``base_args``). ``bias``
returns B + f(...): the attention adds A itself. f acts on each (i, j) alone, so
the masked pairs never reach an allowed one; they enter the MLP as zeros
(finite whatever the padding holds) and are dropped by the attention's mask.

Differences from the reference code: the output layer has no bias (a per-head
constant on every logit of a row cancels in the softmax, as in ``fire``); its
ALiBi / KERPLE biases are zero above the diagonal (``tril``), here they are the
base's own ``|j - i|`` form, equal on every pair a decoder may attend. Like the
reference, each layer has its own MLP and its own base: with ``base_posenc='t5'``
that is one T5 table per layer, not T5's one model-level table.

``translation_invariant`` is declared for the default base (ALiBi; also T5,
KERPLE): with ``base_posenc='fire'`` the bias is not invariant. The MLP runs on
every key block (``[B, W, L, block]`` float32 in blockwise, ``[B, W, tile_L,
tile_S]`` per flash tile), so the bias is computed outside the Pallas kernels.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from posjax.encodings import registry
from posjax.encodings.base import BIAS, Array, Encoding
from posjax.encodings.registry import register

# PyTorch's ``nn.LeakyReLU()`` default, as in the reference.
NEGATIVE_SLOPE = 0.01


def allowed_bases() -> list[str]:
  """Registered encodings DAPE may take as its base: bias-only ones whose flags
  (decoding, no length bound, not decoder-only) DAPE can declare as its own."""
  return [n for n in registry.names() if _fits(registry.get(n))]


def _fits(cls) -> bool:
  return (tuple(cls.acts_at) == (BIAS,) and not issubclass(cls, DAPE)
          and cls.supports_decoding and not cls.bounded_by_max_len and not cls.causal_only)


def _torch_uniform(fan_in: int):
  """U(+-1/sqrt(fan_in)): PyTorch's ``nn.Linear`` init of weights and biases."""
  bound = 1. / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
      key, shape, dtype, -bound, bound)


def _check(ok: bool, field: str, allowed: str, value) -> None:
  if not ok:
    raise ValueError(f'model.posenc_args.{field}: got {value!r}; allowed: {allowed}')


@register('dape')
class DAPE(Encoding):
  """``B + f([A, B])`` with a per-layer 2H -> mlp_width -> H LeakyReLU MLP.

  ``base_posenc``: the base bias (``allowed_bases()``); ``base_args``: its
  hyperparameters (a dict, or its sorted pairs). Its parameters (T5's table,
  KERPLE's r1, r2, FIRE's MLP) live under ``base`` and train with DAPE's.
  """
  base_posenc: str = 'alibi'
  base_args: tuple = ()
  mlp_width: int = 32

  acts_at = (BIAS,)
  translation_invariant = True  # As the default base; not with base_posenc='fire'.
  has_params = True

  def __post_init__(self):
    # Sorted pairs: hashable like every other field, whatever form they came in.
    object.__setattr__(self, 'base_args', tuple(sorted(dict(self.base_args or ()).items())))
    super().__post_init__()
    _check(isinstance(self.mlp_width, int) and self.mlp_width >= 1, 'mlp_width',
           'an integer >= 1', self.mlp_width)
    allowed = allowed_bases()
    _check(self.base_posenc in allowed, 'base_posenc',
           f'a bias-only encoding: {", ".join(allowed)}', self.base_posenc)
    try:  # Validates base_args now (config time), not at the first call.
      self._make_base(parent=None)
    except ValueError as e:
      raise ValueError(str(e).replace('model.posenc_args', 'model.posenc_args.base_args', 1)
                       ) from None

  def _make_base(self, **linen_kw) -> Encoding:
    return registry.make(self.base_posenc, dict(self.base_args), **linen_kw,
                         num_heads=self.num_heads, head_dim=self.head_dim,
                         model_dim=self.model_dim, max_len=self.max_len, causal=self.causal)

  def setup(self):
    self.base = self._make_base()
    p = lambda name, init, shape, names: self.param(
        name, nn.with_logical_partitioning(init, names), shape, jnp.float32)
    H, W = self.num_heads, self.mlp_width
    # Rows 0..H-1 read the logits, rows H..2H-1 the base bias (the reference's
    # concatenation order).
    self.w1 = p('w1', _torch_uniform(2 * H), (2 * H, W), ('dape_inputs', 'mlp'))
    self.b1 = p('b1', _torch_uniform(2 * H), (W,), ('mlp',))
    self.w2 = p('w2', _torch_uniform(W), (W, H), ('mlp', 'heads'))

  def init_carry(self, q_BxLxHxK: Array):
    return self.base.init_carry(q_BxLxHxK)

  def bias(self, q_BxLxHxK, k_BxSxHxK, qpos_BxL, kpos_BxS, mask_BxLxS, carry):
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
    logits_BxHxLxS = jnp.einsum('blhk,bshk->bhls', f32(q_BxLxHxK), f32(k_BxSxHxK)
                                ) * self.head_dim ** -0.5
    base_BxHxLxS, carry = self.base.bias(q_BxLxHxK, k_BxSxHxK, qpos_BxL, kpos_BxS,
                                         mask_BxLxS, carry)
    base_BxHxLxS = jnp.broadcast_to(f32(base_BxHxLxS), logits_BxHxLxS.shape)
    return base_BxHxLxS + self.mlp(logits_BxHxLxS, base_BxHxLxS, mask_BxLxS), carry

  def mlp(self, logits_BxHxLxS: Array, base_BxHxLxS: Array, mask_BxLxS: Array | None
          ) -> Array:
    """``f([A, B])`` ``[B, H, L, S]``, heads-major throughout (no ``[..., 2H]``
    concatenation); masked pairs enter as zeros."""
    if mask_BxLxS is not None:
      keep = lambda x: jnp.where(mask_BxLxS[:, None], x, 0.)  # noqa: E731
      logits_BxHxLxS, base_BxHxLxS = keep(logits_BxHxLxS), keep(base_BxHxLxS)
    H = self.num_heads
    w1 = self.w1.astype(jnp.float32)
    hidden_BxWxLxS = (jnp.einsum('bhls,hw->bwls', logits_BxHxLxS, w1[:H])
                      + jnp.einsum('bhls,hw->bwls', base_BxHxLxS, w1[H:])
                      + self.b1.astype(jnp.float32)[:, None, None])
    act_BxWxLxS = jax.nn.leaky_relu(hidden_BxWxLxS, NEGATIVE_SLOPE)
    return jnp.einsum('bwls,wh->bhls', act_BxWxLxS, self.w2.astype(jnp.float32))
