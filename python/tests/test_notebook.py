"""examples/patching.ipynb runs headless (nbclient) on the tiny fixture, and shows what it says."""
import ast

import numpy as np
import pytest

from conftest import ROOT, TINY

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def test_the_example_notebook_runs_and_shows_the_references(refs, tmp_path, monkeypatch):
    nb = nbformat.read(ROOT / "examples" / "patching.ipynb", as_version=4)
    monkeypatch.setenv("PATCHBAY_MODEL", str(TINY))  # the kernel inherits the environment
    monkeypatch.setenv("PATCHBAY_TEST_THREADS", "2")
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    for c in code:
        assert not [o for o in c.outputs if o.output_type == "error"], c.source

    def shown(fragment, kind):
        cell = next(c for c in code if fragment in c.source)
        return [o["data"][kind] for o in cell.outputs if "data" in o and kind in o["data"]]

    # The baselines of the Michelle pair are the TransformerLens reference's (its pair 0).
    clean, corrupted = ast.literal_eval(shown("float(r.baseline_clean[0])", "text/plain")[0])
    np.testing.assert_allclose([clean, corrupted], [refs["baseline_clean"][0], refs["baseline_corrupted"][0]], atol=1e-4)
    # The top-20 table, the heatmaps and the pattern viewer are displayed.
    assert shown("model.inspect(clean, top_k=20)", "text/html")[0].count("<tr>") == 21
    for fragment in ['r.heatmap("resid_pre")', 'ioi.heatmap("z_all_pos")']:
        assert shown(fragment, "image/svg+xml")[0].lstrip().startswith("<svg"), fragment
    assert "<iframe" in shown("model.patterns(clean", "text/html")[0]
    assert "100 pair(s)" in shown("ioi = model.patch", "text/plain")[0]
