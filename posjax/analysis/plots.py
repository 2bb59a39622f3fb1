"""Plots of ``posjax.analysis.measures`` results (matplotlib, imported on first use).

Each draws into ``ax`` if given, else a new figure; saves a PNG at ``path`` if
given and returns the figure, like ``posjax.suites.report``'s plots.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from posjax.analysis import charts


def plot_attention(weights_LxS, *, title: str = 'attention', tokens: Sequence[str] | None = None,
                   path: str | None = None, ax=None):
  """One head's probabilities ``[L, S]`` (query rows, key columns)."""
  fig, ax = charts.axes(ax)
  image = ax.imshow(np.asarray(weights_LxS), cmap='viridis', vmin=0.0, aspect='auto')
  if tokens is not None:
    ax.set_xticks(range(len(tokens)), labels=tokens, rotation=90, fontsize='x-small')
    ax.set_yticks(range(len(tokens)), labels=tokens, fontsize='x-small')
  ax.set(xlabel='key position', ylabel='query position', title=title)
  fig.colorbar(image, ax=ax)
  return charts.save(fig, path)


def plot_by_position(curves: Mapping[str, Sequence[float]], *, ylabel: str = 'loss',
                     title: str = 'loss by position', train_length: int | None = None,
                     path: str | None = None, ax=None):
  """A line per run of a per-position quantity (``loss_by_position``,
  ``attention_distance``...), with the training length marked."""
  series = {k: dict(enumerate(np.asarray(v, np.float64).tolist())) for k, v in curves.items()}
  fig = charts.plot_lines(series, xlabel='position', ylabel=ylabel, title=title, ax=ax,
                          marks={k: '-' for k in series})
  if train_length is not None:
    fig.axes[0].axvline(train_length, color='grey', linestyle='--', linewidth=1,
                        label=f'training length {train_length}')
    fig.axes[0].legend(fontsize='small')
  return charts.save(fig, path)


def plot_bias_by_distance(bias_HxD, distances, *, title: str = 'bias by distance',
                          path: str | None = None, ax=None, logx: bool = False):
  """A line per head of ``bias_by_distance``."""
  d = np.asarray(distances).tolist()
  series = {f'head {h}': dict(zip(d, np.asarray(row, np.float64).tolist()))
            for h, row in enumerate(np.asarray(bias_HxD))}
  return charts.plot_lines(series, xlabel='distance (query - key)', ylabel='logit bias',
                           title=title, path=path, ax=ax, logx=logx,
                           marks={k: '-' for k in series})


def plot_wavelengths(wavelengths: Mapping[str, Sequence[float]], *,
                     title: str = 'RoPE wavelength per frequency pair',
                     path: str | None = None, ax=None):
  """A line per scaling of ``rope_wavelengths`` (log y)."""
  series = {k: dict(enumerate(np.asarray(v, np.float64).tolist()))
            for k, v in wavelengths.items()}
  return charts.plot_lines(series, xlabel='pair i', ylabel='wavelength (positions)',
                           title=title, path=path, ax=ax, logy=True,
                           marks={k: '.-' for k in series})
