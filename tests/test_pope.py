"""Tests for posjax.encodings.pope (PoPE, Gopalakrishnan et al. 2025): the scores
against a float64 transcription of the paper's score and of x-transformers' code,
the real 2K-channel form against the complex Hermitian product, offset invariance,
the clamp of the phase bias, the attention implementations with q/k wider than v,
and hyperparameter validation."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posjax.encodings import pope, registry
from posjax.models.kernels import blockwise, flash, pallas, vendor
from posjax.models.kernels.span import Span

B, L, H, K = 2, 12, 3, 8


def _make(args=None, head_dim=K):
  return registry.make('pope', args, num_heads=H, head_dim=head_dim,
                       model_dim=H * head_dim, max_len=64)


def _rand(seed, shape):
  return np.random.RandomState(seed).normal(size=shape).astype(np.float32)


def _positions(start, length=L, batch=B):
  return np.broadcast_to(start + np.arange(length, dtype=np.int32), (batch, length))


def _variables(delta_HxK):
  return {'params': {'phase_bias': jnp.asarray(delta_HxK, jnp.float32)}}


def _delta(seed, lo=-2 * math.pi, hi=0.0):
  return np.random.RandomState(seed).uniform(lo, hi, (H, K)).astype(np.float32)


def _qk(enc, delta, q, k, qpos, kpos):
  return enc.apply(_variables(delta), q, k, qpos, kpos, method='qk')


def _scores(enc, delta, q, k, qpos, kpos):
  """``[B, H, L, S]`` dot products of the hook's outputs, float64 (unscaled)."""
  q2, k2 = _qk(enc, delta, q, k, qpos, kpos)
  return np.einsum('blhk,bshk->bhls', np.asarray(q2, np.float64), np.asarray(k2, np.float64))


def _softplus(x):
  return np.logaddexp(0.0, np.asarray(x, np.float64))


def _theta(dim=K, base=10000.0):
  """The paper's frequencies theta_c = base^(-(c-1)/d), c = 1..d (one per channel)."""
  c = np.arange(1, dim + 1, dtype=np.float64)
  return base ** (-(c - 1) / dim)


def _paper_scores(q, k, qpos, kpos, delta, base=10000.0):
  """sum_c softplus(q_c) softplus(k_c) cos((m - n) theta_c - delta_c), float64."""
  mq, mk = _softplus(q), _softplus(k)
  offset_BxLxS = qpos[:, :, None].astype(np.float64) - kpos[:, None, :]
  angle_BxHxLxSxK = (offset_BxLxS[:, None, :, :, None] * _theta(q.shape[-1], base)
                     - np.asarray(delta, np.float64)[None, :, None, None, :])
  return np.einsum('blhk,bshk,bhlsk->bhls', mq, mk, np.cos(angle_BxHxLxSxK))


# ---------------------------------------------------------------- the score

@pytest.mark.parametrize('base', [10000.0, 500.0])
def test_scores_equal_the_paper_equation(base):
  """The hook's q . k equals sum_c mu_q mu_k cos((m - n) theta_c - delta_c) (float64)."""
  enc = _make({'base': base})
  q, k = _rand(0, (B, L, H, K)), _rand(1, (B, L, H, K))
  qpos = _positions(3)
  kpos = np.stack([np.random.RandomState(2).permutation(L) * 5 for _ in range(B)]).astype(np.int32)
  delta = _delta(3)
  want = _paper_scores(q, k, qpos, kpos, delta, base)
  np.testing.assert_allclose(_scores(enc, delta, q, k, qpos, kpos), want,
                             rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_real_form_is_the_complex_hermitian_product():
  """The 2K real channels are [Re q~, Im q~] of q~_c = softplus(q_c) e^{i m theta_c},
  k~_c = softplus(k_c) e^{i (n theta_c + delta_c)} (built here in complex128), and
  their dot product is Re(sum_c q~_c conj(k~_c))."""
  enc = _make()
  q, k = _rand(4, (B, L, H, K)), _rand(5, (B, L, H, K))
  qpos, kpos = _positions(7), _positions(0)[:, ::-1] * 2
  delta = _delta(6)
  q2, k2 = (np.asarray(a, np.float64) for a in _qk(enc, delta, q, k, qpos, kpos))
  assert q2.shape == k2.shape == (B, L, H, 2 * K)
  theta = _theta()
  qc = _softplus(q) * np.exp(1j * qpos[:, :, None, None] * theta)
  kc = _softplus(k) * np.exp(1j * (kpos[:, :, None, None] * theta + delta))
  np.testing.assert_allclose(q2[..., :K] + 1j * q2[..., K:], qc, atol=1e-5)
  np.testing.assert_allclose(k2[..., :K] + 1j * k2[..., K:], kc, atol=1e-5)
  hermitian = np.einsum('blhk,bshk->bhls', qc, np.conj(kc)).real
  np.testing.assert_allclose(np.einsum('blhk,bshk->bhls', q2, k2), hermitian,
                             rtol=1e-5, atol=1e-5 * np.abs(hermitian).max())


def _x_transformers(q, k, qpos, kpos, learned_bias, base=10000.0):
  """x-transformers (lucidrains/x-transformers, x_transformers/x_transformers.py,
  ``PolarEmbedding.forward`` and ``apply_polar_pos_emb``) transcribed in float64:
  inv_freq = 1 / base ** (arange(dim) / dim), bias = learned_bias.clamp(-2 pi, 0),
  q -> cat(softplus(q) cos(f), softplus(q) sin(f)) with f = pos inv_freq, and k
  likewise with f + bias. Its attention scales q . k by dim_head ** -0.5."""
  dim = q.shape[-1]
  inv_freq = 1.0 / (base ** (np.arange(dim, dtype=np.float64) / dim))
  bias = np.clip(np.asarray(learned_bias, np.float64), -2 * math.pi, 0.0)
  fq = qpos[:, :, None, None] * inv_freq
  fk = kpos[:, :, None, None] * inv_freq + bias
  tq, tk = _softplus(q), _softplus(k)
  return (np.concatenate([tq * np.cos(fq), tq * np.sin(fq)], -1),
          np.concatenate([tk * np.cos(fk), tk * np.sin(fk)], -1))


def test_equals_x_transformers_polar_embedding():
  """Channel for channel (same [real, imag] layout) equal to x-transformers' PoPE,
  with a bias that leaves [-2 pi, 0] on both sides, so its clamp is compared too;
  and so are the scaled logits q . k / sqrt(K)."""
  enc = _make()
  q, k = _rand(7, (B, L, H, K)), _rand(8, (B, L, H, K))
  qpos, kpos = _positions(100), _positions(90)
  delta = _delta(9, lo=-8.0, hi=1.5)
  assert (delta > 0).any() and (delta < -2 * math.pi).any()
  got = [np.asarray(a, np.float64) for a in _qk(enc, delta, q, k, qpos, kpos)]
  want = _x_transformers(q, k, qpos, kpos, delta)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=2e-6 * np.abs(w).max())
  logits = lambda a, b: np.einsum('blhk,bshk->bhls', a, b) / math.sqrt(K)  # noqa: E731
  np.testing.assert_allclose(logits(*got), logits(*want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('shift', [1, 4097, 100_003, 3_000_000])
def test_scores_depend_only_on_offset(shift):
  enc = _make()
  q, k = _rand(10, (B, L, H, K)), _rand(11, (B, L, H, K))
  qpos, kpos = _positions(0), _positions(0)[:, ::-1] * 3
  delta = _delta(12)
  ref = _scores(enc, delta, q, k, qpos, kpos)
  np.testing.assert_allclose(_scores(enc, delta, q, k, qpos + shift, kpos + shift), ref,
                             rtol=1e-4, atol=1e-4 * np.abs(ref).max())
  # The test has teeth: another offset gives other scores.
  assert not np.allclose(_scores(enc, delta, q, k, qpos + shift, kpos), ref, atol=1e-2)


def test_content_sets_magnitude_and_position_sets_phase():
  """Scores of equal positions are sum_c mu_q mu_k cos(delta_c): no content term can
  move the phase (the 'what' and 'where' decoupled)."""
  enc = _make()
  q, k = _rand(13, (1, 1, H, K)), _rand(14, (1, 1, H, K))
  delta = _delta(15)
  got = _scores(enc, delta, q, k, np.array([[42]]), np.array([[42]]))[0, :, 0, 0]
  want = (_softplus(q[0, 0]) * _softplus(k[0, 0]) * np.cos(delta)).sum(-1)
  np.testing.assert_allclose(got, want, rtol=1e-5)


# ---------------------------------------------------------------- the phase bias

def test_phase_bias_init_and_clamp_gradient():
  q, k = _rand(16, (B, L, H, K)), _rand(17, (B, L, H, K))
  pos = _positions(0)
  init = lambda args: nn.unbox(_make(args).init(  # noqa: E731
      jax.random.key(0), q, k, pos, pos, method='qk'))['params']['phase_bias']
  zeros = init(None)
  assert zeros.shape == (H, K) and not np.asarray(zeros).any()
  uniform = init({'bias_init': 'uniform'})
  assert (np.asarray(uniform) <= 0).all() and (np.asarray(uniform) >= -2 * math.pi).all()
  assert np.asarray(uniform).std() > 1.0
  # The clamp passes the gradient on [-2 pi, 0], ends included (the zero init trains
  # at full rate, as torch.clamp), and none outside it.
  x = jnp.array([-7.0, -2 * math.pi, -1.0, 0.0, 0.5])
  np.testing.assert_allclose(pope.clamp_bias(x), [-2 * math.pi, -2 * math.pi, -1.0, 0.0, 0.0])
  np.testing.assert_array_equal(jax.grad(lambda d: pope.clamp_bias(d).sum())(x), [0, 1, 1, 1, 0])


# ---------------------------------------------------------------- inside attention

def _attention_inputs(seed=18):
  enc = _make()
  q, k, v = (jnp.asarray(_rand(seed + i, (B, L, H, K))) for i in range(3))
  pos = jnp.asarray(_positions(0))
  seg = jnp.ones((B, L), jnp.int32)
  delta = _delta(seed + 3)
  q2, k2 = _qk(enc, delta, q, k, pos, pos)
  return enc.bind(_variables(delta)), q2, k2, v, pos, seg, q, k, delta


def test_dense_attention_takes_the_wider_q_and_k():
  """Dense attention over 2K-channel q, k and K-channel v: probabilities are the
  softmax of the paper's scores / sqrt(K) (the head dim), causal."""
  enc, q2, k2, v, pos, seg, q, k, delta = _attention_inputs()
  out, probs = blockwise.attend(enc, q2, k2, v, pos, pos, pos, pos, seg, seg,
                                span=Span(causal=True), block_size=None, scale=K ** -0.5)
  assert out.shape == v.shape
  logits = _paper_scores(np.asarray(q), np.asarray(k), np.asarray(pos), np.asarray(pos),
                         delta) / math.sqrt(K)
  logits = np.where(np.tril(np.ones((L, L), bool)), logits, -np.inf)
  want = np.exp(logits - logits.max(-1, keepdims=True))
  want /= want.sum(-1, keepdims=True)
  np.testing.assert_allclose(probs, want, atol=1e-5)
  np.testing.assert_allclose(out, np.einsum('bhls,bshk->blhk', want, v), atol=1e-5)


@pytest.mark.parametrize('impl', ['flash', 'pallas'])
def test_tiled_attention_takes_the_wider_q_and_k(impl):
  """flash and the Pallas kernels (interpret mode) equal dense in values and in the
  gradients of q, k (2K channels) and v (K channels)."""
  enc, q2, k2, v, pos, seg, *_ = _attention_inputs(seed=22)
  span, scale = Span(causal=True), K ** -0.5
  dense = lambda a, b, c: blockwise.attend(  # noqa: E731
      enc, a, b, c, pos, pos, pos, pos, seg, seg, span=span, block_size=None, scale=scale)[0]
  if impl == 'flash':
    tiled = lambda a, b, c: flash.attend(  # noqa: E731
        enc, a, b, c, pos, pos, pos, pos, seg, seg, span=span, block_q=4, block_k=4, scale=scale)
  else:
    tiled = lambda a, b, c: pallas.attend(  # noqa: E731
        enc, a, b, c, pos, pos, pos, pos, seg, seg, span=span, block_q=4, block_k=4,
        scale=scale, interpret=True)
  np.testing.assert_allclose(tiled(q2, k2, v), dense(q2, k2, v), atol=1e-5)
  def grads(f):
    return jax.grad(lambda *a: (f(*a) ** 2).sum(), argnums=(0, 1, 2))(q2, k2, v)
  for g, w in zip(grads(tiled), grads(dense)):
    np.testing.assert_allclose(g, w, atol=1e-4)


def test_cudnn_wrapper_refuses_qk_wider_than_v():
  """jax.nn.dot_product_attention (under ``attention='cudnn'``) needs v shaped as k:
  PoPE's 2K-channel keys cannot go through it (here as 'xla', the same check)."""
  _, q2, k2, v, _, seg, *_ = _attention_inputs()
  with pytest.raises(ValueError, match='value shape'):
    vendor.cudnn_attend(q2, k2, v, seg, seg, causal=True, scale=K ** -0.5,
                        implementation='xla')


def test_fused_kernel_choice_knows_cudnn_cannot_take_pope(monkeypatch):
  """``qk_width = 2``: ``attention='auto'`` never picks cuDNN for PoPE (it would fail
  above); a plain RoPE model of the same shape is accepted."""
  from posjax import models
  monkeypatch.setattr(vendor, 'emulated', lambda: True)
  cfg = models.ModelConfig.from_config(dict(kind='decoder', vocab_size=40, num_layers=1,
                                            num_heads=2, model_dim=64, mlp_dim=64,
                                            max_len=64, posenc='pope', dtype='bfloat16'))
  assert 'widens q and k to 2x' in vendor.why_not('cudnn', cfg)
  assert vendor.why_not('cudnn', cfg.replace(posenc='rope')) is None


# ---------------------------------------------------------------- dtype, validation

def test_bf16_keeps_dtype_and_float32_phases():
  enc = _make()
  q = jnp.asarray(_rand(26, (B, L, H, K)), jnp.bfloat16)
  pos = _positions(1_000_000)
  delta = _delta(27)
  q2, k2 = jax.jit(lambda *a: _qk(enc, delta, *a))(q, q, pos, pos)
  assert q2.dtype == k2.dtype == jnp.bfloat16 and q2.shape[-1] == 2 * K
  x = np.asarray(q, np.float64)
  theta = _theta()
  want = _softplus(x) * np.exp(1j * pos[:, :, None, None] * theta)
  got = np.asarray(q2, np.float64)
  assert np.abs(got[..., :K] + 1j * got[..., K:] - want).max() <= 2.0 ** -7 * np.abs(want).max()


@pytest.mark.parametrize('args,match', [
    ({'base': -1.0}, r'^model\.posenc_args\.base: got -1\.0; allowed: a number > 1$'),
    ({'base': 1.0}, r'^model\.posenc_args\.base: got 1\.0; allowed'),
    ({'bias_init': 'normal'},
     r"^model\.posenc_args\.bias_init: got 'normal'; allowed: zeros, uniform$"),
    ({'rotary_fraction': 0.5},
     r'^model\.posenc_args: unknown field\(s\) rotary_fraction for .pope.; allowed: base, bias_init$'),
])
def test_bad_hyperparameters(args, match):
  with pytest.raises(ValueError, match=match) as err:
    _make(args)
  assert '\n' not in str(err.value)
