#!/usr/bin/env bash
# The GPU numbers in one command: fidelity of the backend at the real GPT-2 shape (TF32 shows here),
# `patchbay bench` at the reference workload and at the seed pair, the PyTorch comparison, and the
# 500-prompt IOI sweep's wall time, exact and by attribution patching. The first run of each matmul shape autotunes (minutes for tf32
# and bf16, cached in target/autotune/). Needs python3 with torch + transformers (for the random-weight
# gpt2-shape model and the comparison); nothing is downloaded.
#
#   cargo build --release --features cuda
#   cargo test --release --features cuda --no-run    # optional: the test binary (fidelity checks)
#   benches/gpu.sh
#
# Environment (defaults): PATCHBAY (target/release/patchbay), BACKEND (cuda), DTYPES (f32 tf32 bf16;
# use "f32 f16" for wgpu), PAIRS (256), TOKENS (16), IOI_N (500), OUT (results/gpu), TESTS (a folder
# holding the test binary `suite`; without it, fidelity is skipped).
# Everything printed is also written to OUT/gpu.log; bench reports as OUT/*.json.
#
# Built elsewhere and carried (x86-64): the two binaries, stripped and compressed (about 9 MB each
# for a build without cuda, measured; check the total stays under what the carry allows):
#   mkdir -p target/gpu && strip -o target/gpu/patchbay target/release/patchbay
#   strip -o target/gpu/suite "$(ls -t target/release/deps/suite-* | grep -v '\.d$' | head -1)"
#   xz -T0 target/gpu/*   # carry target/gpu; there: xz -d target/gpu/*.xz && PATCHBAY=target/gpu/patchbay TESTS=target/gpu benches/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PATCHBAY=${PATCHBAY:-target/release/patchbay}
BACKEND=${BACKEND:-cuda}
DTYPES=${DTYPES:-f32 tf32 bf16}
PAIRS=${PAIRS:-256}
TOKENS=${TOKENS:-16}
IOI_N=${IOI_N:-500}
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu.log") 2>&1
WORK=$(mktemp -d)
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1
failed=0
step() { echo; echo "== $*"; }
check() { "$@" || { echo "FAILED ($?): $*"; failed=1; }; }

step "device"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PATCHBAY" --version

step "random-weight gpt2-shape model and its HF references (tests/fixtures/make_fixtures.py --sites-only)"
check python3 tests/fixtures/make_fixtures.py --shape gpt2 --sites-only --out "$WORK/gpt2"

if [ -n "${TESTS:-}" ]; then
  # Fused f32 is refused on cuda (burn's fused matmul is TF32): there, fusion is checked in tf32 and bf16.
  backends=$(for d in $DTYPES; do
    case "$BACKEND-$d" in cuda-f32) echo cuda ;; *-f32) echo "$BACKEND,$BACKEND-fusion" ;; *) echo "$BACKEND-$d,$BACKEND-fusion-$d" ;; esac
  done | paste -sd,)
  step "fidelity on $backends: tiny fixture (logits, every site, every patching site vs TransformerLens)"
  check env CARGO_MANIFEST_DIR="$PWD" PATCHBAY_TEST_BACKENDS="$backends" "$TESTS"/suite --nocapture model_fidelity:: engine_fidelity::
  step "fidelity at the gpt2 shape (logits and every site vs HF)"
  check env CARGO_MANIFEST_DIR="$PWD" PATCHBAY_FIXTURE_DIR="$WORK/gpt2" PATCHBAY_TEST_BACKENDS="$backends" \
    "$TESTS"/suite --nocapture model_fidelity::logits_and_sites
fi

# Unfused (the default) and fused (--fusion, opt-in: trust its numbers only where fidelity passed).
for d in $DTYPES; do
  for fusion in "" --fusion; do
    [ "$BACKEND-$d$fusion" = cuda-f32--fusion ] && continue
    tag="$BACKEND-$d${fusion:+-fusion}"
    step "bench $tag: $PAIRS pairs x $TOKENS tokens, resid_pre: default vs --no-skip vs --no-reuse"
    check "$PATCHBAY" bench --backend "$BACKEND" --dtype "$d" $fusion --shape gpt2 --pairs "$PAIRS" --tokens "$TOKENS" --sites resid_pre --json >"$OUT/bench-$tag.json"
    cat "$OUT/bench-$tag.json"
    step "bench $tag: the same corrupted at position 10 (no-op runs skipped)"
    check "$PATCHBAY" bench --backend "$BACKEND" --dtype "$d" $fusion --shape gpt2 --pairs "$PAIRS" --tokens "$TOKENS" --sites resid_pre --corrupt-at 10
    step "bench $tag: the seed pair's shape (1 pair x 11 tokens, 132 runs)"
    check "$PATCHBAY" bench --backend "$BACKEND" --dtype "$d" $fusion --shape gpt2 --pairs 1 --tokens 11 --sites resid_pre --repeat 10
  done
done

if [ "$BACKEND" = cuda ]; then
  for d in $DTYPES; do
    [ "$d" = f16 ] && continue
    step "PyTorch side by side ($d)"
    check python3 benches/compare_torch.py --patchbay "$PATCHBAY" --backend cuda --pairs "$PAIRS" --tokens "$TOKENS" --dtype "$d"
  done
fi

step "IOI: $IOI_N prompts, configs/ioi.toml sites, gpt2 shape (random weights), $BACKEND f32"
check "$PATCHBAY" ioi --n "$IOI_N" --seed 0 --model "$WORK/gpt2" --out "$WORK/ioi.jsonl"
start=$(date +%s%N)
check "$PATCHBAY" run configs/ioi.toml --model "$WORK/gpt2" --pairs "$WORK/ioi.jsonl" --out "$WORK/ioi" --backend "$BACKEND"
echo "IOI sweep wall time: $((($(date +%s%N) - start) / 1000000)) ms (model load included)"
check "$PATCHBAY" analyze "$WORK/ioi" >/dev/null
cp "$WORK/ioi/manifest.json" "$OUT/ioi-manifest.json" 2>/dev/null
step "IOI by attribution patching (--method attribution), the same pairs and sites, and its agreement with the exact run"
start=$(date +%s%N)
check "$PATCHBAY" run configs/ioi.toml --model "$WORK/gpt2" --pairs "$WORK/ioi.jsonl" --out "$WORK/ioi-attr" --backend "$BACKEND" --method attribution
echo "IOI attribution wall time: $((($(date +%s%N) - start) / 1000000)) ms (model load included)"
check "$PATCHBAY" analyze "$WORK/ioi-attr" >/dev/null
check "$PATCHBAY" analyze "$WORK/ioi-attr" --compare "$WORK/ioi"

rm -rf "$WORK"
[ $failed = 0 ] && echo "all steps passed" || echo "some steps FAILED"
exit $failed
