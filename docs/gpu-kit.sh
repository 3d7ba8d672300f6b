#!/usr/bin/env bash
# Builds the kit a device call carries (docs/gpu.md): the CUDA-tagged dmc and the GPU test
# binaries, stripped and xz-compressed, the stories260K assets the tests read, the PyTorch
# peer, and run.sh, which on the GPU machine unpacks them and runs what its environment asks:
#   TESTS=1 [TEST_LIMIT=s]        docs/gpu-tests.sh (conformance, device, engine tests)
#   STEPS=re [ROUNDS="1 2"]       docs/gpu-bench.sh steps matching re (the 953M step A/B)
#   PROFILE=1                     the per-op profile of the default DMC step
#   PEER=1 / PEER_AFTER=1         peer_torch_train.py eager and --compile, before / after
# Results under $OUT/r. Build here (needs the CUDA headers: make cuda-toolkit), then
#   docs/gpu-kit.sh KIT           # KIT must be git-ignored, e.g. listed in .git/info/exclude
# and call the device with carry [KIT] and `TESTS=1 STEPS=... KIT/run.sh`.
set -euo pipefail
KIT=${1:?kit folder (git-ignored)}
root=$(cd "$(dirname "$0")/.." && pwd)
ASSETS=${ASSETS:-$root/../shared/assets}
mkdir -p "$KIT/a"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
make -C "$root" test-cuda-bins BIN="$tmp" >/dev/null
(cd "$root" && go build -tags dmc_cuda -ldflags="-s -w" -o "$tmp/dmc" ./cmd/dmc)
xz -T0 -6 -f "$tmp"/dmc "$tmp"/ops.test "$tmp"/device.test "$tmp"/kernels.test
mv "$tmp"/*.xz "$KIT/"
cp -r "$ASSETS/tinyllamas-stories260K" "$KIT/a/"
cp "$ASSETS/../tools/peer_torch_train.py" "$KIT/"
cat >"$KIT/run.sh" <<'RUN'
#!/usr/bin/env bash
set -uo pipefail
K=$(cd "$(dirname "$0")" && pwd)
B=/tmp/kb
mkdir -p "$B"
for f in "$K"/*.xz; do xz -dc "$f" >"$B/$(basename "$f" .xz)" & done
wait
chmod +x "$B"/*
R=$OUT/r
mkdir -p "$R"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv >"$R/gpu.txt" 2>&1
t0=$(date +%s)
peer() { for m in "" "--compile"; do timeout 200 python3 "$K/peer_torch_train.py" $m >"$R/peer${m:+-compile}$1.txt" 2>&1; done; }
if [[ -n ${TESTS:-} ]]; then
	GPU_TEST_LOGS=$R/testlogs timeout "${TEST_LIMIT:-240}" docs/gpu-tests.sh "$B" "$K/a" "${TESTS_RUN:-.}" >"$R/tests.txt" 2>&1
	echo "tests rc=$? $(($(date +%s) - t0))s" >>"$R/tests.txt"
fi
[[ -n ${PEER:-} ]] && peer ""
if [[ -n ${STEPS:-} ]]; then
	STEPS="$STEPS" ROUNDS="${ROUNDS:-1 2}" timeout "${BENCH_LIMIT:-300}" docs/gpu-bench.sh "$B" "$R/bench" >"$R/bench.log" 2>&1
fi
if [[ -n ${PROFILE:-} ]]; then
	timeout 120 "$B/dmc" bench train --model bench-953m --random-weights --device cuda --seq 2048 --batch 8 --cache dmc --profile >"$R/profile-dmc.txt" 2>&1
fi
[[ -n ${PEER_AFTER:-} ]] && peer "-after"
echo "total $(($(date +%s) - t0))s" >"$R/done.txt"
RUN
chmod +x "$KIT/run.sh"
du -sh "$KIT"
