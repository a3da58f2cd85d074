"""The Python package against TransformerLens' references and against the CLI, on the tiny fixture."""
import json
import os
import pathlib
import signal
import subprocess

import numpy as np
import pytest

import patchbay as pb
from conftest import CLEAN, CORRUPTED, PAIRS, ROOT, TINY

SITES = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z_all_pos", "q_all_pos", "k_all_pos",
         "v_all_pos", "pattern_all_pos", "z_by_pos", "q_by_pos", "k_by_pos", "v_by_pos", "pattern_by_pos",
         "pattern_dest_src"]


def cli():
    path = os.environ.get("PATCHBAY_BIN") or str(ROOT / "target" / "debug" / "patchbay")
    if not pathlib.Path(path).exists():
        pytest.skip(f"no patchbay binary at {path} (build it with cargo build, or set PATCHBAY_BIN)")
    return path


def run_cli(*args):
    p = subprocess.run([cli(), *map(str, args)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p


def assert_refs(result, refs, rows):
    for site in result.sites:
        want = refs[f"patch.{site}"][rows]
        got = result[site]
        assert got.dtype == np.float32 and got.shape == want.shape, (site, got.shape, want.shape)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0, err_msg=site)
    np.testing.assert_allclose(result.baseline_clean, refs["baseline_clean"][rows], atol=1e-4)
    np.testing.assert_allclose(result.baseline_corrupted, refs["baseline_corrupted"][rows], atol=1e-4)


@pytest.mark.parametrize("form", ["one", "dataframe", "dicts", "jsonl", "csv"])
def test_every_site_equals_transformer_lens(model, refs, tmp_path, form):
    rows = slice(0, 3)
    if form == "one":
        rows = slice(1, 2)
        r = model.patch(clean=CLEAN, corrupted=CORRUPTED[1], answer=" Jones", distractor=" Smith", sites=SITES)
    elif form == "dataframe":
        pd = pytest.importorskip("pandas")
        r = model.patch(pairs=pd.DataFrame(PAIRS), sites=SITES)
    elif form == "dicts":
        r = model.patch(pairs=PAIRS, sites=SITES)
    elif form == "jsonl":
        path = tmp_path / "pairs.jsonl"
        path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
        r = model.patch(pairs=path, sites=SITES)
    else:
        import csv
        path = tmp_path / "pairs.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["prompt", "corrupt", "good", "bad"])
            w.writerows([p["clean"], p["corrupted"], p["answer"], p["distractor"]] for p in PAIRS)
        r = model.patch(pairs=path, sites=SITES, columns={"clean": "prompt", "corrupted": "corrupt", "answer": "good", "distractor": "bad"})
    assert_refs(r, refs, rows)
    assert r.axes("z_by_pos") == ("pair", "layer", "position", "head")
    assert r.tokens[0]["answer"] == " Jones"


def test_path_patching_equals_transformer_lens(model, refs):
    r = model.path(pairs=PAIRS, receivers=["q", "k", "v", "resid_final"])
    for site, ref in [("path_q", "path.q"), ("path_k", "path.k"), ("path_v", "path.v"), ("path_resid_final", "path.resid_final")]:
        got, want = r[site], refs[ref]
        assert got.shape == want.shape
        # TransformerLens writes 0 where no edge is (receiver layer <= the sender's); patchbay NaN.
        layers = got.shape[1]
        if got.ndim == 5:
            no_edge = np.arange(layers)[None, :, None, None, None] >= np.arange(layers)[None, None, None, :, None]
            assert np.array_equal(np.isnan(got), np.broadcast_to(no_edge, got.shape)), site
            assert (want[np.broadcast_to(no_edge, got.shape)] == 0).all(), site
            want = np.where(np.isnan(got), np.nan, want)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0, err_msg=site)


@pytest.mark.parametrize("backend", [b for b in os.environ.get("PATCHBAY_PY_BACKENDS", "").split(",") if b])
def test_gpu_backends_equal_transformer_lens(refs, backend):
    kind, _, fused = backend.partition("-")
    m = pb.load(str(TINY), backend=kind, fusion=fused == "fusion")
    assert_refs(m.patch(pairs=PAIRS, sites=["resid_pre", "attn_out", "z_by_pos"]), refs, slice(0, 3))


def test_python_and_cli_results_are_bit_identical_and_open_reads_the_cli_files(model, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    out = tmp_path / "cli"
    run_cli("run", "--model", TINY, "--pairs", pairs, "--sites", "resid_pre,z_by_pos,pattern_all_pos", "--max-rows", "7",
            "--out", out, "--threads", "2")
    opened = pb.open(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert opened.manifest == manifest
    for s in manifest["sites"]:
        assert np.array_equal(opened[s["name"]], np.load(out / s["file"]), equal_nan=True)
    assert np.array_equal(opened.lengths, np.load(out / "lengths.npy"))
    mine = model.patch(pairs=PAIRS, sites=["resid_pre", "z_by_pos", "pattern_all_pos"], max_rows=7)
    for site in mine.sites:
        assert mine[site].tobytes() == opened[site].tobytes(), site
    assert mine.baseline_clean.tobytes() == opened.baseline_clean.tobytes()
    # analyze's normalization and heatmap, from the Python side.
    run_cli("analyze", out)
    assert opened.normalized("resid_pre").tobytes() == np.load(out / "resid_pre.normalized.npy").tobytes()
    heatmap = mine.heatmap("resid_pre")
    assert heatmap._repr_svg_() == (out / "resid_pre.svg").read_text()
    assert heatmap._repr_png_() == (out / "resid_pre.png").read_bytes()
    heatmap.save(tmp_path / "h.png")
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_results_directory_from_python_is_the_cli_transaction(model, tmp_path):
    out = tmp_path / "py"
    r = model.patch(pairs=PAIRS, sites=["resid_pre"], out=out, max_rows=7)
    assert r.directory == str(out) and (out / "manifest.json").exists() and not (out / "progress.json").exists()
    assert r.manifest["verify"]["rows"] == 8 and not r.manifest["verify"]["failed"]
    with pytest.raises(ValueError, match="already holds a finished run"):
        model.patch(pairs=PAIRS, sites=["attn_out"], out=out)


def test_open_reads_under_the_directorys_shared_lock(model, tmp_path):
    out = tmp_path / "run"
    model.patch(pairs=PAIRS, sites=["resid_pre"], out=out, verify=0)
    # While a reader holds the directory's shared lock, a writer in another process fails at once,
    # naming the reader, and pb.open (which reads under that lock) shares it.
    reading = tmp_path / "reading"
    reader = subprocess.Popen(["flock", "--shared", "-o", str(out), "sh", "-c",
                               f"touch {reading} && while [ -e {reading} ]; do sleep 0.02; done"])
    try:
        while not reading.exists():
            pass
        p = subprocess.run([cli(), "run", "--model", TINY, "--clean", CLEAN, "--corrupted", CORRUPTED[0],
                            "--answer", " Jones", "--distractor", " Smith", "--out", out, "--overwrite"], capture_output=True, text=True)
        assert p.returncode == 1 and f"pid {reader.pid}" in p.stderr, p.stderr
        assert pb.open(out)["resid_pre"].shape[0] == len(PAIRS)  # readers share it
    finally:
        reading.unlink()
        reader.wait()
    # While another process writes (holds it exclusively), pb.open fails at once naming it.
    ready = tmp_path / "locked"
    holder = subprocess.Popen(["flock", "--exclusive", "-o", str(out), "sh", "-c",
                               f"touch {ready} && while [ -e {ready} ]; do sleep 0.02; done"])
    try:
        while not ready.exists():
            pass
        with pytest.raises(ValueError, match=f"is being written by another process \\(pid {holder.pid}\\)"):
            pb.open(out)
    finally:
        ready.unlink()
        holder.wait()
    assert pb.open(out).manifest["sites"][0]["name"] == "resid_pre"


def test_inspect_top_k_equals_the_softmax_of_hf_logits(model, refs):
    top = model.inspect(CLEAN, top_k=20)
    logits = refs["logits_last"][0].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    assert [t["id"] for t in top] == list(np.argsort(-probs, kind="stable")[:20])
    np.testing.assert_allclose([t["prob"] for t in top], probs[[t["id"] for t in top]], atol=1e-5)
    assert top[0]["token"] == model.to_str_tokens([top[0]["id"]])[0]


BAD = [
    (dict(clean=CLEAN, corrupted=CORRUPTED[0], answer=" Jones", distractor=" Smith", sites=["resid_nowhere"]), ValueError, "resid_nowhere"),
    (dict(clean=CLEAN, corrupted=CORRUPTED[0], answer=" Jones"), ValueError, "distractor"),
    (dict(clean=CLEAN, corrupted=CORRUPTED[0], answer=" Jonesberg", distractor=" Smith"), ValueError, "Jonesberg"),
    (dict(clean=CLEAN, corrupted="Michelle Smithson-Jones was a top-notch student. Michelle", answer=" Jones", distractor=" Smith"), ValueError, "length"),
    (dict(clean=CLEAN, corrupted=CORRUPTED[0], metric="logits"), ValueError, "logits"),
    (dict(clean=CLEAN, corrupted=CORRUPTED[0], max_rows=0), ValueError, "max-rows"),
    (dict(pairs="/nonexistent/pairs.jsonl"), FileNotFoundError, "/nonexistent/pairs.jsonl"),
    (dict(pairs=[{"clean": CLEAN}]), ValueError, "corrupted"),
    (dict(pairs=[{"clean": CLEAN, "corrupted": CORRUPTED[0], "answer": " Jones", "distractor": " Jones"}], strict=True), ValueError, "row 1"),
    (dict(), ValueError, "no pairs"),
]


@pytest.mark.parametrize("kwargs,error,text", BAD)
def test_bad_input_raises_a_one_line_exception_never_a_panic(model, kwargs, error, text):
    try:
        model.patch(progress=False, **kwargs)
    except BaseException as e:  # noqa: B902 - a PanicException is a BaseException: it must not be one
        assert type(e) is error, f"{type(e).__name__}: {e}"
        assert text in str(e) and "\n" not in str(e), str(e)
    else:
        pytest.fail("no exception")


@pytest.mark.parametrize("call,error,text", [
    (lambda: pb.load("/nonexistent/model"), FileNotFoundError, "/nonexistent/model"),
    (lambda: pb.load(str(TINY), backend="tpu"), ValueError, "backend"),
    (lambda: pb.load(str(TINY), dtype="f16"), ValueError, "f32 only"),
    (lambda: pb.load(str(TINY), threads=3), ValueError, "threads"),
    (lambda: pb.open("/nonexistent/run"), ValueError, "not a patchbay results directory"),
])
def test_bad_load_and_open_raise_one_line_exceptions(model, call, error, text):
    try:
        call()
    except BaseException as e:  # noqa: B902
        assert type(e) is error and text in str(e) and "\n" not in str(e), f"{type(e).__name__}: {e}"
    else:
        pytest.fail("no exception")


def test_ctrl_c_stops_a_run_and_resume_finishes_it_byte_for_byte(model, tmp_path):
    # 300 pairs of resid_pre: three units of work, so the interrupt lands between units.
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in PAIRS * 100))
    config = tmp_path / "run.toml"
    config.write_text(f'model = "{TINY}"\npairs = "{pairs}"\nsites = "resid_pre"\nmax_rows = 512\n')
    whole = tmp_path / "whole"
    model.run(config, out=whole, progress=False)
    done = {"runs": 0}

    def ctrl_c(event, *values):
        if event == "advance":
            done["runs"] += values[0]
            if done["runs"] > 5000:
                os.kill(os.getpid(), signal.SIGINT)

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        model.run(config, out=cut, progress=ctrl_c)
    assert (cut / "progress.json").exists() and not (cut / "manifest.json").exists()
    with pytest.raises(ValueError, match="unfinished run"):
        pb.open(cut)
    r = model.run(config, out=cut, resume=True, progress=False)
    assert sorted(p.name for p in cut.iterdir()) == sorted(p.name for p in whole.iterdir())
    for f in whole.iterdir():
        assert (cut / f.name).read_bytes() == f.read_bytes(), f.name
    assert r["resid_pre"].shape == (300, 3, 11)


def test_config_values_are_overridden_by_keywords_booleans_included(model, tmp_path):
    out = tmp_path / "o"
    config = tmp_path / "c.toml"
    config.write_text(f'model = "{TINY}"\nclean = "{CLEAN}"\ncorrupted = "{CORRUPTED[0]}"\nsites = "resid_pre"\n'
                      f'overwrite = true\nverify = 0\nout = "{out}"\n')
    model.run(config, progress=False)
    model.run(config, progress=False)  # overwrite = true from the file
    with pytest.raises(ValueError, match="already holds a finished run"):
        model.run(config, overwrite=False, progress=False)
    config.write_text(config.read_text().replace(f'model = "{TINY}"', 'model = "gpt2"'))
    with pytest.raises(ValueError, match="load it with patchbay.load"):
        model.run(config, progress=False)


@pytest.mark.parametrize("direction,ablation", [("noising", "resample"), ("denoising", "zero"), ("noising", "mean"),
                                                ("denoising", "mean-positional")])
def test_directions_and_ablations_equal_transformer_lens(model, direction, ablation):
    """The ablation references (tests/fixtures/make_ablation_refs.py) through the Python API."""
    from conftest import read_safetensors
    refs = read_safetensors(TINY / "refs-ablation.safetensors")
    sites = ["resid_pre", "attn_out", "z_all_pos", "q_by_pos", "pattern_by_pos"]
    r = model.patch(pairs=PAIRS, sites=sites, direction=direction, ablation=ablation, progress=False)
    for site in sites:
        np.testing.assert_allclose(r[site], refs[f"{direction}.{ablation}.{site}"], atol=1e-4, rtol=0, err_msg=site)
    np.testing.assert_allclose(r.baseline_clean, refs["baseline_clean"], atol=1e-4)
    with pytest.raises(ValueError, match="ablation"):
        model.patch(pairs=PAIRS, sites=sites, ablation="average", progress=False)


def test_graph_names_every_edge_as_eap_ig():
    """``pb.graph``: the tiny fixture's 3 layers of 4 heads, in EAP-IG's names and order."""
    g = pb.graph(str(TINY))
    assert len(g["nodes"]) == 2 + 3 * 5 and g["nodes"][:2] == ["input", "a0.h0"] and g["nodes"][-1] == "logits"
    # Each head's q, k, v read the 1 + l·5 writers before its layer; an MLP also its layer's 4 heads; the logits all 16.
    assert len(g["edges"]) == sum(12 * (1 + 5 * l) + 1 + 5 * l + 4 for l in range(3)) + 16 == 262
    assert g["edges"][:2] == ["input->a0.h0<q>", "input->a0.h0<k>"] and g["edges"][-1] == "m2->logits"
    with pytest.raises(FileNotFoundError, match="no-such-model does not exist"):
        pb.graph(str(TINY / "no-such-model"))


def test_edges_equal_a_pytorch_per_edge_loop(model):
    """``Model.edges`` against tests/fixtures/make_edge_refs.py, with the graph's edge names."""
    from conftest import read_safetensors
    refs = read_safetensors(TINY / "refs-edges.safetensors")
    r = model.edges(pairs=PAIRS, progress=False)
    assert r.axes("edges") == ("pair", "edge")
    assert r.edge_names == pb.graph(str(TINY))["edges"] == bytes(refs["edge_names"]).decode().split("\n")
    np.testing.assert_allclose(r["edges"], refs["edges"], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="edges takes no --sites"):
        model.edges(pairs=PAIRS, sites=["resid_pre"])


def test_eap_ig_circuit_and_faithfulness(model, tmp_path):
    """EAP-IG through ``Model.edges`` against make_eap_refs.py; a circuit of the run
    (``Result.circuit``) and its faithfulness curve (``Model.faithfulness``): from the empty
    circuit (0, the corrupted run) to the whole graph (1, the clean run)."""
    from conftest import read_safetensors
    refs = read_safetensors(TINY / "refs-eap.safetensors")
    r = model.edges(pairs=PAIRS, method="eap-ig", ig_steps=5, out=tmp_path / "ig", progress=False)
    np.testing.assert_allclose(r["edges"] - r.baseline_corrupted[:, None], refs["eap_ig5.denoising"], atol=1e-4, rtol=0)
    assert r.manifest["method"] == "eap-ig" and r.manifest["ig_steps"] == 5
    c = r.circuit(top_n=20)
    assert 0 < len(c.edges) <= 20 and "logits" in c.nodes and c.path.endswith("circuit.json")
    assert set(c.scores) == set(r.edge_names) and "<svg" in c._repr_svg_()
    f = model.faithfulness(tmp_path / "ig", sizes=[0, 20, len(r.edge_names)], progress=False)
    assert f["per_pair"].shape == (3, len(PAIRS))
    np.testing.assert_allclose(f["whole_graph"], r.baseline_clean.mean(), atol=1e-4)
    np.testing.assert_allclose(f["empty_circuit"], r.baseline_corrupted.mean(), atol=1e-4)
    np.testing.assert_allclose([f["faithfulness"][0], f["faithfulness"][2]], [0.0, 1.0], atol=1e-5)
    given = model.faithfulness(tmp_path / "ig", circuits=[c.path], out=tmp_path / "given", draw_at=2.0, progress=False)
    np.testing.assert_allclose(given["per_pair"][0], f["per_pair"][1], atol=1e-5)
    # No circuit reaches a faithfulness of 2: the most faithful (the only one) is drawn.
    assert given["drawn"] == {"index": 0, "edges": len(c.edges), "faithfulness": given["faithfulness"][0], "reached": False}
    assert (tmp_path / "given" / "faithfulness_circuit.svg").read_text().count("<svg") == 1
    with pytest.raises(ValueError, match="draw_at= must be a number, not nan"):
        model.faithfulness(tmp_path / "ig", circuits=[c.path], draw_at=float("nan"), progress=False)
    with pytest.raises(ValueError, match="--ig-steps is an option of --method eap-ig"):
        model.edges(pairs=PAIRS, method="eap", ig_steps=3)
    with pytest.raises(ValueError, match="give one of --top-n, --threshold or --greedy"):
        r.circuit(top_n=3, greedy=3)


def test_open_reads_only_the_directorys_own_files(model, tmp_path):
    out, other = tmp_path / "run", tmp_path / "other"
    model.patch(pairs=PAIRS, sites=["resid_pre"], out=out, verify=0)
    model.patch(pairs=PAIRS[:1] * 3, sites=["resid_pre", "mlp_out"], out=other, verify=0)
    pristine = (out / "manifest.json").read_text()
    # Manifest paths into another run, absolute paths, unknown site names: refused naming them.
    for field, value in [("file", "../other/mlp_out.npy"), ("file", str(other / "resid_pre.npy")), ("name", "../other/x")]:
        manifest = json.loads(pristine)
        manifest["sites"][0][field] = value
        (out / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ValueError, match=value.replace(".", r"\.")):
            pb.open(out)
    for field in ["baseline_clean", "lengths"]:
        manifest = json.loads(pristine)
        manifest[field] = f"../other/{field}.npy"
        (out / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ValueError, match=field):
            pb.open(out)
    # An array that is a link into another run.
    (out / "manifest.json").write_text(pristine)
    (out / "resid_pre.npy").unlink()
    (out / "resid_pre.npy").symlink_to(other / "resid_pre.npy")
    with pytest.raises(ValueError, match="symbolic link"):
        pb.open(out)


def test_every_native_entry_point_survives_an_edited_manifest(model):
    r = model.patch(pairs=PAIRS, sites=["resid_pre"])
    edits = [
        lambda m: m["sites"][0].update(shape=[]),
        lambda m: m["sites"][0].update(shape=[3, 10**12]),
        lambda m: m["sites"][0].update(axes=[]),
        lambda m: m.update(pairs=m["pairs"][:1]),
        lambda m: m["sites"][0].update(name="../x"),
        lambda m: m.pop("sites"),
        lambda m: m["pairs"][0].update(length=-1),
    ]
    want_norm = r.normalized("resid_pre")
    for edit in edits:
        edit(r.manifest)  # a copy: the result is unchanged
        np.testing.assert_array_equal(r.normalized("resid_pre"), want_norm)
        assert r.heatmap("resid_pre")._repr_png_()[:4] == b"\x89PNG"
    # Edited where it is kept, the native calls refuse it as an Exception: a PanicException (a
    # BaseException) would escape `except Exception` and fail the test.
    for edit in edits:
        edited = json.loads(r._manifest_json)
        edit(edited)
        broken = pb.Result(edited, r._arrays, [], None, r.lengths)
        for fn in (broken.normalized, broken.heatmap):
            try:
                fn("resid_pre")
            except Exception:
                pass


def test_ctrl_c_stops_a_download_from_a_mirror_that_never_answers(tmp_path):
    import socket
    import sys
    import threading
    import time
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []

    def accept():  # takes every connection and never answers
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    env = dict(os.environ, HF_HOME=str(tmp_path / "home"), HF_ENDPOINT=f"http://127.0.0.1:{server.getsockname()[1]}",
               HF_HUB_ETAG_TIMEOUT="300", HF_HUB_DOWNLOAD_TIMEOUT="300")
    code = "import patchbay as pb, sys\nprint('loading', flush=True)\ntry:\n    pb.load('test/hang')\nexcept KeyboardInterrupt:\n    print('interrupted', flush=True)\n"
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "loading"
        deadline = time.time() + 60
        while not held and time.time() < deadline:
            time.sleep(0.05)
        assert held, "the download never connected"
        time.sleep(0.5)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=20)  # not the 300 s timeouts
        assert "interrupted" in out, err
        assert not [p for p in (tmp_path / "home").rglob("*") if p.is_file()]
    finally:
        child.kill()
        server.close()


def test_keywords_are_named_and_pairs_come_as_tuples_and_numpy_numbers(model):
    with pytest.raises(ValueError, match="max_rows="):
        model.patch(pairs=PAIRS, sites=["resid_pre"], max_rows=-1)
    # Tuples as TransformerLens users write them, numpy integers where a number goes.
    as_tuples = [(p["clean"], p["corrupted"], p["answer"], p["distractor"]) for p in PAIRS]
    with_dicts = model.patch(pairs=PAIRS, sites=["resid_pre"], max_rows=np.int64(7))
    with_tuples = model.patch(pairs=as_tuples, sites=["resid_pre"], max_rows=7)
    assert with_tuples["resid_pre"].tobytes() == with_dicts["resid_pre"].tobytes()
    named = [dict(p, positions={"end": np.int64(10)}) for p in PAIRS]
    assert model.patch(pairs=named, sites=["resid_pre"]).tokens[0]["positions"] == {"end": 10}
    with pytest.raises(TypeError, match=r"pairs\[1\]"):
        model.patch(pairs=[as_tuples[0], ("only one",)], sites=["resid_pre"])


def test_every_count_keyword_is_named_when_refused(model, tmp_path):
    """A negative count, at every entry point that takes one, is a ValueError naming its keyword
    (not pyo3's unnamed OverflowError, nor a serde position)."""
    run = tmp_path / "edges"
    edges = model.edges(pairs=PAIRS[:1], out=run, verify=0)
    opened = pb.open(run)
    calls = {
        "patch": lambda **kw: model.patch(pairs=PAIRS[:1], sites=["resid_pre"], **kw),
        "path": lambda **kw: model.path(pairs=PAIRS[:1], receivers=["resid_final"], **kw),
        "edges": lambda **kw: model.edges(pairs=PAIRS[:1], **kw),
        "faithfulness": lambda **kw: model.faithfulness(run, **kw),
        "inspect": lambda **kw: model.inspect(CLEAN, **kw),
        "patterns": lambda **kw: model.patterns(CLEAN, **kw),
        "attribute": lambda **kw: model.attribute(pairs=PAIRS[:1], **kw),
        "generate": lambda **kw: model.generate(CLEAN, **{"max_new_tokens": 2, **kw}),
        "perplexity": lambda **kw: model.perplexity(CLEAN, **kw),
        "candidates": lambda **kw: model.candidates(CLEAN, **kw),
        "steer": lambda **kw: model.steer(CLEAN, CORRUPTED[0], "resid_pre", **{"layer": 0, **kw}),
        "prepend": lambda **kw: model.prepend(CLEAN, **{"samples": 1, **kw}),
        "ioi": lambda **kw: model.ioi(**{"n": 1, **kw}),
        "circuit": lambda **kw: opened.circuit(**kw),
        "verify": lambda **kw: pb.verify(run, **kw),
        "load": lambda **kw: pb.load(str(TINY), **kw),
    }
    counts = {
        "patch": ["max_rows", "max_diff", "verify"],
        "path": ["max_rows", "max_diff", "verify"],
        "edges": ["ig_steps", "max_rows", "verify"],
        "faithfulness": ["max_rows"],
        "inspect": ["top_k"],
        "patterns": ["batch", "html_prompts"],
        "attribute": ["batch"],
        "generate": ["max_new_tokens", "top_k", "num_sequences", "seed", "batch"],
        "perplexity": ["batch"],
        "candidates": ["top_k", "batch"],
        "steer": ["layer"],
        "prepend": ["n_tokens", "samples", "seed"],
        "ioi": ["n", "seed"],
        "circuit": ["top_n", "greedy"],
        "verify": ["rows"],
        "load": ["threads", "device"],
    }
    unnamed = []
    for entry, keywords in counts.items():
        for kw in keywords:
            try:
                calls[entry](**{kw: -1})
                unnamed.append(f"{entry}({kw}=-1): accepted")
            except ValueError as e:
                if f"{kw}=" not in str(e) or len(str(e).splitlines()) != 1:
                    unnamed.append(f"{entry}({kw}=-1): {e}")
            except Exception as e:  # noqa: BLE001 - any other kind is the failure reported
                unnamed.append(f"{entry}({kw}=-1): {type(e).__name__}: {e}")
    assert not unnamed, "\n".join(unnamed)
    assert edges.edge_names
