"""posjax.models.kernels.vendor: the cuDNN and splash wrappers equal dense attention (on
CPU: cuDNN as implementation='xla', splash in Pallas interpret mode); impossible
choices are one-line config errors; ``auto`` picks per platform and encoding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posjax import models
from posjax.models import attention
from posjax.models.kernels import blockwise, vendor
from posjax.models.kernels.span import Span
from posjax.training import sharding, validation

from test_models import _cfg, _params

B, H, K = 2, 2, 16


def _qkv(length, seed=0):
  r = np.random.default_rng(seed)
  return tuple(jnp.asarray(r.standard_normal((B, length, H, K)), jnp.float32) for _ in range(3))


def _segments(length):
  """Row 0: one document; row 1: two documents, then padding (segment 0)."""
  a, b = length // 3, length // 2
  row1 = [1] * a + [2] * b + [0] * (length - a - b)
  return jnp.asarray([[1] * length, row1], jnp.int32)


def _dense(q, k, v, seg, causal):
  idx = jnp.broadcast_to(jnp.arange(q.shape[1]), seg.shape)
  pos = idx
  enc = _cfg('none').make_encoding()
  return blockwise.attend(enc, q, k, v, pos, pos, idx, idx, seg, seg, span=Span(causal),
                          block_size=None, scale=K ** -0.5)[0]


def _value_and_grads(f, q, k, v):
  w = jax.random.normal(jax.random.key(1), q.shape)
  return jax.jit(jax.value_and_grad(lambda q, k, v: (f(q, k, v) * w).sum(),
                                    argnums=(0, 1, 2)))(q, k, v)


def _check(kernel, length, causal, **kw):
  q, k, v = _qkv(length)
  seg = _segments(length)
  valid = np.asarray(seg > 0)[..., None, None]  # Padding rows: any output.
  got = vendor.attend(kernel, q, k, v, seg, seg, causal=causal, scale=K ** -0.5, **kw)
  np.testing.assert_allclose(np.where(valid, got, 0), np.where(valid, _dense(q, k, v, seg,
                                                                               causal), 0),
                             rtol=2e-5, atol=2e-5)
  mask = jnp.asarray(valid, jnp.float32)
  want = _value_and_grads(lambda *a: _dense(*a, seg, causal) * mask, q, k, v)
  have = _value_and_grads(lambda *a: vendor.attend(kernel, *a, seg, seg, causal=causal,
                                                  scale=K ** -0.5, **kw) * mask, q, k, v)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4), want, have)


@pytest.mark.parametrize('causal', [True, False])
def test_cudnn_wrapper_equals_dense_on_packed_rows(causal):
  _check('cudnn', 21, causal, implementation='xla')


def test_splash_wrapper_equals_dense_on_packed_rows():
  _check('splash', 128, True, interpret=True)


@pytest.mark.slow
def test_splash_wrapper_bidirectional_two_blocks():
  _check('splash', 256, False, interpret=True)


def test_splash_runs_per_shard_under_a_mesh(monkeypatch):
  import flax.linen as nn
  monkeypatch.setenv('POSJAX_EMULATE_KERNELS', '1')
  q, k, v = _qkv(128)
  seg = _segments(128)
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 1, 'tensor': 2}, jax.devices()[:4])
  rules = (('batch', ('data', 'fsdp')), ('heads', 'tensor'))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    got = jax.jit(lambda *a: vendor.splash_attend(*a, causal=True, scale=K ** -0.5))(
        q, k, v, seg, seg)
  valid = np.asarray(seg > 0)[..., None, None]
  np.testing.assert_allclose(np.where(valid, got, 0),
                             np.where(valid, _dense(q, k, v, seg, True), 0), atol=2e-5)


def test_model_with_cudnn_emulated_matches_dense(monkeypatch):
  monkeypatch.setenv('POSJAX_EMULATE_KERNELS', '1')
  cfg = _cfg('rope', num_layers=1, dtype='bfloat16')
  tokens = jax.random.randint(jax.random.key(3), (2, 16), 4, 40)
  pos = jnp.asarray([list(range(16)), list(range(7)) + list(range(9))], jnp.int32)
  seg = jnp.asarray([[1] * 16, [1] * 7 + [2] * 9], jnp.int32)
  params = _params(cfg, tokens.shape, 0)
  run = lambda c: models.build(c).apply({'params': params}, tokens, pos, seg)  # noqa: E731
  np.testing.assert_allclose(run(cfg.replace(attention='cudnn')), run(cfg), atol=0.05)


def _error(mcfg):
  with pytest.raises(ValueError) as e:
    validation._check_attention(mcfg)
  return str(e.value)


def test_impossible_kernel_choices_are_one_line_errors(monkeypatch):
  err = _error(_cfg('rope', attention='cudnn', dtype='bfloat16'))
  assert err.startswith("model.attention: got 'cudnn'; allowed here: auto, dense, blockwise, "
                        "flash (cudnn needs a gpu; this platform is cpu)")
  monkeypatch.setenv('POSJAX_EMULATE_KERNELS', '1')
  assert 'acts at bias' in _error(_cfg('alibi', attention='cudnn', dtype='bfloat16'))
  assert 'model.dtype in bfloat16, float16; got float32' in _error(_cfg('rope', attention='cudnn'))
  assert 'multiple of 8 up to 128; got 12' in _error(
      _cfg('rope', attention='cudnn', dtype='bfloat16', model_dim=24))
  assert 'multiples of 128; got 32' in _error(_cfg('none', attention='splash'))
  validation._check_attention(_cfg('none', attention='splash', max_len=256))  # Fine.


def test_auto_picks_the_platform_kernel_where_it_serves(monkeypatch):
  monkeypatch.setenv('POSJAX_EMULATE_KERNELS', '1')
  monkeypatch.setattr(vendor, 'for_platform', lambda: 'cudnn')
  rope = _cfg('rope', dtype='bfloat16')
  assert attention.choose(rope, 4096, 4096) == 'cudnn'
  assert attention.choose(rope, 1, 4096) == 'flash'  # Decoding.
  assert attention.choose(_cfg('alibi', dtype='bfloat16'), 4096, 4096) == 'flash'
  assert attention.choose(_cfg('rope'), 64, 64) == 'dense'  # float32: not cuDNN.
  assert attention.choose(rope.replace(attention='cudnn'), 1, 64) == 'dense'
  monkeypatch.setattr(vendor, 'for_platform', lambda: 'splash')
  assert attention.choose(_cfg('none'), 512, 512) == 'splash'
  assert attention.choose(_cfg('none'), 500, 500) == 'dense'


def _gpu_benchmark(tmp_path, *args):
  import os
  import subprocess
  import sys
  env = dict(os.environ, POSJAX_EMULATE_KERNELS='1', XLA_FLAGS='')
  out = subprocess.run([sys.executable, 'experiments/gpu_benchmark.py', '--smoke', '--repeats=1',
                        f'--out={tmp_path}', *args], env=env, capture_output=True, text=True,
                       timeout=900, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert out.returncode == 0, out.stderr[-2000:]
  for part in ('check', 'kernels', 'mfu', 'longest'):
    assert (tmp_path / f'{part}.md').read_text().startswith(f'## {part}')
    assert (tmp_path / f'{part}.csv').read_text().count('\n') >= 2
  return out.stdout


def test_gpu_benchmark_skips_what_the_budget_does_not_cover(tmp_path):
  """Every part still writes its table, each case saying it was skipped."""
  stdout = _gpu_benchmark(tmp_path, '--budget_s=0')
  assert 'check: attention flash, posenc alibi, dtype float32, result skipped (budget)' in stdout
  assert 'mfu: model 2x128, length 256, batch 32, result skipped (budget)' in stdout
  assert 'skipped (budget)' in (tmp_path / 'longest.md').read_text()


@pytest.mark.slow
def test_gpu_benchmark_script_runs_emulated_on_cpu(tmp_path):
  """--smoke, all parts (about 4 minutes on 2 cores): every check ok."""
  stdout = _gpu_benchmark(tmp_path, '--budget_s=3000')
  checks = [line for line in stdout.splitlines() if line.startswith('check ')]
  assert len(checks) >= 20 and all(line.endswith(': ok') for line in checks), checks
  assert 'kernels: length 256, case none:cudnn, compile_s' in stdout
  assert 'skipped' not in stdout and 'failed' not in stdout


# Fast: a closed form and a shared table in the loop walk (Triton's), the closed
# form in the grid walk (Mosaic's); the rest with --runslow.
PALLAS_FAST = {('alibi', False), ('t5', False), ('alibi', True)}
PALLAS_CASES = [pytest.param(n, grid, id=f'{n}-{"grid" if grid else "loop"}',
                             marks=() if (n, grid) in PALLAS_FAST else pytest.mark.slow)
                for grid in (False, True)
                for n in ('none', 'rope', 'alibi', 't5', 'kerple_log', 'kerple_power', 'fire')]


@pytest.mark.parametrize('posenc,grid', PALLAS_CASES)
def test_pallas_kernels_with_in_kernel_bias_equal_dense(posenc, grid, monkeypatch):
  """Values and gradients (dq, dk, dv and the bias variables') on packed rows,
  tiles of 4, in Pallas interpret mode: inner tiles in a loop (Triton) and as the
  last grid axis with VMEM scratch (Mosaic)."""
  from test_flash import _close, _loss_and_grads
  from posjax.models.kernels import pallas_tiles
  monkeypatch.setattr(pallas_tiles, 'GRID', grid)
  monkeypatch.setenv('POSJAX_EMULATE_KERNELS', '1')
  cfg = _cfg(posenc, num_layers=1, block_size=4)
  validation._check_attention(cfg.replace(attention='pallas'))
  tokens = jax.random.randint(jax.random.key(3), (2, 21), 4, 40)
  pos = jnp.asarray([list(range(21)), list(range(9)) + list(range(12))], jnp.int32)
  seg = jnp.asarray([[1] * 21, [1] * 9 + [2] * 12], jnp.int32)
  params = _params(cfg, tokens.shape, 0)
  ld, gd = _loss_and_grads(cfg, params, tokens, pos, seg)
  lp, gp = _loss_and_grads(cfg.replace(attention='pallas'), params, tokens, pos, seg)
  _close(ld, lp)
  jax.tree.map(_close, gd, gp)


@pytest.mark.parametrize('grid', [pytest.param(False, id='loop', marks=pytest.mark.slow),
                                  pytest.param(True, id='grid')])
def test_pallas_kernels_equal_dense_bidirectional(grid, monkeypatch):
  """An encoder (T5's two-sided buckets), packed segments, 10 tokens in tiles of 4."""
  from test_flash import _close
  from posjax.models.kernels import pallas_tiles
  monkeypatch.setattr(pallas_tiles, 'GRID', grid)
  monkeypatch.setenv('POSJAX_EMULATE_KERNELS', '1')
  cfg = _cfg('t5', kind='encoder_classifier', num_layers=1, block_size=4)
  tokens = jax.random.randint(jax.random.key(4), (2, 10), 4, 40)
  pos = jnp.asarray([list(range(10)), list(range(3)) + list(range(7))], jnp.int32)
  seg = jnp.asarray([[1] * 10, [1] * 3 + [2] * 7], jnp.int32)
  params = _params(cfg, tokens.shape, 0)
  f = lambda c: jax.jit(jax.value_and_grad(lambda p: (models.build(c).apply(  # noqa: E731
      {'params': p}, tokens, pos, seg) ** 2).sum()))(params)
  jax.tree.map(_close, f(cfg), f(cfg.replace(attention='pallas')))


def test_pallas_refuses_encodings_whose_bias_needs_q_and_k(monkeypatch):
  monkeypatch.setenv('POSJAX_EMULATE_KERNELS', '1')
  for posenc in ('shaw', 'cope', 'transformer_xl'):
    assert 'which pallas cannot take (use flash)' in _error(_cfg(posenc, attention='pallas'))
  monkeypatch.delenv('POSJAX_EMULATE_KERNELS')
  assert 'pallas needs a gpu or tpu; this platform is cpu' in _error(
      _cfg('alibi', attention='pallas'))
