"""The package's other jobs (patterns, attribute, generate, perplexity, candidates, steer,
prepend, ioi, verify) against the HF / TransformerLens references of tests/fixtures/tiny and
against the CLI's files."""
import json

import numpy as np
import pytest

import patchbay as pb
from conftest import CLEAN, PAIRS, TINY, read_safetensors
from test_patch import run_cli

# As in tests/fixtures/make_generation_refs.py (and tests/generate.rs).
PROMPTS = [CLEAN, "When Mary and John went to the store, John gave a drink to"]
TEXTS = [CLEAN, "The cat sat on the mat.", "Hi there"]


@pytest.fixture(scope="module")
def gen_refs():
    return read_safetensors(TINY / "refs-generate.safetensors")


def test_patterns_equal_transformer_lens_and_the_cli_files(model, refs, tmp_path):
    p = model.patterns([CLEAN, "Hi there"], out=tmp_path / "py")
    n = len(model.tokenize(CLEAN))
    assert p.values.shape == (2, 3, 4, n, n) and p.layers == [0, 1, 2] and p.heads == [0, 1, 2, 3]
    for layer in range(3):
        want = refs[f"blocks.{layer}.attn.hook_pattern"][0]  # [heads, dest, src] of the clean prompt
        np.testing.assert_allclose(p.values[0, layer], want, atol=1e-5, err_msg=f"layer {layer}")
        np.testing.assert_array_equal(p.of(0, layer, 2), p.values[0, layer, 2])
    short = len(model.tokenize("Hi there"))
    assert np.isnan(p.values[1, :, :, short:]).all() and p.of(1, 0, 0).shape == (short, short)
    assert p.tokens[0] == model.to_str_tokens(model.tokenize(CLEAN))
    assert "<iframe" in p._repr_html_() and p.html.lstrip().lower().startswith("<!doctype html")
    # A subset, and the files are the CLI's byte for byte.
    sub = model.patterns(CLEAN, layers=[2], heads=[1, 3])
    np.testing.assert_allclose(sub.values[0, 0], p.values[0, 2, [1, 3]], atol=1e-6)  # batched alone, not ragged
    run_cli("patterns", "--model", TINY, CLEAN, "Hi there", "--out", tmp_path / "cli", "--threads", "2")
    for f in ["patterns.npy", "lengths.npy", "patterns.json", "patterns.html", "patterns.svg", "patterns.png"]:
        assert (tmp_path / "py" / f).read_bytes() == (tmp_path / "cli" / f).read_bytes(), f
    with pytest.raises(ValueError, match="already holds patterns"):
        model.patterns(CLEAN, out=tmp_path / "py")
    with pytest.raises(ValueError, match="7 is outside the model.s layers"):
        model.patterns(CLEAN, layers=[7])


def test_attribution_equals_transformer_lens_and_sums_to_the_logit_difference(model, refs, tmp_path):
    a = model.attribute(pairs=PAIRS, out=tmp_path / "py")
    np.testing.assert_allclose(a.accumulated, refs["dla.accumulated"], atol=1e-4)
    np.testing.assert_allclose(a.components, refs["dla.components"], atol=1e-4)
    np.testing.assert_allclose(a.heads, refs["dla.heads"], atol=1e-4)
    np.testing.assert_allclose(a.logit_diff, refs["baseline_clean"], atol=1e-4)
    np.testing.assert_allclose(a.components.sum(axis=1) + a.bias_term, a.logit_diff, atol=1e-4)
    assert a.component_labels[2] == "0_attn_out" and len(a.accumulated_labels) == a.accumulated.shape[1]
    one = model.attribute(**PAIRS[0])
    np.testing.assert_allclose(one.heads[0], a.heads[0], atol=1e-6)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    run_cli("attribute", "--model", TINY, "--pairs", pairs, "--out", tmp_path / "cli", "--threads", "2")
    for f in ["accumulated.npy", "components.npy", "heads.npy"]:
        assert (tmp_path / "py" / f).read_bytes() == (tmp_path / "cli" / f).read_bytes(), f


def test_generation_equals_hf_greedy_steered_and_the_cli_samples(model, gen_refs, tmp_path):
    prompt = model.tokenize(PROMPTS[0])
    assert prompt == gen_refs["gen.prompt0"].tolist()
    text = model.generate(PROMPTS[0], 10, greedy=True)
    assert text == PROMPTS[0] + model.decode(gen_refs["gen.greedy0"].tolist())
    both = model.generate(PROMPTS, 10, greedy=True)
    assert [s["tokens"] for s in both] == [gen_refs["gen.greedy0"].tolist(), gen_refs["gen.greedy1"].tolist()]
    # A steering vector from (" love", " hate") at attn_out of layer 1, coef −2 (the reference's hook).
    vec = model.steer(" love", " hate", "attn_out", 1, out=tmp_path / "vec.npy")
    np.testing.assert_allclose(vec, gen_refs["steer.attn_out.vec"], atol=1e-5)
    assert np.load(tmp_path / "vec.npy").tobytes() == vec.tobytes()
    z = model.steer(" love", " hate", "z", 1)
    assert z.shape == (4, 4)
    np.testing.assert_allclose(z, gen_refs["steer.z.vec"], atol=1e-5)
    steered = model.generate([PROMPTS[0]], 10, greedy=True, steer=vec, steer_site="attn_out", steer_layer=1, coef=-2.0)
    assert steered[0]["tokens"] == gen_refs["steer.attn_out.greedy"].tolist()
    # Sampling: the CLI's sequences for the same seed.
    kw = dict(temperature=0.8, top_k=20, top_p=0.95, num_sequences=3, seed=7)
    mine = model.generate(PROMPTS, 6, **kw)
    out = run_cli("generate", "--model", TINY, "--prompts", _jsonl(tmp_path, PROMPTS), "--max-new-tokens", "6",
                  "--temperature", "0.8", "--top-k", "20", "--top-p", "0.95", "--num-sequences", "3", "--seed", "7",
                  "--json", "--threads", "2").stdout
    assert mine == json.loads(out)
    assert len({tuple(s["tokens"]) for s in mine}) > 1
    with pytest.raises(ValueError, match="--temperature must be above 0"):
        model.generate(CLEAN, temperature=0.0)
    # JSON cannot carry NaN: the option is named before the spec leaves Python, nested ones too.
    with pytest.raises(ValueError, match="temperature= must be a number, not nan"):
        model.generate(CLEAN, temperature=float("nan"))
    with pytest.raises(ValueError, match="coef= must be a number, not inf"):
        model.generate(CLEAN, 3, greedy=True, steer=np.ones(16, dtype=np.float32), steer_site="attn_out", steer_layer=1, coef=float("inf"))
    with pytest.raises(ValueError, match="unknown site"):
        model.steer(" love", " hate", "resid", 1)
    with pytest.raises(ValueError, match="steering vector holds NaN"):
        model.generate(CLEAN, 3, greedy=True, steer=np.full(16, np.nan, dtype=np.float32), steer_site="attn_out", steer_layer=1)


def _jsonl(tmp_path, texts):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    return path


def test_perplexity_equals_hf_per_text_and_per_token(model, gen_refs, tmp_path):
    p = model.perplexity(TEXTS, per_token=True, out=tmp_path / "py")
    np.testing.assert_allclose(p.perplexity, gen_refs["ppl.perplexity"], rtol=1e-4)
    for i in range(len(TEXTS)):
        want = np.exp(gen_refs[f"ppl.token_loss{i}"])
        np.testing.assert_allclose(p.token_perplexity[i, :len(want)], want, rtol=1e-4)
        assert np.isnan(p.token_perplexity[i, len(want):]).all()
        assert [t for t, _ in p.texts[i]["per_token"]] == model.to_str_tokens(model.tokenize(TEXTS[i]))[1:]
    run_cli("perplexity", "--model", TINY, *TEXTS, "--per-token", "--out", tmp_path / "cli", "--threads", "2")
    for f in ["perplexity.npy", "token_perplexity.npy", "perplexity.json"]:
        assert (tmp_path / "py" / f).read_bytes() == (tmp_path / "cli" / f).read_bytes(), f
    with pytest.raises(ValueError, match=r'text 1 \("Hi"\) has 1 token\(s\)'):
        model.perplexity("Hi")  # one token: nothing to predict


def test_candidates_are_hfs_top_k_and_their_pools_overlap_as_hf_computes(model, gen_refs):
    c = model.candidates(PROMPTS[1], top_k=5, all_positions=True)
    positions = c["texts"][0]["positions"]
    assert [[x["id"] for x in p["candidates"]] for p in positions] == gen_refs["cand.top_ids"].tolist()
    probs = [[x["prob"] for x in p["candidates"]] for p in positions]
    np.testing.assert_allclose(probs, gen_refs["cand.top_probs"], atol=1e-5)
    pools = model.candidates(PROMPTS + TEXTS, top_k=20)
    assert pools["jaccard"].shape == (5, 5)
    np.testing.assert_allclose(pools["jaccard"], gen_refs["cand.jaccard"], atol=1e-6)


def test_prepend_goes_backwards_as_the_reference_does(model, gen_refs):
    steps = model.prepend(TEXTS[1], 3, samples=8, seed=1, progress=False)
    assert [s["tokens"] for s in steps] == [gen_refs[f"prep.step{i}"].tolist() for i in range(3)]
    np.testing.assert_allclose([s["perplexity"] for s in steps], gen_refs["prep.ppl"], rtol=1e-4)


def test_ioi_pairs_are_the_clis_and_patch_as_a_pairs_file(model, tmp_path):
    pairs = model.ioi(12, seed=3, out=tmp_path / "py.jsonl")
    run_cli("ioi", "--n", "12", "--seed", "3", "--model", TINY, "--out", tmp_path / "cli.jsonl")
    assert (tmp_path / "py.jsonl").read_bytes() == (tmp_path / "cli.jsonl").read_bytes()
    assert pairs == [json.loads(line) for line in (tmp_path / "cli.jsonl").read_text().splitlines()]
    from_records = model.patch(pairs=pairs, sites=["resid_pre"], progress=False)
    from_file = model.patch(pairs=tmp_path / "cli.jsonl", sites=["resid_pre"], progress=False)
    assert from_records["resid_pre"].tobytes() == from_file["resid_pre"].tobytes()
    with pytest.raises(ValueError, match="corruption"):
        model.ioi(3, corruption="abba")


def test_verify_rechecks_a_run_and_records_it(model, tmp_path):
    out = tmp_path / "run"
    model.patch(pairs=PAIRS, sites=["resid_pre", "z_all_pos"], out=out, verify=0, progress=False)
    v = pb.verify(out, rows=5)
    assert v["rows"] == 5 and not v["failed"] and v["max_abs_diff"] <= v["tolerance"]
    recorded = pb.open(out).manifest["verify"]
    assert recorded["rows"] == 5 and recorded["backend"] == v["backend"] and recorded["failed"] == []
    with pytest.raises(ValueError, match="not a patchbay results directory"):
        pb.verify(tmp_path / "nothing")
