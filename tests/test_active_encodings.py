"""Every encoding does something to the model.

An absolute term enters the first layer at the scale of the token embedding; a
learned table beats NoPE where the target depends on absolute position; every
learned encoding parameter moves under a short AdamW run. Tiny models (1 layer,
model_dim 32) trained with optax directly, each compiled once per module.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from posjax import encodings, models

NAMES = encodings.names()
EMBEDDERS = [n for n in NAMES if encodings.EMBED in encodings.get(n).acts_at]
LEARNERS = [n for n in NAMES if encodings.get(n).has_params]


def _one_per_hook(names, first=('learned', 't5', 'shaw', 'cope', 'transformer_xl', 'fox',
                                'pope')):
  """The default run's cases: one encoding per (hooks, shared) kind, the classic ones
  first; the others (same code paths) with --runslow."""
  picked = {}
  for n in (*[f for f in first if f in names], *names):
    cls = encodings.get(n)
    picked.setdefault((cls.acts_at, cls.shared_across_layers), n)
  return [n if n in picked.values() else pytest.param(n, marks=pytest.mark.slow)
          for n in names]
V, B, L, STEPS, LR = 32, 16, 32, 40, 3e-3
# An absolute term below this fraction of the token embedding's norm is
# drowned out (the learned table at std 0.02 gave 0.02; now 0.5; sinusoids 0.71).
MIN_INPUT_RATIO = 0.3
# In STEPS steps at LR every encoding leaf moves by MIN_MOVE of its init norm
# (absolute for zero-initialised leaves, CoPE's E), and coherently: by at least
# MIN_COHERENCE of the LR * STEPS per entry that steady Adam steps give. An
# inert leaf only drifts on normalised noise (FIRE's old output bias, which the
# softmax cancels: 0.008 and 0.008; the real leaves: >= 0.04 and >= 0.13).
MIN_MOVE, MIN_COHERENCE = 0.02, 0.05


def _cfg(posenc, **kw):
  base = dict(kind='decoder', vocab_size=V, num_layers=1, num_heads=2, model_dim=32,
              mlp_dim=64, max_len=L, posenc=posenc, norm='rmsnorm')
  return models.ModelConfig.from_config({**base, **kw})


def _batches(task, steps=STEPS, seed=0):
  """(inputs, targets) ``[steps, B, L]``: random inputs, and targets that are a
  fixed random token per position ('absolute') or the previous input ('previous')."""
  rng = np.random.default_rng(seed)
  x = rng.integers(0, V, (steps, B, L))
  if task == 'absolute':
    y = np.broadcast_to(rng.integers(0, V, L), x.shape)
  else:
    y = np.concatenate([x[..., :1], x[..., :-1]], -1)
  return jnp.asarray(x, jnp.int32), jnp.asarray(y, jnp.int32)


@functools.lru_cache(maxsize=None)
def _train(posenc, task, options=()):
  """Initial params, trained params and per-step losses of a short AdamW run
  (``options``: other model fields, as pairs)."""
  model = models.build(_cfg(posenc, **dict(options)))
  xs, ys = _batches(task)
  tx = optax.adamw(LR, b2=0.98, weight_decay=0.1,
                   mask=lambda p: jax.tree.map(lambda a: a.ndim > 1, p))

  def loss_fn(params, x, y):
    logits = model.apply({'params': params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def step(carry, batch):
    params, opt = carry
    loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
    updates, opt = tx.update(grads, opt, params)
    return (optax.apply_updates(params, updates), opt), loss

  def run(key):
    params = nn.unbox(model.init(key, xs[0])['params'])
    (trained, _), losses = jax.lax.scan(step, (params, tx.init(params)), (xs, ys))
    return params, trained, losses
  return jax.device_get(jax.jit(run)(jax.random.key(0)))


def _flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_leaves_with_path(nn.unbox(tree))}


@functools.lru_cache(maxsize=None)
def _param_paths(posenc, options=()):
  model = models.build(_cfg(posenc, **dict(options)))
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, L), jnp.int32))
  return frozenset(_flat(jax.tree.map(lambda s: np.zeros(()), shapes['params'])))


def _encoding_paths(posenc):
  """The encoding's parameters: the leaves a NoPE model does not have."""
  return sorted(_param_paths(posenc) - _param_paths('none'))


@pytest.mark.parametrize('posenc', NAMES)
def test_has_params_flag_matches_the_model(posenc):
  assert bool(_encoding_paths(posenc)) == encodings.get(posenc).has_params


@pytest.mark.parametrize('posenc', EMBEDDERS)
def test_absolute_term_is_not_negligible(posenc):
  """|embed(x) - x| / |x| at init, x the token embedding the model feeds in."""
  cfg = _cfg(posenc)
  model = models.build(cfg)
  seen = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, encodings.Encoding) and context.method_name == 'embed':
      seen.append((args[0], out))
    return out

  @jax.jit
  def ratio(tokens):
    params = model.init(jax.random.key(0), tokens)
    with nn.intercept_methods(record):
      model.apply(params, tokens)
    (x, out), = seen
    return jnp.linalg.norm(out.astype(jnp.float32) - x) / jnp.linalg.norm(x)
  tokens = jax.random.randint(jax.random.key(1), (4, L), 0, V)
  assert float(ratio(tokens)) > MIN_INPUT_RATIO


def test_learned_beats_none_on_absolute_targets():
  """The target is a fixed token per position: a learned table can look it up."""
  learned = _train('learned', 'absolute')[2]
  none = _train('none', 'absolute')[2]
  assert learned[-5:].mean() < none[-5:].mean() - 0.5, (learned[-5:], none[-5:])


@pytest.mark.parametrize('posenc', _one_per_hook(LEARNERS))
def test_every_encoding_parameter_moves(posenc):
  """Absolute tables learn the position-keyed targets, the others the previous token."""
  init, trained, _ = _train(posenc, 'absolute' if encodings.EMBED in
                            encodings.get(posenc).acts_at else 'previous')
  init, trained = _flat(init), _flat(trained)
  _assert_moved(posenc, init, trained, _encoding_paths(posenc))


def _assert_moved(name, init, trained, paths):
  for path in paths:
    delta = np.linalg.norm(trained[path] - init[path])
    moved = delta / (np.linalg.norm(init[path]) or 1.0)
    coherence = delta / (LR * STEPS * np.sqrt(init[path].size))
    assert moved > MIN_MOVE, f'{name}{path} moved {moved:.3g} of its init norm'
    assert coherence > MIN_COHERENCE, f'{name}{path} drifted ({coherence:.3g}): inert'


def test_every_model_option_parameter_moves():
  """The parameters model options add beside the encoding (learned sinks,
  Scalable-Softmax's s_h, QK-norm's scales) move coherently too."""
  options = (('sinks', 'learned'), ('temperature', 'ssmax'), ('qk_norm', 'rms'))
  paths = sorted(_param_paths('rope', options) - _param_paths('rope'))
  assert len(paths) == 4, paths  # sinks, ssmax, q_norm, k_norm
  init, trained, _ = _train('rope', 'previous', options)
  _assert_moved('rope+options', _flat(init), _flat(trained), paths)
