"""Absolute encodings: sinusoidal values, learned table, 2D grid, validation."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posjax.encodings import registry
from posjax.encodings.absolute import sinusoidal_embedding


def _make(name, **kw):
  geometry = dict(num_heads=2, head_dim=4, model_dim=8, max_len=16, causal=True)
  geometry.update(kw.pop('geometry', {}))
  return registry.make(name, kw, **geometry)


def _np_sinusoid(pos, dim, base=10000.0):
  """The formula of Vaswani et al. 2017, sec. 3.5, in float64."""
  pe = np.zeros((len(pos), dim))
  for p_idx, p in enumerate(pos):
    for i in range(dim // 2):
      pe[p_idx, 2 * i] = math.sin(p / base ** (2 * i / dim))
      pe[p_idx, 2 * i + 1] = math.cos(p / base ** (2 * i / dim))
  return pe


def test_sinusoidal_hand_values():
  pe = np.asarray(sinusoidal_embedding(jnp.array([0, 1, 2]), 4))
  assert pe.dtype == np.float32
  np.testing.assert_allclose(pe[0], [0, 1, 0, 1], atol=1e-7)
  np.testing.assert_allclose(pe[1, :2], [math.sin(1), math.cos(1)], rtol=1e-6)
  np.testing.assert_allclose(pe[2, 2:], [math.sin(2 / 100), math.cos(2 / 100)], rtol=1e-6)


@pytest.mark.parametrize('dim,base', [(8, 10000.0), (64, 10000.0), (6, 500.0)])
def test_sinusoidal_matches_formula(dim, base):
  pos = np.arange(0, 700, 7)
  got = sinusoidal_embedding(jnp.asarray(pos), dim, base=base)
  np.testing.assert_allclose(got, _np_sinusoid(pos, dim, base), atol=2e-4)


def test_sinusoidal_exact_at_large_positions():
  """Angles p * f are exact for the float32 frequencies f (base.cos_sin); plain
  float32 products are off by up to 0.03 rad at 10^6."""
  pos = np.array([999_983, 1_000_000, 4_000_037])
  freq = (10000.0 ** -(np.arange(0, 8, 2) / 8)).astype(np.float32)
  angle = pos[:, None] * freq.astype(np.float64)
  want = np.stack([np.sin(angle), np.cos(angle)], -1).reshape(3, 8)
  np.testing.assert_allclose(sinusoidal_embedding(jnp.asarray(pos), 8), want, atol=1e-5)


def test_sinusoidal_batched_shape():
  assert sinusoidal_embedding(jnp.zeros((2, 3, 5), jnp.int32), 6).shape == (2, 3, 5, 6)


def test_sinusoidal_odd_dim_raises():
  with pytest.raises(ValueError, match='even'):
    sinusoidal_embedding(jnp.arange(3), 5)


def test_sinusoidal_module_adds_and_keeps_dtype():
  enc = _make('sinusoidal')
  x = jnp.ones((2, 5, 8), jnp.bfloat16)
  pos = jnp.array([[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]])
  y = enc.apply({}, x, pos, method='embed')
  assert y.dtype == jnp.bfloat16
  want = 1 + _np_sinusoid(np.asarray(pos).ravel(), 8).reshape(2, 5, 8)
  np.testing.assert_allclose(np.asarray(y, np.float32), want, atol=1e-2)
  np.testing.assert_array_equal(y[0, 3], y[0, 0])  # Packed: restart at 0.


def test_none_is_identity():
  enc = _make('none')
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 4, 8))
  pos = jnp.arange(4)[None]
  np.testing.assert_array_equal(enc.apply({}, x, pos, method='embed'), x)
  q = x.reshape(1, 4, 2, 4)
  assert enc.apply({}, q, q, pos, pos, method='qk') == (q, q)
  assert enc.acts_at == () and enc.shared_across_layers


def test_learned_table_shape_grads_and_clipping():
  enc = _make('learned')
  x = jnp.zeros((2, 4, 8))
  pos = jnp.array([[0, 1, 2, 3], [0, 1, 0, 40]])  # 40 >= max_len: clipped to 15.
  params = enc.init(jax.random.PRNGKey(0), x, pos, method='embed')
  table = params['params']['table'].unbox()
  assert table.shape == (16, 8)
  assert params['params']['table'].names == ('length', 'embed')
  assert 0.35 < float(table.std()) < 0.65  # Half the token embedding's std.
  assert float(_make('learned', init_std=0.1).init(
      jax.random.PRNGKey(0), x, pos, method='embed')['params']['table'].unbox().std()) < 0.15
  y = enc.apply(params, x, pos, method='embed')
  np.testing.assert_array_equal(y[1, 3], table[15])
  np.testing.assert_array_equal(y[1, 2], table[0])

  grads = jax.grad(lambda p: enc.apply(p, x, pos, method='embed').sum())(params)
  g = np.asarray(grads['params']['table'].unbox())
  counts = np.bincount(np.clip(np.asarray(pos).ravel(), 0, 15), minlength=16)
  np.testing.assert_allclose(g, np.repeat(counts[:, None], 8, 1))


def test_sinusoidal_2d_row_col_structure():
  enc = _make('sinusoidal_2d')
  rows, cols = np.arange(12) // 4, np.arange(12) % 4
  pos = jnp.asarray(np.stack([np.zeros(12, int), rows, cols])[:, None])
  pe = np.asarray(enc.apply({}, jnp.zeros((1, 12, 8)), pos, method='embed'))[0]
  np.testing.assert_allclose(pe[:, :4], _np_sinusoid(rows, 4), atol=1e-6)
  np.testing.assert_allclose(pe[:, 4:], _np_sinusoid(cols, 4), atol=1e-6)
  np.testing.assert_array_equal(pe[1, :4], pe[2, :4])  # Same row.
  np.testing.assert_array_equal(pe[1, 4:], pe[5, 4:])  # Same column.


@pytest.mark.parametrize('name,kw,field', [
    ('sinusoidal', dict(base=0.5), 'posenc_args.base'),
    ('sinusoidal', dict(geometry=dict(model_dim=7)), 'model_dim'),
    ('sinusoidal_2d', dict(geometry=dict(model_dim=6)), 'model_dim'),
    ('learned', dict(init_std=0.0), 'posenc_args.init_std'),
])
def test_bad_hyperparameters(name, kw, field):
  with pytest.raises(ValueError, match=f'model.{field}'):
    _make(name, **kw)


def test_unknown_field():
  with pytest.raises(ValueError, match='unknown field'):
    _make('learned', grid_width=3)
