"""Loading time and memory: random-weight checkpoints of released shapes, stored as the hub stores
them (made here with numpy: no download, no torch), and `patchbay inspect` on each, timed with
/usr/bin/time against reading the weights file into memory (warm page cache); then `patchbay run`
(resid_pre at every layer and position) and `patchbay edges --method eap` of one IOI-style pair
(the GPT-2 tokenizer stands in), timed whole, loading included.

    python benches/load.py --shape gpt2-large            # 774 M parameters, F32 (3.1 GB)
    python benches/load.py --shape qwen2.5-0.5b          # 494 M parameters, BF16 (1.0 GB)
    python benches/load.py --shape gpt2-xl --keep /tmp/x # 1.56 B parameters, F32 (6.2 GB)

Reads and inspects alternate `--repeat` times, and their medians are compared (`--bin A B`: two
binaries, before and after a change, alternating with the reads in the same run). Prints the load time
as a ratio to reading the file, the peak RSS as a ratio to the weights' size
in f32 (what the model holds), and each command's wall time and peak RSS.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
import time

import numpy as np
from safetensors.numpy import save_file

SHAPES = {
    # name: (family, layers, heads, kv_heads, d_model, d_mlp, vocab, dtype)
    "gpt2-large": ("gpt2", 36, 20, 20, 1280, 5120, 50257, "F32"),
    "gpt2-xl": ("gpt2", 48, 25, 25, 1600, 6400, 50257, "F32"),
    "qwen2.5-0.5b": ("qwen2", 24, 14, 2, 896, 4864, 151936, "BF16"),
    "llama-3.2-1b": ("llama", 16, 32, 8, 2048, 8192, 128256, "BF16"),
}


def bf16(x):
    """float32 -> bfloat16 bits (truncated), stored as uint16: what the file's BF16 holds."""
    return (x.view(np.uint32) >> 16).astype(np.uint16)


def write_bf16(path, tensors):
    """A safetensors file of BF16 tensors (numpy has no bfloat16: the bits are written directly)."""
    header, offset, blobs = {}, 0, []
    for name, value in tensors.items():
        blob = bf16(np.ascontiguousarray(value)).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(value.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def checkpoint(out, name):
    family, L, H, KV, D, F, V, dtype = SHAPES[name]
    rng = np.random.default_rng(0)
    t = {}

    def w(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02)

    if family == "gpt2":
        t["wte.weight"], t["wpe.weight"] = w(V, D), w(1024, D)
        for l in range(L):
            p = f"h.{l}."
            for n in ("ln_1", "ln_2"):
                t[p + n + ".weight"], t[p + n + ".bias"] = np.ones(D, np.float32), np.zeros(D, np.float32)
            t[p + "attn.c_attn.weight"], t[p + "attn.c_attn.bias"] = w(D, 3 * D), np.zeros(3 * D, np.float32)
            t[p + "attn.c_proj.weight"], t[p + "attn.c_proj.bias"] = w(D, D), np.zeros(D, np.float32)
            t[p + "mlp.c_fc.weight"], t[p + "mlp.c_fc.bias"] = w(D, F), np.zeros(F, np.float32)
            t[p + "mlp.c_proj.weight"], t[p + "mlp.c_proj.bias"] = w(F, D), np.zeros(D, np.float32)
        t["ln_f.weight"], t["ln_f.bias"] = np.ones(D, np.float32), np.zeros(D, np.float32)
        config = {"model_type": "gpt2", "n_layer": L, "n_head": H, "n_embd": D, "n_positions": 1024, "vocab_size": V,
                  "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5}
    else:
        dh = D // H
        t["model.embed_tokens.weight"] = w(V, D)
        for l in range(L):
            p = f"model.layers.{l}."
            t[p + "input_layernorm.weight"], t[p + "post_attention_layernorm.weight"] = np.ones(D, np.float32), np.ones(D, np.float32)
            for n, rows in (("q_proj", H * dh), ("k_proj", KV * dh), ("v_proj", KV * dh)):
                t[p + f"self_attn.{n}.weight"] = w(rows, D)
                if family == "qwen2":
                    t[p + f"self_attn.{n}.bias"] = np.zeros(rows, np.float32)
            t[p + "self_attn.o_proj.weight"] = w(D, H * dh)
            t[p + "mlp.gate_proj.weight"], t[p + "mlp.up_proj.weight"], t[p + "mlp.down_proj.weight"] = w(F, D), w(F, D), w(D, F)
        t["model.norm.weight"] = np.ones(D, np.float32)
        config = {"model_type": family, "num_hidden_layers": L, "num_attention_heads": H, "num_key_value_heads": KV,
                  "hidden_size": D, "intermediate_size": F, "vocab_size": V, "max_position_embeddings": 4096,
                  "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True, "hidden_act": "silu"}
    params = sum(v.size for v in t.values())
    path = os.path.join(out, "model.safetensors")
    if dtype == "BF16":
        write_bf16(path, t)
    else:
        save_file(t, path)
    json.dump(config, open(os.path.join(out, "config.json"), "w"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # A GPT-2 tokenizer stands in (its ids fit every vocabulary here).
    with open(os.path.join(root, "tests/fixtures/tiny/tokenizer.json"), "rb") as src, open(os.path.join(out, "tokenizer.json"), "wb") as dst:
        dst.write(src.read())
    return path, params


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="gpt2-large", choices=sorted(SHAPES))
    ap.add_argument("--keep", help="directory to write the checkpoint into (default: a temporary one)")
    ap.add_argument("--bin", nargs="+", default=["target/release/patchbay"],
                    help="patchbay binaries: more than one (before and after a change) alternate with the reads in one run")
    ap.add_argument("--no-runs", action="store_true", help="inspect only, not run and edges")
    ap.add_argument("--repeat", type=int, default=5, help="reads and inspects, alternating; their medians are reported")
    ap.add_argument("--prime", action=argparse.BooleanOptionalAction, default=True,
                    help="touch and free memory of the model's f32 size before each timed command (see main) [default: on]")
    a = ap.parse_args()
    out = a.keep or tempfile.mkdtemp()
    os.makedirs(out, exist_ok=True)
    path, params = checkpoint(out, a.shape)
    open(path, "rb").read()  # warm the page cache
    reads, inspects = [], {b: [] for b in a.bin}
    # On a virtual machine whose host takes freed guest memory back (virtio-balloon free page
    # reporting, as here), touching fresh pages costs up to 5x more kernel time when the host
    # has taken them back than right after another process freed them: which a command gets
    # depends on what ran before it. So each timed command starts right after memory of the
    # model's f32 size was touched and freed (--no-prime: not).
    prime = (lambda: np.ones(params, dtype=np.float32)) if a.prime else (lambda: None)
    for i in range(a.repeat):
        prime()
        t = time.time()
        open(path, "rb").read()
        reads.append(time.time() - t)
        # The order turns each time: on a virtual machine a process is faster right after another
        # freed memory (the host has not taken those pages back yet).
        for b in a.bin[i % len(a.bin):] + a.bin[:i % len(a.bin)]:
            prime()
            inspects[b].append(timed(b, "inspect", "--model", out, "Hello"))
    read = statistics.median(reads)
    f32 = params * 4
    for b in a.bin:
        seconds, rss = statistics.median(s for s, _ in inspects[b]), max(r for _, r in inspects[b])
        print(f"{a.shape}: {params / 1e6:.0f} M parameters, {os.path.getsize(path) / 1e9:.2f} GB file; reading it {read:.2f} s; "
              f"{'' if len(a.bin) == 1 else b + ': '}patchbay inspect {seconds:.2f} s ({seconds / read:.1f}x the read), "
              f"peak RSS {rss / 1e9:.2f} GB ({rss / f32:.2f}x the f32 weights)", flush=True)
    if a.no_runs:
        return
    pairs = os.path.join(out, "pairs.jsonl")
    with open(pairs, "w") as f:
        f.write(json.dumps({"clean": "When Mary and John went to the store, John gave a drink to", "answer": " Mary",
                            "corrupted": "When Mary and John went to the store, Mary gave a drink to", "distractor": " John"}) + "\n")
    for what, cmd in (("run resid_pre", ["run", "--sites", "resid_pre"]), ("edges --method eap", ["edges", "--method", "eap"])):
        seconds, rss = timed(a.bin[0], *cmd, "--model", out, "--pairs", pairs, "--out", os.path.join(out, cmd[0]), "--overwrite")
        print(f"{a.shape}: patchbay {what}, one IOI pair (14 tokens): {seconds:.1f} s, peak RSS {rss / 1e9:.2f} GB ({rss / f32:.2f}x)", flush=True)


def timed(*cmd):
    """Wall seconds and peak RSS bytes of a command, by /usr/bin/time."""
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\d+):([\d.]+)", r.stderr)
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1)) * 1024
    return int(wall.group(1)) * 60 + float(wall.group(2)), rss


if __name__ == "__main__":
    main()
