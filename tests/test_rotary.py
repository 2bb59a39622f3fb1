"""Tests for posjax.encodings.rotary: reference frequencies, layouts, offset
invariance, bf16 precision at large positions, hyperparameter validation."""
import math

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from posjax.encodings import registry, rotary

B, L, H, K = 2, 16, 3, 64


def _make(name, args=None, head_dim=K, causal=True):
  return registry.make(name, args, num_heads=H, head_dim=head_dim,
                       model_dim=H * head_dim, max_len=512, causal=causal)


def _rand(seed, shape, dtype=np.float32):
  return np.random.RandomState(seed).normal(size=shape).astype(dtype)


def _positions(start, length=L, batch=B):
  return np.broadcast_to(start + np.arange(length, dtype=np.int32), (batch, length))


def _scores(enc, q, k, qpos, kpos):
  q_rot, k_rot = enc.qk(q, k, qpos, kpos)
  return np.einsum('blhk,bshk->bhls', np.asarray(q_rot, np.float64),
                   np.asarray(k_rot, np.float64))


# ---------------------------------------------------------------- frequencies

def _base_inv_freq(dim, base):
  return base ** -(np.arange(0, dim, 2, dtype=np.float64) / dim)


def _yarn_reference(dim, base, factor, orig, beta_fast=32, beta_slow=1):
  """YaRN (Peng et al. 2023, Sec. 3.2 'NTK-by-parts'), float64."""
  def correction_dim(rotations):  # the i with orig / wavelength_i == rotations
    return dim * np.log(orig / (rotations * 2 * np.pi)) / (2 * np.log(base))
  low = max(np.floor(correction_dim(beta_fast)), 0)
  high = min(np.ceil(correction_dim(beta_slow)), dim - 1)
  if low == high:
    high += 0.001
  ramp = np.clip((np.arange(dim // 2) - low) / (high - low), 0, 1)
  inv = _base_inv_freq(dim, base)
  extrap_mask = 1 - ramp
  return (inv / factor) * (1 - extrap_mask) + inv * extrap_mask


def _llama3_reference(dim, base, factor, low_ff, high_ff, orig):
  """Llama 3.1's published rule, written per frequency in float64."""
  out = []
  for f in _base_inv_freq(dim, base):
    wavelen = 2 * np.pi / f
    if wavelen < orig / high_ff:
      out.append(f)
    elif wavelen > orig / low_ff:
      out.append(f / factor)
    else:
      smooth = (orig / wavelen - low_ff) / (high_ff - low_ff)
      out.append((1 - smooth) * f / factor + smooth * f)
  return np.array(out)


@pytest.mark.parametrize('factor', [4.0, 16.0])
def test_yarn_matches_reference(factor):
  inv, attn = rotary.rope_inv_freq(128, base=10000.0, scaling={
      'type': 'yarn', 'factor': factor, 'original_max_position': 4096})
  ref = _yarn_reference(128, 10000.0, factor, 4096)
  assert inv.dtype == np.float32 and inv.shape == (64,)
  np.testing.assert_allclose(inv, ref, rtol=1e-6)
  assert attn == pytest.approx(0.1 * math.log(factor) + 1)
  # Fast dims (many rotations in 4096) are extrapolated, slow ones interpolated.
  base = _base_inv_freq(128, 10000.0)
  np.testing.assert_allclose(inv[:10], base[:10], rtol=1e-6)
  np.testing.assert_allclose(inv[-10:], base[-10:] / factor, rtol=1e-6)


def test_yarn_attention_factor_override_and_no_extension():
  scaling = {'type': 'yarn', 'factor': 8.0, 'original_max_position': 2048}
  _, attn = rotary.rope_inv_freq(64, scaling=dict(scaling, attention_factor=1.3))
  assert attn == 1.3
  _, attn = rotary.rope_inv_freq(64, scaling=dict(scaling, factor=0.5))
  assert attn == 1.0


def test_llama3_matches_reference():
  inv, attn = rotary.rope_inv_freq(128, base=500000.0, scaling={
      'type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0,
      'high_freq_factor': 4.0, 'original_max_position': 8192})
  ref = _llama3_reference(128, 500000.0, 8.0, 1.0, 4.0, 8192)
  np.testing.assert_allclose(inv, ref, rtol=1e-6)
  assert attn == 1.0
  base = _base_inv_freq(128, 500000.0)
  wavelen = 2 * np.pi / base
  high, low = wavelen < 2048, wavelen > 8192
  assert high[:10].all() and low[-10:].all()
  np.testing.assert_allclose(inv[high], base[high], rtol=1e-6)
  np.testing.assert_allclose(inv[low], base[low] / 8, rtol=1e-6)
  medium = ~high & ~low
  assert medium.sum() >= 3
  ratio = inv[medium] / base[medium]
  assert ((ratio > 1 / 8) & (ratio < 1)).all() and (np.diff(ratio) < 0).all()
  # Defaults: low 1, high 4, original 8192.
  np.testing.assert_allclose(
      rotary.rope_inv_freq(128, base=500000.0, scaling={'type': 'llama3', 'factor': 8.0})[0], inv)


def test_linear_ntk_dynamic():
  dim, base = 64, 10000.0
  plain, attn = rotary.rope_inv_freq(dim, base=base)
  np.testing.assert_allclose(plain, _base_inv_freq(dim, base), rtol=1e-7)
  assert attn == 1.0
  linear, _ = rotary.rope_inv_freq(dim, base=base, scaling={'type': 'linear', 'factor': 4.0})
  np.testing.assert_allclose(linear, plain / 4, rtol=1e-6)
  ntk, _ = rotary.rope_inv_freq(dim, base=base, scaling={'type': 'ntk', 'factor': 4.0})
  np.testing.assert_allclose(ntk, _base_inv_freq(dim, base * 4.0 ** (dim / (dim - 2))), rtol=1e-6)
  assert ntk[0] == 1.0
  # NTK's lowest frequency is exactly linear interpolation's.
  np.testing.assert_allclose(ntk[-1], plain[-1] / 4, rtol=1e-6)
  dynamic = {'type': 'dynamic', 'factor': 4.0, 'original_max_position': 2048}
  short, _ = rotary.rope_inv_freq(dim, base=base, scaling=dict(dynamic, seq_len=2048))
  np.testing.assert_allclose(short, plain)
  long, _ = rotary.rope_inv_freq(dim, base=base, scaling=dict(dynamic, seq_len=8192))
  base_long = base * (4.0 * 8192 / 2048 - 3.0) ** (dim / (dim - 2))
  np.testing.assert_allclose(long, _base_inv_freq(dim, base_long), rtol=1e-6)


def test_longrope():
  dim, orig = 16, 4096
  short_f, long_f = np.linspace(1, 2, dim // 2), np.linspace(1, 40, dim // 2)
  scaling = {'type': 'longrope', 'short_factor': list(short_f), 'long_factor': list(long_f),
             'original_max_position': orig, 'max_position': 131072}
  base = _base_inv_freq(dim, 10000.0)
  inv, attn = rotary.rope_inv_freq(dim, scaling=dict(scaling, seq_len=orig))
  np.testing.assert_allclose(inv, base / short_f, rtol=1e-6)
  assert attn == pytest.approx(math.sqrt(1 + math.log(32) / math.log(orig)))
  inv, _ = rotary.rope_inv_freq(dim, scaling=dict(scaling, seq_len=orig + 1))
  np.testing.assert_allclose(inv, base / long_f, rtol=1e-6)
  _, attn = rotary.rope_inv_freq(dim, scaling=dict(scaling, seq_len=1, factor=4.0))
  assert attn == pytest.approx(math.sqrt(1 + math.log(4) / math.log(orig)))
  _, attn = rotary.rope_inv_freq(dim, scaling=dict(scaling, seq_len=1, attention_factor=1.1))
  assert attn == 1.1


# ---------------------------------------------------------------- apply_rope

def test_rotation_by_hand():
  x = np.zeros((1, 1, 1, 4), np.float32)
  x[..., 0] = 1.0
  inv = np.array([1.0, 0.01], np.float32)
  out = np.asarray(rotary.apply_rope(x, np.array([[2]]), inv, layout='half'))
  np.testing.assert_allclose(out[0, 0, 0], [np.cos(2), 0, np.sin(2), 0], atol=1e-6)
  out = np.asarray(rotary.apply_rope(x, np.array([[2]]), inv, layout='interleaved'))
  np.testing.assert_allclose(out[0, 0, 0], [np.cos(2), np.sin(2), 0, 0], atol=1e-6)
  out = np.asarray(rotary.apply_rope(x, np.array([[2]]), inv, attention_factor=1.5))
  np.testing.assert_allclose(out[0, 0, 0], [1.5 * np.cos(2), 0, 1.5 * np.sin(2), 0], atol=1e-6)


def test_layouts_are_permutations():
  x = _rand(0, (B, L, H, K))
  pos = _positions(100)
  inv, _ = rotary.rope_inv_freq(K)
  perm = np.stack([np.arange(K // 2), np.arange(K // 2) + K // 2], -1).reshape(-1)
  half = np.asarray(rotary.apply_rope(x, pos, inv, layout='half'))
  interleaved = np.asarray(rotary.apply_rope(x[..., perm], pos, inv, layout='interleaved'))
  np.testing.assert_allclose(interleaved, half[..., perm], rtol=1e-6, atol=1e-6)


def test_partial_rotary_leaves_tail():
  q, k = _rand(1, (B, L, H, K)), _rand(2, (B, L, H, K))
  enc = _make('rope', {'rotary_fraction': 0.3})  # int(19.2) -> 18 channels
  assert enc.rotary_dim == 18
  q_rot, k_rot = enc.qk(q, k, _positions(5), _positions(9))
  np.testing.assert_array_equal(np.asarray(q_rot)[..., 18:], q[..., 18:])
  np.testing.assert_array_equal(np.asarray(k_rot)[..., 18:], k[..., 18:])
  assert not np.allclose(np.asarray(q_rot)[..., :18], q[..., :18])
  # Same as rotating the first 18 channels with an 18-dim RoPE.
  inv, _ = rotary.rope_inv_freq(18)
  np.testing.assert_allclose(np.asarray(q_rot)[..., :18],
                             rotary.apply_rope(q[..., :18], _positions(5), inv), atol=1e-6)


# ---------------------------------------------------------------- offset invariance

ROPE_ARGS = {
    'none': {},
    'interleaved': {'layout': 'interleaved'},
    'partial': {'rotary_fraction': 0.5},
    'linear': {'scaling': {'type': 'linear', 'factor': 4.0}},
    'ntk': {'scaling': {'type': 'ntk', 'factor': 4.0}},
    'dynamic': {'scaling': {'type': 'dynamic', 'factor': 4.0, 'original_max_position': 8}},
    'yarn': {'scaling': {'type': 'yarn', 'factor': 16.0, 'original_max_position': 256}},
    'llama3': {'scaling': {'type': 'llama3', 'factor': 8.0, 'original_max_position': 512}},
    'longrope': {'scaling': {'type': 'longrope', 'original_max_position': 8, 'max_position': 64,
                             'short_factor': [1.0 + i / 8 for i in range(K // 2)],
                             'long_factor': [1.0 + i for i in range(K // 2)]}},
}


@pytest.mark.parametrize('args', ROPE_ARGS.values(), ids=ROPE_ARGS.keys())
def test_rope_scores_depend_only_on_offset(args):
  enc = _make('rope', args)
  q, k = _rand(3, (B, L, H, K)), _rand(4, (B, L, H, K))
  qpos, kpos = _positions(0), _positions(0)[:, ::-1] * 3
  ref = _scores(enc, q, k, qpos, kpos)
  for shift in (1, 4097, 100_003):
    np.testing.assert_allclose(_scores(enc, q, k, qpos + shift, kpos + shift), ref,
                               rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_xpos_scores_depend_only_on_offset_and_decay():
  enc = _make('xpos', {'scale_base': 64.0})
  q, k = _rand(5, (B, L, H, K)), _rand(6, (B, L, H, K))
  qpos, kpos = _positions(0), _positions(0)[:, ::-1] * 3
  ref = _scores(enc, q, k, qpos, kpos)
  shifted = _make('xpos', {'scale_base': 64.0, 'center': 1000})
  np.testing.assert_allclose(_scores(shifted, q, k, qpos + 1000, kpos + 1000), ref,
                             rtol=1e-4, atol=1e-4 * np.abs(ref).max())
  np.testing.assert_allclose(_scores(enc, q, k, qpos + 50, kpos + 50), ref,
                             rtol=1e-4, atol=1e-4 * np.abs(ref).max())
  # Far from 0 the separate q and k scales overflow; `center` keeps them finite.
  far = _positions(60_000)
  assert not np.isfinite(_scores(enc, q, k, far, far)).all()
  centred = _make('xpos', {'scale_base': 64.0, 'center': 60_000})
  np.testing.assert_allclose(_scores(centred, q, k, qpos + 60_000, kpos + 60_000), ref,
                             rtol=1e-4, atol=1e-4 * np.abs(ref).max())
  # Beyond RoPE, pair i's score picks up zeta_i ** ((m - n) / scale_base).
  ones = np.ones((1, 1, 1, K), np.float32)
  got = _scores(enc, ones, ones, np.array([[64]]), np.array([[0]]))
  zeta = (np.arange(0, K, 2) + 0.4 * K) / (1.4 * K)
  np.testing.assert_allclose(got.ravel(), [np.sum(2 * zeta * np.cos(64 * _base_inv_freq(K, 1e4)))],
                             rtol=1e-5)


def test_rope_2d_scores_depend_only_on_2d_offset():
  enc = _make('rope_2d', {})
  q, k = _rand(7, (B, L, H, K)), _rand(8, (B, L, H, K))
  rng = np.random.RandomState(9)
  rows, cols = rng.randint(0, 8, (2, B, L)), rng.randint(0, 4, (2, B, L))
  qrows, krows = (np.stack([np.zeros_like(rows[i]), rows[i], cols[i]]) for i in (0, 1))
  ref = _scores(enc, q, k, qrows, krows)
  shift = np.array([5, 3, 4])[:, None, None]  # 3 rows down, 4 columns right.
  np.testing.assert_allclose(_scores(enc, q, k, qrows + shift, krows + shift), ref,
                             rtol=1e-4, atol=1e-4 * np.abs(ref).max())
  # Row (the height row) in the first half, column (the width row) in the second.
  inv, _ = rotary.rope_inv_freq(K // 2)
  q_rot, _ = enc.qk(q, k, qrows, krows)
  np.testing.assert_allclose(q_rot[..., :K // 2], rotary.apply_rope(q[..., :K // 2], rows[0], inv), atol=1e-5)
  np.testing.assert_allclose(q_rot[..., K // 2:], rotary.apply_rope(q[..., K // 2:], cols[0], inv), atol=1e-5)


# ---------------------------------------------------------------- precision

def _rope_f64(x, angle):
  """Half-layout RoPE in float64 numpy, ``angle`` [B, L, R]."""
  r = angle.shape[-1]
  cos, sin = np.cos(angle)[:, :, None], np.sin(angle)[:, :, None]
  x1, x2 = x[..., :r], x[..., r:2 * r]
  return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, x[..., 2 * r:]], -1)


@pytest.mark.parametrize('start', [50_000, 1_000_000, 8_000_000])
def test_bf16_at_large_positions(start):
  """Within bf16 rounding of float64 at the model's (float32) frequencies."""
  x = jnp.asarray(_rand(10, (B, 64, H, K)), jnp.bfloat16)
  x64 = np.asarray(x, np.float64)
  pos = _positions(start, 64) + np.arange(B)[:, None] * 977
  inv, _ = rotary.rope_inv_freq(K)
  out = rotary.apply_rope(x, pos, inv)
  assert out.dtype == jnp.bfloat16
  ref = _rope_f64(x64, pos[..., None] * inv.astype(np.float64))
  # bf16 rounding (half an ulp, <= 2^-8 relative) plus float32 angle error.
  tol = 2.0 ** -8 * np.abs(ref) + 1e-4 * np.abs(x64).max()
  assert (np.abs(np.asarray(out, np.float64) - ref) <= tol).all()
  if start >= 1_000_000:  # The test has teeth: plain float32 angles miss.
    naive = _rope_f64(x64, (pos[..., None].astype(np.float32) * inv).astype(np.float64))
    assert (np.abs(naive - ref) > tol).any()


def test_module_bf16_jit():
  enc = _make('rope', {'scaling': {'type': 'yarn', 'factor': 4.0, 'original_max_position': 64}})
  q = jnp.asarray(_rand(11, (B, L, H, K)), jnp.bfloat16)
  q_rot, k_rot = jax.jit(enc.qk)(q, q, _positions(50_000), _positions(50_000))
  assert q_rot.dtype == k_rot.dtype == jnp.bfloat16
  inv, attn = rotary.rope_inv_freq(K, scaling=enc.scaling)
  ref = attn * _rope_f64(np.asarray(q, np.float64), _positions(50_000)[..., None] * inv.astype(np.float64))
  assert np.abs(np.asarray(q_rot, np.float64) - ref).max() <= 2.0 ** -7 * np.abs(ref).max()


def test_dynamic_seq_len_defaults_to_key_length():
  scaling = {'type': 'dynamic', 'factor': 4.0, 'original_max_position': 8}
  q = _rand(13, (1, 16, 1, K))
  for length, seq_len in ((8, 8), (16, 16)):
    got, _ = _make('rope', {'scaling': scaling}).qk(q, q[:, :length], _positions(0, 16, 1),
                                                    _positions(0, length, 1))
    inv, _ = rotary.rope_inv_freq(K, scaling=dict(scaling, seq_len=seq_len))
    np.testing.assert_allclose(got, rotary.apply_rope(q, _positions(0, 16, 1), inv), atol=1e-6)
  got, _ = _make('rope', {'scaling': dict(scaling, seq_len=8)}).qk(
      q, q, _positions(0, 16, 1), _positions(0, 16, 1))
  np.testing.assert_allclose(got, rotary.apply_rope(q, _positions(0, 16, 1), rotary.rope_inv_freq(K)[0]),
                             atol=1e-6)


# ---------------------------------------------------------------- config plumbing

@pytest.mark.parametrize('scaling', [
    (('type', 'linear'), ('factor', 2.0)),
    flax.core.FrozenDict({'type': 'linear', 'factor': 2.0}),
    ml_collections.ConfigDict({'type': 'linear', 'factor': 2.0}),
])
def test_scaling_containers(scaling):
  q = _rand(12, (B, L, H, K))
  got, _ = _make('rope', {'scaling': scaling}).qk(q, q, _positions(3), _positions(3))
  inv, _ = rotary.rope_inv_freq(K, scaling={'type': 'linear', 'factor': 2.0})
  np.testing.assert_allclose(got, rotary.apply_rope(q, _positions(3), inv), atol=1e-6)


@pytest.mark.parametrize('name,args,match', [
    ('rope', {'scaling': {'type': 'cubic', 'factor': 2.0}}, r'model\.posenc_args\.scaling\.type: .*allowed: linear'),
    ('rope', {'scaling': {'type': 'linear', 'factor': -2.0}}, r'model\.posenc_args\.scaling\.factor: got -2\.0; allowed: a number > 0'),
    ('rope', {'scaling': {'type': 'ntk', 'factor': 0}}, r'scaling\.factor'),
    ('rope', {'scaling': {'type': 'yarn', 'factor': 2.0}}, r'scaling\.original_max_position: required'),
    ('rope', {'scaling': {'type': 'linear'}}, r'scaling\.factor: required'),
    ('rope', {'scaling': {'type': 'linear', 'factor': 2.0, 'fator': 1}}, r'scaling\.fator: unknown'),
    ('rope', {'scaling': {'type': 'llama3', 'factor': 8.0, 'low_freq_factor': 4.0}}, r'scaling\.high_freq_factor'),
    ('rope', {'scaling': {'type': 'longrope', 'short_factor': [1.0], 'long_factor': [1.0],
                          'original_max_position': 8, 'factor': 2.0}}, r'scaling\.short_factor: got 1 numbers; allowed: 32 '),
    ('rope', {'scaling': {'type': 'longrope', 'short_factor': [1.0] * 32, 'long_factor': [1.0] * 32,
                          'original_max_position': 8}}, r'scaling\.max_position: required'),
    ('rope', {'rotary_fraction': 1.5}, r'model\.posenc_args\.rotary_fraction'),
    ('rope', {'rotary_fraction': 0.01}, r'model\.posenc_args\.rotary_fraction'),
    ('rope', {'layout': 'zigzag'}, r'model\.posenc_args\.layout: .*half, interleaved'),
    ('rope', {'base': -1.0}, r'model\.posenc_args\.base'),
    ('xpos', {'scale_base': 0.0}, r'model\.posenc_args\.scale_base'),
    ('rope_2d', {'grid_width': 32}, r'model\.posenc_args: unknown field\(s\) grid_width'),
    ('mrope', {'mrope_section': (1, 2, 3)}, r'model\.posenc_args\.mrope_section: .*summing to'),
])
def test_bad_hyperparameters(name, args, match):
  with pytest.raises(ValueError, match=match):
    _make(name, args)


def test_bad_geometry():
  with pytest.raises(ValueError, match='causal'):
    _make('xpos', causal=False)
  with pytest.raises(ValueError, match='head_dim'):
    _make('rope_2d', head_dim=6)
  with pytest.raises(ValueError, match='head_dim'):
    _make('xpos', head_dim=7)
  with pytest.raises(ValueError, match='layout'):
    rotary.apply_rope(np.zeros((1, 1, 1, 4)), np.zeros((1, 1), np.int32), np.ones(2), layout='x')
  with pytest.raises(ValueError, match='exceeds head dim'):
    rotary.apply_rope(np.zeros((1, 1, 1, 4)), np.zeros((1, 1), np.int32), np.ones(4))
  with pytest.raises(ValueError, match='scaling.seq_len: required'):
    rotary.rope_inv_freq(8, scaling={'type': 'dynamic', 'factor': 2.0, 'original_max_position': 8})
