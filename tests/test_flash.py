"""posjax.models.kernels.flash: equal to dense in values and gradients; empty tiles skipped."""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posjax import encodings, models
from posjax.models.kernels import blocks
from posjax.models.kernels.span import Span

from test_models import _cfg, _params, _supports  # noqa: F401 (shared generic params)

FAST = ('alibi', 't5', 'cope', 'shaw', 'fire')  # bias, table, carry, values, MLP
CASES = [pytest.param(n, marks=() if n in FAST else pytest.mark.slow)
         for n in encodings.names()]


def _close(want, got):
  """float32 sums in another order: tolerance scaled by the array's largest entry."""
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5 + 1e-5 * np.abs(want).max())


def _loss_and_grads(cfg, params, tokens, pos, seg):
  model = models.build(cfg)
  w = jax.random.normal(jax.random.key(7), tokens.shape + (cfg.vocab_size,))
  loss = lambda p: (model.apply({'params': p}, tokens, pos, seg) * w).sum()  # noqa: E731
  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize('posenc', CASES)
def test_flash_equals_dense_packed(posenc):
  """Two packed documents with restarting positions, 21 tokens in tiles of 4."""
  B, L = 2, 21
  cfg = _cfg(posenc, num_layers=1, block_size=4)
  tokens = jax.random.randint(jax.random.key(3), (B, L), 4, 40)
  pos = jnp.asarray([list(range(L)), list(range(9)) + list(range(12))], jnp.int32)
  seg = jnp.asarray([[1] * L, [1] * 9 + [2] * 12], jnp.int32)
  params = _params(cfg, tokens.shape, 0)
  ld, gd = _loss_and_grads(cfg, params, tokens, pos, seg)
  lf, gf = _loss_and_grads(cfg.replace(attention='flash'), params, tokens, pos, seg)
  _close(ld, lf)  # (A weighted sum near 0: no relative tolerance.)
  jax.tree.map(_close, gd, gf)


@pytest.mark.parametrize('posenc', [pytest.param(n, marks=() if n == 't5' else pytest.mark.slow)
                                    for n in ('t5', 'alibi', 'fire', 'rope')])
def test_flash_equals_dense_randomized_positions(posenc):
  """Sorted positions drawn from a range 8x the length (Ruoss et al.), as
  ``randomized_positions`` gives: gaps between neighbours, large distances."""
  B, L = 2, 21
  cfg = _cfg(posenc, num_layers=1, block_size=4)
  tokens = jax.random.randint(jax.random.key(3), (B, L), 4, 40)
  draw = lambda key: jnp.sort(jax.random.choice(key, 8 * L, (L,), replace=False))  # noqa: E731
  pos = jax.vmap(draw)(jax.random.split(jax.random.key(8), B)).astype(jnp.int32)
  seg = jnp.ones((B, L), jnp.int32)
  params = _params(cfg, tokens.shape, 0)
  ld, gd = _loss_and_grads(cfg, params, tokens, pos, seg)
  lf, gf = _loss_and_grads(cfg.replace(attention='flash'), params, tokens, pos, seg)
  _close(ld, lf)
  jax.tree.map(_close, gd, gf)


def test_flash_equals_dense_bidirectional():
  cfg = _cfg('t5', kind='encoder_classifier', num_layers=1, block_size=4)
  tokens = jax.random.randint(jax.random.key(4), (2, 10), 4, 40)
  pos = jnp.broadcast_to(jnp.arange(10), (2, 10))
  seg = jnp.ones((2, 10), jnp.int32)
  params = _params(cfg, tokens.shape, 0)
  model = lambda c: models.build(c)  # noqa: E731
  f = lambda c: jax.jit(jax.grad(lambda p: (model(c).apply(  # noqa: E731
      {'params': p}, tokens, pos, seg) ** 2).sum()))(params)
  jax.tree.map(_close, f(cfg), f(cfg.replace(attention='flash')))


def test_causal_tiles_above_the_diagonal_are_not_visited():
  tiles = blocks.Tiles(bq=4, bk=4, nq=3, nk=3, span=Span(causal=True))
  qidx = jnp.arange(12).reshape(3, 1, 4)
  assert [tuple(map(int, tiles.key_tiles(qidx[i]))) for i in range(3)] == [(0, 1), (0, 2), (0, 3)]
  assert int(tiles.key_tiles(jnp.full((1, 4), -1))[1]) == 0  # Padding rows only.
  assert blocks.Tiles(4, 4, 3, 3, Span()).key_tiles(qidx[0]) == (0, 3)


def test_window_and_chunk_tiles_are_the_only_ones_visited():
  """Query tile i of 16 (tiles of 4) reaches key tiles [first, end): a window of 6
  or a chunk of 8 spans at most three tiles; sinks reach back to tile 0."""
  qidx = jnp.arange(64).reshape(16, 1, 4)
  def ranges(span, i):
    return tuple(int(a) for a in blocks.Tiles(4, 4, 16, 16, span).key_tiles(qidx[i]))
  assert [ranges(Span(True, window=6), i) for i in (0, 1, 5, 15)] == [
      (0, 1), (0, 2), (3, 6), (13, 16)]
  assert [ranges(Span(True, chunk=8), i) for i in (0, 1, 2, 15)] == [  # (A chunk is a
      (0, 1), (0, 2), (0, 3), (13, 16)]  # window of 8 by slots: its positions may restart.)
  assert ranges(Span(False, window=6), 5) == (3, 8)
  assert ranges(Span(True, window=6, sinks=2), 5) == (0, 6)
  # A rolling cache: a chunk's keys follow the cache at indices above their slots.
  assert ranges(Span(True, window=6, aligned=False), 5) == (0, 16)
  # The tile test says no only where no pair is in the span.
  for span in (Span(True, window=6), Span(True, chunk=8), Span(False, window=5, sinks=3),
               Span(True, exclude_current=True), Span(False, exclude_current=True)):
    for i in range(16):
      for j in range(16):
        q, k = qidx[i], qidx[j]  # (Positions = slots: one document.)
        pairs = span.pairs(q, k, q, k)
        assert bool(span.tile_may_see(q, k, k)[0]) >= bool(pairs.any()), (span, i, j)
        assert bool(span.tile_is_full(q, k, q, k)[0]) <= bool(pairs.all()), (span, i, j)
        first, end = span.key_tiles(qidx[i], 4, 16)
        assert not pairs.any() or first <= j < end, (span, i, j)


def test_tiles_of_other_segments_are_skipped():
  q_seg, span = jnp.asarray([[1, 1, 2, 2]]), Span()
  idx = jnp.arange(4)[None]
  assert bool(blocks.nonempty(q_seg, jnp.asarray([[2, 3, 3, 3]]), idx, idx, idx, span))
  assert not bool(blocks.nonempty(q_seg, jnp.asarray([[3, 3, 4, 4]]), idx, idx, idx, span))
  # Keys of the query's segment that are padding / empty cache slots do not count.
  assert not bool(blocks.nonempty(q_seg, jnp.asarray([[1, 1, 3, 3]]), idx,
                                  jnp.asarray([[-1, -1, 2, 3]]), idx, span))


@pytest.mark.parametrize('posenc', [pytest.param(n, marks=() if n in ('alibi', 'cope') else
                                                  pytest.mark.slow) for n in FAST])
def test_flash_cached_decoding_equals_dense(posenc):
  """A prefill chunk, then one token at a time against the cache (empty slots skipped)."""
  cfg = _cfg(posenc, num_layers=1, block_size=4)
  if not cfg.encoding_class.supports_decoding:
    pytest.skip(f'{posenc} does not decode')
  B, L = 2, 10
  tokens = jax.random.randint(jax.random.key(5), (B, L), 4, 40)
  params = _params(cfg, tokens.shape, 1)
  pos = jnp.broadcast_to(jnp.arange(L), (B, L))

  def decode(cfg):
    model = models.build(cfg)
    cache = models.init_cache(model, params, B, L)
    step = jax.jit(functools.partial(models.decode_step, model))
    out = []
    for a, b in ((0, 4),) + tuple((i, i + 1) for i in range(4, L)):
      logits, cache = step(params, cache, tokens[:, a:b], pos[:, a:b])
      out.append(logits)
    return jnp.concatenate(out, 1)
  _close(decode(cfg), decode(cfg.replace(attention='flash')))


def test_auto_on_cpu_is_dense_when_short_flash_when_long():
  from posjax.models import attention
  cfg = models.ModelConfig()
  assert cfg.attention == 'auto'
  n = attention.AUTO_DENSE_MAX
  assert attention.choose(cfg, n, n) == 'dense'
  assert attention.choose(cfg, n + 1, n + 1) == 'flash'
  named = cfg.replace(attention='blockwise')
  assert attention.choose(named, 10 ** 6, 10 ** 6) == 'blockwise'  # A named choice stands.


def _loop_computations(hlo: str) -> dict[str, str]:
  """The bodies of every while loop and conditional branch in optimized HLO text."""
  names = set(re.findall(r'body=%([\w.-]+)', hlo))
  for branches in re.findall(r'branch_computations=\{([^}]*)\}', hlo):
    names |= {b.strip().lstrip('%') for b in branches.split(',')}
  blocks = re.findall(r'^%([\w.-]+) .*?\{\n(.*?)\n\}', hlo, re.S | re.M)
  return {name: body for name, body in blocks if name in names}


def test_flash_moves_no_tile_and_no_whole_buffer_per_tile():
  """What made the backward pass 2x slower on CPU (experiments/attention_benchmark.py):
  inside the tile loops, XLA transposed [bq, bk] tiles for its dots, and copied the
  whole dK / dV buffers through the tile's conditional. Neither may come back."""
  B, L, blk = 1, 96, 32
  cfg = _cfg('alibi', num_layers=1, block_size=blk).replace(attention='flash')
  tokens = jax.random.randint(jax.random.key(3), (B, L), 4, 40)
  pos, seg = jnp.arange(L)[None], jnp.ones((B, L), jnp.int32)
  model = models.build(cfg)
  grad = jax.jit(jax.grad(lambda p: (model.apply({'params': p}, tokens, pos, seg) ** 2).sum()))
  hlo = grad.lower(_params(cfg, tokens.shape, 0)).compile().as_text()
  loops = _loop_computations(hlo)
  assert len(loops) >= 6, 'no tile loops found: the test no longer reads the program'
  moved = lambda text: re.findall(r'= f32\[([0-9,]+)\]\{[0-9,]*\} (?:copy|transpose)\(', text)  # noqa: E731
  assert f'{B},{cfg.num_heads},{blk},{blk}' not in moved(hlo)  # (Tiles exist in loops only.)
  whole = [(name, shape) for name, body in loops.items() for shape in moved(body)
           if str(L) in shape.split(',')]  # dK, dV: [.., L, ..]
  assert not whole, whole
