# dmc developer targets. `make demo` is the embedded end-to-end job; `make test` is what CI runs.
GO      ?= go
BIN     ?= bin
PKGS    := ./...

.PHONY: all build build-cuda build-openblas test test-short bench lint demo kernels cuda-toolkit clean

all: build

build:
	$(GO) build -o $(BIN)/dmc ./cmd/dmc

# CUDA engine (tag dmc_cuda; plain `cuda` would switch on gorgonia's cuDNN backend): needs the
# CUDA headers (make cuda-toolkit); runs where libcuda.so.1 exists, cuBLAS loaded at run time.
build-cuda:
	$(GO) build -tags dmc_cuda -o $(BIN)/dmc-cuda ./cmd/dmc

# Training with OpenBLAS GEMMs (apt-get install libopenblas-dev).
build-openblas:
	CGO_LDFLAGS=-lopenblas $(GO) build -tags openblas -o $(BIN)/dmc-openblas ./cmd/dmc

test:
	$(GO) vet $(PKGS)
	$(GO) test -count=1 -timeout 40m $(PKGS)

test-short:
	$(GO) test -short -count=1 $(PKGS)

bench:
	$(GO) test -run '^$$' -bench . -benchtime 3x $(PKGS)

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1)
	$(GO) vet $(PKGS)

demo:
	$(GO) run ./cmd/dmc demo --out runs/demo

kernels:
	$(MAKE) -C kernels ptx

cuda-toolkit:
	sh kernels/install-cuda-toolkit.sh

clean:
	rm -rf $(BIN) runs/demo
