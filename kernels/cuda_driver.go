//go:build dmc_cuda

package kernels

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// The CUDA driver and cuBLAS are opened at run time (dlopen), never linked: the binary starts on
// machines without a GPU and reports a clear error, and one binary runs with cuBLAS 11, 12 or 13.
// Only the handful of types below are needed, so no CUDA header is included.
typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef void* CUcontext;
typedef void* CUmodule;
typedef void* CUfunction;
typedef void* CUevent;
typedef void* CUstream;

#define CU_FUNCS(X) \
  X(cuInit, CUresult, (unsigned)) \
  X(cuDriverGetVersion, CUresult, (int*)) \
  X(cuDeviceGetCount, CUresult, (int*)) \
  X(cuDeviceGet, CUresult, (CUdevice*, int)) \
  X(cuDeviceGetName, CUresult, (char*, int, CUdevice)) \
  X(cuDeviceGetAttribute, CUresult, (int*, int, CUdevice)) \
  X(cuDevicePrimaryCtxRetain, CUresult, (CUcontext*, CUdevice)) \
  X(cuCtxSetCurrent, CUresult, (CUcontext)) \
  X(cuCtxSynchronize, CUresult, (void)) \
  X(cuModuleLoadData, CUresult, (CUmodule*, const void*)) \
  X(cuModuleGetFunction, CUresult, (CUfunction*, CUmodule, const char*)) \
  X(cuMemAlloc_v2, CUresult, (CUdeviceptr*, size_t)) \
  X(cuMemFree_v2, CUresult, (CUdeviceptr)) \
  X(cuMemGetInfo_v2, CUresult, (size_t*, size_t*)) \
  X(cuMemcpyHtoD_v2, CUresult, (CUdeviceptr, const void*, size_t)) \
  X(cuMemcpyDtoH_v2, CUresult, (void*, CUdeviceptr, size_t)) \
  X(cuMemcpyDtoD_v2, CUresult, (CUdeviceptr, CUdeviceptr, size_t)) \
  X(cuMemsetD8_v2, CUresult, (CUdeviceptr, unsigned char, size_t)) \
  X(cuLaunchKernel, CUresult, (CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream, void**, void**)) \
  X(cuEventCreate, CUresult, (CUevent*, unsigned)) \
  X(cuEventRecord, CUresult, (CUevent, CUstream)) \
  X(cuEventSynchronize, CUresult, (CUevent)) \
  X(cuEventElapsedTime, CUresult, (float*, CUevent, CUevent)) \
  X(cuEventDestroy_v2, CUresult, (CUevent)) \
  X(cuGetErrorString, CUresult, (CUresult, const char**)) \
  X(cuStreamCreate, CUresult, (CUstream*, unsigned)) \
  X(cuStreamSynchronize, CUresult, (CUstream)) \
  X(cuMemcpyHtoDAsync_v2, CUresult, (CUdeviceptr, const void*, size_t, CUstream)) \
  X(cuMemcpyDtoHAsync_v2, CUresult, (void*, CUdeviceptr, size_t, CUstream)) \
  X(cuMemcpyDtoDAsync_v2, CUresult, (CUdeviceptr, CUdeviceptr, size_t, CUstream)) \
  X(cuMemsetD8Async, CUresult, (CUdeviceptr, unsigned char, size_t, CUstream))

// Optional: CUDA graphs (decode steps run without them when a driver lacks any).
#define CU_GRAPH_FUNCS(X) \
  X(cuStreamBeginCapture_v2, CUresult, (CUstream, int)) \
  X(cuStreamEndCapture, CUresult, (CUstream, void**)) \
  X(cuGraphInstantiateWithFlags, CUresult, (void**, void*, unsigned long long)) \
  X(cuGraphLaunch, CUresult, (void*, CUstream)) \
  X(cuGraphExecDestroy, CUresult, (void*)) \
  X(cuGraphDestroy, CUresult, (void*))

#define DECL(name, ret, args) typedef ret (*name##_fn) args; static name##_fn p_##name;
CU_FUNCS(DECL)
CU_GRAPH_FUNCS(DECL)
static int dmc_graphs_ok;
static int dmc_graphs_available(void) { return dmc_graphs_ok; }

// Optional: programmatic dependent launch (CUDA 11.8+, sm_90). Only the fields used are
// declared; the layouts are the driver's (CUlaunchAttribute: 72 bytes, value at 8;
// CUlaunchConfig: 56 bytes, hStream at 32), checked below.
typedef struct {
  int id;
  char pad[4];
  union { char pad[64]; int programmaticStreamSerializationAllowed; } value;
} dmc_launch_attr;
typedef struct {
  unsigned gx, gy, gz, bx, by, bz, smem;
  CUstream stream;
  dmc_launch_attr* attrs;
  unsigned nattrs;
} dmc_launch_config;
_Static_assert(sizeof(dmc_launch_attr) == 72 && offsetof(dmc_launch_attr, value) == 8, "CUlaunchAttribute layout");
_Static_assert(sizeof(dmc_launch_config) == 56 && offsetof(dmc_launch_config, stream) == 32 &&
               offsetof(dmc_launch_config, attrs) == 40 && offsetof(dmc_launch_config, nattrs) == 48, "CUlaunchConfig layout");
typedef CUresult (*cuLaunchKernelEx_fn)(const dmc_launch_config*, CUfunction, void**, void**);
static cuLaunchKernelEx_fn p_cuLaunchKernelEx;
static int dmc_pdl_on;
static int dmc_pdl_available(void) { return p_cuLaunchKernelEx != 0; }
static void dmc_pdl_set(int on) { dmc_pdl_on = on && p_cuLaunchKernelEx; }

static void* libcuda;
// Every operation goes to this stream (a non-blocking stream created at start, so that decode
// steps can be captured into CUDA graphs).
static CUstream dmc_stream;

// dmc_cuda_open loads libcuda.so.1 and its entry points; 0 on success, else a message in err.
static int dmc_cuda_open(char* err, int n) {
  if (libcuda) return 0;
  const char* name = getenv("DMC_LIBCUDA");  // override, e.g. for a driver outside the loader path
  void* h = dlopen(name && *name ? name : "libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!h) { snprintf(err, n, "%s", dlerror()); return -1; }
#define LOAD(name, ret, args) p_##name = (name##_fn)dlsym(h, #name); if (!p_##name) { snprintf(err, n, "libcuda.so.1 lacks %s (driver too old?)", #name); return -1; }
  CU_FUNCS(LOAD)
  dmc_graphs_ok = 1;
#define LOADOPT(name, ret, args) p_##name = (name##_fn)dlsym(h, #name); if (!p_##name) dmc_graphs_ok = 0;
  CU_GRAPH_FUNCS(LOADOPT)
  p_cuLaunchKernelEx = (cuLaunchKernelEx_fn)dlsym(h, "cuLaunchKernelEx");
  libcuda = h;
  return 0;
}

static CUresult dmc_cuInit() { return p_cuInit(0); }
static CUresult dmc_cuDriverGetVersion(int* v) { return p_cuDriverGetVersion(v); }
static CUresult dmc_cuDeviceGetCount(int* n) { return p_cuDeviceGetCount(n); }
static CUresult dmc_cuDeviceGet(CUdevice* d, int i) { return p_cuDeviceGet(d, i); }
static CUresult dmc_cuDeviceGetName(char* s, int n, CUdevice d) { return p_cuDeviceGetName(s, n, d); }
static CUresult dmc_cuDeviceGetAttribute(int* v, int a, CUdevice d) { return p_cuDeviceGetAttribute(v, a, d); }
static CUresult dmc_cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice d) { return p_cuDevicePrimaryCtxRetain(c, d); }
static CUresult dmc_cuCtxSetCurrent(CUcontext c) { return p_cuCtxSetCurrent(c); }
static CUresult dmc_cuCtxSynchronize() { return p_cuStreamSynchronize(dmc_stream); }
static CUresult dmc_stream_create() { return p_cuStreamCreate(&dmc_stream, 1); }
static void* dmc_stream_ptr() { return dmc_stream; }
static CUresult dmc_capture_begin() { return p_cuStreamBeginCapture_v2(dmc_stream, 2); }  // relaxed mode
static CUresult dmc_capture_end(void** graph) { return p_cuStreamEndCapture(dmc_stream, graph); }
static CUresult dmc_graph_instantiate(void** exec, void* graph) { return p_cuGraphInstantiateWithFlags(exec, graph, 0); }
static CUresult dmc_graph_launch(void* exec) { return p_cuGraphLaunch(exec, dmc_stream); }
static void dmc_graph_destroy(void* exec, void* graph) { if (exec) p_cuGraphExecDestroy(exec); if (graph) p_cuGraphDestroy(graph); }
static CUresult dmc_cuModuleLoadData(CUmodule* m, const void* img) { return p_cuModuleLoadData(m, img); }
static CUresult dmc_cuModuleGetFunction(CUfunction* f, CUmodule m, const char* name) { return p_cuModuleGetFunction(f, m, name); }
static CUresult dmc_cuMemAlloc(CUdeviceptr* p, size_t n) { return p_cuMemAlloc_v2(p, n); }
static CUresult dmc_cuMemFree(CUdeviceptr p) { return p_cuMemFree_v2(p); }
static CUresult dmc_cuMemGetInfo(size_t* f, size_t* t) { return p_cuMemGetInfo_v2(f, t); }
static CUresult dmc_cuMemcpyHtoD(CUdeviceptr d, const void* s, size_t n) { return p_cuMemcpyHtoDAsync_v2(d, s, n, dmc_stream); }
static CUresult dmc_cuMemcpyDtoH(void* d, CUdeviceptr s, size_t n) {
  CUresult r = p_cuMemcpyDtoHAsync_v2(d, s, n, dmc_stream);
  return r ? r : p_cuStreamSynchronize(dmc_stream);
}
static CUresult dmc_cuMemcpyDtoD(CUdeviceptr d, CUdeviceptr s, size_t n) { return p_cuMemcpyDtoDAsync_v2(d, s, n, dmc_stream); }
static CUresult dmc_cuMemsetD8(CUdeviceptr d, unsigned char v, size_t n) { return p_cuMemsetD8Async(d, v, n, dmc_stream); }
static CUresult dmc_cuEventCreate(CUevent* e) { return p_cuEventCreate(e, 0); }
static CUresult dmc_cuEventRecord(CUevent e) { return p_cuEventRecord(e, dmc_stream); }
static CUresult dmc_cuEventSynchronize(CUevent e) { return p_cuEventSynchronize(e); }
static CUresult dmc_cuEventElapsedTime(float* ms, CUevent a, CUevent b) { return p_cuEventElapsedTime(ms, a, b); }
static CUresult dmc_cuEventDestroy(CUevent e) { return p_cuEventDestroy_v2(e); }
static const char* dmc_cuErrorString(CUresult r) {
  const char* s = 0;
  if (p_cuGetErrorString && p_cuGetErrorString(r, &s) == 0 && s) return s;
  return "unknown CUDA error";
}

// Kernel arguments arrive packed in one buffer laid out like the kernel's parameter list.
static CUresult dmc_launch(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                           unsigned smem, void* buf, size_t size) {
  void* extra[] = {(void*)1, buf, (void*)2, &size, (void*)0};  // CU_LAUNCH_PARAM_BUFFER_POINTER, _SIZE, _END
  if (dmc_pdl_on) {
    // CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION: the kernel may start while the
    // previous one drains; the sm_90 PTX makes every kernel wait (griddepcontrol.wait) before
    // it touches memory the previous kernels write, the GEMVs after fetching their first weights.
    dmc_launch_attr at;
    memset(&at, 0, sizeof at);
    at.id = 6;
    at.value.programmaticStreamSerializationAllowed = 1;
    dmc_launch_config c = {gx, gy, gz, bx, by, bz, smem, dmc_stream, &at, 1};
    return p_cuLaunchKernelEx(&c, f, 0, extra);
  }
  return p_cuLaunchKernel(f, gx, gy, gz, bx, by, bz, smem, dmc_stream, 0, extra);
}

// ---- cuBLAS
typedef int cublasStatus_t;
typedef void* cublasHandle_t;
typedef cublasStatus_t (*cublasCreate_fn)(cublasHandle_t*);
typedef cublasStatus_t (*cublasGemmEx_fn)(cublasHandle_t, int, int, int, int, int, const void*, const void*, int, int,
                                          const void*, int, int, const void*, void*, int, int, int, int);
typedef cublasStatus_t (*cublasGemmBatchedEx_fn)(cublasHandle_t, int, int, int, int, int, const void*, const void* const*, int,
                                                 int, const void* const*, int, int, const void*, void* const*, int, int, int,
                                                 int, int);
typedef cublasStatus_t (*cublasGetVersion_fn)(cublasHandle_t, int*);
typedef cublasStatus_t (*cublasSetStream_fn)(cublasHandle_t, void*);
static cublasSetStream_fn p_cublasSetStream;
static cublasCreate_fn p_cublasCreate;
static cublasGemmEx_fn p_cublasGemmEx;
static cublasGemmBatchedEx_fn p_cublasGemmBatchedEx;
static cublasGetVersion_fn p_cublasGetVersion;
static void* libcublas;

static int dmc_cublas_open(char* err, int n, char* which, int wn) {
  if (libcublas) return 0;
  const char* names[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so.11", 0};
  const char* over = getenv("DMC_LIBCUBLAS");  // override: one library name or path
  if (over && *over) { names[0] = over; names[1] = 0; }
  void* h = 0;
  for (int i = 0; names[i] && !h; i++) {
    h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (h) snprintf(which, wn, "%s", names[i]);
  }
  if (!h) { snprintf(err, n, "%s", dlerror()); return -1; }
  p_cublasCreate = (cublasCreate_fn)dlsym(h, "cublasCreate_v2");
  p_cublasGemmEx = (cublasGemmEx_fn)dlsym(h, "cublasGemmEx");
  p_cublasGemmBatchedEx = (cublasGemmBatchedEx_fn)dlsym(h, "cublasGemmBatchedEx");
  p_cublasGetVersion = (cublasGetVersion_fn)dlsym(h, "cublasGetVersion_v2");
  p_cublasSetStream = (cublasSetStream_fn)dlsym(h, "cublasSetStream_v2");
  if (!p_cublasCreate || !p_cublasGemmEx || !p_cublasGemmBatchedEx || !p_cublasSetStream) { snprintf(err, n, "%s lacks cublasGemmEx/cublasGemmBatchedEx", which); return -1; }
  libcublas = h;
  return 0;
}
static cublasStatus_t dmc_cublasCreate(cublasHandle_t* h) {
  cublasStatus_t st = p_cublasCreate(h);
  return st ? st : p_cublasSetStream(*h, dmc_stream);
}
static int dmc_cublasVersion(cublasHandle_t h) { int v = 0; if (p_cublasGetVersion) p_cublasGetVersion(h, &v); return v; }

// C = alpha op(A) op(B) + beta C, column-major, fp32 accumulation (CUBLAS_COMPUTE_32F = 68).
static cublasStatus_t dmc_gemm(cublasHandle_t h, int ta, int tb, int m, int n, int k, float alpha, CUdeviceptr A, int at, int lda,
                               CUdeviceptr B, int bt, int ldb, float beta, CUdeviceptr C, int ct, int ldc) {
  return p_cublasGemmEx(h, ta, tb, m, n, k, &alpha, (const void*)A, at, lda, (const void*)B, bt, ldb, &beta, (void*)C, ct, ldc, 68, -1);
}
static cublasStatus_t dmc_gemm_batched(cublasHandle_t h, int ta, int tb, int m, int n, int k, float alpha, CUdeviceptr A, int at,
                                       int lda, CUdeviceptr B, int bt, int ldb, float beta, CUdeviceptr C, int ct, int ldc, int count) {
  return p_cublasGemmBatchedEx(h, ta, tb, m, n, k, &alpha, (const void* const*)A, at, lda, (const void* const*)B, bt, ldb, &beta,
                               (void* const*)C, ct, ldc, count, 68, -1);
}

// ---- cuBLASLt (optional): per-shape algorithm choice for the skinny decode GEMMs.
typedef struct { unsigned long long data[8]; } dmc_lt_algo;
typedef struct { dmc_lt_algo algo; size_t workspaceSize; int state; float wavesCount; int reserved[4]; } dmc_lt_heur;
typedef int (*ltCreate_fn)(void**);
typedef int (*ltDescCreate_fn)(void**, int, int);
typedef int (*ltDescSet_fn)(void*, int, const void*, size_t);
typedef int (*ltLayoutCreate_fn)(void**, int, unsigned long long, unsigned long long, long long);
typedef int (*ltPrefCreate_fn)(void**);
typedef int (*ltPrefSet_fn)(void*, int, const void*, size_t);
typedef int (*ltHeur_fn)(void*, void*, void*, void*, void*, void*, void*, int, dmc_lt_heur*, int*);
typedef int (*ltMatmul_fn)(void*, void*, const void*, const void*, void*, const void*, void*, const void*, const void*, void*,
                           void*, void*, const dmc_lt_algo*, void*, size_t, void*);
static ltCreate_fn p_ltCreate; static ltDescCreate_fn p_ltDescCreate; static ltDescSet_fn p_ltDescSet;
static ltLayoutCreate_fn p_ltLayoutCreate; static ltPrefCreate_fn p_ltPrefCreate; static ltPrefSet_fn p_ltPrefSet;
static ltHeur_fn p_ltHeur; static ltMatmul_fn p_ltMatmul;
static void* ltHandle;

static int dmc_lt_open(void) {
  if (ltHandle) return 0;
  const char* names[] = {"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so.11", 0};
  void* h = 0;
  for (int i = 0; names[i] && !h; i++) h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
  if (!h) return -1;
  p_ltCreate = (ltCreate_fn)dlsym(h, "cublasLtCreate");
  p_ltDescCreate = (ltDescCreate_fn)dlsym(h, "cublasLtMatmulDescCreate");
  p_ltDescSet = (ltDescSet_fn)dlsym(h, "cublasLtMatmulDescSetAttribute");
  p_ltLayoutCreate = (ltLayoutCreate_fn)dlsym(h, "cublasLtMatrixLayoutCreate");
  p_ltPrefCreate = (ltPrefCreate_fn)dlsym(h, "cublasLtMatmulPreferenceCreate");
  p_ltPrefSet = (ltPrefSet_fn)dlsym(h, "cublasLtMatmulPreferenceSetAttribute");
  p_ltHeur = (ltHeur_fn)dlsym(h, "cublasLtMatmulAlgoGetHeuristic");
  p_ltMatmul = (ltMatmul_fn)dlsym(h, "cublasLtMatmul");
  if (!p_ltCreate || !p_ltDescCreate || !p_ltDescSet || !p_ltLayoutCreate || !p_ltPrefCreate || !p_ltPrefSet || !p_ltHeur || !p_ltMatmul) return -1;
  if (p_ltCreate(&ltHandle) != 0) { ltHandle = 0; return -1; }
  return 0;
}

// A plan for Y[n][m] (col-major m x n) = op_T(W: k x m) * X (k x n), bf16 in, ctype out.
typedef struct { void *desc, *a, *b, *c; int count; dmc_lt_heur h[8]; } dmc_lt_plan;

static int dmc_lt_plan_make(dmc_lt_plan* p, int m, int n, int k, int ctype, size_t ws) {
  int opT = 1, opN = 0;
  if (p_ltDescCreate(&p->desc, 68, 0) || p_ltDescSet(p->desc, 3, &opT, 4) || p_ltDescSet(p->desc, 4, &opN, 4)) return -1;
  if (p_ltLayoutCreate(&p->a, 14, k, m, k) || p_ltLayoutCreate(&p->b, 14, k, n, k) || p_ltLayoutCreate(&p->c, ctype, m, n, m)) return -1;
  void* pref;
  unsigned long long w = ws;
  if (p_ltPrefCreate(&pref) || p_ltPrefSet(pref, 1, &w, 8)) return -1;
  p->count = 0;
  if (p_ltHeur(ltHandle, p->desc, p->a, p->b, p->c, p->c, pref, 8, p->h, &p->count)) return -1;
  return 0;
}

static int dmc_lt_run(dmc_lt_plan* p, int i, float alpha, float beta, CUdeviceptr A, CUdeviceptr B, CUdeviceptr C, CUdeviceptr ws, size_t wsSize) {
  return p_ltMatmul(ltHandle, p->desc, &alpha, (const void*)A, p->a, (const void*)B, p->b, &beta, (const void*)C, p->c, (void*)C, p->c,
                    &p->h[i].algo, (void*)ws, wsSize, dmc_stream);
}
*/
import "C"

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"strings"
	"unsafe"
)

// devPtr is a device address.
type devPtr = uint64

// cuError turns a CUDA driver result into an error naming the call.
func cuError(r C.CUresult, what string) error {
	if r == 0 {
		return nil
	}
	return fmt.Errorf("%s: CUDA error %d (%s)", what, int(r), C.GoString(C.dmc_cuErrorString(r)))
}

// Data types and operations of cuBLAS (stable values).
const (
	opN     = 0
	opT     = 1
	typeF32 = 0
	typeBF  = 14
)

// device is one GPU: its primary context, the loaded kernels and a cuBLAS handle. Every
// method must run between enter and exit (the context is current per OS thread).
type device struct {
	ctx    C.CUcontext
	mod    C.CUmodule
	blas   C.cublasHandle_t
	fns    map[string]C.CUfunction
	name   string
	sms    int
	cc     int  // compute capability major*10+minor
	pdl    bool // the sm_90 kernels, launched with programmatic dependent launch
	blasLb string
	blasV  int
	drvV   int

	// cuBLASLt autotuning of decode GEMMs (rows <= ltMaxRows); nil plans when unavailable.
	lt     bool
	ltWs   devPtr
	ltScr  devPtr // scratch output for tuning
	ltScrN int64
	plans  map[gemmKey]*gemmPlan
}

type gemmKey struct {
	out, rows, in, yType int
	acc                  bool
}

// gemmPlan is the fastest of cublasGemmEx (best = -1) and the cuBLASLt heuristics' candidates.
type gemmPlan struct {
	p    *C.dmc_lt_plan
	best int
	gemv bool // the small-batch GEMV kernel was the fastest
}

// gemvMaxRows is the most rows gemv_bf16 takes (GEMV_MAX_ROWS in csrc/dmc.cu).
const gemvMaxRows = 4

// gemvEnabled lets the tuner consider gemv_bf16 next to cuBLASLt (DMC_GEMV=0 turns it off):
// on the H200 it took llama2-7b batch-1 decode from 74% to 78% of the roofline at context 512
// and from 72% to 75% at 4096 (kernels/README.md).
var gemvEnabled = os.Getenv("DMC_GEMV") != "0"

// decodeFusion lets decode steps of at most gemvMaxRows rows fold SwiGLU into the gate/up
// GEMV where the fused kernel times faster than the launches it replaces.
// DMC_DECODE_FUSION=0 leaves it out (the reference for measurements and parity); =force uses
// it wherever it applies (engine tests, so that parity covers it whatever the timing says).
var decodeFusion, forceFusion = os.Getenv("DMC_DECODE_FUSION") != "0", os.Getenv("DMC_DECODE_FUSION") == "force"

// gemv is y (+)= x · wᵀ with the small-batch kernel (rows ≤ gemvMaxRows, in % 8 == 0).
func (d *device) gemv(y devPtr, yType int, x, w devPtr, rows, in, out int, accumulate bool) error {
	if rows > gemvMaxRows || in%8 != 0 {
		return fmt.Errorf("gemv: %d rows of width %d (at most %d rows, width a multiple of 8)", rows, in, gemvMaxRows)
	}
	yBF, acc := 0, 0
	if yType == typeBF {
		yBF = 1
	}
	if accumulate {
		acc = 1
	}
	return d.launch("gemv_bf16", dim3{x: (out*32 + 255) / 256}, dim3{x: 256}, 0,
		new(args).p(w).p(x).p(y).i(rows).i(in).i(out).i(yBF).i(acc))
}

// gemvSwiGLU is h = silu(g) · u with [g | u] = x · w13ᵀ, w13 the gate rows then the up rows
// ([2·hd][in]), x bf16 [rows][in], h bf16 [rows][hd] (gemv_swiglu_bf16).
func (d *device) gemvSwiGLU(h, x, w13 devPtr, rows, in, hd int) error {
	if rows > gemvMaxRows || in%8 != 0 {
		return fmt.Errorf("gemv_swiglu: %d rows of width %d (at most %d rows, width a multiple of 8)", rows, in, gemvMaxRows)
	}
	return d.launch("gemv_swiglu_bf16", dim3{x: (hd*32 + 255) / 256}, dim3{x: 256}, 0,
		new(args).p(w13).p(x).p(h).i(rows).i(in).i(hd))
}

const (
	ltMaxRows = 512
	ltWsBytes = 32 << 20
)

var errNoLaunch = errors.New("kernel launch failed")

// openDevice initialises the driver, the context on GPU ordinal, the PTX module and cuBLAS.
// Errors say which piece is missing and what to do.
func openDevice(ordinal int) (*device, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var msg [512]C.char
	if C.dmc_cuda_open(&msg[0], 512) != 0 {
		return nil, fmt.Errorf("cannot load the NVIDIA driver library libcuda.so.1 (%s): install the NVIDIA driver (or set DMC_LIBCUDA to its path), or run on a machine with an NVIDIA GPU", C.GoString(&msg[0]))
	}
	if err := cuError(C.dmc_cuInit(), "cuInit"); err != nil {
		return nil, fmt.Errorf("%w: the NVIDIA driver found no usable GPU (check nvidia-smi)", err)
	}
	d := &device{fns: map[string]C.CUfunction{}}
	var v C.int
	C.dmc_cuDriverGetVersion(&v)
	d.drvV = int(v)
	var n C.int
	if err := cuError(C.dmc_cuDeviceGetCount(&n), "cuDeviceGetCount"); err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, errors.New("no CUDA GPU found: run on a machine with an NVIDIA GPU or use --device cpu")
	}
	if ordinal < 0 || ordinal >= int(n) {
		return nil, fmt.Errorf("GPU %d does not exist (this machine has %d)", ordinal, int(n))
	}
	var dev C.CUdevice
	if err := cuError(C.dmc_cuDeviceGet(&dev, C.int(ordinal)), "cuDeviceGet"); err != nil {
		return nil, err
	}
	var name [256]C.char
	C.dmc_cuDeviceGetName(&name[0], 256, dev)
	d.name = C.GoString(&name[0])
	var a C.int
	C.dmc_cuDeviceGetAttribute(&a, 16, dev) // CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT
	d.sms = int(a)
	var ma, mi C.int
	C.dmc_cuDeviceGetAttribute(&ma, 75, dev)
	C.dmc_cuDeviceGetAttribute(&mi, 76, dev)
	d.cc = int(ma)*10 + int(mi)
	if d.cc < 80 {
		return nil, fmt.Errorf("GPU %q has compute capability %d.%d; the dmc kernels need 8.0 or newer (bf16)", d.name, int(ma), int(mi))
	}
	if err := cuError(C.dmc_cuDevicePrimaryCtxRetain(&d.ctx, dev), "cuDevicePrimaryCtxRetain"); err != nil {
		return nil, err
	}
	if err := cuError(C.dmc_cuCtxSetCurrent(d.ctx), "cuCtxSetCurrent"); err != nil {
		return nil, err
	}
	if err := cuError(C.dmc_stream_create(), "cuStreamCreate"); err != nil {
		return nil, err
	}
	// Hopper and newer get the sm_90 build of the kernels with programmatic dependent launch
	// (DMC_PDL=0: the compute_80 build and plain launches, e.g. to compare the two).
	image, pdl := ptxImage, d.cc >= 90 && C.dmc_pdl_available() != 0 && os.Getenv("DMC_PDL") != "0"
	if pdl {
		image = ptxImageSM90
	}
	img := C.CString(image)
	defer C.free(unsafe.Pointer(img))
	if err := cuError(C.dmc_cuModuleLoadData(&d.mod, unsafe.Pointer(img)), "loading the embedded PTX"); err != nil {
		return nil, fmt.Errorf("%w: the driver may be older than the PTX (CUDA 11.8); update the NVIDIA driver", err)
	}
	d.pdl = pdl
	C.dmc_pdl_set(C.int(b2i(pdl)))
	var which [64]C.char
	if C.dmc_cublas_open(&msg[0], 512, &which[0], 64) != 0 {
		return nil, fmt.Errorf("cannot load cuBLAS (tried libcublas.so.13, .12, .11 or $DMC_LIBCUBLAS: %s): install the CUDA toolkit's cuBLAS or add its lib directory to LD_LIBRARY_PATH", C.GoString(&msg[0]))
	}
	d.blasLb = C.GoString(&which[0])
	if st := C.dmc_cublasCreate(&d.blas); st != 0 {
		return nil, fmt.Errorf("cublasCreate failed with status %d", int(st))
	}
	d.blasV = int(C.dmc_cublasVersion(d.blas))
	d.plans = map[gemmKey]*gemmPlan{}
	if os.Getenv("DMC_NO_CUBLASLT") == "" && C.dmc_lt_open() == 0 {
		if ws, err := d.alloc(ltWsBytes, "cuBLASLt workspace"); err == nil {
			d.lt, d.ltWs = true, ws
		}
	}
	return d, nil
}

// enter locks the goroutine to its OS thread and makes the context current there.
func (d *device) enter() {
	runtime.LockOSThread()
	C.dmc_cuCtxSetCurrent(d.ctx)
}

func (d *device) exit() { runtime.UnlockOSThread() }

func (d *device) fn(name string) (C.CUfunction, error) {
	if f, ok := d.fns[name]; ok {
		return f, nil
	}
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	var f C.CUfunction
	if err := cuError(C.dmc_cuModuleGetFunction(&f, d.mod, cs), "kernel "+name); err != nil {
		return nil, err
	}
	d.fns[name] = f
	return f, nil
}

func (d *device) memInfo() (free, total int64) {
	var f, t C.size_t
	C.dmc_cuMemGetInfo(&f, &t)
	return int64(f), int64(t)
}

// alloc returns n bytes of device memory (at least 256-byte aligned).
func (d *device) alloc(n int64, what string) (devPtr, error) {
	if n <= 0 {
		n = 256
	}
	var p C.CUdeviceptr
	if r := C.dmc_cuMemAlloc(&p, C.size_t(n)); r != 0 {
		free, total := d.memInfo()
		return 0, fmt.Errorf("allocating %s (%.2f GiB) on %s: %w (%.2f of %.2f GiB free)", what, gib(n), d.name,
			cuError(r, "cuMemAlloc"), gib(free), gib(total))
	}
	return devPtr(p), nil
}

func (d *device) free(p devPtr) {
	if p != 0 {
		C.dmc_cuMemFree(C.CUdeviceptr(p))
	}
}

func gib(n int64) float64 { return float64(n) / (1 << 30) }

func (d *device) upload(dst devPtr, src unsafe.Pointer, n int) error {
	if n == 0 {
		return nil
	}
	return cuError(C.dmc_cuMemcpyHtoD(C.CUdeviceptr(dst), src, C.size_t(n)), "copy to GPU")
}

func (d *device) download(dst unsafe.Pointer, src devPtr, n int) error {
	if n == 0 {
		return nil
	}
	return cuError(C.dmc_cuMemcpyDtoH(dst, C.CUdeviceptr(src), C.size_t(n)), "copy from GPU")
}

func (d *device) copyD(dst, src devPtr, n int64) error {
	return cuError(C.dmc_cuMemcpyDtoD(C.CUdeviceptr(dst), C.CUdeviceptr(src), C.size_t(n)), "copy on GPU")
}

func (d *device) memset(dst devPtr, v byte, n int64) error {
	return cuError(C.dmc_cuMemsetD8(C.CUdeviceptr(dst), C.uchar(v), C.size_t(n)), "cuMemsetD8")
}

func (d *device) sync() error { return cuError(C.dmc_cuCtxSynchronize(), "synchronize") }

func uploadSlice[T any](d *device, dst devPtr, s []T) error {
	if len(s) == 0 {
		return nil
	}
	return d.upload(dst, unsafe.Pointer(&s[0]), len(s)*int(unsafe.Sizeof(s[0])))
}

func downloadSlice[T any](d *device, s []T, src devPtr) error {
	if len(s) == 0 {
		return nil
	}
	return d.download(unsafe.Pointer(&s[0]), src, len(s)*int(unsafe.Sizeof(s[0])))
}

// args packs kernel parameters with the C ABI's natural alignment.
type args struct{ b []byte }

func (a *args) align(n int) {
	for len(a.b)%n != 0 {
		a.b = append(a.b, 0)
	}
}
func (a *args) p(v devPtr) *args {
	a.align(8)
	a.b = binary.LittleEndian.AppendUint64(a.b, v)
	return a
}
func (a *args) i(v int) *args {
	a.align(4)
	a.b = binary.LittleEndian.AppendUint32(a.b, uint32(int32(v)))
	return a
}
func (a *args) i64(v int64) *args {
	a.align(8)
	a.b = binary.LittleEndian.AppendUint64(a.b, uint64(v))
	return a
}
func (a *args) f(v float32) *args {
	a.align(4)
	a.b = binary.LittleEndian.AppendUint32(a.b, math.Float32bits(v))
	return a
}

// end pads a struct parameter to its 8-byte alignment.
func (a *args) end() *args { a.align(8); return a }

type dim3 struct{ x, y, z int }

// launch runs kernel name on the default stream.
func (d *device) launch(name string, grid, block dim3, smem int, a *args) error {
	f, err := d.fn(name)
	if err != nil {
		return err
	}
	if grid.y == 0 {
		grid.y = 1
	}
	if grid.z == 0 {
		grid.z = 1
	}
	if block.y == 0 {
		block.y = 1
	}
	if block.z == 0 {
		block.z = 1
	}
	if grid.x == 0 {
		return nil
	}
	if len(a.b) == 0 {
		a.b = append(a.b, 0, 0, 0, 0, 0, 0, 0, 0)
	}
	r := C.dmc_launch(f, C.uint(grid.x), C.uint(grid.y), C.uint(grid.z), C.uint(block.x), C.uint(block.y), C.uint(block.z),
		C.uint(smem), unsafe.Pointer(&a.b[0]), C.size_t(len(a.b)))
	if r != 0 {
		return fmt.Errorf("%w: %s grid %v block %v: %v", errNoLaunch, name, grid, block, cuError(r, "cuLaunchKernel"))
	}
	return nil
}

// linear computes, in row-major terms, Y[rows, out] = X[rows, in] · W[out, in]ᵀ (+ Y when
// accumulate). W and X are bf16, Y is fp32 or bf16 (yType). Small row counts (decode) use the
// algorithm that timed fastest for the shape on first use.
func (d *device) linear(y devPtr, yType int, x, w devPtr, rows, in, out int, accumulate bool) error {
	beta := float32(0)
	if accumulate {
		beta = 1
	}
	if d.lt && rows <= ltMaxRows {
		k := gemmKey{out, rows, in, yType, accumulate}
		pl, ok := d.plans[k]
		if !ok {
			pl = d.tune(k, x, w)
			d.plans[k] = pl
		}
		if pl.gemv {
			return d.gemv(y, yType, x, w, rows, in, out, accumulate)
		}
		if pl.best >= 0 {
			if st := C.dmc_lt_run(pl.p, C.int(pl.best), 1, C.float(beta), C.CUdeviceptr(w), C.CUdeviceptr(x), C.CUdeviceptr(y),
				C.CUdeviceptr(d.ltWs), ltWsBytes); st != 0 {
				return fmt.Errorf("cublasLtMatmul (%dx%d · %dx%d) failed with status %d", rows, in, in, out, int(st))
			}
			return nil
		}
	}
	return d.gemmEx(y, yType, x, w, rows, in, out, beta)
}

func (d *device) gemmEx(y devPtr, yType int, x, w devPtr, rows, in, out int, beta float32) error {
	st := C.dmc_gemm(d.blas, opT, opN, C.int(out), C.int(rows), C.int(in), 1, C.CUdeviceptr(w), typeBF, C.int(in),
		C.CUdeviceptr(x), typeBF, C.int(in), C.float(beta), C.CUdeviceptr(y), C.int(yType), C.int(out))
	if st != 0 {
		return fmt.Errorf("cublasGemmEx (%dx%d · %dx%d) failed with status %d", rows, in, in, out, int(st))
	}
	return nil
}

// timeRuns is the device time in ms of n runs of run after one untimed run (which may tune
// what it calls); +Inf when a run fails or the events do.
func (d *device) timeRuns(n int, run func() bool) float64 {
	e0, err0 := d.newEvent()
	e1, err1 := d.newEvent()
	if err0 != nil || err1 != nil {
		return math.Inf(1)
	}
	defer e0.destroy()
	defer e1.destroy()
	if !run() {
		return math.Inf(1)
	}
	e0.record()
	for i := 0; i < n; i++ {
		if !run() {
			return math.Inf(1)
		}
	}
	e1.record()
	ms, err := elapsed(e0, e1)
	if err != nil {
		return math.Inf(1)
	}
	return ms
}

// tune times cublasGemmEx and each cuBLASLt candidate for shape k (into a scratch output) and
// returns the fastest. Any failure falls back to cublasGemmEx.
func (d *device) tune(k gemmKey, x, w devPtr) *gemmPlan {
	fallback := &gemmPlan{best: -1}
	need := int64(k.rows) * int64(k.out) * 4
	if need > d.ltScrN {
		d.free(d.ltScr)
		p, err := d.alloc(need, "GEMM tuning scratch")
		if err != nil {
			d.ltScr, d.ltScrN = 0, 0
			return fallback
		}
		d.ltScr, d.ltScrN = p, need
		d.memset(p, 0, need)
	}
	p := (*C.dmc_lt_plan)(C.calloc(1, C.size_t(unsafe.Sizeof(C.dmc_lt_plan{}))))
	if C.dmc_lt_plan_make(p, C.int(k.out), C.int(k.rows), C.int(k.in), C.int(k.yType), ltWsBytes) != 0 || p.count == 0 {
		C.free(unsafe.Pointer(p))
		return fallback
	}
	beta := C.float(0)
	if k.acc {
		beta = 1
	}
	timeIt := func(run func() bool) float64 { return d.timeRuns(5, run) }
	bestT := timeIt(func() bool { return d.gemmEx(d.ltScr, k.yType, x, w, k.rows, k.in, k.out, float32(beta)) == nil })
	best := -1
	for i := 0; i < int(p.count); i++ {
		if p.h[i].state != 0 || p.h[i].workspaceSize > ltWsBytes {
			continue
		}
		t := timeIt(func() bool {
			return C.dmc_lt_run(p, C.int(i), 1, beta, C.CUdeviceptr(w), C.CUdeviceptr(x), C.CUdeviceptr(d.ltScr), C.CUdeviceptr(d.ltWs), ltWsBytes) == 0
		})
		if t < bestT*0.98 {
			bestT, best = t, i
		}
	}
	if gemvEnabled && k.rows <= gemvMaxRows && k.in%8 == 0 {
		if t := timeIt(func() bool { return d.gemv(d.ltScr, k.yType, x, w, k.rows, k.in, k.out, k.acc) == nil }); t < bestT*0.98 {
			C.free(unsafe.Pointer(p))
			return &gemmPlan{best: -1, gemv: true}
		}
	}
	if best < 0 {
		C.free(unsafe.Pointer(p))
		return fallback
	}
	return &gemmPlan{p: p, best: best}
}

// gemmBatched is cublasGemmBatchedEx in column-major terms over device arrays of pointers.
func (d *device) gemmBatched(ta, tb, m, n, k int, alpha float32, A devPtr, at, lda int, B devPtr, bt, ldb int, beta float32,
	Cp devPtr, ct, ldc, count int) error {
	st := C.dmc_gemm_batched(d.blas, C.int(ta), C.int(tb), C.int(m), C.int(n), C.int(k), C.float(alpha), C.CUdeviceptr(A),
		C.int(at), C.int(lda), C.CUdeviceptr(B), C.int(bt), C.int(ldb), C.float(beta), C.CUdeviceptr(Cp), C.int(ct), C.int(ldc),
		C.int(count))
	if st != 0 {
		return fmt.Errorf("cublasGemmBatchedEx (%dx%dx%d, %d batches) failed with status %d", m, n, k, count, int(st))
	}
	return nil
}

// graph is an instantiated CUDA graph of captured work.
type graph struct{ exec, g unsafe.Pointer }

// capture records everything fn enqueues into a graph instead of running it.
func (d *device) capture(fn func() error) (*graph, error) {
	if C.dmc_graphs_available() == 0 {
		return nil, errors.New("this driver lacks the CUDA graph API")
	}
	if err := cuError(C.dmc_capture_begin(), "cuStreamBeginCapture"); err != nil {
		return nil, err
	}
	ferr := fn()
	var g unsafe.Pointer
	eerr := cuError(C.dmc_capture_end(&g), "cuStreamEndCapture")
	if ferr != nil || eerr != nil {
		C.dmc_graph_destroy(nil, g)
		return nil, errors.Join(ferr, eerr)
	}
	var ex unsafe.Pointer
	if err := cuError(C.dmc_graph_instantiate(&ex, g), "cuGraphInstantiate"); err != nil {
		C.dmc_graph_destroy(nil, g)
		return nil, err
	}
	return &graph{exec: ex, g: g}, nil
}

func (d *device) launchGraph(g *graph) error {
	return cuError(C.dmc_graph_launch(g.exec), "cuGraphLaunch")
}
func (g *graph) destroy() { C.dmc_graph_destroy(g.exec, g.g) }

// event is a CUDA event for timing on the engine's stream.
type event struct{ e C.CUevent }

func (d *device) newEvent() (*event, error) {
	var e C.CUevent
	if err := cuError(C.dmc_cuEventCreate(&e), "cuEventCreate"); err != nil {
		return nil, err
	}
	return &event{e}, nil
}
func (e *event) record() error { return cuError(C.dmc_cuEventRecord(e.e), "cuEventRecord") }
func (e *event) destroy()      { C.dmc_cuEventDestroy(e.e) }

// elapsed returns the milliseconds between two recorded events (waiting for the later one).
func elapsed(a, b *event) (float64, error) {
	if err := cuError(C.dmc_cuEventSynchronize(b.e), "cuEventSynchronize"); err != nil {
		return 0, err
	}
	var ms C.float
	if err := cuError(C.dmc_cuEventElapsedTime(&ms, a.e, b.e), "cuEventElapsedTime"); err != nil {
		return 0, err
	}
	return float64(ms), nil
}

func (d *device) describe() string {
	pdl := ""
	if d.pdl {
		pdl = ", programmatic dependent launch"
	}
	return fmt.Sprintf("%s (sm_%d, %d SMs, driver %d.%d, %s v%d%s)", d.name, d.cc, d.sms, d.drvV/1000, d.drvV%1000/10,
		strings.TrimPrefix(d.blasLb, "lib"), d.blasV, pdl)
}
