"""posjax.analysis.measures: every function against an exact expectation."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from posjax import encodings, models, tasks
from posjax.analysis import measures
from posjax.workdir import restore


def _run(posenc='none', num_layers=1, zero_queries=False, **model):
  """A restored-run stand-in: (config, params, step) with random params."""
  m = dict(kind='decoder', vocab_size=40, num_layers=num_layers, num_heads=2, model_dim=16,
           mlp_dim=32, max_len=32, posenc=posenc, norm='rmsnorm',
           **{'scan_layers': False, **model})  # Plain layers: the tests read layer_i.
  mcfg = models.ModelConfig.from_config(m)
  shapes = jax.eval_shape(models.build(mcfg).init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape), s.dtype),
                        nn.unbox(shapes['params']))
  if zero_queries:
    for i in range(num_layers):
      q = params['decoder'][f'layer_{i}']['attention']['query']
      params['decoder'][f'layer_{i}']['attention']['query'] = jnp.zeros_like(q)
  config = ml_collections.ConfigDict({'model': m, 'task': 'lm', 'seq_len': 16,
                                      'data': {'tokenizer': 'bytes'}})
  return restore.Analysis(config=config, params=params, step=0)


TOKENS = np.random.default_rng(1).integers(4, 40, (3, 12))


def test_attention_weights_of_one_layer_match_a_hand_computed_softmax():
  run = _run('none')
  p = measures.attention_weights(run, TOKENS)
  assert p.shape == (1, 3, 2, 12, 12)
  P = run.params['decoder']
  x = np.asarray(P['embedding']['embedding'])[TOKENS]  # NoPE: no position term.
  scale = np.asarray(P['layer_0']['pre_attention_norm']['scale'])
  h = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6) * scale
  a = P['layer_0']['attention']
  q = np.einsum('bld,dhk->bhlk', h, np.asarray(a['query']))
  k = np.einsum('bld,dhk->bhlk', h, np.asarray(a['key']))
  logits = np.einsum('bhlk,bhsk->bhls', q, k) / np.sqrt(8)
  logits = np.where(np.tril(np.ones((12, 12), bool)), logits, -np.inf)
  want = np.exp(logits - logits.max(-1, keepdims=True))
  want /= want.sum(-1, keepdims=True)
  np.testing.assert_allclose(p[0], want, rtol=1e-4, atol=1e-6)


def test_blockwise_and_scanned_runs_give_the_same_weights():
  dense = measures.attention_weights(_run('rope', num_layers=2), TOKENS)
  blockwise = measures.attention_weights(
      _run('rope', num_layers=2, attention='blockwise', block_size=4), TOKENS)
  np.testing.assert_allclose(blockwise, dense, rtol=1e-5, atol=1e-7)
  assert dense.shape[0] == 2 and np.allclose(dense.sum(-1), 1.0, atol=1e-5)


def test_uniform_attention_has_known_distance_and_entropy():
  """Zero queries: p_ij = 1 / (i + 1) over j <= i, so the mean distance at query i
  is i / 2 and the entropy log(i + 1)."""
  run = _run('none', num_layers=2, zero_queries=True)
  i = np.arange(12)
  np.testing.assert_allclose(measures.attention_distance(run, TOKENS),
                             np.broadcast_to(i / 2, (2, 2, 12)), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(measures.attention_entropy(run, TOKENS),
                             np.broadcast_to(np.log(i + 1), (2, 2, 12)), rtol=1e-5, atol=1e-5)


def test_loss_by_position_averages_to_the_models_loss():
  run = _run('alibi')
  windows = np.random.default_rng(2).integers(4, 40, (4, 13))
  by_pos = measures.loss_by_position(run, windows)
  assert by_pos.shape == (12,)
  task = tasks.for_config(run.config)
  batch = {'inputs': jnp.asarray(windows[:, :-1]), 'targets': jnp.asarray(windows[:, 1:]),
           'positions': jnp.broadcast_to(jnp.arange(12), (4, 12)),
           'segment_ids': jnp.ones((4, 12), jnp.int32)}
  model = models.build(measures.model_config(run))
  sums = task.sums(model.apply({'params': run.params}, batch['inputs'],
                               positions=batch['positions']), batch)
  np.testing.assert_allclose(by_pos.mean(), float(sums['loss_sum'] / sums['count']), rtol=1e-5)


def test_alibi_bias_is_minus_slope_times_distance():
  d = np.array([0, 1, 2, 7, 100, 5000])
  got = measures.bias_by_distance('alibi', d, num_heads=8)
  want = -np.asarray(encodings.alibi_slopes(8))[:, None] * d[None]
  np.testing.assert_array_equal(got, want.astype(np.float32))


def test_t5_bias_of_a_run_reads_its_learned_table():
  run = _run('t5')
  d = np.arange(0, 200, 7)
  got = measures.bias_by_distance(run, d)
  enc, params = measures.encoding_params(run)
  table = np.asarray(jax.tree.leaves(params)[0])  # [buckets, heads] (the only leaf)
  buckets = np.asarray(encodings.t5_relative_position_bucket(
      -d, bidirectional=False, num_buckets=enc.num_buckets, max_distance=enc.max_distance))
  bound = enc.bind({'params': params})
  want = np.asarray(bound.bias(None, None, jnp.full((1, 1), d.max()), jnp.asarray(d.max() - d)[None],
                               None, None)[0][0, :, 0])
  assert got.shape == (2, d.size)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Equal distances in one bucket share a value: the curve is the table, bucketed.
  for b in np.unique(buckets):
    cols = got[:, buckets == b]
    assert np.allclose(cols, cols[:, :1])
  assert table.shape[0] == enc.num_buckets


def test_bias_by_distance_refuses_content_dependent_encodings():
  with pytest.raises(ValueError, match=r'^bias_by_distance: shaw .*allowed: .*alibi'):
    measures.bias_by_distance('shaw', [0, 1], num_heads=2)


def test_rope_wavelengths_follow_the_base_and_the_scaling():
  dim, base = 16, 10000.0
  want = 2 * np.pi * base ** (np.arange(0, dim, 2) / dim)
  np.testing.assert_allclose(measures.rope_wavelengths(dim, base), want, rtol=1e-6)
  np.testing.assert_allclose(
      measures.rope_wavelengths(dim, base, {'type': 'linear', 'factor': 4.0}), 4 * want,
      rtol=1e-6)


def test_rope_score_by_offset_is_the_cosine_sum_of_the_pairs():
  dim, offsets = 16, np.array([0, 1, 5, 50, 500])
  got = measures.rope_score_by_offset(dim, offsets, num_samples=64)
  x = np.asarray(jax.random.normal(jax.random.key(0), (64, 1, 1, dim), jnp.float32))[:, 0, 0]
  theta = 10000.0 ** (-np.arange(0, dim, 2) / dim)
  energy = x[:, :dim // 2] ** 2 + x[:, dim // 2:] ** 2  # 'half' layout pairs (i, i + dim/2).
  want = (energy[:, None, :] * np.cos(offsets[None, :, None] * theta)).sum(-1).mean(0)
  np.testing.assert_allclose(got, want / np.sqrt(dim), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', [n for n in encodings.names()
                                  if encodings.BIAS in encodings.get(n).acts_at])
def test_the_bias_from_positions_flag_is_true_exactly_where_no_q_or_k_is_needed(name):
  enc = encodings.make(name, {}, num_heads=2, head_dim=8, model_dim=16, max_len=32)
  qpos, kpos = jnp.full((1, 1), 5, jnp.int32), jnp.arange(6, dtype=jnp.int32)[None]
  mask = jnp.ones((1, 1, 6), bool)
  def bias_without_content():
    v = enc.init(jax.random.key(0), None, None, qpos, kpos, mask, None, method='bias')
    return enc.apply(v, None, None, qpos, kpos, mask, None, method='bias')
  if encodings.get(name).bias_from_positions:
    assert bias_without_content()[0].shape == (1, 2, 1, 6)
  else:
    with pytest.raises((AttributeError, TypeError)):
      bias_without_content()
