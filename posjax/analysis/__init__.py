"""Looking inside encodings and trained runs, for notebooks and reports.

  measures   attention weights, loss by position, attention distance and entropy,
             bias by distance, RoPE wavelengths
  plots      their plots
  charts     line and heatmap charts (also the suite reports')

Imports ``models`` and ``encodings``; a trained run comes from
``posjax.workdir.restore.load_for_analysis``.
"""
