"""Charts shared by ``posjax.analysis.plots`` and the suite reports: lines and a heatmap.

Each draws into ``ax`` if given (a notebook's axes), else into a new Agg figure
made without pyplot (no global backend change, nothing left open), saves a PNG at
``path`` if given, and returns the figure. matplotlib is imported on first use.
"""
from __future__ import annotations

import os


def plot_lines(series: dict[str, dict[float, float]], *, xlabel: str, ylabel: str,
               title: str, logx: bool = False, logy: bool = False,
               path: str | None = None, ax=None, marks: dict[str, str] | None = None):
  """A line per series ``{label: {x: y}}`` (points in x order; an empty series is
  still a labelled line, so a missing run stays in the legend). ``marks``: a
  matplotlib format string per label (default 'o-')."""
  import matplotlib
  import matplotlib.ticker
  fig, ax = axes(ax)
  xs_all = set()
  # tab20 beyond 10 lines: 15 encodings must not share colours.
  colors = matplotlib.colormaps['tab10' if len(series) <= 10 else 'tab20'].colors
  for n, (label, points) in enumerate(series.items()):
    xs = sorted(points)
    xs_all.update(xs)
    ax.plot(xs, [points[x] for x in xs], (marks or {}).get(label, 'o-'), label=label,
            color=colors[n % len(colors)])
  if logx:
    ax.set_xscale('log')
    if 0 < len(xs_all) <= 12:  # Few x values (eval lengths): label each one.
      ax.set_xticks(sorted(xs_all), labels=[f'{x:g}' for x in sorted(xs_all)])
      ax.minorticks_off()
  logy = logy and any(y > 0 for points in series.values() for y in points.values())
  if logy:  # (No positive data: a log axis would raise.)
    ax.set_yscale('log')
  ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
  ax.grid(True, alpha=0.3)
  if logy:  # Plain numbers on a log axis, not 2.4 x 10^1.
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter('%g'))
  if len(series) > 6:  # Many lines: the legend beside the axes, not over the data.
    ax.legend(fontsize='small', loc='upper left', bbox_to_anchor=(1.01, 1.0))
  elif series:
    ax.legend(fontsize='small')
  return save(fig, path)


def plot_heatmap(table, *, title: str, path: str | None = None, ax=None,
                 vmin: float | None = None, vmax: float | None = None,
                 fmt: str = '{:.2f}'):
  """``table`` (a ``report.Table``) as coloured cells with their values written
  in; a cell holding a word ('missing', 'failed') is grey and shows the word."""
  import numpy as np
  rows, cols = table.row_labels, table.col_labels
  # Cells wide enough for their numbers, however many columns a suite has.
  fig, ax = axes(ax, figsize=(max(6.4, 2.5 + 0.75 * len(cols)), max(3.0, 1.0 + 0.45 * len(rows))))
  values = np.full((len(rows), len(cols)), np.nan)
  for i, rl in enumerate(rows):
    for j, cl in enumerate(cols):
      v = table.cells.get((rl, cl))
      if isinstance(v, (int, float)) and not isinstance(v, bool):
        values[i, j] = v
  import matplotlib
  cmap = matplotlib.colormaps['viridis'].with_extremes(bad='lightgrey')
  image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax,
                    aspect='auto')
  for i, rl in enumerate(rows):
    for j, cl in enumerate(cols):
      v = table.cells.get((rl, cl))
      dark = np.isfinite(values[i, j]) and image.norm(values[i, j]) < 0.5
      text = v if isinstance(v, str) else ('' if v is None else fmt.format(v))
      ax.text(j, i, text, ha='center', va='center',
              fontsize='x-small' if isinstance(v, str) else 'small',
              color='white' if dark else 'black')
  ax.set_xticks(range(len(cols)), labels=[str(c) for c in cols], rotation=40, ha='right',
                rotation_mode='anchor')
  ax.set_yticks(range(len(rows)), labels=[str(r) for r in rows])
  ax.set_title(title)
  fig.colorbar(image, ax=ax)
  return save(fig, path)


def axes(ax, figsize=(6.4, 4.2)):
  if ax is not None:
    return ax.figure, ax
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=figsize)
  FigureCanvasAgg(fig)
  return fig, fig.add_subplot()


def save(fig, path: str | None):
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches='tight')
  return fig
