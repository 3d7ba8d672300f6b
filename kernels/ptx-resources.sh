#!/usr/bin/env bash
# Writes the registers, static shared memory, stack and spills of every kernel of the embedded
# PTX as ptxas compiles it for Hopper (sm_90, the lent GPUs), with each PTX file's sha256, so
# that a kernel change shows its resource change in review and TestPTXResourceReport (no GPU,
# no CUDA toolkit) can tell a stale report and new spills. `make -C kernels ptx` runs it.
#   kernels/ptx-resources.sh [PTXAS] > kernels/ptx/resources-sm90.txt
set -euo pipefail
PTXAS=${1:-ptxas}
cd "$(dirname "$0")/ptx"
echo "# ptxas -arch=sm_90 -v of the embedded PTX ($("$PTXAS" --version | tail -1)); regenerate with make -C kernels ptx"
for f in dmc.ptx dmc_sm90.ptx train.ptx; do
	echo "# sha256 $f $(sha256sum "$f" | cut -d' ' -f1)"
done
echo "# ptx kernel registers static_smem stack spill_stores spill_loads"
for f in dmc.ptx dmc_sm90.ptx train.ptx; do
	"$PTXAS" -arch=sm_90 -v -o /dev/null "$f" 2>&1 | awk -v f="$f" '
		/Compiling entry function/ { if (k != "") print f, k, regs, smem, stack, st, ld; k = $0; sub(/.*function .\x27?/, "", k); sub(/\x27.*/, "", k); regs = smem = stack = st = ld = 0 }
		/bytes stack frame/ { stack = $1; st = $5; ld = $9 }
		/Used [0-9]+ registers/ { for (i = 1; i <= NF; i++) { if ($i ~ /^registers/) regs = $(i-1); if ($i == "smem" || $i == "smem,") smem = $(i-2) } }
		END { if (k != "") print f, k, regs, smem, stack, st, ld }'
done | sort
