"""The accelerator kernels lower for real devices, on CPU: ``jax.export`` with
``platforms=['cuda']`` runs Pallas's Triton lowering, ``['tpu']`` its Mosaic one
(a TPU v5p's layout facts stand in for the missing chip). A kernel that uses a
primitive the device compiler lacks fails here, not on the first GPU or TPU."""
import jax
import jax.numpy as jnp
import pytest

from posjax import encodings, models
from posjax.models.kernels import pallas_tiles

IN_KERNEL = ['none'] + [n for n in encodings.names() if encodings.get(n).bias_in_kernel]
TRITON = 'xla.gpu.triton'


@pytest.fixture
def tpu_facts(monkeypatch):
  from jax._src.pallas.mosaic import tpu_info  # (Private: the chip facts Mosaic asks for.)
  monkeypatch.setitem(tpu_info.registry, jax.devices()[0].device_kind,
                      lambda: tpu_info.get_tpu_info_for_chip(tpu_info.ChipVersion.TPU_V5P, 1))


def _lowered(posenc: str, attention: str, platform: str) -> str:
  """StableHLO of a bf16 one-layer decoder's gradient, lowered for ``platform``."""
  cfg = models.ModelConfig.from_config(dict(
      kind='decoder', vocab_size=64, num_layers=1, num_heads=4, model_dim=256, mlp_dim=256,
      max_len=256, posenc=posenc, attention=attention, block_size=128, dtype='bfloat16'))
  tokens = jax.ShapeDtypeStruct((2, 256), jnp.int32)
  params = jax.eval_shape(lambda: models.build(cfg.replace(attention='blockwise')).init(
      jax.random.key(0), jnp.zeros(tokens.shape, jnp.int32)))['params']
  model = models.build(cfg)
  grad = jax.jit(jax.grad(lambda p, t: model.apply({'params': p}, t).astype(jnp.float32).sum()))
  unstable = [jax.export.DisabledSafetyCheck.custom_call(f'__gpu${TRITON}')]
  return jax.export.export(grad, platforms=[platform], disabled_checks=unstable)(
      params, tokens).mlir_module()


@pytest.mark.parametrize('posenc', IN_KERNEL)
def test_pallas_kernels_lower_to_triton(posenc, monkeypatch):
  monkeypatch.setattr(pallas_tiles, 'PLATFORM', 'gpu')
  assert _lowered(posenc, 'pallas', 'cuda').count(TRITON) >= 3  # Forward, dq, dk/dv.


@pytest.mark.parametrize('posenc', IN_KERNEL)
def test_pallas_kernels_lower_to_mosaic(posenc, monkeypatch, tpu_facts):
  monkeypatch.setattr(pallas_tiles, 'PLATFORM', 'tpu')
  assert _lowered(posenc, 'pallas', 'tpu').count('tpu_custom_call') >= 3


def test_splash_lowers_to_mosaic(tpu_facts):
  assert 'tpu_custom_call' in _lowered('rope', 'splash', 'tpu')


def test_every_position_bias_is_computed_in_kernel():
  """ALiBi, Kerple, T5 (``lookup``) and FIRE (``scalar_mlp``): every encoding whose
  bias is a function of positions alone."""
  assert set(IN_KERNEL) == {'none'} | {n for n in encodings.names()
                                       if encodings.get(n).bias_from_positions}
  assert {'alibi', 'kerple_log', 'kerple_power', 't5', 'fire'} <= set(IN_KERNEL)
