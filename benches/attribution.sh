#!/usr/bin/env bash
# Attribution patching beside exact patching on the IOI config (configs/ioi.toml: resid_pre,
# attn_out, mlp_out, z_all_pos, BOS in front), side by side in one run on the CPU:
#  1. speed: `run --method exact` and `run --method attribution` on the same IOI pairs, on a
#     random-weight model of GPT-2 small's shape (tests/fixtures/make_fixtures.py --shape gpt2
#     --sites-only; nothing is downloaded): runs/s of each, and the ratio;
#  2. agreement: both methods on a 100-prompt IOI set at the tiny fixture's shape, and
#     `analyze --compare`'s correlations per site.
#
#   benches/attribution.sh
#
# Environment (defaults): PAIRS (8, for the speed part), N (100, the agreement part), THREADS (2),
# PYTHON (python3, with torch + transformers), WORK (a temporary folder; the gpt2-shape model is
# made there, ~30 s).
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${PAIRS:-8}
N=${N:-100}
THREADS=${THREADS:-2}
PYTHON=${PYTHON:-python3}
WORK=${WORK:-$(mktemp -d)}
export HF_HUB_OFFLINE=1 TQDM_DISABLE=1
cargo build --release -q
BIN=target/release/patchbay

# The runs/s a `run` printed ("... N patched runs ... in S s (R runs/s) ...").
rate() { sed -n 's/.* \([0-9]*\) patched runs [a-z ]* in \([0-9.]*\) s .*/\1 \2/p' "$1" | awk '{ printf "%.2f", $1 / $2 }'; }

sweep() { # model pairs out method
  "$BIN" run configs/ioi.toml --model "$1" --pairs "$2" --out "$3" --method "$4" --threads "$THREADS" --verify 0 --overwrite | tee "$3.txt"
}

[ -f "$WORK/gpt2/model.safetensors" ] || "$PYTHON" tests/fixtures/make_fixtures.py --shape gpt2 --sites-only --out "$WORK/gpt2" >/dev/null
"$BIN" ioi --n "$PAIRS" --seed 0 --model "$WORK/gpt2" --out "$WORK/ioi-$PAIRS.jsonl" --overwrite
echo "== speed: $PAIRS IOI pairs, gpt2 shape, cpu, $THREADS threads"
sweep "$WORK/gpt2" "$WORK/ioi-$PAIRS.jsonl" "$WORK/exact" exact
sweep "$WORK/gpt2" "$WORK/ioi-$PAIRS.jsonl" "$WORK/attribution" attribution
exact=$(rate "$WORK/exact.txt")
attr=$(rate "$WORK/attribution.txt")
echo "exact: $exact runs/s; attribution: $attr runs/s; attribution / exact = $(awk -v a="$attr" -v e="$exact" 'BEGIN { printf "%.1f", a / e }')x"

echo "== agreement: $N IOI pairs, tiny shape (tests/fixtures/tiny, random weights)"
"$BIN" ioi --n "$N" --seed 0 --model tests/fixtures/tiny --out "$WORK/ioi-$N.jsonl" --overwrite
sweep tests/fixtures/tiny "$WORK/ioi-$N.jsonl" "$WORK/tiny-exact" exact >/dev/null
sweep tests/fixtures/tiny "$WORK/ioi-$N.jsonl" "$WORK/tiny-attribution" attribution >/dev/null
"$BIN" analyze "$WORK/tiny-exact" >/dev/null
"$BIN" analyze "$WORK/tiny-attribution" >/dev/null
"$BIN" analyze "$WORK/tiny-attribution" --compare "$WORK/tiny-exact"
echo "plots: $WORK/tiny-attribution/*.compare.png"
