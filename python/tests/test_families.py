"""The Python API on the Llama 3, Qwen2.5 and Qwen3 fixtures (tests/fixtures/families, made by
make_family_fixtures.py with HF transformers): pb.load takes them, tokenizes as HF does, and patches
as patching done in HF does (k and v per key/value head)."""
import numpy as np
import pytest

import patchbay as pb
from conftest import ROOT, read_safetensors

FAMILIES = ROOT / "tests" / "fixtures" / "families"
# As in make_family_fixtures.py.
PAIRS = [
    ("Michelle Jones was a top-notch student. Michelle", "Michelle Smith was a top-notch student. Michelle", " Jones", " Smith"),
    ("Jessica Smith was a top-notch student. Jessica", "Jessica Jones was a top-notch student. Jessica", " Smith", " Jones"),
    ("John Jones was a top-notch student. John", "Mary Jones was a top-notch student. John", " Jones", " Smith"),
]


@pytest.mark.parametrize("family", ["llama", "llama-rope-parameters", "qwen2", "qwen3"])
def test_load_tokenize_and_patch_as_hf(family):
    refs = read_safetensors(FAMILIES / family / "refs.safetensors")
    model = pb.load(str(FAMILIES / family))
    assert model.config["family"] == family.split("-")[0]
    assert model.tokenize(PAIRS[0][0]) == refs["tokens"][0].tolist()
    sites = ["resid_pre", "z_all_pos", "q_all_pos", "k_all_pos", "v_all_pos"]
    r = model.patch(pairs=PAIRS, sites=sites, progress=False)
    for site in sites:
        np.testing.assert_allclose(r[site], refs[f"patch.{site}"], atol=1e-4, err_msg=site)
    np.testing.assert_allclose(r.baseline_clean, refs["baseline_clean"], atol=1e-4)
    assert r.axes("k_all_pos")[-1] == "head" and r["k_all_pos"].shape[-1] == model.config["kv_heads"]
