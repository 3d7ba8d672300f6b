#!/usr/bin/env bash
# Runs the GPU test binaries on the GPU machine (built here with `make test-cuda-bins`, carried
# in BIN): the kernel conformance suite of the training ops, the device executor's parity,
# determinism and recompute tests, and the inference engine's tests (greedy parity, batching,
# pool, perplexity and target scoring against the CPU). Every binary runs from its package
# folder, with DMC_REQUIRE_GPU so that a missing GPU fails instead of skipping.
#   docs/gpu-tests.sh BIN ASSETS [go test -run pattern]
set -uo pipefail
BIN=$(realpath "${1:?BIN folder with ops.test, device.test, kernels.test}")
ASSETS=$(realpath "${2:?the shared assets (stories260K)}")
RUN=${3:-.}
root=$(cd "$(dirname "$0")/.." && pwd)
rc=0
for t in graph/ops:ops graph/device:device kernels:kernels; do
	dir=${t%%:*} name=${t##*:}
	[[ -x $BIN/$name.test ]] || { echo "$BIN/$name.test missing"; rc=1; continue; }
	echo "== $name.test ($dir)"
	log=$(mktemp)
	# One run per binary (GPU time is scarce): its full output kept, the verdicts printed.
	(cd "$root/$dir" && DMC_ASSETS=$ASSETS DMC_REQUIRE_GPU=1 "$BIN/$name.test" -test.run "$RUN" -test.count 1 -test.v >"$log" 2>&1) || rc=1
	grep -E "^(ok|PASS|FAIL|panic)|--- (PASS|FAIL|SKIP)" "$log"
	[[ -n ${GPU_TEST_LOGS:-} ]] && mkdir -p "$GPU_TEST_LOGS" && cp "$log" "$GPU_TEST_LOGS/$name.log"
	rm -f "$log"
done
# The engine tests again with the fused decode kernels forced on (the default picks them by
# timing, so the run above may have tested only one path).
if [[ -x $BIN/kernels.test ]]; then
	echo "== kernels.test, DMC_DECODE_FUSION=force"
	(cd "$root/kernels" && DMC_DECODE_FUSION=force DMC_ASSETS=$ASSETS DMC_REQUIRE_GPU=1 "$BIN/kernels.test" \
		-test.run 'Parity|Batching|GQALogits|Perplexity|DecodeScore|SwiGLU' -test.count 1 -test.v 2>&1 |
		grep -E "^(ok|PASS|FAIL|panic)|--- (PASS|FAIL|SKIP)") || rc=1
	# and with the compute_80 kernels and plain launches (on Hopper the default is the sm_90
	# build with programmatic dependent launch).
	echo "== kernels.test, DMC_PDL=0"
	(cd "$root/kernels" && DMC_PDL=0 DMC_ASSETS=$ASSETS DMC_REQUIRE_GPU=1 "$BIN/kernels.test" \
		-test.run 'Parity|Batching|GQALogits|Perplexity|DecodeScore|SwiGLU' -test.count 1 -test.v 2>&1 |
		grep -E "^(ok|PASS|FAIL|panic)|--- (PASS|FAIL|SKIP)") || rc=1
fi
# The device executor's parity, determinism and recompute tests again with the gradient sums
# unfolded (DMC_FOLD_SUMS=0; the default folds them into the ops that feed them), with the GEMM
# operands' fp32 values dropped where only their shadows are read (DMC_SHADOW_ONLY=1), and with the
# rows-per-warp DMC merge (DMC_MERGE=rows) and the gradients' own bf16 shadows
# (DMC_GRAD_SHADOWS=1), tuned GEMMs (DMC_GEMM_TUNE=1) and RMSNorm's dx and dw in one pass
# (DMC_NORM_GRADS=paired), the attention's shared bf16 q, k, v (DMC_ATTN_SHADOWS=1) and its
# coalesced delta pass (DMC_ATTN_DELTA=rows), all opt-in until measured.
if [[ -x $BIN/device.test ]]; then
	for sw in DMC_FOLD_SUMS=0 DMC_SHADOW_ONLY=1 DMC_MERGE=rows DMC_GRAD_SHADOWS=1 DMC_GEMM_TUNE=1 DMC_NORM_GRADS=paired DMC_ATTN_SHADOWS=1 DMC_ATTN_DELTA=rows 'DMC_SHADOW_ONLY=1 DMC_MERGE=rows DMC_GRAD_SHADOWS=1 DMC_NORM_GRADS=paired DMC_ATTN_SHADOWS=1 DMC_ATTN_DELTA=rows'; do
		echo "== device.test, $sw"
		(cd "$root/graph/device" && env $sw DMC_ASSETS=$ASSETS DMC_REQUIRE_GPU=1 \
			"$BIN/device.test" -test.run 'Step|Training|Recompute' -test.count 1 -test.v 2>&1 |
			grep -E "^(ok|PASS|FAIL|panic)|--- (PASS|FAIL|SKIP)") || rc=1
	done
fi
exit $rc
