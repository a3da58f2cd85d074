"""patchbay against PyTorch and TransformerLens on the same GPU and shapes, side by side.

    cargo build --release --features cuda
    python benches/compare_torch.py --patchbay target/release/patchbay --shape gpt2 --pairs 256 --tokens 16 --dtype f32
    python benches/compare_torch.py ... --dtype bf16

    python benches/compare_torch.py --device cpu --backend cpu --pairs 2 --tokens 16 --tl-pairs 0 --threads 2
    python benches/compare_torch.py --family qwen2 --device cpu --backend cpu --pairs 1 --tokens 16 --threads 2 --quick

Sweeps resid_pre at every (layer, position) of random-token pairs on a random-weight model (no
download): GPT-2 of the named --shape, or with --family the released shape of a family, HF's own
class (qwen2: Qwen2.5-0.5B; llama: Llama-3.2-1B; patchbay reads the same config.json), several
ways, and prints seconds, runs/s and the ratio to patchbay:
  * TransformerLens (GPT-2 only): transformer_lens.patching.get_act_patch_resid_pre, one forward
    per patch (TransformerBridge over the HF model); --tl-pairs N times N pairs and scales to all;
  * PyTorch, stacked: the HF model, every patched run a row of one batch (chunks of --chunk rows),
    resid_pre overwritten by a forward pre-hook on each decoder layer; once with full
    logits at every position (the plain call), once as a careful user writes it, with the last
    position's logits only (`logits_to_keep=1`);
  * patchbay: `patchbay bench --json` with and without reuse.
--quick keeps only the careful PyTorch stack, the loop and patchbay's default mode.
Then the seed's own case: one pair of 11 tokens (132 runs), PyTorch one forward pass per patch
(the seed's method) against patchbay. Every timing is the best of --repeat after a warm-up.
fp32 runs with TF32 off on the PyTorch side, as the reference numbers were taken.
"""
import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

SHAPES = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280),
          "gpt2-xl": (48, 25, 1600), "distilgpt2": (6, 12, 768)}
# The released configs' shapes (Qwen/Qwen2.5-0.5B, meta-llama/Llama-3.2-1B), random weights.
FAMILIES = {
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict(
        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, hidden_size=896, intermediate_size=4864,
        vocab_size=151936, max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True)),
    "llama": (LlamaConfig, LlamaForCausalLM, dict(
        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, hidden_size=2048, intermediate_size=8192,
        vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192})),
}


def decoder_layers(model):
    return model.transformer.h if hasattr(model, "transformer") else model.model.layers


def overwrite(args, kwargs, value):
    """A decoder layer's hidden-states argument (positional in GPT-2, maybe a keyword elsewhere)
    replaced by value(hidden_states)."""
    if args:
        return (value(args[0]),) + args[1:], kwargs
    return args, {**kwargs, "hidden_states": value(kwargs["hidden_states"])}


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def stacked_sweep(model, clean, corrupted, answer, distractor, chunk, device, keep=0):
    """Every (pair, layer, position) resid_pre patch as a row of one batch; `keep` 1: logits of the
    last position only (0: all positions, the plain call)."""
    n_pairs, n_tok = clean.shape
    n_layer = model.config.num_hidden_layers
    with torch.no_grad():
        hidden = model(clean, output_hidden_states=True).hidden_states  # resid_pre of each layer
        rows = [(p, l, t) for p in range(n_pairs) for l in range(n_layer) for t in range(n_tok)]
        out = torch.empty(len(rows), device=device)
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            idx = torch.tensor(part, device=device)
            pair, layer, pos = idx[:, 0], idx[:, 1], idx[:, 2]
            hooks = []
            for l, block in enumerate(decoder_layers(model)):
                sel = (layer == l).nonzero().squeeze(1)

                def patched(x, sel=sel, l=l):
                    h = x.clone()
                    h[sel, pos[sel]] = hidden[l][pair[sel], pos[sel]]
                    return h

                def pre_hook(module, args, kwargs, patched=patched):
                    return overwrite(args, kwargs, patched)

                hooks.append(block.register_forward_pre_hook(pre_hook, with_kwargs=True))
            logits = model(corrupted[pair], logits_to_keep=keep).logits[:, -1]
            for h in hooks:
                h.remove()
            out[start:start + len(part)] = logits.gather(1, torch.stack([answer[pair], distractor[pair]], 1)).diff(dim=1).neg().squeeze(1)
    return out


def loop_sweep(model, clean, corrupted, answer, distractor, device):
    """The seed's method: one forward pass per (pair, layer, position) patch."""
    n_pairs, n_tok = clean.shape
    out = []
    with torch.no_grad():
        for p in range(n_pairs):
            hidden = model(clean[p:p + 1], output_hidden_states=True).hidden_states
            for l, block in enumerate(decoder_layers(model)):
                for t in range(n_tok):
                    def patched(x, l=l, t=t):
                        h = x.clone()
                        h[0, t] = hidden[l][0, t]
                        return h

                    def pre_hook(module, args, kwargs, patched=patched):
                        return overwrite(args, kwargs, patched)

                    handle = block.register_forward_pre_hook(pre_hook, with_kwargs=True)
                    logits = model(corrupted[p:p + 1], logits_to_keep=1).logits[0, -1]
                    handle.remove()
                    out.append(logits[answer[p]] - logits[distractor[p]])
    return torch.stack(out)


def best_of(repeat, device, fn):
    fn()  # warm-up
    times = []
    for _ in range(max(repeat, 1)):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return min(times)


def random_pairs(n, tokens, vocab, device):
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, vocab, (n, tokens), generator=g).to(device)
    corrupted = clean.clone()
    corrupted[:, 1] = torch.randint(0, vocab, (n,), generator=g).to(device)
    answer, distractor = torch.randint(0, vocab, (2, n), generator=g).to(device)
    return clean, corrupted, answer, distractor


def patchbay_rows(args, pairs, tokens):
    cmd = [args.patchbay, "bench", "--shape", args.model_shape, "--pairs", str(pairs), "--tokens", str(tokens), "--sites", "resid_pre",
           "--backend", args.backend, "--dtype", args.dtype, "--repeat", str(args.repeat), "--json"]
    if args.quick:
        cmd.append("--reuse-only")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # PyTorch's cached blocks would leave patchbay's batches short of memory
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout)
    return [(f"patchbay {m['mode']}", m["seconds"]) for m in report["modes"]], report


def table(title, runs, rows):
    best = min(s for name, s in rows if name.startswith("patchbay"))
    print(title)
    print(f"{'implementation':<52} {'seconds':>9} {'runs/s':>10} {'× patchbay time':>16}")
    for name, s in rows:
        print(f"{name:<52} {s:>9.3f} {runs / s:>10.0f} {s / best:>16.2f}")


def tl_sweep(model, clean, corrupted, answer, distractor, n):
    from transformer_lens import patching
    from transformer_lens.model_bridge import TransformerBridge

    from transformers import GPT2TokenizerFast

    # Offline: a local config directory and the tokenizer patchbay ships, no hub.
    local = tempfile.mkdtemp()
    model.config.save_pretrained(local)
    tokenizer_json = Path(__file__).resolve().parent.parent / "tests/fixtures/gpt2/tokenizer.json"
    tok = GPT2TokenizerFast(tokenizer_file=str(tokenizer_json), name_or_path=local,
                            bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    bridge = TransformerBridge.boot_transformers(local, hf_model=model, tokenizer=tok, device=str(model.device))
    for p in range(n):
        metric = lambda logits, p=p: logits[0, -1, answer[p]] - logits[0, -1, distractor[p]]
        _, cache = bridge.run_with_cache(clean[p:p + 1])
        patching.get_act_patch_resid_pre(bridge, corrupted[p:p + 1], cache, metric)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--patchbay", default="target/release/patchbay")
    ap.add_argument("--shape", default="gpt2", choices=SHAPES, help="GPT-2's shape (without --family)")
    ap.add_argument("--family", choices=FAMILIES, help="a family's released shape instead of GPT-2's")
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--dtype", default="f32", choices=["f32", "tf32", "bf16"], help="tf32: f32 tensors, TF32 matmuls (both sides)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--backend", default="cuda", help="patchbay --backend")
    ap.add_argument("--chunk", type=int, default=8192)
    ap.add_argument("--tl-pairs", type=int, default=8, help="0 skips TransformerLens")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions, best reported")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for PyTorch and patchbay [default: each's own]")
    ap.add_argument("--quick", action="store_true",
                    help="only the rows the ratio is taken from: PyTorch's careful stack and loop, patchbay's default mode")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = args.dtype == "tf32"
    torch.backends.cudnn.allow_tf32 = args.dtype == "tf32"
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"f32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    if args.family:
        config_cls, model_cls, dims = FAMILIES[args.family]
        cfg = config_cls(**dims, attn_implementation="eager")
        model = model_cls(cfg).eval().to(args.device, dtype)
        # patchbay's bench makes its own random weights of the shape this config.json gives.
        args.model_shape = tempfile.mkdtemp()
        cfg.save_pretrained(args.model_shape)
        args.shape = f"{args.family} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters)"
        if args.tl_pairs:
            print("TransformerLens' row is GPT-2's only: skipped")
            args.tl_pairs = 0
    else:
        n_layer, n_head, d = SHAPES[args.shape]
        cfg = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=d, attn_implementation="eager")
        model = GPT2LMHeadModel(cfg).eval().to(args.device, dtype)
        args.model_shape = args.shape
    n_layer = cfg.num_hidden_layers
    clean, corrupted, answer, distractor = random_pairs(args.pairs, args.tokens, cfg.vocab_size, args.device)
    runs = args.pairs * n_layer * args.tokens
    sweep = lambda keep: lambda: stacked_sweep(model, clean, corrupted, answer, distractor, args.chunk, args.device, keep)

    rows = [] if args.quick else [("PyTorch, stacked, full logits at every position", best_of(args.repeat, args.device, sweep(0)))]
    rows.append(("PyTorch, stacked, last position's logits only", best_of(args.repeat, args.device, sweep(1))))
    n_tl = min(args.tl_pairs, args.pairs)
    if n_tl > 0 and importlib.util.find_spec("transformer_lens") is None:
        print("transformer_lens is not installed: its row is skipped")
        n_tl = 0
    if n_tl > 0:
        tl_sweep(model, clean, corrupted, answer, distractor, 1)  # warm-up
        sync(args.device)
        t = time.perf_counter()
        tl_sweep(model, clean, corrupted, answer, distractor, n_tl)
        sync(args.device)
        rows.append((f"TransformerLens (timed {n_tl} pairs, scaled)", (time.perf_counter() - t) * args.pairs / n_tl))
    pb, report = patchbay_rows(args, args.pairs, args.tokens)
    threads = f", {report['threads']} patchbay threads, {torch.get_num_threads()} PyTorch threads" if report.get("threads") else ""
    table(f"{args.shape}, {args.pairs} pairs x {args.tokens} tokens, resid_pre: {runs} patched runs, {args.dtype}, {args.device}{threads}",
          runs, rows + pb)

    # The seed's case: one pair of 11 tokens.
    seed = random_pairs(1, 11, cfg.vocab_size, args.device)
    rows = [("PyTorch, one forward pass per patch (the seed's method)", best_of(args.repeat, args.device, lambda: loop_sweep(model, *seed, args.device)))]
    pb, _ = patchbay_rows(args, 1, 11)
    print()
    table(f"seed pair: 1 pair x 11 tokens, resid_pre: {n_layer * 11} patched runs", n_layer * 11, rows + pb)


if __name__ == "__main__":
    main()
