"""Exact edge scores: patchbay against a PyTorch per-edge loop, side by side on one machine.

    cargo build --release
    python benches/edges_torch.py --patchbay target/release/patchbay --pairs 8 --threads 2

A random-weight GPT-2 small (HF's initialisation, seed 0; the real GPT-2 tokenizer from
tests/fixtures/gpt2) saved to a temporary directory, and IOI pairs of it (`patchbay ioi --seed 0`,
<|endoftext|> in front as configs/ioi.toml puts it). Then, each timed once after the model is
loaded:
  * PyTorch, per edge (what EAP-IG's `get_scores_exact` does: one evaluation per edge): one forward
    pass of the corrupted prompt per (edge, pair), HF forward hooks adding the sender's
    clean-minus-corrupted output to the receiver's input alone (tests/fixtures/make_edge_refs.py's
    hooks), on --sample edges drawn at random; edges/s extrapolated to the whole graph;
  * patchbay: `patchbay edges` (exact, every edge of the graph a row of the batched engine) on
    --exact-pairs of the pairs (whole graph); and `patchbay edges --method eap` on all of them.
The sampled edges' values of the two exact runs are compared. Prints seconds and edges/s.
"""
import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
from make_edge_refs import graph, run  # noqa: E402


def patchbay(args, *cmd):
    started = time.perf_counter()
    done = subprocess.run([args.patchbay, *cmd], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"patchbay {' '.join(cmd)} failed:\n{done.stderr}")
    return done.stdout, time.perf_counter() - started


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patchbay", default=str(ROOT / "target" / "release" / "patchbay"))
    p.add_argument("--pairs", type=int, default=8, help="IOI pairs (EAP, and the PyTorch loop's extrapolation)")
    p.add_argument("--exact-pairs", type=int, default=None, help="pairs of patchbay's exact run [default: --pairs]")
    p.add_argument("--sample", type=int, default=48, help="edges the PyTorch loop times")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = ["--threads", str(args.threads)] if args.threads else []
    tmp = Path(tempfile.mkdtemp(prefix="patchbay-edges-bench-"))
    try:
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config()).eval()
        model.save_pretrained(tmp / "model")
        shutil.copy(ROOT / "tests" / "fixtures" / "gpt2" / "tokenizer.json", tmp / "model" / "tokenizer.json")
        patchbay(args, "ioi", "--model", str(tmp / "model"), "--n", str(args.pairs), "--seed", "0", "--out", str(tmp / "pairs.jsonl"))
        L, H = model.config.n_layer, model.config.n_head
        edges = graph(L, H)
        print(f"GPT-2 small shape, random weights: {len(edges)} edges; {args.pairs} IOI pairs; torch {torch.__version__}, {torch.get_num_threads()} threads")

        # patchbay, exact and EAP.
        exact_pairs = args.exact_pairs or args.pairs
        if exact_pairs < args.pairs:
            lines = (tmp / "pairs.jsonl").read_text().splitlines()[:exact_pairs]
            (tmp / "exact-pairs.jsonl").write_text("\n".join(lines) + "\n")
        exact_file = tmp / ("exact-pairs.jsonl" if exact_pairs < args.pairs else "pairs.jsonl")
        common = ["--model", str(tmp / "model"), "--prepend-bos", "--verify", "0", *threads]
        out, _ = patchbay(args, "edges", *common, "--pairs", str(exact_file), "--out", str(tmp / "exact"))
        exact_s = float(re.search(r"in ([0-9.]+) s", out).group(1))
        out, _ = patchbay(args, "edges", *common, "--pairs", str(tmp / "pairs.jsonl"), "--method", "eap", "--out", str(tmp / "eap"))
        eap_s = float(re.search(r"in ([0-9.]+) s", out).group(1))
        manifest = json.loads((tmp / "exact" / "manifest.json").read_text())
        values = np.load(tmp / "exact" / "edges.npy")

        # PyTorch, one forward pass per (edge, pair), on a sample of edges.
        pairs = manifest["pairs"]
        rng = random.Random(0)
        sample = sorted(rng.sample(range(len(edges)), args.sample))
        d, dh = model.config.n_embd, model.config.n_embd // H
        worst, loop_s, loop_runs = 0.0, 0.0, 0
        with torch.no_grad():
            for i, pair in enumerate(pairs):
                clean = torch.tensor([pair["clean_tokens"]])
                corrupted = torch.tensor([pair["corrupted_tokens"]])
                a, b = pair["answer"]["id"], pair["distractor"]["id"]
                _, c = run(model, clean)
                _, k = run(model, corrupted)

                def write(sender):
                    if sender == "input":
                        return c["embed"] - k["embed"]
                    if sender.startswith("m"):
                        return c[("mlp", int(sender[1:]))] - k[("mlp", int(sender[1:]))]
                    l, h = (int(x) for x in sender[1:].split(".h"))
                    w_o = model.transformer.h[l].attn.c_proj.weight[h * dh: (h + 1) * dh]
                    return (c[("z", l)] - k[("z", l)])[..., h * dh: (h + 1) * dh] @ w_o

                started = time.perf_counter()
                for e in sample:
                    sender, receiver, qkv = edges[e]
                    logits, _ = run(model, corrupted, (receiver, qkv, write(sender)))
                    v = (logits[0, -1, a] - logits[0, -1, b]).item()
                    if i < exact_pairs:
                        worst = max(worst, abs(v - values[i, e]))
                loop_s += time.perf_counter() - started
                loop_runs += len(sample)
        per_run = loop_s / loop_runs
        whole_loop = per_run * len(edges) * args.pairs
        exact_whole = exact_s * args.pairs / exact_pairs
        print(f"{'method':<44} {'seconds':>10} {'edge scores/s':>14}")
        print(f"{'PyTorch per-edge loop (extrapolated)':<44} {whole_loop:>10.1f} {1 / per_run:>14.1f}   ({loop_runs} runs timed)")
        label = "patchbay exact" + ("" if exact_pairs == args.pairs else f" ({exact_pairs} pair(s), scaled)")
        print(f"{label:<44} {exact_whole:>10.1f} {len(edges) * exact_pairs / exact_s:>14.1f}")
        print(f"{'patchbay EAP':<44} {eap_s:>10.2f} {len(edges) * args.pairs / eap_s:>14.1f}")
        print(f"patchbay exact is {whole_loop / exact_whole:.1f}× the PyTorch loop; all {len(edges)} exact edges on {args.pairs} pairs: "
              f"{exact_whole / 60:.1f} min (PyTorch: {whole_loop / 3600:.1f} h); the sampled edges agree within {worst:.1e}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
