"""Shaw, Transformer-XL and CoPE hooks against dense numpy transcriptions."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posjax.encodings import registry

B, L, H, K, D = 2, 9, 2, 4, 8


def _make(name, causal=True, **kw):
  return registry.make(name, kw, num_heads=H, head_dim=K, model_dim=D, max_len=16,
                       causal=causal)


def _inputs(seed=0, causal=True):
  """float32 q, k ``[B, L, H, K]``, int32 positions (row 1 packed), mask, probs."""
  rng = np.random.default_rng(seed)
  q, k = rng.standard_normal((2, B, L, H, K), np.float32)
  pos = np.stack([np.arange(L), [0, 1, 2, 3, 0, 1, 2, 0, 1]]).astype(np.int32)
  seg = np.cumsum(pos == 0, 1)
  mask = seg[:, :, None] == seg[:, None, :]
  if causal:
    mask &= np.tri(L, dtype=bool)
  p = rng.uniform(size=(B, H, L, L)).astype(np.float32) * mask[:, None]
  return q, k, pos, mask, p


@functools.lru_cache
def _init_cached(name, kw):
  enc = _make(name, **dict(kw))
  q, k, pos, mask, p = _inputs()
  def all_hooks(mdl):
    q2, k2 = mdl.qk(q, k, pos, pos)
    mdl.bias(q2, k2, pos, pos, mask, mdl.init_carry(q2))
    mdl.values(p, pos, pos)
  return jax.jit(lambda rng: enc.init(rng, method=all_hooks))(jax.random.PRNGKey(1))


def _init(name, **kw):
  """Parameters of encoding ``name`` (they do not depend on ``causal``)."""
  return _init_cached(name, tuple(sorted(kw.items())))


def _logits(enc, params, q, k, pos, mask, splits=()):
  """What attention computes: q.k / sqrt(K) + bias, key blocks last to first."""
  return _attention_fn(enc, splits)(params, q, k, pos, mask)


@functools.lru_cache
def _attention_fn(enc, splits):
  def run(mdl, q, k, pos, mask):
    q2, k2 = mdl.qk(q, k, pos, pos)
    carry, out = mdl.init_carry(q2), []
    edges = [0, *splits, L]
    for lo, hi in reversed(list(zip(edges[:-1], edges[1:]))):
      bias, carry = mdl.bias(q2, k2[:, lo:hi], pos, pos[:, lo:hi], mask[:, :, lo:hi], carry)
      out.insert(0, bias)
    bias = jnp.concatenate(out, -1)
    return jnp.einsum('blhk,bshk->bhls', q2, k2) / math.sqrt(K) + bias, bias, carry
  return jax.jit(lambda prm, *a: enc.apply(prm, *a, method=run))


def _np_params(params):
  return {n: np.asarray(v.unbox(), np.float64) for n, v in params['params'].items()}


def _np_sinusoid(d, dim):
  i = np.arange(dim // 2)
  ang = np.asarray(d, np.float64)[..., None] / 10000.0 ** (2 * i / dim)
  return np.stack([np.sin(ang), np.cos(ang)], -1).reshape(*ang.shape[:-1], dim)


# ------------------------------------------------------------------ Shaw


def test_shaw_bias_and_values_match_dense_formula():
  r = 3
  enc = _make('shaw', max_relative_position=r)
  q, k, pos, mask, p = _inputs()
  params = _init('shaw', max_relative_position=r)
  a = _np_params(params)
  qn, kn, posn = (np.asarray(x, np.float64) for x in (q, k, pos))
  idx = np.clip(posn[:, None, :] - posn[:, :, None], -r, r).astype(int) + r  # [B, L, S]
  ak, av = a['a_k'][idx], a['a_v'][idx]  # [B, L, S, K]: the paper's a^K_ij, a^V_ij.
  want_logits = (np.einsum('blhk,bshk->bhls', qn, kn)
                 + np.einsum('blhk,blsk->bhls', qn, ak)) / math.sqrt(K)
  logits, bias, _ = _logits(enc, params, q, k, pos, mask)
  assert bias.dtype == jnp.float32 and bias.shape == (B, H, L, L)
  np.testing.assert_allclose(logits, want_logits, atol=1e-5)
  got_v = enc.apply(params, p, pos, pos, method='values')
  want_v = np.einsum('bhls,blsk->blhk', np.asarray(p, np.float64), av)
  assert got_v.shape == (B, L, H, K)
  np.testing.assert_allclose(got_v, want_v, atol=1e-5)


def test_shaw_offset_only_and_blockwise():
  enc = _make('shaw', max_relative_position=2)
  q, k, pos, mask, _ = _inputs()
  params = _init('shaw', max_relative_position=2)
  _, bias, _ = _logits(enc, params, q, k, pos, mask)
  _, shifted, _ = _logits(enc, params, q, k, pos + 100, mask)
  np.testing.assert_allclose(shifted, bias, atol=1e-6)
  _, blocked, _ = _logits(enc, params, q, k, pos, mask, splits=(3, 6))
  np.testing.assert_allclose(blocked, bias, atol=1e-6)
  # Row 0 (plain positions): a diagonal j - i = c carries q_i . aK[clip(c)] only.
  a_k = _np_params(params)['a_k']
  for i, j in [(5, 0), (5, 3), (8, 8), (2, 7)]:
    want = np.asarray(q[0, i], np.float64) @ a_k[np.clip(j - i, -2, 2) + 2] / math.sqrt(K)
    np.testing.assert_allclose(bias[0, :, i, j], want, atol=1e-6)


def test_shaw_gradients_reach_both_tables():
  enc = _make('shaw')
  q, k, pos, mask, p = _inputs()
  params = _init('shaw')
  def loss(prm):
    _, bias, _ = _logits(enc, prm, q, k, pos, mask)
    return (bias ** 2).sum() + (enc.apply(prm, p, pos, pos, method='values') ** 2).sum()
  g = jax.jit(jax.grad(loss))(params)['params']
  assert params['params']['a_k'].names == ('relpos', 'kv')
  assert g['a_k'].unbox().shape == (33, K)
  for n in ('a_k', 'a_v'):
    assert np.abs(np.asarray(g[n].unbox())).sum() > 0


# -------------------------------------------------------- Transformer-XL


@pytest.mark.parametrize('causal', [True, False])
def test_transformer_xl_matches_dense_formula(causal):
  enc = _make('transformer_xl', causal=causal)
  q, k, pos, mask, _ = _inputs(causal=causal)
  params = _init('transformer_xl')
  a = _np_params(params)
  qn, kn, posn = (np.asarray(x, np.float64) for x in (q, k, pos))
  r_bld = _np_sinusoid(posn[:, :, None] - posn[:, None, :], D)  # R_{i-j}: [B, L, S, D]
  wr = np.einsum('blsd,dhk->blshk', r_bld, a['w_r'])  # W_R R_{i-j}
  want = (np.einsum('blhk,bshk->bhls', qn + a['u'], kn)
          + np.einsum('blhk,blshk->bhls', qn + a['v'], wr)) / math.sqrt(K)
  logits, bias, _ = _logits(enc, params, q, k, pos, mask)
  assert bias.dtype == jnp.float32
  np.testing.assert_allclose(logits, want, atol=1e-5)
  _, blocked, _ = _logits(enc, params, q, k, pos, mask, splits=(4,))
  np.testing.assert_allclose(blocked, bias, atol=1e-5)
  _, shifted, _ = _logits(enc, params, q, k, pos + 1000, mask)
  np.testing.assert_allclose(shifted, bias, atol=1e-5)


def test_transformer_xl_rel_dim_bf16_and_gradients():
  enc = _make('transformer_xl', rel_dim=6)
  q, k, pos, mask, _ = _inputs()
  params = _init('transformer_xl', rel_dim=6)
  assert params['params']['w_r'].unbox().shape == (6, H, K)
  assert params['params']['w_r'].names == ('embed', 'heads', 'kv')
  q2, _ = enc.apply(params, q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), pos, pos,
                    method='qk')
  assert q2.dtype == jnp.bfloat16
  g = jax.jit(jax.grad(lambda prm: (_logits(enc, prm, q, k, pos, mask)[0] ** 2).sum()))(params)
  for n in ('u', 'v', 'w_r'):
    assert np.abs(np.asarray(g['params'][n].unbox())).sum() > 0


# ------------------------------------------------------------------ CoPE


def _np_cope(q, k, mask, e, npos_max):
  q, k, e = (np.asarray(x, np.float64) for x in (q, k, e))
  out = np.zeros((B, H, L, L))
  for b in range(B):
    for h in range(H):
      for i in range(L):
        gates = [1 / (1 + math.exp(-q[b, i, h] @ k[b, t, h] / math.sqrt(K)))
                 if mask[b, i, t] else 0.0 for t in range(L)]
        qe = e @ q[b, i, h] / math.sqrt(K)
        for j in range(L):
          p = min(sum(gates[j:]), npos_max - 1)
          lo, w = math.floor(p), p - math.floor(p)
          out[b, h, i, j] = (1 - w) * qe[lo] + w * qe[math.ceil(p)]
  return out


def _cope_params(npos_max):
  params = _init('cope', npos_max=npos_max)
  e = params['params']['pos_emb']
  assert e.names == ('relpos', 'kv') and not np.asarray(e.unbox()).any()  # Zero init.
  new_e = np.random.default_rng(7).standard_normal(e.unbox().shape, np.float32)
  return {'params': {'pos_emb': e.replace_boxed(new_e)}}


@pytest.mark.parametrize('npos_max,causal', [(64, True), (4, True), (16, False)])
def test_cope_matches_dense_formula(npos_max, causal):
  enc = _make('cope', npos_max=npos_max, causal=causal)
  q, k, pos, mask, _ = _inputs(causal=causal)
  params = _cope_params(enc.npos_max)
  want = _np_cope(q, k, np.asarray(mask), params['params']['pos_emb'].unbox(), npos_max)
  _, bias, carry = _logits(enc, params, q, k, pos, mask)
  assert bias.dtype == jnp.float32 and carry.shape == (B, H, L)
  np.testing.assert_allclose(bias, want, atol=1e-5)


def test_cope_blocks_last_to_first_equal_one_block():
  enc = _make('cope', npos_max=8)
  q, k, pos, mask, _ = _inputs(seed=3)
  params = _cope_params(8)
  _, dense, carry = _logits(enc, params, q, k, pos, mask)
  for splits in [(5,), (2, 6)]:
    _, blocked, carry_blocked = _logits(enc, params, q, k, pos, mask, splits=splits)
    np.testing.assert_allclose(blocked, dense, atol=1e-5)
    np.testing.assert_allclose(carry_blocked, carry, atol=1e-5)


def test_cope_gradients_reach_embeddings_and_gates():
  enc = _make('cope', npos_max=8)
  q, k, pos, mask, _ = _inputs()
  params = _cope_params(enc.npos_max)
  def loss(prm, q, k):
    return (_logits(enc, prm, q, k, pos, mask)[1] ** 2).sum()
  g_params, g_q, g_k = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, q, k)
  assert np.abs(np.asarray(g_params['params']['pos_emb'].unbox())).sum() > 0
  assert np.abs(np.asarray(g_k)).sum() > 0  # Only through the gates.
  assert np.isfinite(np.asarray(g_q)).all()


@pytest.mark.parametrize('name,kw,field', [
    ('shaw', dict(max_relative_position=0), 'max_relative_position'),
    ('transformer_xl', dict(rel_dim=5), 'rel_dim'),
    ('cope', dict(npos_max=1), 'npos_max'),
])
def test_bad_hyperparameters(name, kw, field):
  with pytest.raises(ValueError, match=f'model.posenc_args.{field}'):
    _make(name, **kw)
