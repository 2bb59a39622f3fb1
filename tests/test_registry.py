"""The registry enforces the hook contract at registration."""
import pytest

from posjax import encodings
from posjax.encodings import registry
from posjax.encodings.base import BIAS, EMBED, QK, Encoding


@pytest.mark.parametrize('name', encodings.names())
def test_registered_classes_declare_what_they_override(name):
  cls = encodings.get(name)
  assert set(cls.acts_at) == registry.overridden_hooks(cls) - {'init_carry'}
  assert EMBED not in cls.acts_at or cls.shared_across_layers


def _define(acts_at, shared=False, **methods):
  return type('Probe', (Encoding,), dict(methods, acts_at=acts_at, shared_across_layers=shared,
                                         __module__=__name__))


@pytest.mark.parametrize('acts_at,shared,methods,match', [
    ((EMBED,), False, {'embed': lambda self, x, p: x}, 'shared_across_layers: got False'),
    ((BIAS,), False, {'qk': lambda self, q, k, a, b: (q, k)}, r"acts_at: got \['bias'\]"),
    ((QK,), False, {}, r"acts_at: got \['qk'\]"),
    ((QK,), False, {'qk': lambda self, q, k, a, b: (q, k),
                    'init_carry': lambda self, q: None}, 'init_carry without bias'),
])
def test_contract_violations_fail_at_registration(acts_at, shared, methods, match):
  with pytest.raises(ValueError, match=match):
    registry.register('probe')(_define(acts_at, shared, **methods))
  assert 'probe' not in encodings.names()


def test_a_shared_embedding_registers():
  cls = _define((EMBED,), True, embed=lambda self, x, p: x)
  try:
    assert registry.register('probe_ok')(cls) is cls and encodings.get('probe_ok') is cls
  finally:
    registry._REGISTRY.pop('probe_ok')
