"""Every notebook in notebooks/ runs top to bottom (nbclient), failing on any error."""
import glob
import os

import nbclient
import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, 'notebooks', '*.ipynb')))


def test_the_three_notebooks_exist():
  names = {os.path.basename(p) for p in NOTEBOOKS}
  assert {'explore_encodings.ipynb', 'train_and_compare.ipynb',
          'analyse_checkpoint.ipynb'} <= names


@pytest.mark.parametrize('path', NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_top_to_bottom(path):
  nb = nbformat.read(path, as_version=4)
  nbclient.NotebookClient(nb, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': os.path.dirname(path)}}).execute()
  errors = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs
            if o.get('output_type') == 'error']
  assert not errors
