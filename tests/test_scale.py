"""model.remat and model.scan_layers: the plain model's values and gradients."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posjax import encodings, models
from posjax.models import transformer
from posjax.training import sharding


def _cfg(posenc='rope', **kw):
  base = dict(kind='decoder', vocab_size=40, num_layers=2, num_heads=2, model_dim=32,
              mlp_dim=64, max_len=32, posenc=posenc, scan_layers=False)  # The plain model.
  return models.ModelConfig(**{**base, **kw})


COVER = ('none', 'learned', 't5', 'rope', 'alibi', 'cope', 'transformer_xl', 'shaw')


def _representatives():
  """One encoding per way of acting (embed / qk / bias / carry / values / shared /
  position rows), the classic ones first."""
  picked = {}
  for name in (*COVER, *encodings.names()):
    cls = encodings.get(name)
    has_carry = cls.init_carry is not encodings.Encoding.init_carry
    key = (cls.acts_at, cls.shared_across_layers, has_carry, cls.position_rows)
    picked.setdefault(key, name)
  return sorted(picked.values())


REPRESENTATIVES = _representatives()
REMAT_ENCODINGS = ('rope', 't5')
TOKENS = jax.random.randint(jax.random.key(3), (2, 8), 4, 40)


@functools.lru_cache(maxsize=None)
def _plain_params(cfg):
  """Random plain-layout parameters (no zeros, so every table and vector matters).

  Shapes come from ``jax.eval_shape``; values from numpy: no init compile.
  """
  shapes = jax.eval_shape(models.build(cfg).init, jax.random.key(0), TOKENS)
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype),
                      nn.unbox(shapes['params']))


def _params(cfg):
  """The same values for every variant of a config, in ``cfg``'s layout."""
  params = _plain_params(cfg.replace(remat='none', scan_layers=False))
  return models.stack_layers(params) if cfg.scan_layers else params


def _loss_and_grads(cfg, params):
  """Loss, logits and (plain-layout) parameter gradients on ``TOKENS``."""
  model = models.build(cfg)

  def loss(p):
    logits = model.apply({'params': p}, TOKENS)
    return (logits ** 2).mean(), logits

  (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
  return value, logits, models.unstack_layers(grads) if cfg.scan_layers else grads


@pytest.fixture(scope='module')
def outputs():
  """Every config the equality tests compare, run in one compiled program.

  One program compiles in about half the time of one per config.
  """
  cfgs = [_cfg(p, **kw) for p in REPRESENTATIVES for kw in ({}, {'scan_layers': True})]
  cfgs += [_cfg(p, remat=r) for p in REMAT_ENCODINGS for r in ('full', 'dots')]
  results = jax.jit(lambda ps: [_loss_and_grads(c, p) for c, p in zip(cfgs, ps)])(
      [_params(c) for c in cfgs])
  return dict(zip(cfgs, results))


def _assert_same(outputs, cfg, variant):
  v0, l0, g0 = outputs[cfg]
  v1, l1, g1 = outputs[variant]
  np.testing.assert_allclose(l1, l0, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(v1, v0, rtol=1e-5)
  assert jax.tree.structure(g1) == jax.tree.structure(g0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g1, g0)
  for path, g in jax.tree_util.tree_leaves_with_path(g1):  # E.g. a shared table left unused.
    assert np.abs(g).max() > 0, f'no gradient reaches {jax.tree_util.keystr(path)}'


def test_representatives_cover_every_way_of_acting():
  assert set(COVER) | {'mrope'} <= set(REPRESENTATIVES)


@pytest.mark.parametrize('posenc', REPRESENTATIVES)
def test_scan_layers_equals_plain_model(outputs, posenc):
  _assert_same(outputs, _cfg(posenc), _cfg(posenc, scan_layers=True))


@pytest.mark.parametrize('remat', ['full', 'dots'])
@pytest.mark.parametrize('posenc', REMAT_ENCODINGS)
def test_remat_equals_plain_model(outputs, posenc, remat):
  _assert_same(outputs, _cfg(posenc), _cfg(posenc, remat=remat))


def _top_level(cfg, primitive: str):
  """Top-level equations named ``primitive`` in the forward pass's jaxpr (no compile)."""
  model = models.build(cfg)
  params = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), TOKENS))['params']
  jaxpr = jax.make_jaxpr(lambda p: model.apply({'params': p}, TOKENS))(params)
  return [e for e in jaxpr.eqns if e.primitive.name == primitive]


@pytest.mark.parametrize('remat', ['full', 'dots'])
def test_remat_checkpoints_each_block_with_its_policy(remat):
  checkpoint = jax.make_jaxpr(jax.checkpoint(jnp.sin))(1.0).eqns[0].primitive.name
  eqns = _top_level(_cfg(remat=remat), checkpoint)
  assert len(eqns) == 2
  assert all(e.params['policy'] == transformer.REMAT_POLICIES[remat] for e in eqns)
  assert not _top_level(_cfg(), checkpoint)


def test_layers_are_scanned_by_default():
  """experiments/compile_benchmark.py: scanned, a 24-layer train step compiles
  as fast as a 2-layer one on CPU (plain: 4.6x) and steps as fast."""
  assert models.ModelConfig().scan_layers
  default = models.ModelConfig(**{f: getattr(_cfg(num_layers=3), f) for f in (
      'kind', 'vocab_size', 'num_layers', 'num_heads', 'model_dim', 'mlp_dim', 'max_len')})
  assert [e.params['length'] for e in _top_level(default, 'scan')] == [3]


def test_scan_layers_is_one_scan_over_the_layers():
  assert [e.params['length'] for e in _top_level(_cfg(num_layers=3, scan_layers=True), 'scan')
          ] == [3]
  assert not _top_level(_cfg(num_layers=3), 'scan')


def test_scan_layers_with_randomized_positions_equals_plain_model(outputs):
  cfg = _cfg('alibi', randomized_positions=True, max_random_position=64)
  scan = cfg.replace(scan_layers=True)
  apply = lambda c, p: models.build(c).apply(  # noqa: E731
      {'params': p}, TOKENS, train=True, rngs={'positions': jax.random.key(7)})
  plain, scanned = jax.jit(lambda p, ps: (apply(cfg, p), apply(scan, ps)))(
      _params(cfg), _params(scan))
  np.testing.assert_allclose(scanned, plain, rtol=1e-5, atol=1e-5)
  unmoved = outputs[_cfg('alibi')][1]  # The same parameters, positions 0..L-1.
  assert np.abs(plain - unmoved).max() > 1e-3


def test_scan_layers_splits_dropout_rngs_per_layer():
  cfg = _cfg(dropout_rate=0.5, scan_layers=True)
  model = models.build(cfg)

  def record_kept(f, args, kwargs, context):
    y = f(*args, **kwargs)
    if isinstance(context.module, nn.Dropout) and context.method_name == '__call__':
      context.module.sow('intermediates', 'kept', y != 0)
    return y

  def kept(params):
    with nn.intercept_methods(record_kept):
      _, state = model.apply({'params': params}, TOKENS, train=True, mutable=['intermediates'],
                             rngs={'dropout': jax.random.key(1)})
    return state['intermediates']['decoder']['layers']['Dropout_0']['kept']

  after_attention, after_mlp = jax.jit(kept)(_params(cfg))
  assert after_attention.shape[0] == cfg.num_layers
  assert not np.array_equal(after_attention[0], after_attention[1])
  assert not np.array_equal(after_attention, after_mlp)


@pytest.mark.parametrize('cfg', [_cfg('rope', scan_layers=True),
                                 _cfg('t5', scan_layers=True, remat='full')],
                         ids=['rope-scan', 't5-scan-remat'])
def test_scanned_cached_decoding_equals_full_pass(outputs, cfg):
  full = outputs[cfg.replace(scan_layers=False, remat='none')][1]
  model = models.build(cfg)
  params = _params(cfg)
  B, L = TOKENS.shape
  cache = models.init_cache(model, params, B, L)
  assert {x.shape[0] for x in jax.tree.leaves(cache)} == {cfg.num_layers}  # Stacked per layer.

  def decode(params, cache):  # One token at a time.
    def step(cache, tok_pos):
      logits, cache = models.decode_step(model, params, cache, *tok_pos)
      return cache, logits[:, 0]
    pos = jnp.broadcast_to(jnp.arange(L), (B, L))
    return jax.lax.scan(step, cache, (TOKENS.T[:, :, None], pos.T[:, :, None]))[1]

  np.testing.assert_allclose(jnp.swapaxes(jax.jit(decode)(params, cache), 0, 1), full,
                             rtol=1e-4, atol=1e-4)


def test_stack_layers_round_trips_and_matches_the_scanned_layout():
  cfg = _cfg('t5')
  params = _params(cfg)
  stacked = _params(cfg.replace(scan_layers=True))
  scanned = jax.eval_shape(models.build(cfg.replace(scan_layers=True)).init,
                           jax.random.key(0), TOKENS)['params']
  assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(jnp.shape, nn.unbox(scanned))
  jax.tree.map(np.testing.assert_array_equal, models.unstack_layers(stacked), params)
  # The shared table stays one model-level table: the layers hold what NoPE's hold.
  nope = _params(_cfg('none', scan_layers=True))
  assert jax.tree.map(jnp.shape, stacked['decoder']['layers']) == jax.tree.map(
      jnp.shape, nope['decoder']['layers'])
  assert 'posenc' in stacked['decoder']


def test_stacked_params_name_a_replicated_layers_axis():
  cfg = _cfg('transformer_xl')
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  rules = [('embed', 'fsdp'), ('mlp', 'tensor'), ('heads', 'tensor')]
  specs = lambda c: jax.tree.map(  # noqa: E731
      lambda s: s.spec, sharding.logical_shardings(
          jax.eval_shape(models.build(c).init, jax.random.key(0), TOKENS)['params'], mesh, rules))
  plain, scanned = specs(cfg), specs(cfg.replace(scan_layers=True))
  layer = plain['decoder']['layer_0']
  expected = jax.tree.map(lambda s: jax.P(None, *s), layer)
  assert scanned['decoder']['layers'] == expected
  assert layer['mlp_in']['kernel'] == jax.P('fsdp', 'tensor')


def test_config_validates_and_reads_the_new_fields():
  cfg = models.ModelConfig.from_config({'remat': 'dots', 'scan_layers': True})
  assert (cfg.remat, cfg.scan_layers) == ('dots', True)
  with pytest.raises(ValueError, match=r"^model.remat: got 'x'; allowed: none, full, dots$"):
    models.ModelConfig(remat='x')
  with pytest.raises(ValueError, match=r"^model.scan_layers: got 'yes'; allowed: True, False$"):
    models.ModelConfig(scan_layers='yes')
