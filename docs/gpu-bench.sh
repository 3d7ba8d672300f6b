#!/usr/bin/env bash
# The GPU trainer's speed measurements, each switch against the default in the same run (the
# machines are shared, so only same-run ratios count): BenchmarkAttention (with the 32-row
# forward), and the 953M step of the DMC and vanilla graphs with each
# DMC_* switch of the training kernels. Run on the GPU machine with binaries built here:
#   docs/gpu-bench.sh BIN OUT      # BIN holds dmc (make build-cuda) and kernels.test (make test-cuda-bins)
set -uo pipefail
BIN=$(realpath "${1:?BIN folder with dmc and kernels.test}")
OUT=$(realpath "${2:?folder for the results}")
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
S=$OUT/summary.txt
STEPS=${STEPS:-} # a regular expression of the step names to run (all, and BenchmarkAttention, when empty)
if [[ -z $STEPS ]]; then
echo "== BenchmarkAttention" | tee -a "$S"
(cd "$root/kernels" && DMC_REQUIRE_GPU=1 "$BIN/kernels.test" -test.run '^$' -test.bench Attention -test.benchtime 20x) \
	>"$OUT/bench-attention.txt" 2>&1
grep Benchmark "$OUT/bench-attention.txt" | tee -a "$S"
fi
step() { # step NAME ENV... : the 953M step with the given environment
	local name=$1
	shift
	[[ -z $STEPS || $name =~ $STEPS ]] || return 0
	echo "== $name" | tee -a "$S"
	env "$@" "$BIN/dmc" bench train --model bench-953m --random-weights --device cuda --seq 2048 --batch 8 \
		--cache "${CACHE:-dmc}" --json "$OUT/train-$name.json" >"$OUT/train-$name.txt" 2>&1
	tail -1 "$OUT/train-$name.txt" | tee -a "$S"
}
for round in ${ROUNDS:-1 2}; do
	CACHE=dmc step "dmc-default-$round"
	CACHE=dmc step "dmc-merge-general-$round" DMC_MERGE=general
	CACHE=dmc step "dmc-merge-rows-$round" DMC_MERGE=rows
	CACHE=dmc step "dmc-grad-shadows-$round" DMC_GRAD_SHADOWS=1
	CACHE=dmc step "dmc-gemm-tune-$round" DMC_GEMM_TUNE=1
	CACHE=dmc step "dmc-shadow-only-$round" DMC_SHADOW_ONLY=1
	CACHE=dmc step "dmc-norm-paired-$round" DMC_NORM_GRADS=paired
	CACHE=dmc step "dmc-attn-shadows-$round" DMC_ATTN_SHADOWS=1
	CACHE=dmc step "dmc-attn-delta-$round" DMC_ATTN_DELTA=rows
	CACHE=dmc step "dmc-all-new-$round" DMC_MERGE=rows DMC_GRAD_SHADOWS=1 DMC_NORM_GRADS=paired DMC_ATTN_SHADOWS=1 DMC_ATTN_DELTA=rows DMC_SHADOW_ONLY=1
	CACHE=dmc step "dmc-unfolded-$round" DMC_FOLD_SUMS=0
	CACHE=vanilla step "vanilla-default-$round"
	CACHE=vanilla step "vanilla-unfolded-$round" DMC_FOLD_SUMS=0
	CACHE=vanilla step "vanilla-gemm-tune-$round" DMC_GEMM_TUNE=1
	CACHE=vanilla step "vanilla-all-new-$round" DMC_GRAD_SHADOWS=1 DMC_NORM_GRADS=paired DMC_ATTN_SHADOWS=1 DMC_ATTN_DELTA=rows DMC_SHADOW_ONLY=1
done
