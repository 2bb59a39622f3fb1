"""Device mesh and shardings derived from logical axis names.

The model names its parameter and activation axes ('vocab', 'embed', 'mlp',
'heads', 'kv', 'batch', 'length', ...); ``config.logical_axis_rules`` maps those
names to the physical mesh axes ``('data', 'fsdp', 'tensor')``. Names the rules
don't mention are replicated (mapped to None).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')

Rules = Sequence[tuple[str, Any]]


def mesh_shape(mesh_cfg: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves ``{'data': d, 'fsdp': f, 'tensor': t}`` (one of them may be -1)."""
  mesh_cfg = dict(mesh_cfg.to_dict() if hasattr(mesh_cfg, 'to_dict') else mesh_cfg)
  unknown = sorted(set(mesh_cfg) - set(MESH_AXES))
  if unknown:
    raise ValueError(f'mesh: unknown axis {", ".join(unknown)}; allowed: '
                     f'{", ".join(MESH_AXES)}')
  sizes = [int(mesh_cfg.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f'mesh: got {dict(zip(MESH_AXES, sizes))}; allowed: positive '
                     'sizes, at most one of them -1 (fills the remaining devices)')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f'mesh: {dict(zip(MESH_AXES, sizes))} cannot fill '
                       f'{num_devices} devices; allowed: sizes whose product '
                       f'divides {num_devices}')
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f'mesh: {dict(zip(MESH_AXES, sizes))} has '
                     f'{math.prod(sizes)} devices but {num_devices} are present; '
                     f'allowed: sizes whose product is {num_devices} (or use -1)')
  return tuple(sizes)


def make_mesh(mesh_cfg: Mapping[str, int], devices=None) -> jax.sharding.Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(mesh_cfg, len(devices))
  return jax.make_mesh(shape, MESH_AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def normalize_rules(rules: Rules) -> tuple[tuple[str, Any], ...]:
  """Rules as hashable tuples (a JSON round trip turns tuples into lists)."""
  out = []
  for rule in rules:
    name, axes = rule
    if isinstance(axes, list):
      axes = tuple(axes)
    for a in (axes if isinstance(axes, tuple) else (axes,)):
      if a is not None and a not in MESH_AXES:
        raise ValueError(f'logical_axis_rules: {name!r} maps to unknown mesh '
                         f'axis {a!r}; allowed: {", ".join(MESH_AXES)}')
    out.append((str(name), axes))
  return tuple(out)


def _logical_names(tree) -> set[str]:
  names = set()
  for leaf in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
    if isinstance(leaf, nn.Partitioned):
      names.update(n for n in leaf.names if n is not None)
  return names


def complete_rules(rules: Rules, boxed_tree=None) -> tuple[tuple[str, Any], ...]:
  """Adds ``(name, None)`` for logical names in ``boxed_tree`` the rules lack."""
  rules = normalize_rules(rules)
  known = {n for n, _ in rules}
  extra = sorted(_logical_names(boxed_tree) - known) if boxed_tree is not None else []
  return rules + tuple((n, None) for n in extra)


def logical_shardings(boxed_tree, mesh: jax.sharding.Mesh, rules: Rules):
  """NamedShardings for every leaf of a (boxed, possibly abstract) pytree.

  Leaves that are not ``nn.Partitioned`` are replicated. The result has the
  structure of ``nn.unbox(boxed_tree)``.
  """
  rules = complete_rules(rules, boxed_tree)
  specs = nn.get_partition_spec(boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Leading (batch) axis split over ('data', 'fsdp'); the rest replicated."""
  return jax.sharding.NamedSharding(mesh, jax.P(BATCH_AXES))


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, jax.P())


def batch_parallelism(mesh_cfg, num_devices: int) -> int:
  shape = dict(zip(MESH_AXES, mesh_shape(mesh_cfg, num_devices)))
  return shape['data'] * shape['fsdp']
