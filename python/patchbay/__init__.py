"""patchbay: batched activation patching on GPT-2, Llama 3, Mistral, Qwen2/2.5/3, Pythia and Gemma 2, from Python.

    import patchbay as pb
    model = pb.load("gpt2")                       # a hub id, or a directory with config.json,
                                                  # model.safetensors and tokenizer.json
    r = model.patch(clean="Michelle Jones was a top-notch student. Michelle",
                    corrupted="Michelle Smith was a top-notch student. Michelle",
                    answer=" Jones", distractor=" Smith", sites=["resid_pre"])
    r["resid_pre"]                                # numpy float32 [pairs, layers, positions]
    r.heatmap("resid_pre")                        # shows inline in Jupyter

Every call runs the same library job as the `patchbay` command line, so the arrays are the CLI's,
bit for bit, for the same inputs and batch settings. Errors are Python exceptions (ValueError,
FileNotFoundError, KeyboardInterrupt) with the CLI's one-line message.
"""
from __future__ import annotations

import copy
import json
import math
import os
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np

from . import _native

__all__ = ["load", "open", "verify", "Model", "Result", "Heatmap", "Patterns", "Attribution", "Perplexity", "__version__"]
__version__ = _native.__version__

PathLike = Union[str, "os.PathLike[str]"]
def load(model: str = _native.DEFAULT_MODEL, backend: str = "cpu", dtype: str = "f32", fusion: bool = False,
         threads: Optional[int] = None, device: int = 0) -> "Model":
    """Loads a model once for any number of jobs.

    model: a Hugging Face hub id (``gpt2``, ``openai-community/gpt2-medium``; fetched into the HF
    cache, ``HF_HUB_OFFLINE=1`` reads only the cache) or a directory holding config.json,
    model.safetensors and tokenizer.json. backend: ``cpu``, ``wgpu`` or ``cuda`` (when built with
    it); dtype: ``f32``, ``f16``, ``bf16``, ``tf32``; fusion: burn's kernel fusion on GPU backends;
    threads: the cpu backend's worker threads (once per process; every core by default).
    """
    return Model(_native.load(os.fspath(model), backend, dtype, bool(fusion), _count("threads", threads), _count("device", device)))


def open(path: PathLike) -> "Result":  # noqa: A001 - the name users expect (pb.open)
    """A finished results directory (``patchbay run``, ``Model.run``, ``Model.patch(out=...)``)."""
    path = os.fspath(path)
    # Read by the library, under the directory's shared lock, through its manifest.
    manifest, raw, lengths = _native.open_run(path)
    manifest = json.loads(manifest)
    arrays = {name: np.frombuffer(values, dtype="<f4").reshape(shape).copy() for name, shape, values in raw}
    lengths = np.frombuffer(lengths, dtype="<i4").copy()
    return Result(manifest, arrays, manifest.get("skipped", []), path, lengths)


def graph(model: str = _native.DEFAULT_MODEL) -> Dict[str, List[str]]:
    """The model's computational graph as circuit discovery scores it (``patchbay graph``), in
    EAP-IG's names and order: {"nodes": ["input", "a0.h0", ..., "m0", ..., "logits"], "edges":
    ["input->a0.h0<q>", ..., "m11->logits"]}. Only the model's config.json is read."""
    nodes, edges = _native.graph(os.fspath(model))
    return {"nodes": nodes, "edges": edges}


def verify(path: PathLike, rows: Optional[int] = None, **options: Any) -> Dict[str, Any]:
    """Rechecks ``rows`` (32) random patched runs of a finished run on the simplest path (one row
    per forward pass, no reuse, no fusion), as ``patchbay verify`` does, and records the result in
    its manifest. backend=/dtype=/device=/threads=: where to recompute (default: the run's own, the
    cpu for a cuda run). A difference beyond the tolerance raises ValueError naming the rows."""
    return json.loads(_native.verify(os.fspath(path), _options(dict(options, rows=rows))))


def _texts(texts: Union[str, Iterable[str]]) -> List[str]:
    return [texts] if isinstance(texts, str) else list(texts)


def _spec_json(spec: Mapping[str, Any]) -> str:
    """A job's spec as the native module reads it (JSON): a NaN or infinite option, which JSON
    cannot carry, is refused naming the option."""
    def check(options: Mapping[str, Any]) -> None:
        for key, value in options.items():
            if isinstance(value, Mapping):
                check(value)
            elif isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{key}= must be a number, not {value}")
    check(spec)
    return json.dumps(spec, default=_json_scalar)


def _options(options: Mapping[str, Any]) -> str:
    """A job's options as the library's options type reads them (JSON, the CLI's flags with
    underscores): the keywords as given, None ("not given") left out, so every default is the
    library's."""
    return _spec_json({k: v for k, v in options.items() if v is not None})


def _count(keyword: str, value: Any) -> Optional[int]:
    """A count or index a native function takes as an unsigned integer: a negative one (which pyo3
    would refuse as an unnamed OverflowError) is a ValueError naming the keyword; None stays None."""
    if value is None:
        return None
    number = int(value)
    if number < 0:
        raise ValueError(f"{keyword}={value}: it must be a whole number, 0 or more")
    return number


def _json_scalar(value: Any) -> Any:
    """numpy scalars and arrays (an np.int64 position, a np.float32 threshold) as JSON's numbers."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{value!r} (a {type(value).__name__}) is not a number, string or list a job takes")


def _progress_callback(progress: Any) -> Optional[Callable[..., None]]:
    """progress=True: a tqdm bar when tqdm is installed; a callable: called as
    (event, *values) with events start(total, unit), advance(n), note(text), finish()."""
    if callable(progress):
        return progress
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    state: Dict[str, Any] = {}

    def callback(event: str, *values: Any) -> None:
        if event == "start":
            state["bar"] = tqdm(total=values[0], unit=" " + values[1], leave=False)
        elif event == "advance" and "bar" in state:
            state["bar"].update(values[0])
        elif event == "note" and "bar" in state:
            state["bar"].set_postfix_str(values[0])
        elif event == "finish" and "bar" in state:
            state.pop("bar").close()

    return callback


def _pair_dict(p: Any, columns: Mapping[str, str], index: int = 0) -> Dict[str, Any]:
    if isinstance(p, (tuple, list)):
        # (clean, corrupted) or (clean, corrupted, answer, distractor), as TransformerLens users write them.
        if len(p) not in (2, 4) or not all(isinstance(x, str) for x in p):
            raise TypeError(f"pairs[{index}] = {p!r}: a pair is a dict, or a tuple of 2 or 4 strings "
                            "(clean, corrupted[, answer, distractor])")
        p = dict(zip(("clean", "corrupted", "answer", "distractor"), p))
    if not isinstance(p, Mapping):
        raise TypeError(f"pairs[{index}] is a {type(p).__name__}: a pair is a dict or a tuple of strings")

    def get(field: str) -> Any:
        value = p.get(columns.get(field, field))
        if value is None or (isinstance(value, float) and value != value):  # None or NaN (pandas)
            return None
        return value

    out: Dict[str, Any] = {"clean": get("clean"), "corrupted": get("corrupted"),
                           "answer": get("answer"), "distractor": get("distractor")}
    positions = get("positions")
    if isinstance(positions, str):
        positions = json.loads(positions)
    out["positions"] = dict(positions or {})
    for field in ("clean", "corrupted"):
        if not isinstance(out[field], str):
            raise ValueError(f"pair {dict(p)!r}: {field!r} must be a string")
    return out


def _pairs(pairs: Any, columns: Optional[Mapping[str, str]]) -> Dict[str, Any]:
    """pairs= as the library reads it: a file's path (with columns=), or the records of a pandas
    or polars DataFrame, a list of dicts or of (clean, corrupted[, answer, distractor]) tuples."""
    if isinstance(pairs, (str, os.PathLike)):
        return {"pairs": os.fspath(pairs), "columns": dict(columns) if columns else None}
    if hasattr(pairs, "iterrows"):  # pandas
        records = pairs.to_dict("records")
    elif hasattr(pairs, "to_dicts"):  # polars
        records = pairs.to_dicts()
    else:
        records = list(pairs)
    # The records' columns are renamed here, as they are read: none is left to rename.
    return {"pairs": [_pair_dict(p, dict(columns or {}), i) for i, p in enumerate(records)], "columns": None}


def _run_options(clean, corrupted, answer, distractor, pairs, columns, options: Mapping[str, Any]) -> str:
    """A patching job's options as the library's `RunOptions` reads them (JSON, keys as the CLI's
    flags with underscores): the keywords as given, None left out, pairs= a file's path or the
    records of a DataFrame or list of dicts. Every default is the library's."""
    given = dict(clean=clean, corrupted=corrupted, answer=answer, distractor=distractor, columns=columns, **options)
    if pairs is not None:
        given.update(_pairs(pairs, columns))
    return _options(given)


class Model:
    """A model loaded on a backend (``patchbay.load``). Jobs: patch, path, run, inspect, patterns,
    attribute, generate, perplexity, candidates, steer, prepend, ioi."""

    def __init__(self, native: "_native.Model"):
        self._native = native

    def __repr__(self) -> str:
        b = self.backend
        return f"patchbay.Model({self.id!r}, backend={b['kind']!r}, dtype={b['dtype']!r}, fusion={b['fusion']})"

    @property
    def id(self) -> str:
        """The hub id or directory the model was loaded from."""
        return self._native.id

    @property
    def config(self) -> Dict[str, Any]:
        """config.json as patchbay read it, described without its family (family, layers, heads, kv_heads, d_model, d_head, …)."""
        return json.loads(self._native.config)

    @property
    def backend(self) -> Dict[str, Any]:
        return json.loads(self._native.backend)

    def tokenize(self, text: str, prepend_bos: bool = False) -> List[int]:
        return self._native.tokenize(text, prepend_bos)

    def to_str_tokens(self, ids: Sequence[int]) -> List[str]:
        """Each id's string (TransformerLens' ``to_str_tokens``)."""
        return self._native.token_strs(list(ids))

    def decode(self, ids: Sequence[int]) -> str:
        return self._native.decode(list(ids))

    def patch(self, clean: Optional[str] = None, corrupted: Optional[str] = None, answer: Optional[str] = None,
              distractor: Optional[str] = None, *, pairs: Any = None, columns: Optional[Mapping[str, str]] = None,
              progress: Any = True, **options: Any) -> "Result":
        """Patches every (site, layer, position[, head]) of prompt pairs; the arrays of ``patchbay run``.

        Pairs: one (clean=, corrupted=, and answer=/distractor= or neither: then the last token where
        the two differ is predicted), or pairs= a .jsonl/.csv/.parquet path, a pandas DataFrame or a
        list of dicts with the pairs file's columns (clean, corrupted, answer, distractor,
        positions; other names through columns={"clean": "prompt", ...}). A pair failing a check is
        skipped and listed in ``Result.skipped`` (strict=True: a ValueError naming its row).

        The other keywords are ``patchbay run``'s options (docs/python.md lists them; the defaults
        are the library's, one set for both front ends): sites (TransformerLens' patching sites:
        resid_pre, resid_mid, resid_post, attn_out, mlp_out; z/q/k/v/pattern _all_pos and _by_pos,
        pattern_dest_src; groups block, heads_all_pos, heads_by_pos; default resid_pre, attn_out,
        mlp_out), metric (logit_diff, logprob, prob, logprob_diff), method (exact, attribution or
        eap-ig with ig_steps), direction (denoising or noising), ablation (resample, zero, mean,
        mean-positional), prepend_bos, strict, max_diff, reuse, skip, max_rows, and out: a results
        directory written through the CLI's transaction (resume=, overwrite=; verify= rows
        rechecked afterwards, 8 by default); without it the arrays stay in memory.
        """
        return self._patch("run", _run_options(clean, corrupted, answer, distractor, pairs, columns, options), progress)

    def path(self, clean: Optional[str] = None, corrupted: Optional[str] = None, answer: Optional[str] = None,
             distractor: Optional[str] = None, *, pairs: Any = None, columns: Optional[Mapping[str, str]] = None,
             progress: Any = True, **options: Any) -> "Result":
        """Path patching (``patchbay path``): each sending head's write into later heads' q, k or v
        input, or the final residual stream. receivers: q, k, v, resid_final (default all);
        senders: [(layer, head), ...] (default all). The other keywords as in ``patch``: the
        sender's source-minus-base write is what moves."""
        return self._patch("path", _run_options(clean, corrupted, answer, distractor, pairs, columns, options), progress)

    def edges(self, clean: Optional[str] = None, corrupted: Optional[str] = None, answer: Optional[str] = None,
              distractor: Optional[str] = None, *, pairs: Any = None, columns: Optional[Mapping[str, str]] = None,
              progress: Any = True, **options: Any) -> "Result":
        """Edge scores (``patchbay edges``) of every edge of the circuit graph (``pb.graph``).
        method: exact (the sender's clean-minus-corrupted output added to the receiver's input
        alone, one patched run per edge), eap (its gradient estimate) or eap-ig (integrated
        gradients over the token embeddings, ig_steps points, 5 by default).
        ``result["edges"]`` is [pairs, edges], ``result.edge_names`` its names (EAP-IG's). Takes
        ``patch``'s other keywords but sites."""
        return self._patch("edges", _run_options(clean, corrupted, answer, distractor, pairs, columns, options), progress)

    def _patch(self, job: str, options: str, progress: Any) -> "Result":
        return self._result(self._native.patch(job, options, _progress_callback(progress)))

    def faithfulness(self, run: PathLike, *, progress: Any = True, **options: Any) -> Dict[str, Any]:
        """The faithfulness curve of an edges run's circuits (``patchbay faithfulness``): each
        circuit evaluated on the run's pairs with only its edges from the clean run (every other
        edge ablated as the run ablates), many circuits a batch. Keywords are the command's options:
        sizes: edge counts (default MIB's 0.1 % ... 100 % of the graph), chosen as top-n
        (greedy=True: EAP-IG's greedy; absolute=, prune= as EAP-IG's); or circuits: EAP-IG Graph
        JSON files; max_rows. Returns the curve (``faithfulness``, ``cpr``, ``cmd``, ``sizes``,
        ``edges``, ...) with ``per_pair``: m(C) [sizes, pairs], and ``drawn``: the circuit written
        as faithfulness_circuit.{json,svg}, the smallest whose faithfulness reaches draw_at (0.8
        by default, else the most faithful). Files go into out (default: run)."""
        options = _options(options)
        curve, per_pair = self._native.faithfulness(os.fspath(run), options, _progress_callback(progress))
        curve = json.loads(curve)
        curve["per_pair"] = np.frombuffer(per_pair, dtype="<f4").reshape(len(curve["sizes"]), curve["pairs"]).copy()
        return curve

    def run(self, config: PathLike, *, job: str = "run", progress: Any = True, **options: Any) -> "Result":
        """The CLI's transactional run of a TOML config (``patchbay run CONFIG``; job="path" or
        "edges" for those commands); keywords are its options (out="results/ioi", resume=True,
        overwrite=False, sites="resid_pre", ...) and override the file's, as the command line does.
        Interrupted (Ctrl-C), ``resume=True`` finishes it."""
        options = _options(options)
        return self._result(self._native.run(job, os.fspath(config), options, _progress_callback(progress)))

    def inspect(self, text: str, top_k: Optional[int] = None, **options: Any) -> List[Dict[str, Any]]:
        """The top_k (20) most likely next tokens after text: [{"rank", "id", "token", "prob"}, ...]
        (``patchbay inspect``; prepend_bos= as its flag)."""
        return json.loads(self._native.inspect(text, _options(dict(options, top_k=top_k))))["top_k"]

    def patterns(self, prompts: Union[str, Iterable[str], None] = None, *, pairs: Any = None,
                 columns: Optional[Mapping[str, str]] = None, progress: Any = True, **options: Any) -> "Patterns":
        """Attention patterns (``patchbay patterns``) of prompts, or of the clean prompts of pairs=; shown
        inline in Jupyter as the offline viewer. Keywords are the command's options: layers/heads
        (lists or "0,3-5"; default all), prepend_bos, batch (64), html_prompts (20), and out: also
        write patterns.npy, lengths.npy, patterns.json, the panel grid and patterns.html there
        (overwrite=)."""
        given = dict(options, **(_pairs(pairs, columns) if pairs is not None else {}))
        texts = [] if prompts is None else _texts(prompts)
        listing, values, html = self._native.patterns(texts, _options(given), _progress_callback(progress))
        listing = json.loads(listing)
        return Patterns(np.frombuffer(values, dtype="<f4").reshape(listing["shape"]), listing, html)

    def attribute(self, clean: Optional[str] = None, corrupted: Optional[str] = None, answer: Optional[str] = None,
                  distractor: Optional[str] = None, *, pairs: Any = None, columns: Optional[Mapping[str, str]] = None,
                  progress: Any = True, **options: Any) -> "Attribution":
        """The logit lens and direct logit attribution (``patchbay attribute``) of each pair's clean
        run, along logit(answer) − logit(distractor) at the last position. Pairs as for ``patch``;
        keywords are the command's options: prepend_bos, strict, batch (64), out, overwrite."""
        given = _run_options(clean, corrupted, answer, distractor, pairs, columns, options)
        listing, arrays, skipped = self._native.attribute(given, _progress_callback(progress))
        listing = json.loads(listing)
        n, layers, heads = len(listing["pairs"]), listing["layers"], listing["heads"]
        shapes = {"accumulated": [n, len(listing["accumulated_labels"])],
                  "components": [n, len(listing["component_labels"])], "heads": [n, layers, heads]}
        data = {name: np.frombuffer(raw, dtype="<f4").reshape(shapes[name]) for name, raw in arrays}
        return Attribution(listing, data, json.loads(skipped))

    def generate(self, prompt: Union[str, Iterable[str]], max_new_tokens: Optional[int] = None, *,
                 steer: Optional[np.ndarray] = None, progress: Any = True, **options: Any) -> Union[str, List[Dict[str, Any]]]:
        """Generates text (``patchbay generate``), with a KV cache, batched; the same seed gives the
        same text on every run and backend. One prompt string and one sequence: the prompt and its
        continuation as a string (as TransformerLens' ``generate``). Otherwise a list of
        {"prompt", "sequence", "prompt_text", "tokens", "text"} (tokens and text: the new ones).
        Keywords are the command's options: max_new_tokens (50), greedy, temperature (1), top_k,
        top_p, freq_penalty (0), num_sequences (1), seed (0), stop_at_eos, prepend_bos, batch (64).
        steer: a vector (``Model.steer``) added coef× (1) at steer_site of steer_layer at every
        position."""
        vector = None
        if steer is not None:
            v = np.ascontiguousarray(steer, dtype="<f4")
            vector = (v.tobytes(), list(v.shape))
        options = _options(dict(options, max_new_tokens=max_new_tokens))
        seqs = json.loads(self._native.generate(_texts(prompt), options, vector, _progress_callback(progress)))
        if isinstance(prompt, str) and len(seqs) == 1:
            return seqs[0]["prompt_text"] + seqs[0]["text"]
        return seqs

    def perplexity(self, texts: Union[str, Iterable[str]], *, progress: Any = True, **options: Any) -> "Perplexity":
        """Perplexity of each text (``patchbay perplexity``), and of each of its tokens (per_token=True).
        Keywords are the command's options: per_token, prepend_bos, batch (64), out, overwrite."""
        listing, values, width = self._native.perplexity(_texts(texts), _options(options), _progress_callback(progress))
        listing = json.loads(listing)
        return Perplexity(listing, np.frombuffer(values, dtype="<f4").reshape(len(listing), width))

    def candidates(self, texts: Union[str, Iterable[str]], top_k: Optional[int] = None, **options: Any) -> Dict[str, Any]:
        """The top_k (5) candidate next tokens (``patchbay candidates``) at each text's last position
        (every position with all_positions=True): {"texts": [{"text", "positions": [{"position",
        "token", "candidates": [{"rank", "id", "token", "prob"}]}]}], "jaccard": array [texts,
        texts] of the last positions' pools (several texts)}. Keywords are the command's options:
        all_positions, prepend_bos, batch (64), out, overwrite."""
        report = json.loads(self._native.candidates(_texts(texts), _options(dict(options, top_k=top_k))))
        if "jaccard" in report:
            n = len(report["texts"])
            report["jaccard"] = np.asarray(report["jaccard"], dtype=np.float32).reshape(n, n)
        return report

    def steer(self, clean: str, corrupted: str, site: str, layer: int, position: Optional[int] = None, **options: Any) -> np.ndarray:
        """A steering vector (``patchbay steer make``): the clean prompt's activation at site (resid_pre,
        resid_mid, resid_post, attn_out, mlp_out: [d_model]; q, k, v, z: [heads, d_head]) of layer, at
        position (negative: from the end; -1 by default), minus the corrupted one's. Keywords are
        the command's options: prepend_bos, and out (also write it as .npy) with overwrite."""
        given = dict(options, clean=clean, corrupted=corrupted, site=site, layer=layer, position=position)
        values, shape = self._native.steer(_options(given))
        return np.frombuffer(values, dtype="<f4").reshape(shape)

    def prepend(self, text: str, n_tokens: Optional[int] = None, *, progress: Any = True, **options: Any) -> List[Dict[str, Any]]:
        """Going backwards (``patchbay prepend``): n_tokens (3) tokens put in front of text, one a step,
        each the least perplexing of samples (10) drawn candidates (seed 0; prepend_bos as the
        flag): [{"step", "text", "tokens", "perplexity", "candidates"}]."""
        return json.loads(self._native.prepend(text, _options(dict(options, n_tokens=n_tokens)), _progress_callback(progress)))

    def ioi(self, n: Optional[int] = None, **options: Any) -> List[Dict[str, Any]]:
        """IOI prompt pairs (``patchbay ioi``; BABA and ABBA templates, names single tokens of this
        model's tokenizer) as records with named positions, ready for ``patch(pairs=...)``.
        n (500) pairs; seed (0); corruption: abc (all three names replaced, the default) or s-flip.
        out: also write them as JSONL (overwrite=)."""
        return json.loads(self._native.ioi(_options(dict(options, n=n))))

    @staticmethod
    def _result(native_result) -> "Result":
        manifest, arrays, skipped, out = native_result
        if arrays is None:
            return open(out)
        manifest = json.loads(manifest)
        shapes = {s["name"]: s["shape"] for s in manifest["sites"]}
        n = len(manifest["pairs"])
        data = {name: np.frombuffer(raw, dtype="<f4").reshape(shapes.get(name, [n])) for name, raw in arrays}
        lengths = np.array([p["length"] for p in manifest["pairs"]], dtype=np.int32)
        return Result(manifest, data, json.loads(skipped), None, lengths)


class Result:
    """A patching run's arrays and manifest: ``r["resid_pre"]`` is float32 [pairs, layers,
    positions] (axis names: ``r.axes(site)``), NaN past a pair's length."""

    def __init__(self, manifest: Dict[str, Any], arrays: Dict[str, np.ndarray], skipped: List[Dict[str, Any]],
                 directory: Optional[str], lengths: np.ndarray):
        # The manifest as read; native code is given this, never what a user edits.
        self._manifest = manifest
        self._manifest_json = json.dumps(manifest)
        self._arrays = arrays
        self.skipped = skipped
        self.directory = directory
        self.lengths = lengths

    @property
    def manifest(self) -> Dict[str, Any]:
        """The run's manifest.json (a copy: editing it changes nothing of the result)."""
        return copy.deepcopy(self._manifest)

    def __repr__(self) -> str:
        where = f", directory={self.directory!r}" if self.directory else ""
        return f"patchbay.Result({len(self._manifest['pairs'])} pair(s), sites={self.sites}{where})"

    def __getitem__(self, site: str) -> np.ndarray:
        if site not in self.sites:
            raise KeyError(f"{site!r} is not a site of this run (sites: {', '.join(self.sites)})")
        return self._arrays[site]

    def __contains__(self, site: str) -> bool:
        return site in self.sites

    @property
    def sites(self) -> List[str]:
        return [s["name"] for s in self._manifest["sites"]]

    @property
    def edge_names(self) -> List[str]:
        """The names of the edges site's edge axis (EAP-IG's), or [] without one."""
        return next((s.get("edges", []) for s in self._manifest["sites"] if s["name"] == "edges"), [])

    def circuit(self, **options: Any) -> "Circuit":
        """A circuit chosen from this edges run's scores (``patchbay circuit``; keywords are its
        options), as EAP-IG chooses: top_n edges, every edge with |score| >= threshold, or greedy=
        n edges from the logits backwards (absolute=, prune= as EAP-IG's); written as EAP-IG's
        Graph JSON (out=, default: circuit.json in the run's directory)."""
        if self.directory is None:
            raise ValueError("circuits are chosen from a run in a results directory (patch(..., out=...))")
        graph, svg, path = _native.circuit(self.directory, _options(options))
        return Circuit(json.loads(graph), svg, path)

    def axes(self, site: str) -> tuple:
        """The axis names of a site's array, e.g. ("pair", "layer", "position")."""
        self[site]
        return tuple(next(s["axes"] for s in self._manifest["sites"] if s["name"] == site))

    @property
    def baseline_clean(self) -> np.ndarray:
        """The metric of each pair's clean run, [pairs]."""
        return self._arrays["baseline_clean"]

    @property
    def baseline_corrupted(self) -> np.ndarray:
        return self._arrays["baseline_corrupted"]

    @property
    def tokens(self) -> List[Dict[str, Any]]:
        """Each pair's clean and corrupted token strings, its answer and distractor, and its row."""
        return [{"row": p["row"], "clean": p["clean_strs"], "corrupted": p["corrupted_strs"],
                 "answer": p["answer"]["token"], "distractor": p["distractor"]["token"], "positions": p["positions"]}
                for p in self._manifest["pairs"]]

    def _normalized(self, site: str):
        raw = np.ascontiguousarray(self[site], dtype="<f4")
        values, included = _native.normalize(self._manifest_json, site, raw.tobytes(),
                                              np.ascontiguousarray(self.baseline_clean, "<f4").tobytes(),
                                              np.ascontiguousarray(self.baseline_corrupted, "<f4").tobytes())
        return np.frombuffer(values, dtype="<f4").reshape(raw.shape), included

    def normalized(self, site: str) -> np.ndarray:
        """(patched − corrupted) / (clean − corrupted) per pair, as ``patchbay analyze`` computes it
        (NaN for a pair whose baselines are equal)."""
        return self._normalized(site)[0]

    def heatmap(self, site: str) -> "Heatmap":
        """``analyze``'s heatmap of the site's normalized mean over pairs (inline in Jupyter)."""
        values, included = self._normalized(site)
        svg, png = _native.heatmap(self._manifest_json, site, values.tobytes(), included)
        return Heatmap(svg, png)


class Patterns:
    """Attention patterns: ``values`` float32 [prompts, layers, heads, dest_position, src_position]
    (NaN past a prompt's length), ``layers``/``heads`` (which ones, in order),
    ``tokens`` (each prompt's token strings); shown inline in Jupyter as the offline viewer."""

    def __init__(self, values: np.ndarray, listing: Dict[str, Any], html: str):
        self.values = values
        self.layers: List[int] = listing["layers"]
        self.heads: List[int] = listing["heads"]
        self.lengths: List[int] = listing["lengths"]
        self.tokens: List[List[str]] = listing["strs"]
        self.ids: List[List[int]] = listing["tokens"]
        self.html = html

    def __repr__(self) -> str:
        return f"patchbay.Patterns({len(self.lengths)} prompt(s), layers={self.layers}, heads={self.heads})"

    def of(self, prompt: int, layer: int, head: int) -> np.ndarray:
        """One head's pattern [dest, src] over the prompt's own tokens (layer and head as in the model)."""
        if layer not in self.layers or head not in self.heads:
            raise KeyError(f"layer {layer}, head {head} were not computed (layers {self.layers}, heads {self.heads})")
        n = self.lengths[prompt]
        return self.values[prompt, self.layers.index(layer), self.heads.index(head), :n, :n]

    def _repr_html_(self) -> str:
        # The viewer is a whole page; an iframe keeps its script and styles to itself.
        import html as _html
        return (f'<iframe srcdoc="{_html.escape(self.html, quote=True)}" '
                'style="width: 100%; height: 640px; border: 0" sandbox="allow-scripts"></iframe>')

    def save(self, path: PathLike) -> None:
        """The offline viewer as an HTML file."""
        with builtins_open(os.fspath(path), "w", encoding="utf-8") as f:
            f.write(self.html)


class Attribution:
    """The logit lens and direct logit attribution of pairs' clean runs: ``accumulated``
    [pairs, 2·layers + 1; layers + 1 without resid_mid] (labels ``accumulated_labels``), ``components`` [pairs, 2·layers + 2]
    (``component_labels``), ``heads`` [pairs, layers, heads]; ``logit_diff`` and ``bias_term`` per
    pair (the components and the bias term sum to the logit difference)."""

    def __init__(self, listing: Dict[str, Any], arrays: Dict[str, np.ndarray], skipped: List[Dict[str, Any]]):
        self.listing = listing
        self.accumulated = arrays["accumulated"]
        self.components = arrays["components"]
        self.heads = arrays["heads"]
        self.accumulated_labels: List[str] = listing["accumulated_labels"]
        self.component_labels: List[str] = listing["component_labels"]
        self.logit_diff = np.asarray(listing["logit_diff"], dtype=np.float32)
        self.bias_term = np.asarray(listing["bias_term"], dtype=np.float32)
        self.skipped = skipped

    def __repr__(self) -> str:
        return f"patchbay.Attribution({len(self.listing['pairs'])} pair(s), {self.listing['layers']} layers)"


class Perplexity:
    """``perplexity`` [texts]; ``token_perplexity`` [texts, longest − 1] (token t+1 given ..=t, NaN
    past a text's end); ``texts``: per text {"text", "tokens", "perplexity"[, "per_token"]}."""

    def __init__(self, texts: List[Dict[str, Any]], token_perplexity: np.ndarray):
        self.texts = texts
        self.perplexity = np.asarray([t["perplexity"] for t in texts], dtype=np.float32)
        self.token_perplexity = token_perplexity

    def __repr__(self) -> str:
        return f"patchbay.Perplexity({self.perplexity.tolist()})"


class Circuit:
    """A circuit in EAP-IG's Graph JSON (``graph``: cfg, nodes, edges); shown inline as its drawing.
    ``edges`` lists the chosen edges' names, ``scores`` every edge's score by name."""

    def __init__(self, graph: Dict[str, Any], svg: str, path: str):
        self.graph = graph
        self.svg = svg
        self.path = path

    @property
    def edges(self) -> List[str]:
        return [name for name, e in self.graph["edges"].items() if e["in_graph"]]

    @property
    def nodes(self) -> List[str]:
        return [name for name, n in self.graph["nodes"].items() if n["in_graph"]]

    @property
    def scores(self) -> Dict[str, float]:
        return {name: e["score"] for name, e in self.graph["edges"].items()}

    def __repr__(self) -> str:
        return f"patchbay.Circuit({len(self.edges)} edges, {len(self.nodes)} nodes, path={self.path!r})"

    def _repr_svg_(self) -> str:
        return self.svg


class Heatmap:
    """A figure shown inline by Jupyter (SVG, or PNG); ``save("x.svg")`` or ``save("x.png")``."""

    def __init__(self, svg: str, png: bytes):
        self.svg = svg
        self.png = png

    def _repr_svg_(self) -> str:
        return self.svg

    def _repr_png_(self) -> bytes:
        return self.png

    def save(self, path: PathLike) -> None:
        path = os.fspath(path)
        if path.endswith(".svg"):
            with builtins_open(path, "w", encoding="utf-8") as f:
                f.write(self.svg)
        elif path.endswith(".png"):
            with builtins_open(path, "wb") as f:
                f.write(self.png)
        else:
            raise ValueError(f"{path}: save as .svg or .png")


import builtins as _builtins  # noqa: E402 - `open` above is patchbay's

builtins_open = _builtins.open
