"""The spec every registered encoding meets inside the models."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posjax import encodings, models

NAMES = encodings.names()
# One encoding per hook by default (none; bias: plain, carried, shared table;
# values; qk; embed); every encoding with --runslow.
FAST = ('none', 'alibi', 'cope', 't5', 'shaw', 'rope', 'learned')
CASES = [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in NAMES]


def _cfg(posenc, **kw):
  base = dict(kind='decoder', vocab_size=40, num_layers=2, num_heads=2, model_dim=32,
              mlp_dim=64, max_len=32, posenc=posenc, block_size=4)
  base.update(kw)
  return models.ModelConfig.from_config(base)


def _supports(posenc, causal):
  cls = encodings.get(posenc)
  try:
    _cfg(posenc, kind='decoder' if causal else 'encoder_classifier')
  except ValueError:
    return False
  return cls is not None


def _init(cfg, tokens, seed=0):
  return models.build(cfg), _params(cfg, tokens.shape, seed)


@functools.lru_cache(maxsize=None)
def _params(cfg, shape, seed):
  """Generic random parameters (no zeros, so T5's table, u, v, E all matter).

  Shapes come from ``jax.eval_shape``; values from numpy: no init compile.
  """
  shapes = jax.eval_shape(models.build(cfg).init, jax.random.key(0), jnp.zeros(shape, jnp.int32))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype),
                      nn.unbox(shapes['params']))


def _apply(model):
  """``model.apply``, compiled once (eager op-by-op dispatch dominates test time)."""
  return jax.jit(model.apply, static_argnames=('train',))


def _tokens(B=2, L=12, seed=3):
  return jax.random.randint(jax.random.key(seed), (B, L), 4, 40)


def test_names_cover_the_issue():
  required = {'none', 'sinusoidal', 'learned', 'rope', 'xpos', 't5', 'alibi', 'kerple_log',
              'kerple_power', 'fire', 'shaw', 'transformer_xl', 'cope', 'rope_2d',
              'sinusoidal_2d', 'mrope'}
  assert required <= set(NAMES)


@pytest.mark.parametrize('posenc', CASES)
def test_jit_matches_eager(posenc):
  cfg = _cfg(posenc, num_layers=1)
  tokens = _tokens()
  model, params = _init(cfg, tokens)
  eager = model.apply({'params': params}, tokens)
  jitted = jax.jit(model.apply)({'params': params}, tokens)
  np.testing.assert_allclose(eager, jitted, rtol=1e-5, atol=1e-5)
  assert np.isfinite(eager).all()


@pytest.mark.parametrize('kind', ['decoder', 'encoder_classifier'])
@pytest.mark.parametrize('posenc', CASES)
def test_blockwise_equals_dense(posenc, kind):
  if not _supports(posenc, kind == 'decoder'):
    pytest.skip(f'{posenc} is not defined for {kind}')
  tokens = _tokens(L=10)  # Blocks of 4, 4 and a ragged 2.
  dense = _cfg(posenc, kind=kind, num_layers=1)
  model, params = _init(dense, tokens)
  block = models.build(dense.replace(attention='blockwise'))

  def loss(m, p):
    out = m.apply({'params': p}, tokens)
    return (out ** 2).mean(), out

  grad = lambda m: jax.jit(jax.value_and_grad(functools.partial(loss, m), has_aux=True))  # noqa: E731
  (_, od), gd = grad(model)(params)
  (_, ob), gb = grad(block)(params)
  np.testing.assert_allclose(od, ob, rtol=2e-5, atol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), gd, gb)


@pytest.mark.parametrize('attention', ['dense', 'blockwise'])
@pytest.mark.parametrize('posenc', CASES)
def test_cached_decoding_equals_full_pass(posenc, attention):
  cfg = _cfg(posenc, attention=attention, num_layers=1)
  if not cfg.encoding_class.supports_decoding:
    pytest.skip(f'{posenc} does not decode')
  B, L = 2, 10
  tokens = _tokens(B, L)
  model, params = _init(cfg, tokens)
  full = jax.jit(model.apply)({'params': params}, tokens)
  cache = models.init_cache(model, params, B, L)
  step = jax.jit(functools.partial(models.decode_step, model))
  pos = jnp.broadcast_to(jnp.arange(L), (B, L))
  # A prefill chunk of 4, then one token at a time.
  logits, cache = step(params, cache, tokens[:, :4], pos[:, :4])
  steps = [logits]
  for i in range(4, L):
    logits, cache = step(params, cache, tokens[:, i:i + 1], pos[:, i:i + 1])
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, 1), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('posenc', CASES)
def test_packed_equals_separate(posenc):
  cfg = _cfg(posenc, num_layers=1)
  docs = _tokens(2, 6, seed=5)
  model, params = _init(cfg, docs)
  apply = jax.jit(model.apply)
  separate = apply({'params': params}, docs)
  # Both documents packed into one row, then that row twice (same batch shape).
  packed = jnp.stack([jnp.concatenate([docs[0], docs[1]])] * 2)
  seg = jnp.array([[1] * 6 + [2] * 6] * 2)
  pos = jnp.array([list(range(6)) * 2] * 2)
  out = apply({'params': params}, packed, pos, seg)
  np.testing.assert_allclose(out[0, :6], separate[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out[0, 6:], separate[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('posenc', CASES)
def test_every_parameter_gets_gradient(posenc):
  cfg = _cfg(posenc)
  tokens = _tokens()
  model, params = _init(cfg, tokens)
  grads = jax.jit(jax.grad(lambda p: model.apply({'params': p}, tokens).std()))(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.abs(np.asarray(g)).max() > 0, f'no gradient reaches {jax.tree_util.keystr(path)}'


@pytest.mark.parametrize('posenc', NAMES)
def test_translation_invariant_flag(posenc):
  """Shifting every position (and so every position row) leaves the output
  unchanged iff the class says so."""
  cls = encodings.get(posenc)
  cfg = _cfg(posenc, num_layers=1)
  tokens = _tokens()
  model, params = _init(cfg, tokens)
  pos = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  apply = _apply(model)
  base, shifted = (apply({'params': params}, tokens, pos + s) for s in (0, 1000))
  assert np.allclose(base, shifted, rtol=1e-4, atol=1e-4) == cls.translation_invariant
  # Sorted distinct positions with gaps (as randomized positions draw): the output
  # changes iff the class says it reads positions.
  gaps = jnp.cumsum(jnp.asarray([[1, 5, 2, 9, 1, 3, 7, 2, 8, 1, 4, 6]] * 2), axis=1)
  scattered = apply({'params': params}, tokens, gaps[:, :tokens.shape[1]])
  assert np.allclose(base, scattered, rtol=1e-4, atol=1e-4) != cls.reads_positions


def _image_rows(B, L, width=4):
  """Position rows of a CLS token then a raster of ``width`` columns."""
  from posjax.data.pipelines import image_position_rows
  rows = image_position_rows(-(-(L - 1) // width), width, 1, L)
  return jnp.broadcast_to(jnp.asarray(rows)[:, None], (3, B, L))


@pytest.mark.parametrize('posenc', ['rope'] + [n for n in NAMES
                                              if encodings.get(n).position_rows == 3])
def test_position_rows_flag(posenc):
  """An encoding with position_rows = 3 reads the rows (text's default: three
  copies of the positions); the others (rope stands for them: the model drops the
  rows unless ``cfg.uses_position_rows``) ignore them."""
  cls = encodings.get(posenc)
  cfg = _cfg(posenc, num_layers=1)
  assert cfg.uses_position_rows == (cls.position_rows == 3)
  tokens = _tokens(L=12)
  model, params = _init(cfg, tokens)
  apply = _apply(model)
  pos = jnp.broadcast_to(jnp.arange(12), tokens.shape)
  text = apply({'params': params}, tokens, pos)
  same = apply({'params': params}, tokens, pos, position_rows=jnp.stack([pos] * 3))
  image = apply({'params': params}, tokens, pos, position_rows=_image_rows(2, 12))
  np.testing.assert_allclose(same, text, rtol=1e-6, atol=1e-6)
  assert np.allclose(image, text, atol=1e-4) == (cls.position_rows == 1)


def test_mrope_on_text_is_rope_and_decodes_images_with_continued_rows():
  """M-RoPE equals RoPE on text; with an image prompt, cached decoding (rows
  continued after the prompt's largest position, Qwen2-VL's rope_deltas) equals
  the full pass over the same rows, and ``sample`` continues them."""
  tokens = _tokens(L=12)
  model, params = _init(_cfg('mrope'), tokens)
  rope = models.build(_cfg('rope'))
  np.testing.assert_allclose(_apply(model)({'params': params}, tokens),
                             _apply(rope)({'params': params}, tokens), rtol=1e-5, atol=1e-5)
  prompt = _image_rows(2, 9)  # CLS + 8 pixels of a 2 x 4 image.
  rows = models.sampling.continued_rows(prompt, 12)
  assert rows[:, 0, 9:].tolist() == [[5, 6, 7]] * 3  # Pixel rows reach w = 1 + 3 = 4.
  pos = jnp.broadcast_to(jnp.arange(12), tokens.shape)
  full = _apply(model)({'params': params}, tokens, pos, position_rows=rows)
  step = jax.jit(functools.partial(models.decode_step, model))
  logits, cache = step(params, models.init_cache(model, params, 2, 12), tokens[:, :9],
                       pos[:, :9], rows[..., :9])
  steps = [logits]
  for i in range(9, 12):
    logits, cache = step(params, cache, tokens[:, i:i + 1], pos[:, i:i + 1], rows[..., i:i + 1])
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, 1), full, rtol=1e-4, atol=1e-4)
  out = models.sample(model, params, tokens[:, :9], jax.random.key(0), max_len=12,
                      temperature=0, prompt_rows=prompt)
  np.testing.assert_array_equal(out[:, 9], full[:, 8].argmax(-1))
  assert not np.allclose(full, _apply(model)({'params': params}, tokens), atol=1e-4)


def test_nope_order_only_through_causal_mask():
  tokens = _tokens(1, 8)
  perm = jnp.array([3, 1, 7, 0, 5, 2, 6, 4])
  enc = _cfg('none', kind='encoder_classifier', pooling='mean')
  model, params = _init(enc, tokens)
  # Bidirectional NoPE with mean pooling is blind to order ...
  apply = _apply(model)
  np.testing.assert_allclose(apply({'params': params}, tokens),
                             apply({'params': params}, tokens[:, perm]), rtol=1e-5, atol=1e-5)
  # ... while the causal mask alone lets a NoPE decoder see it.
  dec = _cfg('none')
  model, params = _init(dec, tokens)
  swapped = tokens.at[:, 0].set(tokens[0, 1]).at[:, 1].set(tokens[0, 0])
  last = lambda t: _apply(model)({'params': params}, t)[:, -1]  # noqa: E731
  assert not np.allclose(last(tokens), last(swapped), atol=1e-4)


def test_randomized_positions_drawn_whenever_a_positions_rng_is_given():
  cfg = _cfg('rope', randomized_positions=True, max_random_position=64)
  tokens = _tokens()
  model, params = _init(cfg, tokens)
  apply = _apply(model)
  drawn = [apply({'params': params}, tokens, train=t, rngs={'positions': jax.random.key(s)})
           for t, s in ((True, 1), (True, 2), (False, 1))]
  assert not np.allclose(drawn[0], drawn[1])
  np.testing.assert_allclose(drawn[2], drawn[0], rtol=1e-6)  # Evaluation draws too.
  plain = _apply(models.build(cfg.replace(randomized_positions=False)))({'params': params}, tokens)
  np.testing.assert_allclose(apply({'params': params}, tokens), plain, rtol=1e-6)
  assert not np.allclose(drawn[2], plain, atol=1e-4)


def test_eval_step_draws_randomized_positions_fixed_by_batch_index():
  from posjax.training import steps

  class Task:
    model_inputs = staticmethod(lambda b: ((b['inputs'],), {}))
    sums = staticmethod(lambda logits, b: {'logits': logits})

  cfg = _cfg('alibi', randomized_positions=True, max_random_position=64)
  tokens = _tokens()
  model, params = _init(cfg, tokens)
  step = lambda i: steps.eval_step(params, {'inputs': tokens}, i, model=model,  # noqa: E731
                                     task=Task, seed=0)['logits']
  np.testing.assert_array_equal(step(3), step(3))
  assert not np.allclose(step(3), step(4), atol=1e-4)


def test_classifier_and_matcher_shapes():
  tokens = _tokens()
  cfg = _cfg('alibi', kind='encoder_classifier', num_classes=5, pooling='cls')
  model, params = _init(cfg, tokens)
  assert _apply(model)({'params': params}, tokens).shape == (2, 5)
  cfg = _cfg('t5', kind='matcher', num_classes=2)
  model = models.build(cfg)
  params = jax.jit(model.init)(jax.random.key(0), tokens, tokens[::-1])['params']
  assert _apply(model)({'params': params}, tokens, tokens[::-1]).shape == (2, 2)


def test_sampling_is_greedy_consistent():
  cfg = _cfg('rope')
  tokens = _tokens(2, 3)
  model, params = _init(cfg, tokens)
  out = models.sample(model, params, tokens, jax.random.key(0), max_len=8, temperature=0)
  assert out.shape == (2, 8)
  np.testing.assert_array_equal(out[:, :3], tokens)
  # Greedy: each sampled token is the argmax of the full pass over its prefix.
  full = _apply(model)({'params': params}, out)
  np.testing.assert_array_equal(full[:, 2:-1].argmax(-1), out[:, 3:])


def test_bad_model_config_names_the_field():
  with pytest.raises(ValueError, match='model.posenc: unknown encoding .*allowed'):
    _cfg('nope')
  with pytest.raises(ValueError, match='model.num_heads'):
    _cfg('rope', num_heads=3)
  with pytest.raises(ValueError, match='model.attention'):
    _cfg('rope', attention='flashy')
  with pytest.raises(ValueError, match='model.posenc_args'):
    _cfg('alibi', posenc_args={'bogus': 1})
