"""Batched greedy generation, patchbay against HF transformers' `generate`, side by side.

    cargo build --release
    python benches/generate_torch.py --patchbay target/release/patchbay --shape gpt2 --prompts 8 --tokens 16 --new 32 --threads 2

A random-weight GPT-2 of the named shape (no download) is saved to a temporary directory; both sides
decode the same random prompts greedily with a KV cache, fp32, on the CPU (or --device cuda with
--backend cuda). HF's time is `generate(do_sample=False)` on the batch; patchbay's is the
`patchbay generate --prompts` process with --new tokens minus the same with 1 token (which is
the process start, the model load and the prompt's forward pass), so both count decoding only.
Prints seconds, generated tokens/s, the ratio, and whether the greedy tokens agree.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

HERE = Path(__file__).resolve().parent
SHAPES = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "tiny": (3, 4, 16)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--patchbay", default=str(HERE.parent / "target" / "release" / "patchbay"))
    ap.add_argument("--shape", choices=SHAPES, default="gpt2")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    n_layer, n_head, d = SHAPES[a.shape]
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=d, n_positions=1024)).eval().to(a.device)
    prompts = torch.randint(0, 50000, (a.prompts, a.tokens), generator=torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "tokenizer.json").write_bytes((HERE.parent / "tests" / "fixtures" / "gpt2" / "tokenizer.json").read_bytes())
        # Prompts as text would re-tokenize differently: patchbay reads token ids through the
        # tokenizer, so give it text that round-trips (decoded ids, checked below).
        from transformers import GPT2TokenizerFast
        tok = GPT2TokenizerFast(tokenizer_file=str(tmp / "tokenizer.json"))
        texts, ids = [], []
        for row in prompts.tolist():
            t = tok.decode(row)
            if tok(t)["input_ids"] == row:
                texts.append(t)
                ids.append(row)
        while len(ids) < a.prompts:  # rows that do not round-trip: reuse the ones that do
            texts.append(texts[len(ids) % len(texts)])
            ids.append(ids[len(ids) % len(ids)])
        (tmp / "p.jsonl").write_text("\n".join(json.dumps({"prompt": t}) for t in texts))
        batch = torch.tensor(ids, device=a.device)

        def hf():
            with torch.no_grad():
                return model.generate(batch, attention_mask=torch.ones_like(batch), do_sample=False, max_new_tokens=a.new,
                                      min_new_tokens=a.new, pad_token_id=50256)

        hf()  # warm-up
        best = float("inf")
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            out = hf()
            best = min(best, time.perf_counter() - t0)
        hf_tokens = out[:, a.tokens:].tolist()

        def pb(new):
            cmd = [a.patchbay, "generate", "--model", str(tmp), "--prompts", str(tmp / "p.jsonl"), "--greedy",
                   "--max-new-tokens", str(new), "--json", "--backend", a.backend, "--threads", str(a.threads)]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True)
            dt = time.perf_counter() - t0
            if r.returncode != 0:
                sys.exit(f"patchbay failed: {r.stderr}")
            return dt, [s["tokens"] for s in json.loads(r.stdout)]

        pb(1)
        start = min(pb(1)[0] for _ in range(a.repeat))
        runs = [pb(a.new) for _ in range(a.repeat)]
        full = min(r[0] for r in runs)
        pb_tokens = runs[0][1]
    n = a.prompts * a.new
    decode = max(full - start, 1e-9)
    print(f"{a.shape}, {a.prompts} prompts x {a.tokens} tokens, {a.new} new tokens each, greedy, f32, {a.device}, {a.threads} threads")
    print(f"{'implementation':<44} {'seconds':>9} {'tokens/s':>10}")
    print(f"{'HF generate(do_sample=False), batched':<44} {best:>9.3f} {n / best:>10.1f}")
    print(f"{'patchbay generate (decode: N - 1 token run)':<44} {decode:>9.3f} {n / decode:>10.1f}")
    print(f"{'patchbay generate, whole process':<44} {full:>9.3f} {n / full:>10.1f}")
    print(f"patchbay decodes {best / decode:.2f}x as fast as HF; greedy tokens agree: "
          f"{sum(p == h for p, h in zip(pb_tokens, hf_tokens))}/{len(hf_tokens)} sequences")


if __name__ == "__main__":
    main()
