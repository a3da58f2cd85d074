#!/usr/bin/env bash
# The GPU numbers in one prepared command, in priority order, each step printing its figures as
# soon as it has them and each under its own time limit, so that the whole fits a lent GPU's 15
# minutes (start and transfers included) with prebuilt binaries carried:
#   1. doctor: the backend step by step against the cpu on h1-dh64 and the gpt2 shape (f32, then
#      tf32 and bf16 on gpt2), naming the first faulty operation if there is one;
#   2. fidelity: logits and every site vs HF on every fixture shape for f32, tf32 and bf16, fused
#      and unfused (the suite's model_fidelity), the exact tuner's self-check, then the gpt2 shape;
#   3. the reference sweep (PAIRS x TOKENS, resid_pre) in each dtype beside PyTorch at the same
#      precision (benches/compare_torch.py), whose second table is
#   4. the seed pair (1 pair x 11 tokens, warm: the best of --repeat after a warm-up);
#   5. IOI: IOI_N prompts, configs/ioi.toml's sites, exact, wall time with the model load;
#   5b. edges: every edge of the graph exactly (32,491 at the gpt2 shape) on 8 of those pairs, then
#      EAP on them (docs/circuits.md, "EAP and EAP-IG, circuits and faithfulness");
#   6. with time left: the patching fidelity (engine_fidelity) on the same backends;
#   7. families (issue 44): every family fixture (Llama 3, Qwen2.5, Qwen3, Pythia, Gemma 2) against
#      HF on the backends (families:: and engine_fidelity's *_on_the_families), then the
#      reference sweep beside PyTorch at the Qwen2.5-0.5B and Llama-3.2-1B shapes
#      (compare_torch.py --family, --quick) in each dtype;
#   8. mib (issue 45): exact edges at MIB's scale, every edge of the Qwen2.5-0.5B graph (179,749)
#      for MIB_PAIRS IOI pairs on a random BF16 checkpoint of that shape (benches/load.py's):
#      shards MIB_SHARDS_RUN of --shard K/MIB_SHARDS in bf16 and f32, each shard one block of
#      MIB_MAX_ROWS edges for every pair (more shards than pairs: an edge run then shards by rows of
#      the graph), and the whole run extrapolated from their mean sweep seconds (goal: 100 pairs in
#      10 minutes on one H100 in bf16). Steps 7 and 8 come first: no GPU has run them yet.
# burn's own autotune (tf32, bf16) runs at CUBECL_AUTOTUNE_LEVEL=minimal (coarser shape keys, so
# fewer tunings) and caches under target/autotune; the exact-f32 tuner checks every kernel it
# tries against the naive one (src/backend/exact.rs) and keeps its checked choices in
# PATCHBAY_EXACT_TUNE_CACHE (target/gpu/exact-tune.json, copied to OUT at the end: carry it back
# in target/gpu and a later run on that GPU model neither compiles nor checks the candidates). Each CUDA process compiles its kernels
# (nvrtc), which is most of a step's time (docs/gpus.md, "Benchmarks on a GPU", gives the H200's figures). A
# cubecl.toml turning on cubecl's persistent PTX cache is written for the script's length (not yet
# tried on a GPU: a config cubecl cannot read is ignored). At the end the kernel caches cubecl
# wrote under target/ (PTX in target/cuda, burn's autotune choices in target/autotune) are packed
# into OUT/kernel-caches-<arch>.tar.xz (arch: sm90 for compute capability 9.0, the H100 and H200
# alike); put it in target/gpu and the next run unpacks it first, so that it compiles and
# autotunes only what no earlier run did. cubecl keys its PTX by kernel alone, not by GPU, hence
# the architecture in the name: a cache of another architecture is not unpacked.
# Needs python3 with torch + transformers (the random-weight gpt2-shape model and the
# comparison); nothing is downloaded.
#
# On this machine (x86-64), then carry target/gpu (about 40 MB compressed with cuda; check the
# total with the working tree stays under the carry limit):
#   cargo test --release --features cuda --no-run
#   mkdir -p target/gpu && strip -o target/gpu/patchbay target/release/patchbay
#   strip -o target/gpu/suite "$(ls -t target/release/deps/suite-* | grep -v '\.d$' | head -1)"
#   xz -T0 -f target/gpu/patchbay target/gpu/suite
#   cp <the last run's OUT>/exact-tune.json <…>/kernel-caches-*.tar.xz target/gpu/   # if there was one
# There:  xz -d -k -f target/gpu/patchbay.xz target/gpu/suite.xz && PATCHBAY=target/gpu/patchbay TESTS=target/gpu benches/gpu.sh
# Dry run here (wgpu on lavapipe, a small shape):
#   BACKEND=wgpu DTYPES=f32 SHAPE=tiny PAIRS=4 TOKENS=8 IOI_N=20 PATCHBAY=target/debug/patchbay benches/gpu.sh
#
# Environment (defaults): PATCHBAY (target/release/patchbay), BACKEND (cuda), DTYPES (f32 tf32
# bf16; "f32 f16" for wgpu), SHAPE (gpt2; `tiny` uses the committed tiny fixture, benches
# the tiny fixture's shape and skips the PyTorch comparison), PAIRS (256), TOKENS (16), IOI_N (500), OUT (results/gpu), TESTS (a folder
# holding the test binary `suite`; without it, fidelity is skipped), LIMIT (seconds a step may
# take, scaled per step below: 60 on cuda, 300 on wgpu), DEADLINE (seconds after which no step
# starts and a running one is cut: 540 on cuda, so the script ends inside one 10-minute device
# call; 3600 on wgpu), STEPS (the parts, in
# order: mib families doctor fidelity sweep ioi edges engine — the steps no earlier run measured
# first; a later run takes what an earlier one did not measure), QUICK (non-empty:
# compare_torch.py --quick, only the rows its ratios come from), MIB_PAIRS (100), MIB_MAX_ROWS (1024:
# edges --max-rows), MIB_SHARDS (176: the graph's blocks of MIB_MAX_ROWS edges, so a shard is one
# block, and more than MIB_PAIRS), MIB_SHARDS_RUN (0,88,174: spread over the graph, since a row's
# cost depends on its receiver's layer; 175 is the short last block), MIB_DTYPES (bf16 f32).
# Everything printed is also written to OUT/gpu.log.
set -uo pipefail
cd "$(dirname "$0")/.."
PATCHBAY=${PATCHBAY:-target/release/patchbay}
BACKEND=${BACKEND:-cuda}
DTYPES=${DTYPES:-f32 tf32 bf16}
SHAPE=${SHAPE:-gpt2}
PAIRS=${PAIRS:-256}
TOKENS=${TOKENS:-16}
IOI_N=${IOI_N:-500}
OUT=${OUT:-results/gpu}
# lavapipe compiles every kernel of a fresh wgpu process on the CPU (minutes), CUDA in seconds.
if [ "$BACKEND" = cuda ]; then LIMIT=${LIMIT:-60} DEADLINE=${DEADLINE:-540}; else LIMIT=${LIMIT:-300} DEADLINE=${DEADLINE:-3600}; fi
# 20 single-byte tokens: inside every vocabulary (the shape fixtures have 512 ids).
DOCTOR_TEXT=${DOCTOR_TEXT:-'x+y=z,p-q*r/s;t:u!v'}
STEPS=${STEPS:-mib families doctor fidelity sweep ioi edges engine}
MIB_PAIRS=${MIB_PAIRS:-100}
MIB_MAX_ROWS=${MIB_MAX_ROWS:-1024}
MIB_SHARDS=${MIB_SHARDS:-176}
MIB_SHARDS_RUN=${MIB_SHARDS_RUN:-0,88,174}
MIB_DTYPES=${MIB_DTYPES:-bf16 f32}
QUICK=${QUICK:-}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu.log") 2>&1
WORK=$(mktemp -d)
if [ ! -e cubecl.toml ]; then
  printf '[compilation]\ncache = "target"\n' >cubecl.toml
  trap 'rm -f cubecl.toml' EXIT
fi
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1 CUBECL_AUTOTUNE_LEVEL=${CUBECL_AUTOTUNE_LEVEL:-minimal}
export PATCHBAY_EXACT_TUNE_CACHE=${PATCHBAY_EXACT_TUNE_CACHE:-target/gpu/exact-tune.json}
START=$(date +%s)
failed=0
if [ "$BACKEND" = cuda ]; then
  ARCH=sm$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d '. ')
else
  ARCH=$BACKEND
fi
CACHES=kernel-caches-$ARCH.tar.xz
if [ -f "target/gpu/$CACHES" ]; then
  tar -xJf "target/gpu/$CACHES" && echo "kernel caches of an earlier run unpacked: target/gpu/$CACHES"
fi
step() { echo; echo "== [$(($(date +%s) - START)) s] $*"; }
# check SECONDS CMD...: runs CMD under a time limit (cut to what is left before DEADLINE); a
# failure or a timeout is reported, not fatal.
check() {
  local limit=$1 left=$((DEADLINE - $(date +%s) + START)); shift
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 5 ]; then echo "SKIPPED (the deadline of ${DEADLINE} s is reached): $*"; failed=1; return 125; fi
  timeout --kill-after=5 "$limit" "$@"
  local rc=$?
  case $rc in 0) ;; 124|137) echo "TIMED OUT after ${limit} s: $*"; failed=1 ;; *) echo "FAILED ($rc): $*"; failed=1 ;; esac
  return $rc
}
# The backends of each dtype, unfused and fused (fused f32 is refused on cuda: burn's fused matmul is TF32).
backends() {
  for d in $DTYPES; do
    case "$BACKEND-$d" in cuda-f32) echo cuda ;; *-f32) echo "$BACKEND,$BACKEND-fusion" ;; *) echo "$BACKEND-$d,$BACKEND-fusion-$d" ;; esac
  done | paste -sd,
}

step "device"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PATCHBAY" --version

model() {
  if [ "$SHAPE" = tiny ]; then
    MODEL=tests/fixtures/tiny
  elif [ -z "${MODEL:-}" ]; then
    step "random-weight $SHAPE-shape model and its HF references (tests/fixtures/make_fixtures.py --sites-only)"
    check $((LIMIT)) python3 tests/fixtures/make_fixtures.py --shape "$SHAPE" --sites-only --out "$WORK/$SHAPE"
    MODEL=$WORK/$SHAPE
  fi
}

doctor() {
  model
  step "1. doctor: $BACKEND against the cpu, step by step"
  for d in $DTYPES; do
    for m in tests/fixtures/shapes/h1-dh64 "$MODEL"; do
      # The small fixture in f32 only: half precision is judged at the real shape.
      [ "$d" != f32 ] && [ "$m" != "$MODEL" ] && continue
      echo "-- $BACKEND $d, $(basename "$m")"
      check $((LIMIT)) "$PATCHBAY" doctor --model "$m" --backend "$BACKEND" --dtype "$d" --text "$DOCTOR_TEXT"
    done
  done
}

fidelity() {
  [ -n "${TESTS:-}" ] || return 0
  step "2. fidelity on $(backends): logits and every site vs HF on every fixture shape; the exact tuner's self-check"
  # One process a backend: a failing one does not hide the others' rows.
  for b in $(backends | tr , ' '); do
    check $((LIMIT * 3 / 2)) env CARGO_MANIFEST_DIR="$PWD" PATCHBAY_TEST_BACKENDS="$b" "$TESTS"/suite --nocapture model_fidelity::logits_and_sites
  done
  check $((LIMIT / 2)) env CARGO_MANIFEST_DIR="$PWD" PATCHBAY_TEST_BACKENDS="$(backends)" "$TESTS"/suite --nocapture kernels::the_exact_f32_tuner
  if [ "$SHAPE" != tiny ]; then
    model
    step "2b. fidelity at the $SHAPE shape (logits and every site vs HF)"
    check $((LIMIT * 3 / 2)) env CARGO_MANIFEST_DIR="$PWD" PATCHBAY_FIXTURE_DIR="$MODEL" PATCHBAY_TEST_BACKENDS="$(backends)" \
      "$TESTS"/suite --nocapture model_fidelity::logits_and_sites
  fi
}

sweep() {
  # The bench shape: a released one by name, or the tiny fixture's folder (its small vocabulary
  # fits lavapipe's 128 MiB buffers).
  local shape=$([ "$SHAPE" = tiny ] && echo tests/fixtures/tiny || echo "$SHAPE")
  for d in $DTYPES; do
    if [ "$BACKEND" = cuda ] && [ "$SHAPE" != tiny ]; then
      step "3-4. the reference sweep and the seed pair, $d: PyTorch side by side (${QUICK:+--quick: }careful stack, loop, patchbay default)"
      check $((LIMIT * 4)) python3 benches/compare_torch.py --patchbay "$PATCHBAY" --backend cuda --shape "$SHAPE" --pairs "$PAIRS" --tokens "$TOKENS" --dtype "$d" --tl-pairs 0 ${QUICK:+--quick}
    else
      step "3-4. bench $BACKEND $d: $PAIRS pairs x $TOKENS tokens, resid_pre; the seed pair's shape"
      check $((LIMIT)) "$PATCHBAY" bench --backend "$BACKEND" --dtype "$d" --shape "$shape" --pairs "$PAIRS" --tokens "$TOKENS" --sites resid_pre
      check $((LIMIT)) "$PATCHBAY" bench --backend "$BACKEND" --dtype "$d" --shape "$shape" --pairs 1 --tokens 11 --sites resid_pre --repeat 3
    fi
  done
}

ioi() {
  model
  step "5. IOI: $IOI_N prompts, configs/ioi.toml sites, $BACKEND f32"
  if check $((LIMIT / 2)) "$PATCHBAY" ioi --n "$IOI_N" --seed 0 --model "$MODEL" --out "$WORK/ioi.jsonl"; then
    local start=$(date +%s%N)
    check $((LIMIT * 3 / 2)) "$PATCHBAY" run configs/ioi.toml --model "$MODEL" --pairs "$WORK/ioi.jsonl" --out "$WORK/ioi" --backend "$BACKEND" \
      && echo "IOI sweep wall time: $((($(date +%s%N) - start) / 1000000)) ms (model load included)"
    cp "$WORK/ioi/manifest.json" "$OUT/ioi-manifest.json" 2>/dev/null
  fi
}

edges() {
  model
  step "5b. edges: every edge exactly, then EAP, on 8 IOI pairs, $BACKEND f32"
  [ -s "$WORK/ioi.jsonl" ] || check $((LIMIT / 2)) "$PATCHBAY" ioi --n 8 --seed 0 --model "$MODEL" --out "$WORK/ioi.jsonl"
  head -n 8 "$WORK/ioi.jsonl" >"$WORK/ioi8.jsonl"
  for method in exact eap; do
    check $((LIMIT * 3)) "$PATCHBAY" edges --model "$MODEL" --pairs "$WORK/ioi8.jsonl" --prepend-bos --method "$method" --verify 0 \
      --backend "$BACKEND" --out "$WORK/edges-$method"
  done
}

engine() {
  [ -n "${TESTS:-}" ] || return 0
  step "6. patching fidelity (engine_fidelity) on $(backends), as time allows"
  check $((LIMIT * 2)) env CARGO_MANIFEST_DIR="$PWD" PATCHBAY_TEST_BACKENDS="$(backends)" "$TESTS"/suite --nocapture engine_fidelity::
}

families() {
  [ -n "${TESTS:-}" ] && {
    step "7. families on $(backends): every family fixture against HF (logits, sites, generation, edges, paths)"
    check $((LIMIT * 2)) env CARGO_MANIFEST_DIR="$PWD" PATCHBAY_TEST_BACKENDS="$(backends)" "$TESTS"/suite --nocapture families:: on_the_families
  }
  [ "$BACKEND" = cuda ] || return 0
  for f in qwen2 llama; do
    for d in $DTYPES; do
      step "7b. the reference sweep at the $f family's released shape, $d: PyTorch side by side (--quick)"
      check $((LIMIT * 2)) python3 benches/compare_torch.py --patchbay "$PATCHBAY" --backend cuda --family "$f" --pairs "$PAIRS" --tokens "$TOKENS" --dtype "$d" --tl-pairs 0 --quick
    done
  done
}

mib() {
  step "8. exact edges at MIB's scale: the Qwen2.5-0.5B graph, $MIB_PAIRS IOI pairs, shards $MIB_SHARDS_RUN of $MIB_SHARDS, $BACKEND $MIB_DTYPES"
  local m=$WORK/qwen2.5-0.5b
  mkdir -p "$m"
  check $((LIMIT)) python3 -c "import sys; sys.path.insert(0, 'benches'); import load; load.checkpoint(sys.argv[1], 'qwen2.5-0.5b')" "$m" || return 0
  check $((LIMIT / 2)) "$PATCHBAY" ioi --n "$MIB_PAIRS" --seed 0 --model "$m" --out "$WORK/mib-pairs.jsonl" || return 0
  local pairs=$(wc -l <"$WORK/mib-pairs.jsonl")
  for d in $MIB_DTYPES; do
    local seconds=0 cells=0 shards=0
    for k in ${MIB_SHARDS_RUN//,/ }; do
      local out=$WORK/mib-$d
      check $((LIMIT * 2)) "$PATCHBAY" edges --model "$m" --pairs "$WORK/mib-pairs.jsonl" --method exact --verify 0 --backend "$BACKEND" --dtype "$d" \
        --shard "$k/$MIB_SHARDS" --max-rows "$MIB_MAX_ROWS" --out "$out" --overwrite >"$WORK/mib.log"
      local rc=$?
      cat "$WORK/mib.log"
      [ $rc = 0 ] || continue
      # The sweep's seconds (loading apart) and the shard's (edge, pair) cells; a shard of pairs
      # (no `edges` in its manifest) is not what this step measures.
      local s=$(sed -n 's/.*computed in \([0-9.]*\) s.*/\1/p' "$WORK/mib.log" | tail -n 1)
      local c
      c=$(python3 -c "import json, sys; m = json.load(open(sys.argv[1]))['shard']; lo, hi = m['edges']; print((hi - lo) * int(sys.argv[2]))" \
        "$out/shard-$(printf %04d "$k")-of-$(printf %04d "$MIB_SHARDS")/manifest.json" "$pairs") || { echo "FAILED: shard $k is not a shard of the graph's rows"; failed=1; continue; }
      [ -n "$s" ] && { seconds=$(python3 -c "print($seconds + $s)"); cells=$((cells + c)); shards=$((shards + 1)); }
    done
    [ "$shards" -gt 0 ] && python3 -c "import sys
s, c, n, total, p = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
print(f'MIB scale, $BACKEND $d: {n} shards of {total}, {c:,} (edge, pair) cells in {s:.1f} s of sweep ({c / s:,.0f} cells/s); '
      f'every edge of the graph x {p} pairs: {s / n * total / 60:.1f} min at the shards\' mean (each shard pays its own clean and corrupted runs)')" \
      "$seconds" "$cells" "$shards" "$MIB_SHARDS" "$pairs"
  done
}

for s in $STEPS; do "$s"; done

rm -rf "$WORK"
# The exact tuner's checked choices and cubecl's kernel caches come back with OUT: put them in
# target/gpu for the next carry. A file over 16 MiB would not come back.
cp "$PATCHBAY_EXACT_TUNE_CACHE" "$OUT/" 2>/dev/null
caches=$(ls -d target/cuda target/autotune 2>/dev/null)
if [ -n "$caches" ] && XZ_OPT=-T0 tar -cJf "$OUT/$CACHES" $caches; then
  size=$(stat -c %s "$OUT/$CACHES")
  if [ "$size" -gt $((16 << 20)) ]; then
    echo "kernel caches: $((size >> 20)) MiB compressed, over the 16 MiB a returned file may have: not returned"
    rm -f "$OUT/$CACHES"
  else
    echo "kernel caches for the next run: $OUT/$CACHES ($((size >> 10)) KiB: $caches)"
  fi
fi
echo
echo "== [$(($(date +%s) - START)) s] $([ $failed = 0 ] && echo "all steps passed" || echo "some steps FAILED or TIMED OUT")"
exit $failed
