#!/bin/bash
# Acceptance measurements of the CUDA engine on a GPU machine (no Go needed there). Build here:
#   go build -tags dmc_cuda -o bin/dmc-cuda ./cmd/dmc
#   go test -c -tags dmc_cuda -o bin/kernels.test ./kernels
# and copy the assets (stories260K.bin, tok512.bin under tinyllamas-stories260K/) and
# peer_hf_decode.py into .devdata/. Usage: kernels/bench/acceptance.sh STAGE... where a stage is
# tests | sanitizer | decode | decode-nographs | membound | prefill | gqa | generate | errors |
# profile | peer (compiled static cache, via peer_wrap.py) | peer-eager. Logs and JSON go to $OUT.
set -u
OUT=${OUT:-/tmp/dmc-acceptance}
mkdir -p "$OUT"
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
export DMC_ASSETS=$ROOT/.devdata DMC_REQUIRE_GPU=1 PYTHONUNBUFFERED=1
B=bin/dmc-cuda
for stage in "$@"; do
	echo "=== $stage $(date -u +%T)"
	case $stage in
	tests)
		(cd kernels && timeout 400 ../bin/kernels.test -test.v -test.timeout 390s >"$OUT/test.log" 2>&1)
		echo "tests rc=$?"
		grep -E "^(--- |ok|FAIL|PASS)|FAIL|panic|cuda_test.go:[0-9]+: [a-z0-9-]+:|worst|identical|diverge" "$OUT/test.log" | grep -v "^    --- PASS" | head -40
		;;
	sanitizer)
		CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
		(cd kernels && timeout 400 "$CS" --tool memcheck --leak-check full --error-exitcode 3 ../bin/kernels.test \
			-test.run 'TestStories260KGreedyParity/(vanilla-prompt|dmc-forced3)|TestContinuousBatching|TestCUDAConformance/Cache' \
			-test.timeout 390s >"$OUT/memcheck.log" 2>&1)
		echo "memcheck rc=$?"
		grep -E "ERROR SUMMARY|LEAK SUMMARY|^(--- |ok|FAIL|PASS)" "$OUT/memcheck.log" | head
		;;
	peer)
		# compiled static-cache peer (kernels/bench/peer_wrap.py: cudagraph step marks only)
		timeout 500 python3 kernels/bench/peer_wrap.py --batches 64 --prompt 512 --gen 128 --cache static --compile >"$OUT/peer.log" 2>&1
		echo "peer rc=$?"; grep -E '^\{' "$OUT/peer.log" | tail -2
		;;
	peer-eager)
		timeout 300 python3 .devdata/peer_hf_decode.py --batches 64 --prompt 512 --gen 128 >"$OUT/peer-eager.log" 2>&1
		echo "peer-eager rc=$?"; grep -E '^\{' "$OUT/peer-eager.log" | tail -2
		;;
	decode)
		timeout 300 $B bench decode --model llama2-7b --random-weights --cr 1 --batch 1,16,64 --prompt 512 --gen 128 --json "$OUT/decode.json" 2>&1 | tail -8
		;;
	decode-nographs)
		DMC_NO_GRAPHS=1 timeout 300 $B bench decode --model llama2-7b --random-weights --cr 1 --batch 64 --prompt 512 --gen 128 --json "$OUT/decode-nographs.json" 2>&1 | tail -3
		;;
	membound)
		timeout 500 $B bench decode --model llama2-7b --random-weights --cr 1,2,4,8 --batch max --prompt 3968 --gen 128 --json "$OUT/membound.json" 2>&1 | tail -10
		;;
	prefill)
		timeout 200 $B bench decode --model llama2-7b --random-weights --cr 1,8 --batch 1 --prompt 4093 --gen 3 --json "$OUT/prefill.json" 2>&1 | tail -5
		;;
	gqa)
		timeout 200 $B bench decode --model tiny-1b-gqa --random-weights --cr 1,4 --batch 1,64 --prompt 512 --gen 128 --json "$OUT/gqa.json" 2>&1 | tail -6
		;;
	generate)
		M=.devdata/tinyllamas-stories260K
		for dev in cpu cuda; do
			timeout 60 $B generate --device $dev --model $M/stories260K.bin --tokenizer $M/tok512.bin --temperature 0 --max-tokens 64 >"$OUT/gen-$dev.txt" 2>"$OUT/gen-$dev.err"
			echo "generate --device $dev rc=$?: $(head -c 300 "$OUT/gen-$dev.txt")"; cat "$OUT/gen-$dev.err"
		done
		cmp -s "$OUT/gen-cpu.txt" "$OUT/gen-cuda.txt" && echo "generate: cpu and cuda texts identical" || echo "generate: TEXTS DIFFER"
		;;
	errors)
		echo "--- missing cuBLAS:"; DMC_LIBCUBLAS=libcublas-missing.so.99 $B bench decode --model llama2-7b --random-weights --gen 3 2>&1 | head -3
		echo "--- missing driver:"; DMC_LIBCUDA=libcuda-missing.so.1 $B bench decode --model llama2-7b --random-weights --gen 3 2>&1 | head -3
		echo "--- model too large:"; $B bench decode --model llama2-70b --random-weights --batch 1 --gen 3 2>&1 | head -3
		echo "--- no GPU visible:"; CUDA_VISIBLE_DEVICES= $B bench decode --model llama2-7b --random-weights --gen 3 2>&1 | head -3
		;;
	profile)
		DMC_PROFILE=1 timeout 200 $B bench decode --model llama2-7b --random-weights --cr 1,4 --batch 1,64 --prompt 512 --gen 32 --json "$OUT/profile.json" 2>&1 | grep -E "profile|tok/s"
		;;
	esac
done
