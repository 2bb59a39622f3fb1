"""Experiment reports: every run of a suite as a ``RunRecord``, tables that show
a missing or failed run as such, markdown / CSV writers (plots: ``posjax.analysis.charts``).

``load_suite(DIR)`` reads each run's ``config.json``, ``metrics.jsonl`` and the
runner's ``status.json``; it works on a partly finished suite (a run without a
directory is a record with status ``missing``). ``pivot`` turns records into a
``Table`` in which a run that did not finish shows its status in its cells, never
a number and never nothing. Notebooks use the same functions::

  records = report.load_suite('/tmp/suite')
  table = report.pivot(records, row=lambda r: r.name,
                       value=lambda r: report.metric_by_suffix(r, 'eval/perplexity@'))
  print(report.to_markdown(table, title='Perplexity by eval length'))

Light to import: no jax, no matplotlib.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Any, Callable

import ml_collections

from posjax.workdir.lock import in_use

STATUSES = ('finished', 'failed', 'running', 'interrupted', 'missing')
STATUS_FILE = 'status.json'
SUITE_FILE = 'suite.json'


@dataclasses.dataclass
class RunRecord:
  """One run of a suite, as far as its workdir tells.

  ``final``: the last logged value of every metric key of ``metrics.jsonl``;
  ``history``: per metric key, ``(step, value)`` pairs in step order.
  ``config`` is None for a run without a readable ``config.json``.
  """
  name: str
  status: str  # One of STATUSES.
  reason: str
  config: ml_collections.ConfigDict | None
  final: dict[str, float]
  history: dict[str, list[tuple[int, float]]]
  path: str = ''  # The run's workdir (``restore.load_for_analysis(path)``).

  @property
  def step(self) -> int | None:
    """The last step with a ``train/`` metric (None before the first log)."""
    return _last_step(self.history, 'train/')


@dataclasses.dataclass
class Table:
  """``cells[(row, col)]``: a number, or a word ('missing', 'failed', 'n/a', ...).

  A cell absent from ``cells`` belongs to no run and is shown empty.
  """
  row_labels: list
  col_labels: list
  cells: dict[tuple[Any, Any], float | str]


def load_run(workdir: str, name: str | None = None) -> RunRecord:
  """The record of the run in ``workdir`` (named ``name``, else its basename).

  The status is the runner's ``status.json`` if it has a readable one (but a
  'running' run whose lock no process holds is judged from its metrics); else
  'finished' if the last train step logged is ``config.num_train_steps`` and that
  step was evaluated, 'interrupted' if metrics exist but it did not finish, and
  'missing' without the directory or ``metrics.jsonl``. Unreadable lines of
  ``metrics.jsonl`` (the partial last line of a killed run) are skipped.
  """
  name = name or os.path.basename(os.path.normpath(workdir))
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  history = _read_history(metrics_path)
  config = _read_config(os.path.join(workdir, 'config.json'))
  final = {k: points[-1][1] for k, points in history.items()}
  status, reason = _read_status(os.path.join(workdir, STATUS_FILE))
  if status == 'running' and not in_use(workdir):  # Its runner was killed.
    status, reason = _infer_status(config, history)
  if status is None:
    if not os.path.isdir(workdir):
      status, reason = 'missing', f'no directory {workdir}'
    elif not os.path.exists(metrics_path):
      status, reason = 'missing', f'no {metrics_path}'
    else:
      status, reason = _infer_status(config, history)
  return RunRecord(name=name, status=status, reason=reason, config=config, final=final,
                   history=history, path=workdir)


def load_suite(suite_dir: str, names: list[str] | None = None) -> list[RunRecord]:
  """The records of ``names`` (default: ``suite.json``'s runs, else every
  subdirectory with a ``config.json``, sorted), in that order."""
  if names is None:
    names = _suite_runs(suite_dir)
  return [load_run(os.path.join(suite_dir, n), name=n) for n in names]


def metric_by_suffix(record: RunRecord, prefix: str) -> dict[int | str, float]:
  """Final metrics named ``prefix<suffix>``, keyed by suffix (an int where it is
  one), numbers first in numeric order: 'eval/perplexity@' -> {128: 5.1, 256: 7.3}."""
  found = {}
  for key, v in record.final.items():
    if key.startswith(prefix) and len(key) > len(prefix):
      suffix = key[len(prefix):]
      found[int(suffix) if suffix.isdigit() else suffix] = v
  return dict(sorted(found.items(), key=lambda kv: _label_order(kv[0])))


def eval_metrics(record: RunRecord) -> dict[str, float]:
  """Every final ``eval/`` metric, keyed without the prefix (pivot's default value)."""
  return {k[len('eval/'):]: v for k, v in record.final.items() if k.startswith('eval/')}


def pivot(records: list[RunRecord], row: Callable[[RunRecord], Any],
          col: Callable[[RunRecord], Any] | None = None,
          value: Callable[[RunRecord], Any] = eval_metrics) -> Table:
  """A table with a cell per (``row(r)``, ``col(r)``) holding ``value(r)``.

  ``value`` returns a number (None: 'n/a'), or, with ``col=None``, a dict whose
  keys are the columns (e.g. ``metric_by_suffix``; a key it lacks: 'n/a'); a scalar with ``col=None`` goes
  to the column 'value'. A record that is not finished shows its status instead:
  in its cell, or (with ``col=None``) in every column of its row. Rows and
  columns keep the records' order (columns that are all ints are sorted).
  """
  cells, owners, rows, cols, status_rows = {}, {}, [], [], []

  def put(r, rl, cl, v):
    if (rl, cl) in owners:
      raise ValueError(f'pivot: got runs {owners[rl, cl]} and {r.name} for the cell '
                       f'({rl}, {cl}); allowed: one run per cell (make row/col tell them '
                       'apart)')
    owners[rl, cl], cells[rl, cl] = r.name, v
    _append_new(cols, cl)

  for r in records:
    rl = row(r)
    _append_new(rows, rl)
    if col is not None:
      v = value(r) if r.status == 'finished' else r.status
      put(r, rl, col(r), 'n/a' if v is None else v)
    elif r.status != 'finished':
      status_rows.append((rl, r))
    else:
      v = value(r)
      for cl, x in (v.items() if isinstance(v, dict) else [('value', v)]):
        put(r, rl, cl, 'n/a' if x is None else x)
  cols = cols or ['value']
  for rl, r in status_rows:
    for cl in cols:
      put(r, rl, cl, r.status)
  for rl in rows if col is None else []:  # A finished run without that metric.
    for cl in cols:
      cells.setdefault((rl, cl), 'n/a')
  if all(isinstance(c, int) for c in cols):
    cols.sort()
  return Table(row_labels=rows, col_labels=cols, cells=cells)


def status_table(records: list[RunRecord]) -> Table:
  """One row per run: its status, last train step / total, and the reason."""
  cells = {}
  for r in records:
    total = r.config.get('num_train_steps') if r.config is not None else None
    done = '' if r.step is None else str(r.step)
    cells[r.name, 'status'] = r.status
    cells[r.name, 'step'] = f'{done}/{total}' if total is not None else done
    cells[r.name, 'reason'] = r.reason
  return Table(row_labels=[r.name for r in records],
               col_labels=['status', 'step', 'reason'], cells=cells)


def series(records: list[RunRecord], value: Callable[[RunRecord], dict],
           label: Callable[[RunRecord], str] = lambda r: r.name) -> dict[str, dict]:
  """``{label(r): value(r)}`` for ``plot_lines``, with ' (status)' appended to the
  label of a run that did not finish (a missing run is an empty, labelled line)."""
  return {label(r) + ('' if r.status == 'finished' else f' ({r.status})'): value(r)
          for r in records}


def to_markdown(table: Table, fmt: str = '{:.2f}', title: str | None = None) -> str:
  """A markdown table (numbers through ``fmt``), under a '### title' heading."""
  lines = [f'### {title}', ''] if title else []
  lines.append(_md_line(['', *map(str, table.col_labels)]))
  lines.append('|---|' + ''.join('---:|' if _numeric(table, cl) else '---|'
                                  for cl in table.col_labels))
  for rl in table.row_labels:
    lines.append(_md_line([str(rl)] + [_format(table.cells.get((rl, cl)), fmt)
                                       for cl in table.col_labels]))
  return '\n'.join(lines) + '\n'


def to_csv_rows(table: Table) -> list[list[str]]:
  """A header ['', *columns] and a row per table row; numbers at full precision."""
  rows = [['', *map(str, table.col_labels)]]
  for rl in table.row_labels:
    rows.append([str(rl)] + [_format(table.cells.get((rl, cl)), None)
                             for cl in table.col_labels])
  return rows


def write_csv(path: str, tables: dict[str, Table]) -> None:
  """Every cell of ``tables`` as a long CSV: columns table,row,column,value
  (value: a number at full precision, or the word of the cell)."""
  with open(path, 'w', newline='') as f:
    out = csv.writer(f)
    out.writerow(['table', 'row', 'column', 'value'])
    for name, table in tables.items():
      for rl in table.row_labels:
        for cl in table.col_labels:
          if (rl, cl) in table.cells:
            out.writerow([name, str(rl), str(cl), _format(table.cells[rl, cl], None)])


def _read_history(path: str) -> dict[str, list[tuple[int, float]]]:
  by_key: dict[str, dict[int, float]] = {}
  if not os.path.exists(path):
    return {}
  with open(path, 'rb') as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:  # A partial line written by a killed run.
        continue
      if not isinstance(record, dict) or not isinstance(record.get('step'), int):
        continue
      for key, v in record.items():
        if key != 'step' and isinstance(v, (int, float)) and not isinstance(v, bool):
          by_key.setdefault(key, {})[record['step']] = float(v)
  return {k: sorted(points.items()) for k, points in by_key.items()}


def _read_json(path: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _read_config(path: str) -> ml_collections.ConfigDict | None:
  config = _read_json(path)
  return ml_collections.ConfigDict(config) if isinstance(config, dict) else None


def _read_status(path: str) -> tuple[str | None, str]:
  status = _read_json(path)
  if not isinstance(status, dict) or status.get('status') not in STATUSES:
    return None, ''
  return status['status'], str(status.get('reason') or '')


def _infer_status(config, history) -> tuple[str, str]:
  total = config.get('num_train_steps') if config is not None else None
  step = _last_step(history, 'train/')
  evaluated = any(s == total for k, points in history.items() if k.startswith('eval/')
                  for s, _ in points)
  if total is not None and step == total and evaluated:
    return 'finished', ''
  return 'interrupted', f'stopped at step {step or 0} of {total or "?"}'


def _last_step(history, prefix: str) -> int | None:
  steps = [points[-1][0] for k, points in history.items() if k.startswith(prefix)]
  return max(steps) if steps else None


def _suite_runs(suite_dir: str) -> list[str]:
  suite = _read_json(os.path.join(suite_dir, SUITE_FILE))
  if isinstance(suite, dict) and isinstance(suite.get('runs'), list):
    return [str(n) for n in suite['runs']]
  if not os.path.isdir(suite_dir):
    return []
  return sorted(n for n in os.listdir(suite_dir)
                if os.path.exists(os.path.join(suite_dir, n, 'config.json')))


def _append_new(labels: list, label) -> None:
  if label not in labels:
    labels.append(label)


def _label_order(label) -> tuple:
  return (0, label, '') if isinstance(label, int) else (1, 0, str(label))


def _format(v, fmt: str | None) -> str:
  """A cell as text: '' for none, words as they are, numbers through ``fmt``
  (None: full precision)."""
  if v is None:
    return ''
  if isinstance(v, str):
    return v
  if isinstance(v, int) and not isinstance(v, bool):
    return str(v)
  return repr(float(v)) if fmt is None else fmt.format(v)


def _numeric(table: Table, col) -> bool:
  """Whether column ``col`` holds a number (then it is right-aligned)."""
  return any(isinstance(table.cells.get((rl, col)), (int, float)) for rl in table.row_labels)


def _md_line(fields: list[str]) -> str:
  return '| ' + ' | '.join(f.replace('|', '\\|').replace('\n', ' ') for f in fields) + ' |'
