#!/bin/sh
# Installs the CUDA headers and nvcc (11.8) from Debian's non-free component, which
# is all that building the `cuda`-tagged binary and regenerating the PTX needs on a
# machine without a GPU (see docs/gpu.md). Needs root; ~780 MB download, ~3 min.
# CI does not need this unless it builds with -tags cuda.
set -eu
if command -v nvcc >/dev/null 2>&1 && [ -f /usr/include/cuda.h ]; then
	echo "CUDA toolkit already installed: $(nvcc --version | tail -n 1)"
	exit 0
fi
cat >/etc/apt/sources.list.d/nonfree.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: contrib non-free
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nvidia-cuda-toolkit nvidia-cuda-dev
