"""Exact edges at MIB's scale: every edge of the Qwen2.5-0.5B graph (179,749 edges), patchbay against a
PyTorch per-edge loop, side by side on one CPU, extrapolated to the whole graph and to 100 pairs.

    python benches/edges_qwen.py --patchbay /work/target-release/release/patchbay --threads 2
    python benches/edges_qwen.py --patchbay ... --layers 2 --shards 20 --max-rows 16 --pairs 2 --sample 6   # a quick check

A random-weight model of Qwen2.5-0.5B's released shape (HF's Qwen2ForCausalLM and its initialisation,
seed 0, float32, eager attention; benches/compare_torch.py's FAMILIES["qwen2"]; --layers N keeps the
shape but N layers), saved with save_pretrained to a temporary directory, the GPT-2 tokenizer standing
in for Qwen's (its ids fit Qwen's vocabulary, as benches/load.py does). IOI pairs from `patchbay ioi
--seed 0`: its templates give prompts of several lengths, so --pairs pairs of one length are taken
(the most common length among the generated candidates; the lengths are printed). Then:
  * patchbay, `patchbay edges` (exact) on a sample of the graph's rows: `--shard K/N` for each K of
    --shard-ids (default N = 200, K = 0, 67, 133, 199: spread over the graph, since a row's cost
    depends on its receiver's layer), each shard computing batches floor(K*B/N)..floor((K+1)*B/N) of
    the B = ceil(E / --max-rows) batches of --max-rows edges (default 128), of every pair. rows/s = the shards' (edge, pair) cells over the sum of the seconds patchbay prints
    ("in X s": the sweep, loading excluded; each shard also pays the pair's clean and corrupted
    runs, which a whole-graph run pays once). Four runs, each on the same shards:
      - 1 pair, default (no-op skipping, receivers' shared prefixes),
      - 1 pair, --no-skip              (what no-op skipping saves: rows start at the first differing
                                         position, before which every write is zero),
      - 1 pair, --no-reuse --no-skip   (what the shared prefixes save: every row in full),
      - --pairs pairs of one length, default (what batching across pairs of one length saves);
  * PyTorch, per edge (EAP-IG's `method='exact'` way): one HF forward pass of the corrupted prompt per
    (edge, pair), float32, the sender's clean-minus-corrupted output added to the receiver's input
    alone: into a query head's q / k / v by tests/fixtures/make_family_capability_refs.py's
    hf_head_edge (that layer's q, k, v computed again from input_layernorm(resid_pre + write), head h's
    copy, after repeat_kv, swapped in), into an MLP / the logits by a forward pre-hook on
    post_attention_layernorm / the final norm; the senders' outputs (that file's sender_output) from HF
    forward hooks on embed_tokens, o_proj's input and each MLP, one clean and one corrupted run. The
    logits of the last position only (logits_to_keep=1, as a careful user writes it; --full-logits:
    every position, the plain call). --sample edges drawn from the shards' rows, each on every pair;
    the two baseline forwards per pair are not timed. Its values are compared with patchbay's. The runs go
    through that file's hf_in_float64, which for a float32 model swaps HF's RMSNorm, rotary angles and
    eager softmax for its own in the model's dtype (angles in float64, cast): one such forward took the
    time of HF's plain one (0.061 s against 0.059 s at 4 layers, logits_to_keep=1, 2 threads).
Run it on an idle machine: with another process on the CPU, PyTorch's OpenMP threads slow down by
orders of magnitude per small op (a warning is printed when the CPU is busy beforehand). The default
full-shape run takes about a quarter of an hour on 2 cores (estimated from --layers 2 and 4).
Prints a table: seconds measured, rows/s, the whole graph's hours for 1 and 100 pairs at that rate,
and the ratio of rows/s to the PyTorch loop's; then the breakdown of what is not computed.
"""
import argparse
import contextlib
import functools
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
# Importing it sets torch's threads to 1 and turns gradients off: the threads are set again in main().
from make_family_capability_refs import (edge_name, graph, hf_head_edge, hf_in_float64, hooked,  # noqa: E402
                                         metric_of, sender_output)

# Qwen/Qwen2.5-0.5B's config.json (benches/compare_torch.py's FAMILIES["qwen2"]).
QWEN = dict(num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, hidden_size=896, intermediate_size=4864,
            vocab_size=151936, max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True)
QWEN_EDGES = 179749  # `patchbay graph` of that config


def patchbay(args, *cmd):
    done = subprocess.run([args.patchbay, *cmd], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"patchbay {' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout, done.stderr


def exact_shards(args, model_dir, pairs_file, out, flags):
    """`patchbay edges` on each shard of --shard-ids: the shards' results merged into one [P, E] array
    (NaN outside them), the (edge, pair) cells, computed and skipped runs, and the seconds patchbay
    reports (the sweep, not the load)."""
    seconds, cells, computed, skipped, values, per_shard = 0.0, 0, 0, 0, None, []
    for k in args.shard_ids:
        cmd = ["edges", "--model", str(model_dir), "--pairs", str(pairs_file), "--verify", "0", "--threads", str(args.threads),
               "--shard", f"{k}/{args.shards}", "--out", str(out), "--overwrite", *flags]
        if args.prepend_bos:
            cmd.append("--prepend-bos")
        cmd += ["--max-rows", str(args.max_rows)]
        stdout, _ = patchbay(args, *cmd)
        found = re.search(r"computed in ([0-9.]+) s", stdout)
        if not found:
            sys.exit(f"no time in patchbay's output:\n{stdout}")
        seconds += float(found.group(1))
        per_shard.append(float(found.group(1)))
        shard_dir = out / f"shard-{k:04d}-of-{args.shards:04d}"
        manifest = json.loads((shard_dir / "manifest.json").read_text())
        lo, hi = manifest["shard"]["edges"]
        want = shard_edges([k], args.shards, len(manifest["sites"][0]["edges"]), args.max_rows)[0]
        assert (lo, hi) == (want.start, want.stop), f"shard {k} holds edges {lo}..{hi}, not {want}"
        n_pairs = len(manifest["pairs"])
        runs = manifest["runs"]
        if runs["computed"] + runs["skipped"] != (hi - lo) * n_pairs:
            print(f"  note: shard {k}: {runs} runs, {(hi - lo) * n_pairs} (edge, pair) cells")
        cells += (hi - lo) * n_pairs
        computed += runs["computed"]
        skipped += runs["skipped"]
        shard = np.load(shard_dir / "edges.npy")
        bad = int((~np.isfinite(shard[:, lo:hi])).sum())
        if bad:
            print(f"  WARNING shard {k} ({' '.join(flags) or 'default'}): {bad} of its cells are not finite")
        if values is None:
            values = np.full(shard.shape, np.nan, dtype=np.float64)
        values[:, lo:hi] = shard[:, lo:hi]
    return dict(seconds=seconds, cells=cells, computed=computed, skipped=skipped, values=values, manifest=manifest, per_shard=per_shard)


def cpu_busy(seconds=1.0):
    """The fraction of the CPU busy over `seconds` (/proc/stat; None where there is none)."""
    def sample():
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # total, idle + iowait
    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except OSError:
        return None
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)


def shard_edges(shard_ids, shards, n_edges, max_rows):
    """The graph rows of the shards: patchbay cuts the graph into B = ceil(E / max_rows) batches of
    max_rows edges and gives shard K batches floor(K*B/N)..floor((K+1)*B/N)."""
    blocks = -(-n_edges // max_rows)
    return [range(k * blocks // shards * max_rows, min((k + 1) * blocks // shards * max_rows, n_edges)) for k in shard_ids]


@contextlib.contextmanager
def logits_to_keep(model, keep):
    """model(tokens) computing the logits of the last `keep` positions only (0: every position)."""
    if keep:
        model.forward = functools.partial(type(model).forward, model, logits_to_keep=keep)
    try:
        yield
    finally:
        if keep:
            del model.forward


def record(model, tokens):
    """The activations sender_output reads, from one HF forward pass of `tokens` (hooks: embed_tokens'
    output, o_proj's input z per head, each MLP's output); the forward the edge runs take."""
    B, T = tokens.shape
    acts, hooks = {}, [(model.model.embed_tokens, "post", lambda mod, args, out: acts.__setitem__("embed", out))]
    H = model.config.num_attention_heads
    for l, layer in enumerate(model.model.layers):
        hooks.append((layer.self_attn.o_proj, "pre", lambda mod, args, l=l: acts.__setitem__((l, "z"), args[0].view(B, T, H, -1))))
        hooks.append((layer.mlp, "post", lambda mod, args, out, l=l: acts.__setitem__((l, "mlp_out"), out)))
    with hf_in_float64(model), hooked(hooks):
        model(tokens)
    return acts


def torch_edge(model, tokens, edge, write, a, b):
    """The metric of one HF forward pass of `tokens` [1, T] with `write` [1, T, d] added to the edge's
    receiver input alone."""
    _, receiver, qkv = edge
    if receiver == "logits" or receiver.startswith("m"):
        module = model.model.norm if receiver == "logits" else model.model.layers[int(receiver[1:])].post_attention_layernorm
        with hf_in_float64(model), hooked([(module, "pre", lambda mod, args: (args[0] + write, *args[1:]))]):
            logits = model(tokens).logits
    else:
        l, h = (int(i) for i in receiver[1:].split(".h"))
        logits = hf_head_edge(model, tokens, l, h, qkv, write)  # float32 here: the model's dtype
    return metric_of(a, b)(logits)[0].item()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patchbay", default=str(ROOT / "target" / "release" / "patchbay"))
    p.add_argument("--pairs", type=int, default=2, help="IOI pairs of one length for the batched run [default: 2]")
    p.add_argument("--candidates", type=int, default=64, help="IOI pairs generated to find --pairs of one length")
    p.add_argument("--corruption", default="abc", help="patchbay ioi --corruption: abc (every name replaced; the first difference early) or s-flip (S2 only: late)")
    p.add_argument("--shards", type=int, default=200, help="N of --shard K/N [default: 200]")
    p.add_argument("--shard-ids", default=None, help="comma-separated K [default: 0, N/3, 2N/3, N-1 rounded: 0,67,133,199]")
    p.add_argument("--sample", type=int, default=12, help="edges the PyTorch loop times, each on every pair")
    p.add_argument("--threads", type=int, default=2, help="patchbay's and PyTorch's CPU threads")
    p.add_argument("--layers", type=int, default=None, help="the shape with N layers instead of 24 (a quick check)")
    p.add_argument("--max-rows", type=int, default=128, help="patchbay --max-rows: rows a batch, and the shards' unit [default: 128]")
    p.add_argument("--prepend-bos", action="store_true", help="patchbay --prepend-bos (Qwen2.5's tokenizer puts no BOS)")
    p.add_argument("--full-logits", action="store_true", help="the PyTorch loop computes every position's logits (the plain call)")
    p.add_argument("--keep", type=Path, help="keep the model, pairs and results in this directory")
    args = p.parse_args()
    args.shard_ids = ([int(k) for k in args.shard_ids.split(",")] if args.shard_ids else
                      sorted({min(args.shards - 1, round(i * args.shards / 3)) for i in range(4)}))
    assert all(0 <= k < args.shards for k in args.shard_ids), args.shard_ids
    if args.pairs >= args.shards:
        sys.exit("--pairs must be fewer than --shards: an exact edge run over fewer pairs than shards is split by rows of the graph")
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    busy = cpu_busy()
    if busy is not None and busy > 0.2:
        print(f"WARNING: the CPU was {busy:.0%} busy over the last second before the run: another process is using it, and both sides' "
              f"timings (PyTorch's OpenMP threads most of all) suffer from it; run this on an idle machine")

    tmp = args.keep or Path(tempfile.mkdtemp(prefix="patchbay-edges-qwen-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        dims = dict(QWEN, num_hidden_layers=args.layers or QWEN["num_hidden_layers"])
        torch.manual_seed(0)
        started = time.perf_counter()
        model = Qwen2ForCausalLM(Qwen2Config(**dims, attn_implementation="eager")).eval()
        model_dir = tmp / "model"
        model.save_pretrained(model_dir)
        shutil.copy(ROOT / "tests" / "fixtures" / "gpt2" / "tokenizer.json", model_dir / "tokenizer.json")
        L, H, KV = dims["num_hidden_layers"], dims["num_attention_heads"], dims["num_key_value_heads"]
        n_params = sum(t.numel() for t in model.parameters())
        print(f"Qwen2.5-0.5B shape, {L} layers{'' if L == 24 else ' (--layers)'}, random weights: {n_params / 1e6:.0f} M parameters, "
              f"made and saved in {time.perf_counter() - started:.0f} s; torch {torch.__version__}, {torch.get_num_threads()} threads")

        # The graph: this script's (EAP-IG's order) and patchbay's, the same.
        edges = graph(L, H)
        listed, _ = patchbay(args, "graph", "--model", str(model_dir), "--edges")
        assert listed.split() == [edge_name(*e) for e in edges], "patchbay graph --edges lists other edges"
        E = len(edges)
        if L == 24:
            assert E == QWEN_EDGES, E
        print(f"graph: {E:,} edges (patchbay graph --edges: the same, in the same order)")

        # IOI pairs: the templates give several lengths; --pairs of the most common one.
        patchbay(args, "ioi", "--model", str(model_dir), "--n", str(args.candidates), "--seed", "0", "--corruption", args.corruption, "--out", str(tmp / "candidates.jsonl"), "--overwrite")
        candidates = [json.loads(line) for line in (tmp / "candidates.jsonl").read_text().splitlines()]
        length = lambda c: c["positions"]["end"] + 1  # tokens, BOS apart (named positions count without it)
        counts = Counter(length(c) for c in candidates)
        common, n_common = counts.most_common(1)[0]
        print(f"IOI pairs (patchbay ioi --seed 0, {len(candidates)} generated): lengths {dict(sorted(counts.items()))} (tokens: count); "
              f"the templates differ in length, so batching across pairs applies within a length")
        if n_common < args.pairs:
            sys.exit(f"only {n_common} pairs of length {common} among {len(candidates)}: raise --candidates")
        chosen = [c for c in candidates if length(c) == common][: args.pairs]
        (tmp / "pairs.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chosen))
        (tmp / "pair1.jsonl").write_text(json.dumps(chosen[0]) + "\n")
        print(f"  taken: {args.pairs} pairs of {common} tokens{' (+ BOS)' if args.prepend_bos else ''}")

        # patchbay on the shards' rows.
        if -(-E // args.max_rows) < args.shards:
            sys.exit(f"{E} edges make fewer batches of --max-rows {args.max_rows} than --shards {args.shards}: lower one of them")
        rows = shard_edges(args.shard_ids, args.shards, E, args.max_rows)
        n_rows = sum(len(r) for r in rows)
        print(f"shards {','.join(map(str, args.shard_ids))} of {args.shards}: {n_rows:,} of the {E:,} rows; receivers "
              + "; ".join(f"{k}: {edges[r[0]][1]}..{edges[r[-1]][1]}" for k, r in zip(args.shard_ids, rows)), flush=True)
        modes = [("patchbay exact, 1 pair", "pair1.jsonl", []),
                 ("patchbay exact, 1 pair, --no-skip", "pair1.jsonl", ["--no-skip"]),
                 ("patchbay exact, 1 pair, --no-reuse --no-skip", "pair1.jsonl", ["--no-reuse", "--no-skip"]),
                 (f"patchbay exact, {args.pairs} pairs of one length", "pairs.jsonl", [])]
        results = {}
        for i, (label, pairs_file, flags) in enumerate(modes):
            r = exact_shards(args, model_dir, tmp / pairs_file, tmp / f"exact-{i}", flags)
            results[label] = r
            print(f"  {label}: {r['cells']:,} cells ({r['computed']:,} computed, {r['skipped']:,} skipped) in {r['seconds']:.2f} s "
                  f"(per shard: {', '.join(f'{t:.2f}' for t in r['per_shard'])})", flush=True)
        batched = results[modes[3][0]]
        manifest = batched["manifest"]
        lengths = {len(q["corrupted_tokens"]) for q in manifest["pairs"]} | {len(q["clean_tokens"]) for q in manifest["pairs"]}
        assert len(lengths) == 1, f"the pairs' token lengths differ: {lengths}"
        assert [edge_name(*e) for e in edges] == manifest["sites"][0]["edges"], "the manifest's edges differ from the graph"

        # The modes agree on the first pair's cells.
        ref = results[modes[0][0]]["values"][0]
        cells = np.concatenate([np.arange(r.start, r.stop) for r in rows])
        mode_gap = max(float(np.abs(results[label]["values"][0, cells] - ref[cells]).max()) for label, _, _ in modes[1:])

        # PyTorch: one forward pass per (edge, pair), on a sample of the shards' rows.
        pairs = manifest["pairs"]
        sample = sorted(random.Random(0).sample(list(cells), min(args.sample, len(cells))))
        keep = 0 if args.full_logits else 1
        worst, loop_s, loop_runs = 0.0, 0.0, 0
        with logits_to_keep(model, keep):
            for i, pair in enumerate(pairs):
                clean = torch.tensor([pair["clean_tokens"]])
                corrupted = torch.tensor([pair["corrupted_tokens"]])
                a, b = torch.tensor([pair["answer"]["id"]]), torch.tensor([pair["distractor"]["id"]])
                c, k = record(model, clean), record(model, corrupted)
                if i == 0:  # warm-up
                    torch_edge(model, corrupted, edges[sample[0]], torch.zeros(*corrupted.shape, model.config.hidden_size), a, b)
                started = time.perf_counter()
                for e in sample:
                    sender = edges[e][0]
                    write = (sender_output(model, c, sender) - sender_output(model, k, sender))[:1]
                    v = torch_edge(model, corrupted, edges[e], write, a, b)
                    worst = max(worst, abs(v - batched["values"][i, e]))
                loop_s += time.perf_counter() - started
                loop_runs += len(sample)
        torch_rate = loop_runs / loop_s

        # The table.
        hours = lambda rate, n: E * n / rate / 3600
        print()
        print(f"Exact edge scores, {E:,} edges, cpu, {args.threads} threads (patchbay --threads, torch.set_num_threads); "
              f"rows = (edge, pair) cells; hours at each rate for the whole graph")
        head = f"{'method':<52} {'seconds':>9} {'rows':>7} {'rows/s':>9} {'h, 1 pair':>10} {'h, 100 pairs':>13} {'× PyTorch':>10}"
        print(head)
        print("-" * len(head))
        table = [(f"PyTorch per-edge loop, HF forward{'' if keep else ', all logits'}", loop_s, loop_runs)]
        table += [(label, r["seconds"], r["cells"]) for label, r in results.items()]
        for label, s, n in table:
            rate = n / s
            print(f"{label:<52} {s:>9.2f} {n:>7} {rate:>9.1f} {hours(rate, 1):>10.3g} {hours(rate, 100):>13.3g} {rate / torch_rate:>10.1f}")
        one = results[modes[0][0]]
        rate = {label: r["cells"] / r["seconds"] for label, r in results.items()}
        print()
        first_diff = [next(i for i, (a, b) in enumerate(zip(q["clean_tokens"], q["corrupted_tokens"])) if a != b) for q in one["manifest"]["pairs"]]
        print("What is not computed (each ratio a quotient of rows/s, the same shards):")
        print(f"  no-op skipping:          {rate[modes[0][0]] / rate[modes[1][0]]:.2f}×  (default vs --no-skip: {one['skipped']:,} of {one['cells']:,} "
              f"rows skipped whole, and every row starts at the pair's first differing position (first difference at {first_diff}), "
              "where the sender's write, clean − corrupted output, is zero before it)")
        print(f"  shared prefixes:         {rate[modes[1][0]] / rate[modes[2][0]]:.2f}×  (--no-skip vs --no-reuse --no-skip: a row joins the batch at "
              f"its receiver's layer from the corrupted run's cache, instead of a full forward pass)")
        print(f"  batching across pairs:   {rate[modes[3][0]] / rate[modes[0][0]]:.2f}×  ({args.pairs} pairs of {common} tokens in one run vs 1 pair; "
              f"IOI's lengths {dict(sorted(counts.items()))}: 100 pairs batch by length)")
        print(f"  together:                {rate[modes[3][0]] / rate[modes[2][0]]:.2f}×  (batched default vs 1 pair, every row in full)")
        print()
        best, single = rate[modes[3][0]], rate[modes[0][0]]
        print(f"Whole graph: {hours(single, 1):.3g} h for 1 pair (the 1-pair rate; PyTorch {hours(torch_rate, 1):.3g} h), {hours(best, 100):.3g} h "
              f"for 100 pairs at the batched rate of {args.pairs} pairs ({best / torch_rate:.1f}× the PyTorch loop's {hours(torch_rate, 100):.3g} h); extrapolated from {n_rows:,} of {E:,} rows "
              f"({len(args.shard_ids)} shards of {args.shards}), each shard's own clean and corrupted runs included")
        print(f"Agreement: the {loop_runs} PyTorch (edge, pair) values vs patchbay's within {worst:.1e}; patchbay's modes on pair 0's "
              f"{len(cells):,} rows within {mode_gap:.1e}")
        if not np.isfinite(worst) or worst > 1e-4:
            print(f"  WARNING: the PyTorch loop and patchbay differ by {worst:.2e} (> 1e-4)")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
