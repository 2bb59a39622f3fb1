"""The RoPE family as the big models ship it: p-RoPE, YaRN's mscale and truncate,
M-RoPE, and Hugging Face configs mapped to ``rope`` arguments. Each against an
independent numpy transcription of the published formula (Hugging Face
``modeling_rope_utils`` for the scalings; Qwen2-VL / Qwen3-VL for M-RoPE)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posjax import encodings, models
from posjax.encodings.mrope import mrope_rows


def _hf_default(dim, base):
  return 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)


def _hf_yarn(dim, base, factor, original, beta_fast=32, beta_slow=1, mscale=None,
             mscale_all_dim=None, truncate=True):
  """``_compute_yarn_parameters`` transcribed."""
  get_mscale = lambda s, m=1: 0.1 * m * math.log(s) + 1.0 if s > 1 else 1.0  # noqa: E731
  if mscale and mscale_all_dim:
    attention = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
  else:
    attention = get_mscale(factor)
  corr = lambda rot: dim * math.log(original / (rot * 2 * math.pi)) / (2 * math.log(base))  # noqa: E731
  low, high = corr(beta_fast), corr(beta_slow)
  if truncate:
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, dim - 1)
  if low == high:
    high += 0.001
  ramp = np.clip((np.arange(dim // 2) - low) / (high - low), 0, 1)
  extrapolation = 1 - ramp
  pos = _hf_default(dim, base)
  return (pos / factor) * (1 - extrapolation) + pos * extrapolation, attention


def _hf_llama3(dim, base, factor, low_ff, high_ff, original):
  inv = _hf_default(dim, base)
  wavelen = 2 * math.pi / inv
  out = np.where(wavelen > original / low_ff, inv / factor, inv)
  smooth = (original / wavelen - low_ff) / (high_ff - low_ff)
  mid = (wavelen >= original / high_ff) & (wavelen <= original / low_ff)
  return np.where(mid, (1 - smooth) * out / factor + smooth * out, out)


# Published configs (fields copied from the models' config.json on Hugging Face).
LLAMA31_8B = {'hidden_size': 4096, 'num_attention_heads': 32, 'rope_theta': 500000.0,
              'max_position_embeddings': 131072,
              'rope_scaling': {'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0,
                               'high_freq_factor': 4.0,
                               'original_max_position_embeddings': 8192}}
QWEN25_7B_YARN = {'hidden_size': 3584, 'num_attention_heads': 28, 'rope_theta': 1000000.0,
                  'max_position_embeddings': 32768,  # model card: add this rope_scaling
                  'rope_scaling': {'type': 'yarn', 'factor': 4.0,
                                   'original_max_position_embeddings': 32768}}
DEEPSEEK_V3 = {'hidden_size': 7168, 'num_attention_heads': 128, 'qk_rope_head_dim': 64,
               'rope_theta': 10000, 'max_position_embeddings': 163840,
               'rope_scaling': {'type': 'yarn', 'factor': 40, 'beta_fast': 32, 'beta_slow': 1,
                                'mscale': 1.0, 'mscale_all_dim': 1.0,
                                'original_max_position_embeddings': 4096}}
GPT_OSS_20B = {'hidden_size': 2880, 'num_attention_heads': 64, 'head_dim': 64,
               'rope_theta': 150000, 'max_position_embeddings': 131072,
               'rope_scaling': {'rope_type': 'yarn', 'factor': 32.0, 'beta_fast': 32.0,
                                'beta_slow': 1.0, 'truncate': False,
                                'original_max_position_embeddings': 4096}}
# Phi-3-vision-128k-instruct's published config.json (LongRoPE under its legacy name
# "su"; head dim 96, 4096 -> 131072).
PHI3_LONG = [
    1.0299999713897705, 1.0499999523162842, 1.0499999523162842, 1.0799999237060547,
    1.2299998998641968, 1.2299998998641968, 1.2999999523162842, 1.4499999284744263,
    1.5999999046325684, 1.6499998569488525, 1.8999998569488525, 2.859999895095825,
    3.68999981880188, 5.419999599456787, 5.489999771118164, 5.489999771118164, 9.09000015258789,
    11.579999923706055, 15.65999984741211, 15.769999504089355, 15.789999961853027,
    18.360000610351562, 21.989999771118164, 23.079999923706055, 30.009998321533203,
    32.35000228881836, 32.590003967285156, 35.56000518798828, 39.95000457763672,
    53.840003967285156, 56.20000457763672, 57.95000457763672, 59.29000473022461,
    59.77000427246094, 59.920005798339844, 61.190006256103516, 61.96000671386719,
    62.50000762939453, 63.3700065612793, 63.48000717163086, 63.48000717163086, 63.66000747680664,
    63.850006103515625, 64.08000946044922, 64.760009765625, 64.80001068115234, 64.81001281738281,
    64.81001281738281]
PHI3_SHORT = [
    1.05, 1.05, 1.05, 1.1, 1.1, 1.1, 1.2500000000000002, 1.2500000000000002, 1.4000000000000004,
    1.4500000000000004, 1.5500000000000005, 1.8500000000000008, 1.9000000000000008,
    2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001,
    2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001,
    2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001,
    2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001,
    2.000000000000001, 2.000000000000001, 2.000000000000001, 2.1000000000000005,
    2.1000000000000005, 2.2, 2.3499999999999996, 2.3499999999999996, 2.3499999999999996,
    2.3499999999999996, 2.3999999999999995, 2.3999999999999995, 2.6499999999999986,
    2.6999999999999984, 2.8999999999999977, 2.9499999999999975, 3.049999999999997,
    3.049999999999997, 3.049999999999997]
PHI3_VISION_128K = {'hidden_size': 3072, 'num_attention_heads': 32, 'rope_theta': 10000.0,
                    'max_position_embeddings': 131072, 'original_max_position_embeddings': 4096,
                    'rope_scaling': {'type': 'su', 'long_factor': PHI3_LONG,
                                     'short_factor': PHI3_SHORT}}


def _ours(config, **extra):
  args = encodings.rope_args_from_hf(config)
  dim = int(args.pop('head_dim') * args.pop('rotary_fraction', 1.0)) // 2 * 2
  scaling = args.get('scaling')
  if scaling is not None:
    scaling = {**scaling, **extra}
  return encodings.rope_inv_freq(dim, base=args['base'], scaling=scaling)


def test_published_configs_reproduce_their_frequencies_and_attention_factor():
  inv, factor = _ours(LLAMA31_8B)
  np.testing.assert_allclose(inv, _hf_llama3(128, 500000.0, 8.0, 1.0, 4.0, 8192), rtol=1e-6)
  assert factor == 1.0 and inv[0] == 1.0
  for config, dim, want in (
      (QWEN25_7B_YARN, 128, _hf_yarn(128, 1e6, 4.0, 32768)),
      (DEEPSEEK_V3, 64, _hf_yarn(64, 10000, 40, 4096, mscale=1.0, mscale_all_dim=1.0)),
      (GPT_OSS_20B, 64, _hf_yarn(64, 150000, 32.0, 4096, truncate=False))):
    inv, factor = _ours(config)
    assert len(inv) == dim // 2
    np.testing.assert_allclose(inv, want[0], rtol=1e-6)
    assert factor == pytest.approx(want[1], rel=1e-12)
  assert _ours(DEEPSEEK_V3)[1] == 1.0  # mscale / mscale_all_dim = 1: DeepSeek's ratio.
  assert _ours(QWEN25_7B_YARN)[1] == pytest.approx(0.1 * math.log(4) + 1)
  for seq_len, factors in ((131072, PHI3_LONG), (4096, PHI3_SHORT)):  # HF: by seq_len.
    inv, factor = _ours(PHI3_VISION_128K, seq_len=seq_len)
    np.testing.assert_allclose(inv, _hf_default(96, 10000.0) / np.asarray(factors), rtol=1e-6)
    assert factor == pytest.approx(math.sqrt(1 + math.log(32) / math.log(4096)))


def test_yarn_truncate_and_mscale():
  base = {'type': 'yarn', 'factor': 32.0, 'original_max_position': 4096}
  kept, _ = encodings.rope_inv_freq(64, base=150000, scaling=base)
  fractional, _ = encodings.rope_inv_freq(64, base=150000, scaling={**base, 'truncate': False})
  assert not np.allclose(kept, fractional)  # gpt-oss ships truncate=False.
  _, factor = encodings.rope_inv_freq(64, scaling={**base, 'mscale': 0.707, 'mscale_all_dim': 1})
  assert factor == pytest.approx((0.1 * 0.707 * math.log(32) + 1) / (0.1 * math.log(32) + 1))


def test_proportional_keeps_the_highest_frequencies():
  """p-RoPE: floor(p * dim / 2) highest of base^(-2i/dim) kept, the rest 0."""
  for p, kept in ((0.25, 8), (0.5, 16), (0.3, 9), (1.0, 32), (0.0, 0)):
    inv, factor = encodings.rope_inv_freq(64, scaling={'type': 'proportional', 'fraction': p})
    np.testing.assert_allclose(inv[:kept], _hf_default(64, 10000.0)[:kept], rtol=1e-6)
    assert not inv[kept:].any() and factor == 1.0
  with pytest.raises(ValueError, match=r'scaling.fraction: got 1.5; allowed: a number in \[0, 1\]'):
    encodings.rope_inv_freq(64, scaling={'type': 'proportional', 'fraction': 1.5})


# Gemma 3 4B's text config as transformers >= 4.57 writes it (rope_parameters per
# layer type), Llama 4 Scout's (NoPE every fourth layer) and gpt-oss-20b's layer types.
GEMMA3_4B = {'num_hidden_layers': 34, 'head_dim': 256, 'sliding_window': 1024,
             'layer_types': (['sliding_attention'] * 5 + ['full_attention']) * 5
             + ['sliding_attention'] * 4,
             'rope_parameters': {
                 'sliding_attention': {'rope_type': 'default', 'rope_theta': 10_000.0},
                 'full_attention': {'rope_type': 'linear', 'factor': 8.0,
                                    'rope_theta': 1_000_000.0}}}
LLAMA4_SCOUT = {'num_hidden_layers': 48, 'head_dim': 128, 'rope_theta': 500_000.0,
                'rope_scaling': {'rope_type': 'llama3', 'factor': 16.0, 'low_freq_factor': 1.0,
                                 'high_freq_factor': 1.0,
                                 'original_max_position_embeddings': 8192},
                'no_rope_layers': [1, 1, 1, 0] * 12, 'attention_chunk_size': 8192,
                'attn_temperature_tuning': True, 'floor_scale': 8192, 'attn_scale': 0.1}
GPT_OSS_LAYERS = {'num_hidden_layers': 24, 'sliding_window': 128,
                  'layer_types': ['sliding_attention', 'full_attention'] * 12}


def test_per_layer_configs_map_to_a_layer_pattern():
  gemma = encodings.layer_pattern_from_hf(GEMMA3_4B)
  pattern = gemma['layer_pattern']
  assert gemma['head_dim'] == 256 and len(pattern) == 34  # (34 layers: no shorter period.)
  for entry, kind in zip(pattern, GEMMA3_4B['layer_types']):
    inv, _ = encodings.rope_inv_freq(256, **entry['posenc_args'])
    if kind == 'full_attention':
      np.testing.assert_allclose(inv, _hf_default(256, 1e6) / 8.0, rtol=1e-6)
      assert 'window' not in entry
    else:
      np.testing.assert_allclose(inv, _hf_default(256, 1e4), rtol=1e-6)
      assert entry['window'] == 1024
  cfg = models.ModelConfig(num_layers=34, num_heads=2, model_dim=512, posenc='rope',
                           layer_pattern=pattern)
  assert [c.window for c in cfg.layer_configs()][:6] == [1024] * 5 + [0]
  llama4 = encodings.layer_pattern_from_hf(LLAMA4_SCOUT)['layer_pattern']
  assert len(llama4) == 4 and [e['posenc'] for e in llama4] == ['rope'] * 3 + ['none']
  assert llama4[0]['chunk'] == 8192 and llama4[0]['posenc_args']['scaling']['type'] == 'llama3'
  assert llama4[3] == {'posenc': 'none', 'temperature': 'llama4',
                       'temperature_args': {'floor_scale': 8192.0, 'attn_scale': 0.1}}
  oss = encodings.layer_pattern_from_hf({**GPT_OSS_20B, **GPT_OSS_LAYERS})['layer_pattern']
  assert [e.get('window') for e in oss] == [128, None]
  assert oss[0]['posenc_args'] == oss[1]['posenc_args'] == {
      k: v for k, v in encodings.rope_args_from_hf(GPT_OSS_20B).items() if k != 'head_dim'}


def test_unknown_and_per_layer_configs_are_one_line_errors():
  with pytest.raises(ValueError, match="rope_type: got 'xpos'; allowed: default, linear"):
    encodings.rope_args_from_hf({**LLAMA31_8B, 'rope_scaling': {'rope_type': 'xpos'}})
  with pytest.raises(ValueError, match='one entry per layer type.*layer_pattern_from_hf'):
    encodings.rope_args_from_hf(GEMMA3_4B)
  with pytest.raises(ValueError, match="layer_types: got 'linear_attention'; allowed"):
    encodings.layer_pattern_from_hf({**GPT_OSS_LAYERS, 'layer_types': ['linear_attention'] * 24})
  full = {'head_dim': 256, 'rope_parameters': GEMMA3_4B['rope_parameters']['full_attention']}
  assert encodings.rope_args_from_hf(full) == {
      'base': 1e6, 'head_dim': 256, 'scaling': {'type': 'linear', 'factor': 8.0}}


def test_mrope_equals_rope_on_equal_rows_and_assigns_pairs_by_section():
  x = jax.random.normal(jax.random.key(0), (2, 5, 3, 16))
  pos = jax.random.randint(jax.random.key(1), (2, 5), 0, 10_000)
  inv, _ = encodings.rope_inv_freq(16)
  for interleaved in (False, True):
    got = encodings.apply_mrope(x, jnp.stack([pos] * 3), inv, mrope_section=(2, 3, 3),
                                interleaved=interleaved)
    np.testing.assert_array_equal(got, encodings.apply_rope(x, pos, inv))
  # Qwen2-VL sections (16, 24, 24) of 64 pairs; Qwen3-VL interleaved (24, 20, 20).
  assert list(mrope_rows(64, (16, 24, 24), False)) == [0] * 16 + [1] * 24 + [2] * 24
  rows = mrope_rows(64, (24, 20, 20), True)
  assert list(rows[:6]) == [0, 1, 2, 0, 1, 2] and list(rows[60:]) == [0] * 4
  assert [int((rows == r).sum()) for r in range(3)] == [24, 20, 20]
  # Pair k rotates by its row's position: height rows moved alone move height pairs only.
  t, h, w = pos, pos + 7, pos * 2
  got = encodings.apply_mrope(x, jnp.stack([t, h, w]), inv, mrope_section=(2, 3, 3))
  for k, row in enumerate((t, t, h, h, h, w, w, w)):
    want = encodings.apply_rope(x, row, inv)
    np.testing.assert_allclose(got[..., [k, k + 8]], want[..., [k, k + 8]], atol=1e-5)


def test_qwen2_vl_config_maps_to_mrope():
  """Qwen2-VL-7B-Instruct's published config.json (``type: mrope``, sections 16/24/24)
  builds an ``mrope`` whose pairs follow the sections; ``mrope_interleaved``
  (Qwen3-VL) is carried."""
  qwen2_vl = {'hidden_size': 3584, 'num_attention_heads': 28, 'rope_theta': 1000000.0,
              'max_position_embeddings': 32768,
              'rope_scaling': {'type': 'mrope', 'mrope_section': [16, 24, 24]}}
  args = encodings.rope_args_from_hf(qwen2_vl)
  assert args == {'base': 1e6, 'head_dim': 128, 'mrope_section': (16, 24, 24),
                  'interleaved': False}
  head_dim = args.pop('head_dim')
  enc = encodings.make('mrope', args, num_heads=1, head_dim=head_dim, model_dim=head_dim)
  assert enc.section == (16, 24, 24)
  interleaved = dict(qwen2_vl, rope_scaling={'rope_type': 'default', 'mrope_interleaved': True,
                                             'mrope_section': [24, 20, 20]})
  assert encodings.rope_args_from_hf(interleaved)['interleaved'] is True
