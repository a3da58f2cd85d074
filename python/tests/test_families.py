"""The Python API on the Llama 3, Qwen2.5, Qwen3, Pythia and Gemma 2 fixtures (tests/fixtures/families,
made by make_family_fixtures.py with HF transformers): pb.load takes them, tokenizes as HF does, and
patches as patching done in HF does (k and v per key/value head); edges, EAP-IG and the logit lens as
make_family_capability_refs.py computes them in float64 (Gemma 2's heads through its post-attention norm)."""
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


MODEL_TYPES = {"llama": "llama", "llama-rope-parameters": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "pythia": "gpt_neox", "gemma2": "gemma2"}


@pytest.mark.parametrize("family", MODEL_TYPES)
def test_load_tokenize_and_patch_as_hf(family):
    refs = read_safetensors(FAMILIES / family / "refs.safetensors")
    model = pb.load(str(FAMILIES / family))
    assert model.config["family"] == MODEL_TYPES[family]
    assert model.tokenize(PAIRS[0][0]) == refs["tokens"][0].tolist()
    sites = ["resid_pre", "z_all_pos", "q_all_pos", "k_all_pos", "v_all_pos"]
    r = model.patch(pairs=PAIRS, sites=sites, progress=False)
    for site in sites:
        # Within 1e-4 of the metric's scale past 1 (Gemma 2's logits reach its soft-cap of 30).
        scale = max(1.0, float(np.abs(refs[f"patch.{site}"]).max()))
        np.testing.assert_allclose(r[site], refs[f"patch.{site}"], atol=1e-4 * scale, rtol=0, err_msg=site)
    np.testing.assert_allclose(r.baseline_clean, refs["baseline_clean"], atol=1e-4)
    assert r.axes("k_all_pos")[-1] == "head" and r["k_all_pos"].shape[-1] == model.config["kv_heads"]


# Gemma 2's plain forward pass is itself 1.8e-4 from float64 on these pairs (large activations, logits
# at the soft-cap): 1e-3 there, as in tests/engine_fidelity.rs.
@pytest.mark.parametrize("family,atol", [("qwen2", 1e-4), ("pythia", 1e-4), ("gemma2", 1e-3)])
def test_edges_eap_ig_and_logit_lens_as_hf_in_float64(family, atol):
    refs = read_safetensors(FAMILIES / family / "refs-capabilities.safetensors")
    model = pb.load(str(FAMILIES / family))
    exact = model.edges(pairs=PAIRS, progress=False)
    assert exact.edge_names == bytes(refs["edge_names"]).decode().split("\n")
    np.testing.assert_allclose(exact["edges"], refs["edges"], atol=atol, rtol=0)
    ig = model.edges(pairs=PAIRS, method="eap-ig", progress=False)
    np.testing.assert_allclose(ig["edges"] - ig.baseline_corrupted[:, None], refs["eap_ig5.denoising"], atol=atol, rtol=0)
    lens = model.attribute(pairs=PAIRS, progress=False)
    np.testing.assert_allclose(lens.accumulated, refs["dla.accumulated"], atol=atol, rtol=0)
    np.testing.assert_allclose(lens.heads, refs["dla.heads"], atol=atol, rtol=0)
