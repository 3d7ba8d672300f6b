//go:build dmc_cuda

package kernels

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// The training layer's own handles on the libraries cuda_driver.go already opened (dlopen of a
// loaded library returns it again): the train.ptx module, launches on the engine's stream (read
// back from its cuBLAS handle) and cuBLASLt GEMMs with a pinned algorithm per shape.
typedef unsigned long long tr_ptr;
typedef int CUresult;  // as in cuda_driver.go, for cuError
typedef int (*tr_modload_fn)(void**, const void*);
typedef int (*tr_getfn_fn)(void**, void*, const char*);
typedef int (*tr_launch_fn)(void*, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void*, void**, void**);
typedef int (*tr_getstream_fn)(void*, void**);
typedef int (*tr_setattr_fn)(void*, int, int);
typedef int (*tr_gemmex_fn)(void*, int, int, int, int, int, const void*, const void*, int, int, const void*, int, int,
                            const void*, void*, int, int, int, int);
static tr_modload_fn tr_modload;
static tr_getfn_fn tr_getfn;
static tr_launch_fn tr_launchk;
static tr_setattr_fn tr_setattr;
static tr_gemmex_fn tr_gemmex;
static void* tr_stream;
static void* tr_stream_get(void) { return tr_stream; }
static void* tr_blas;

typedef struct { unsigned long long data[8]; } tr_lt_algo;
typedef struct { tr_lt_algo algo; size_t workspaceSize; int state; float wavesCount; int reserved[4]; } tr_lt_heur;
typedef int (*tr_ltCreate_fn)(void**);
typedef int (*tr_ltDescCreate_fn)(void**, int, int);
typedef int (*tr_ltDescSet_fn)(void*, int, const void*, size_t);
typedef int (*tr_ltLayoutCreate_fn)(void**, int, unsigned long long, unsigned long long, long long);
typedef int (*tr_ltPrefCreate_fn)(void**);
typedef int (*tr_ltPrefSet_fn)(void*, int, const void*, size_t);
typedef int (*tr_ltHeur_fn)(void*, void*, void*, void*, void*, void*, void*, int, tr_lt_heur*, int*);
typedef int (*tr_ltMatmul_fn)(void*, void*, const void*, const void*, void*, const void*, void*, const void*, const void*, void*,
                              void*, void*, const tr_lt_algo*, void*, size_t, void*);
static tr_ltCreate_fn tr_ltCreate; static tr_ltDescCreate_fn tr_ltDescCreate; static tr_ltDescSet_fn tr_ltDescSet;
static tr_ltLayoutCreate_fn tr_ltLayoutCreate; static tr_ltPrefCreate_fn tr_ltPrefCreate; static tr_ltPrefSet_fn tr_ltPrefSet;
static tr_ltHeur_fn tr_ltHeur; static tr_ltMatmul_fn tr_ltMatmul;
static void* tr_lt;

// tr_open: 0 on success, else a message in err.
static int tr_open(void* blasHandle, const char* blasLib, char* err, int n) {
  if (tr_launchk) return 0;
  const char* cu = getenv("DMC_LIBCUDA");
  void* h = dlopen(cu && *cu ? cu : "libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!h) { snprintf(err, n, "%s", dlerror()); return -1; }
  tr_modload = (tr_modload_fn)dlsym(h, "cuModuleLoadData");
  tr_getfn = (tr_getfn_fn)dlsym(h, "cuModuleGetFunction");
  tr_launch_fn l = (tr_launch_fn)dlsym(h, "cuLaunchKernel");
  tr_setattr = (tr_setattr_fn)dlsym(h, "cuFuncSetAttribute");
  if (!tr_modload || !tr_getfn || !l || !tr_setattr) { snprintf(err, n, "libcuda.so.1 lacks the module or launch API"); return -1; }
  void* b = dlopen(blasLib, RTLD_NOW | RTLD_LOCAL);
  if (!b) { snprintf(err, n, "%s", dlerror()); return -1; }
  tr_getstream_fn gs = (tr_getstream_fn)dlsym(b, "cublasGetStream_v2");
  tr_gemmex = (tr_gemmex_fn)dlsym(b, "cublasGemmEx");
  if (!gs || !tr_gemmex) { snprintf(err, n, "%s lacks cublasGetStream_v2/cublasGemmEx", blasLib); return -1; }
  if (gs(blasHandle, &tr_stream)) { snprintf(err, n, "cublasGetStream failed"); return -1; }
  tr_blas = blasHandle;
  const char* names[] = {"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so.11", 0};
  void* lh = 0;
  for (int i = 0; names[i] && !lh; i++) lh = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
  if (lh) {
    tr_ltCreate = (tr_ltCreate_fn)dlsym(lh, "cublasLtCreate");
    tr_ltDescCreate = (tr_ltDescCreate_fn)dlsym(lh, "cublasLtMatmulDescCreate");
    tr_ltDescSet = (tr_ltDescSet_fn)dlsym(lh, "cublasLtMatmulDescSetAttribute");
    tr_ltLayoutCreate = (tr_ltLayoutCreate_fn)dlsym(lh, "cublasLtMatrixLayoutCreate");
    tr_ltPrefCreate = (tr_ltPrefCreate_fn)dlsym(lh, "cublasLtMatmulPreferenceCreate");
    tr_ltPrefSet = (tr_ltPrefSet_fn)dlsym(lh, "cublasLtMatmulPreferenceSetAttribute");
    tr_ltHeur = (tr_ltHeur_fn)dlsym(lh, "cublasLtMatmulAlgoGetHeuristic");
    tr_ltMatmul = (tr_ltMatmul_fn)dlsym(lh, "cublasLtMatmul");
    if (tr_ltCreate && tr_ltDescCreate && tr_ltDescSet && tr_ltLayoutCreate && tr_ltPrefCreate && tr_ltPrefSet && tr_ltHeur &&
        tr_ltMatmul && tr_ltCreate(&tr_lt) != 0) tr_lt = 0;
    if (!(tr_ltCreate && tr_ltDescCreate && tr_ltDescSet && tr_ltLayoutCreate && tr_ltPrefCreate && tr_ltPrefSet && tr_ltHeur && tr_ltMatmul)) tr_lt = 0;
  }
  tr_launchk = l;
  return 0;
}
static int tr_have_lt(void) { return tr_lt != 0; }

static int tr_load(void** mod, const char* img) { return tr_modload(mod, img); }
static int tr_fn(void** f, void* mod, const char* name) { return tr_getfn(f, mod, name); }
// Dynamic shared memory beyond what the default 48 KiB leaves after a function's static
// arrays must be allowed per function.
static int tr_allow_smem(void* f, int bytes) { return tr_setattr(f, 8, bytes); }  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
static int tr_launch(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned smem, void* buf, size_t size) {
  void* extra[] = {(void*)1, buf, (void*)2, &size, (void*)0};  // CU_LAUNCH_PARAM_BUFFER_POINTER, _SIZE, _END
  return tr_launchk(f, gx, gy, gz, bx, 1, 1, smem, tr_stream, 0, extra);
}

// Column-major D = alpha op(A) op(B) + beta C (C = D), A and B bf16, C fp32, fp32 compute.
// h holds the heuristic's first count algorithms (TR_ALGOS at most); chosen is the one run.
#define TR_ALGOS 8
typedef struct { void *desc, *a, *b, *c; tr_lt_heur h[TR_ALGOS]; int count, chosen; } tr_plan;

static int tr_plan_make(tr_plan* p, int ta, int tb, int m, int n, int k, int lda, int ldb, int ldc, size_t ws, int want) {
  if (tr_ltDescCreate(&p->desc, 68, 0) || tr_ltDescSet(p->desc, 3, &ta, 4) || tr_ltDescSet(p->desc, 4, &tb, 4)) return -1;
  if (tr_ltLayoutCreate(&p->a, 14, ta ? k : m, ta ? m : k, lda) || tr_ltLayoutCreate(&p->b, 14, tb ? n : k, tb ? k : n, ldb) ||
      tr_ltLayoutCreate(&p->c, 0, m, n, ldc)) return -1;
  void* pref;
  unsigned long long w = ws;
  if (tr_ltPrefCreate(&pref) || tr_ltPrefSet(pref, 1, &w, 8)) return -1;
  int count = 0;
  if (want < 1 || want > TR_ALGOS) want = 1;
  if (tr_ltHeur(tr_lt, p->desc, p->a, p->b, p->c, p->c, pref, want, p->h, &count) || count < 1 || p->h[0].state) return -1;
  p->count = count;
  p->chosen = 0;
  return 0;
}
// Runs algorithm idx of the plan (chosen when idx < 0).
static int tr_plan_run(tr_plan* p, int idx, float alpha, float beta, tr_ptr A, tr_ptr B, tr_ptr C, tr_ptr ws, size_t wsSize) {
  if (idx < 0) idx = p->chosen;
  return tr_ltMatmul(tr_lt, p->desc, &alpha, (const void*)A, p->a, (const void*)B, p->b, &beta, (const void*)C, p->c, (void*)C,
                     p->c, &p->h[idx].algo, (void*)ws, wsSize, tr_stream);
}
// ab: the operands' cudaDataType (14 bf16, 0 fp32); compute is CUBLAS_COMPUTE_32F (no TF32).
static int tr_gemm_ex(int ta, int tb, int m, int n, int k, float alpha, tr_ptr A, int lda, tr_ptr B, int ldb, float beta, tr_ptr C, int ldc, int ab) {
  return tr_gemmex(tr_blas, ta, tb, m, n, k, &alpha, (const void*)A, ab, lda, (const void*)B, ab, ldb, &beta, (void*)C, 0, ldc, 68, -1);
}
*/
import "C"

import (
	_ "embed"
	"fmt"
	"math"
	"os"
	"strings"
	"sync"
	"unsafe"
)

//go:embed ptx/train.ptx
var trainPTX string

// TrainDevice is the GPU of the training executor: the engine's device (shared context, stream
// and cuBLAS handle) with the training kernels (train.ptx) loaded and cuBLASLt GEMM plans.
// Like the engine's device, it is used from one goroutine at a time.
type TrainDevice struct {
	d       *device
	mod     unsafe.Pointer
	fns     map[string]unsafe.Pointer
	smem    map[string]int // dynamic shared memory allowed per function beyond 48 KiB
	lt      bool
	ws      devPtr
	plans   map[trGemmKey]*C.tr_plan
	scratch map[string]*DevBuf
	// tuned: the GEMM algorithms TuneGEMM chose before on this kind of device (gemmCache),
	// by shape; read at the first tuned GEMM
	tuned     map[string]string
	tuneCache *gemmCache
	// NoLt forces cublasGemmEx instead of cuBLASLt (tests compare the two).
	NoLt bool
	// TuneGEMM times, for each GEMM shape at its first use, the first trGemmAlgos algorithms
	// cuBLASLt's heuristic offers and keeps the fastest (gemmTune); DMC_GEMM_TUNE=1 sets it.
	// The choices are kept on disk per device (gemmCache: $DMC_GEMM_CACHE or the user's
	// cache folder), so only the first run of a shape on a kind of machine depends on timing
	// and later runs, resumed ones included, run the same algorithms. Written on 2026-12-04,
	// not yet run on a GPU, hence opt-in.
	TuneGEMM bool
	// Attn32Rows runs the attention forward with 32 query rows per warp (tc_attn_fwd2_*)
	// instead of 16 (tc_attn_fwd_*); DMC_ATTN_ROWS=32 sets it. Its output is bit-identical
	// but on the H200 it is no faster (167 against 168 TFLOP/s at head dim 128: two blocks per
	// SM at 255 registers), so it stays opt-in for measurements.
	Attn32Rows bool
	// MergeGeneral runs the DMC merge with the general kernels (any window) also where the
	// window fits a warp (1 ≤ W ≤ 32), for which tr_dmc_merge_*_w are the default;
	// DMC_MERGE=general sets it (tests and measurements).
	MergeGeneral bool
	// MergeRows runs the warp-window merge with mergeRows rows per warp and 16-byte loads
	// (tr_dmc_merge_*_wr; head dimension a multiple of 4) where the one-row kernels would run;
	// DMC_MERGE=rows sets it. Written on 2026-12-04 after Nsight Compute showed the one-row
	// kernels issue-bound (68% SM throughput, 25% of DRAM bandwidth), not yet measured, hence
	// opt-in.
	MergeRows bool
	// AttnDeltaRows has the tensor-core attention backward compute δ = rowsum(o ⊙ dO) and
	// bf16(dO) in one coalesced pass (tr_attn_delta_rows: a float4 a lane, the row summed by
	// shuffles) instead of a thread per row and a cast; DMC_ATTN_DELTA=rows sets it. δ's
	// summation order differs, so its bits do. Written on 2026-12-07, not yet run on a GPU,
	// hence opt-in.
	AttnDeltaRows bool
}

type trGemmKey struct{ ta, tb, m, n, k, lda, ldb, ldc int }

const trWsBytes = 32 << 20

var (
	trainOnce sync.Once
	trainDev  *TrainDevice
	trainErr  error
)

// OpenTrain returns the process's training device on GPU ordinal (opened once; it shares the
// inference engine's context and stream). Errors say what is missing.
func OpenTrain(ordinal int) (*TrainDevice, error) {
	trainOnce.Do(func() { trainDev, trainErr = openTrain(ordinal) })
	return trainDev, trainErr
}

func openTrain(ordinal int) (*TrainDevice, error) {
	d, err := getDevice(ordinal)
	if err != nil {
		return nil, err
	}
	d.enter()
	defer d.exit()
	var msg [512]C.char
	lib := C.CString(d.blasLb)
	defer C.free(unsafe.Pointer(lib))
	if C.tr_open(unsafe.Pointer(d.blas), lib, &msg[0], 512) != 0 {
		return nil, fmt.Errorf("training kernels: %s", C.GoString(&msg[0]))
	}
	t := &TrainDevice{d: d, fns: map[string]unsafe.Pointer{}, smem: map[string]int{}, plans: map[trGemmKey]*C.tr_plan{}, scratch: map[string]*DevBuf{},
		Attn32Rows: os.Getenv("DMC_ATTN_ROWS") == "32", MergeGeneral: os.Getenv("DMC_MERGE") == "general", MergeRows: os.Getenv("DMC_MERGE") == "rows",
		TuneGEMM: os.Getenv("DMC_GEMM_TUNE") == "1", AttnDeltaRows: os.Getenv("DMC_ATTN_DELTA") == "rows"}
	img := C.CString(trainPTX)
	defer C.free(unsafe.Pointer(img))
	if r := C.tr_load(&t.mod, img); r != 0 {
		return nil, fmt.Errorf("loading the embedded training PTX: %w: update the NVIDIA driver", cuError(C.CUresult(r), "cuModuleLoadData"))
	}
	if C.tr_have_lt() != 0 {
		if ws, err := d.alloc(trWsBytes, "cuBLASLt training workspace"); err == nil {
			t.lt, t.ws = true, ws
		}
	}
	return t, nil
}

// Describe names the GPU, driver and cuBLAS, and whether cuBLASLt is used.
// stream is the engine's stream the training kernels run on (NCCL enqueues there too).
func (t *TrainDevice) stream() unsafe.Pointer { return C.tr_stream_get() }

func (t *TrainDevice) Describe() string {
	s := t.d.describe()
	if t.lt {
		s += ", cuBLASLt"
	}
	return s
}

// MemInfo reports the device's free and total memory in bytes.
func (t *TrainDevice) MemInfo() (free, total int64) {
	t.d.enter()
	defer t.d.exit()
	return t.d.memInfo()
}

// Sync waits for all queued work and reports the first asynchronous error.
func (t *TrainDevice) Sync() error {
	t.d.enter()
	defer t.d.exit()
	return t.d.sync()
}

// DevBuf is a device buffer of n elements of one type, or a view into one (Slice).
type DevBuf struct {
	t    *TrainDevice
	ptr  devPtr
	n    int
	dt   DType
	view bool
}

// Alloc returns an uninitialised buffer of n elements.
func (t *TrainDevice) Alloc(dt DType, n int) (*DevBuf, error) {
	t.d.enter()
	defer t.d.exit()
	p, err := t.d.alloc(int64(n)*int64(dt.size()), fmt.Sprintf("a %s training buffer of %d elements", dt, n))
	if err != nil {
		return nil, err
	}
	return &DevBuf{t: t, ptr: p, n: n, dt: dt}, nil
}

// FromF32, FromI32 and FromF64 allocate a buffer holding a copy of s.
func (t *TrainDevice) FromF32(s []float32) (*DevBuf, error) { return fromSlice(t, F32, s) }
func (t *TrainDevice) FromI32(s []int32) (*DevBuf, error)   { return fromSlice(t, I32, s) }
func (t *TrainDevice) FromF64(s []float64) (*DevBuf, error) { return fromSlice(t, F64, s) }

func fromSlice[T any](t *TrainDevice, dt DType, s []T) (*DevBuf, error) {
	b, err := t.Alloc(dt, len(s))
	if err != nil {
		return nil, err
	}
	if err := b.Upload(s); err != nil {
		b.Free()
		return nil, err
	}
	return b, nil
}

func (b *DevBuf) Len() int       { return b.n }
func (b *DevBuf) DType() DType   { return b.dt }
func (b *DevBuf) Ptr() uint64    { return b.ptr }
func (b *DevBuf) Bytes() int64   { return int64(b.n) * int64(b.dt.size()) }
func (b *DevBuf) String() string { return fmt.Sprintf("%s[%d]@%#x", b.dt, b.n, b.ptr) }

// Slice is a view of n elements from off (freeing a view frees nothing).
func (b *DevBuf) Slice(off, n int) *DevBuf {
	if off < 0 || n < 0 || off+n > b.n {
		panic(fmt.Sprintf("kernels: slice [%d:+%d] of %v", off, n, b))
	}
	return &DevBuf{t: b.t, ptr: b.ptr + uint64(off*b.dt.size()), n: n, dt: b.dt, view: true}
}

// Free releases the buffer (not a view); the buffer must not be used afterwards.
func (b *DevBuf) Free() {
	if b == nil || b.view || b.ptr == 0 {
		return
	}
	b.t.d.enter()
	b.t.d.free(b.ptr)
	b.t.d.exit()
	b.ptr = 0
}

func hostType(s any) (DType, int, bool) {
	switch s := s.(type) {
	case []float32:
		return F32, len(s), true
	case []int32:
		return I32, len(s), true
	case []float64:
		return F64, len(s), true
	case []uint16:
		return BF16, len(s), true
	}
	return 0, 0, false
}

// Upload copies a host slice ([]float32, []int32, []float64, or []uint16 bf16 bits) of the
// buffer's type and at most its length into its start.
func (b *DevBuf) Upload(s any) error {
	dt, n, ok := hostType(s)
	if !ok || dt != b.dt || n > b.n {
		return fmt.Errorf("kernels: cannot upload %T[%d] into %v", s, n, b)
	}
	b.t.d.enter()
	defer b.t.d.exit()
	switch s := s.(type) {
	case []float32:
		return uploadSlice(b.t.d, b.ptr, s)
	case []int32:
		return uploadSlice(b.t.d, b.ptr, s)
	case []float64:
		return uploadSlice(b.t.d, b.ptr, s)
	case []uint16:
		return uploadSlice(b.t.d, b.ptr, s)
	}
	return nil
}

// Download copies the buffer's first len(s) elements into s (waiting for queued work).
func (b *DevBuf) Download(s any) error {
	dt, n, ok := hostType(s)
	if !ok || dt != b.dt || n > b.n {
		return fmt.Errorf("kernels: cannot download %v into %T[%d]", b, s, n)
	}
	b.t.d.enter()
	defer b.t.d.exit()
	switch s := s.(type) {
	case []float32:
		return downloadSlice(b.t.d, s, b.ptr)
	case []int32:
		return downloadSlice(b.t.d, s, b.ptr)
	case []float64:
		return downloadSlice(b.t.d, s, b.ptr)
	case []uint16:
		return downloadSlice(b.t.d, s, b.ptr)
	}
	return nil
}

// F32s downloads a float32 buffer into a new slice.
func (b *DevBuf) F32s() ([]float32, error) {
	s := make([]float32, b.n)
	return s, b.Download(s)
}

// Zero sets every byte to 0.
func (b *DevBuf) Zero() error {
	b.t.d.enter()
	defer b.t.d.exit()
	return b.t.d.memset(b.ptr, 0, b.Bytes())
}

// Fill sets every element of a float32 buffer to v (NaN poisons outputs in tests).
func (b *DevBuf) Fill(v float32) error {
	if b.dt != F32 {
		return fmt.Errorf("kernels: Fill of %v", b)
	}
	return b.t.launch1D("tr_fill_f32", int64(b.n), new(args).p(b.ptr).i64(int64(b.n)).f(v))
}

// Poison fills a float32 buffer with NaN, and any other with 0xFF bytes (a NaN in bf16 and f64).
func (b *DevBuf) Poison() error {
	if b.dt == F32 {
		return b.Fill(float32(math.NaN()))
	}
	b.t.d.enter()
	defer b.t.d.exit()
	return b.t.d.memset(b.ptr, 0xff, b.Bytes())
}

// Gemm is C = alpha·op(A)·op(B) + beta·C in cuBLAS's column-major terms, A and B bf16, C fp32.
// It runs cuBLASLt with the heuristic's first algorithm for the shape, chosen once and reused
// (so the same shape always runs the same kernels: bit-reproducible), or cublasGemmEx where
// cuBLASLt is missing, offers nothing, or a pointer is not 256-byte aligned. With A and B both
// fp32 it runs an fp32 GEMM (cublasGemmEx, fp32 compute without TF32: the executor's exact mode).
func (t *TrainDevice) Gemm(transA, transB bool, m, n, k int, alpha float32, A *DevBuf, lda int, B *DevBuf, ldb int,
	beta float32, Cm *DevBuf, ldc int) error {
	opType := BF16
	if A != nil && A.dt == F32 {
		opType = F32
	}
	if err := needAll("Gemm", func() error { return need("", "A", A, opType, 0) }, func() error { return need("", "B", B, opType, 0) },
		func() error { return need("", "C", Cm, F32, ldc*(n-1)+m) }); err != nil {
		return err
	}
	aCols, bCols := k, n
	if transA {
		aCols = m
	}
	if transB {
		bCols = k
	}
	if A.n < lda*(aCols-1)+ifElse(transA, k, m) || B.n < ldb*(bCols-1)+ifElse(transB, n, k) {
		return fmt.Errorf("Gemm %dx%dx%d: operands %v (ld %d), %v (ld %d) too short", m, n, k, A, lda, B, ldb)
	}
	ta, tb := 0, 0
	if transA {
		ta = 1
	}
	if transB {
		tb = 1
	}
	t.d.enter()
	defer t.d.exit()
	aligned := A.ptr%256 == 0 && B.ptr%256 == 0 && Cm.ptr%256 == 0
	ab := 14
	if opType == F32 {
		ab, aligned = 0, false // fp32 operands: cublasGemmEx
	}
	if t.lt && !t.NoLt && aligned {
		key := trGemmKey{ta, tb, m, n, k, lda, ldb, ldc}
		p, ok := t.plans[key]
		if !ok {
			want := 1
			if t.TuneGEMM {
				want = trGemmAlgos
			}
			p = (*C.tr_plan)(C.calloc(1, C.size_t(unsafe.Sizeof(C.tr_plan{}))))
			if C.tr_plan_make(p, C.int(ta), C.int(tb), C.int(m), C.int(n), C.int(k), C.int(lda), C.int(ldb), C.int(ldc), trWsBytes, C.int(want)) != 0 {
				C.free(unsafe.Pointer(p))
				p = nil
			} else if p.count > 1 {
				if err := t.gemmChoose(p, gemmShapeKey(ta, tb, m, n, k, lda, ldb, ldc), alpha, beta, A, B, Cm, ldc*(n-1)+m); err != nil {
					return fmt.Errorf("Gemm %dx%dx%d: tuning: %w", m, n, k, err)
				}
			}
			t.plans[key] = p
		}
		if p != nil {
			if st := C.tr_plan_run(p, -1, C.float(alpha), C.float(beta), C.tr_ptr(A.ptr), C.tr_ptr(B.ptr), C.tr_ptr(Cm.ptr), C.tr_ptr(t.ws), trWsBytes); st != 0 {
				return fmt.Errorf("cublasLtMatmul %dx%dx%d failed with status %d", m, n, k, int(st))
			}
			return nil
		}
	}
	if st := C.tr_gemm_ex(C.int(ta), C.int(tb), C.int(m), C.int(n), C.int(k), C.float(alpha), C.tr_ptr(A.ptr), C.int(lda),
		C.tr_ptr(B.ptr), C.int(ldb), C.float(beta), C.tr_ptr(Cm.ptr), C.int(ldc), C.int(ab)); st != 0 {
		return fmt.Errorf("cublasGemmEx %dx%dx%d failed with status %d", m, n, k, int(st))
	}
	return nil
}

// trGemmAlgos is how many of cuBLASLt's heuristic algorithms TuneGEMM times (TR_ALGOS).
const trGemmAlgos = 8

// gemmChoose sets the plan's algorithm for shape key: the one chosen before on this kind of
// device (gemmCache) where it is among the plan's candidates, else the fastest by gemmTune,
// which is then stored for later runs.
func (t *TrainDevice) gemmChoose(p *C.tr_plan, key string, alpha, beta float32, A, B, Cm *DevBuf, cn int) error {
	if t.tuneCache == nil {
		path, err := gemmCacheFile()
		if err != nil {
			return err
		}
		c := &gemmCache{path: path, device: gemmDeviceKey(t.d.name, t.d.sms, t.d.blasLb, t.d.blasV)}
		if t.tuned, err = c.choices(); err != nil {
			return err
		}
		t.tuneCache = c
	}
	want, found := t.tuned[key]
	if found {
		for i := 0; i < int(p.count); i++ {
			if algoHex(&p.h[i].algo) == want {
				p.chosen = C.int(i)
				return nil
			}
		}
	}
	if err := t.gemmTune(p, alpha, beta, A, B, Cm, cn); err != nil {
		return err
	}
	h, err := t.tuneCache.store(key, algoHex(&p.h[p.chosen].algo), want) // want: stale, if found
	if err != nil {
		return fmt.Errorf("keeping the chosen algorithm in %s (set DMC_GEMM_CACHE to a writable file): %w", t.tuneCache.path, err)
	}
	t.tuned[key] = h
	for i := 0; i < int(p.count); i++ { // another process's choice, stored first, where it differs
		if algoHex(&p.h[i].algo) == h {
			p.chosen = C.int(i)
		}
	}
	return nil
}

// algoHex is cuBLASLt's opaque algorithm description in hex (it may be kept and used again
// with the same cuBLAS version, its documentation says).
func algoHex(a *C.tr_lt_algo) string {
	var b strings.Builder
	for _, w := range a.data {
		fmt.Fprintf(&b, "%016x", uint64(w))
	}
	return b.String()
}

// gemmTune times each of the plan's algorithms on the call's own operands (one warm-up and
// three timed runs each) and makes the fastest the plan's choice. With β ≠ 0 (the call that
// follows accumulates into C) C's first cn elements are saved first and put back afterwards;
// with β = 0 that call overwrites C anyway, so nothing is copied (the head's logits would
// need GiBs). An algorithm that fails is passed over.
func (t *TrainDevice) gemmTune(p *C.tr_plan, alpha, beta float32, A, B, Cm *DevBuf, cn int) error {
	var saved *DevBuf
	bytes := int64(cn) * 4
	if beta != 0 {
		var err error
		if saved, err = t.Alloc(F32, cn); err != nil {
			return err
		}
		defer func() {
			_ = t.d.sync() // the copies and runs on the stream are done before the buffer goes
			saved.Free()
		}()
		if err := t.d.copyD(devPtr(saved.ptr), devPtr(Cm.ptr), bytes); err != nil {
			return err
		}
	}
	start, err := t.d.newEvent()
	if err != nil {
		return err
	}
	defer start.destroy()
	stop, err := t.d.newEvent()
	if err != nil {
		return err
	}
	defer stop.destroy()
	run := func(i int) bool {
		return C.tr_plan_run(p, C.int(i), C.float(alpha), C.float(beta), C.tr_ptr(A.ptr), C.tr_ptr(B.ptr), C.tr_ptr(Cm.ptr), C.tr_ptr(t.ws), trWsBytes) == 0
	}
	best, bestMs := 0, math.Inf(1)
	for i := 0; i < int(p.count); i++ {
		if !run(i) {
			continue
		}
		if err := start.record(); err != nil {
			return err
		}
		ok := run(i) && run(i) && run(i)
		if err := stop.record(); err != nil {
			return err
		}
		ms, err := elapsed(start, stop)
		if err != nil {
			return err
		}
		if ok && ms < bestMs {
			best, bestMs = i, ms
		}
	}
	p.chosen = C.int(best)
	if saved == nil {
		return nil
	}
	return t.d.copyD(devPtr(Cm.ptr), devPtr(saved.ptr), bytes)
}

// ---- launching

func (t *TrainDevice) fn(name string) (unsafe.Pointer, error) {
	if f, ok := t.fns[name]; ok {
		return f, nil
	}
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	var f unsafe.Pointer
	if r := C.tr_fn(&f, t.mod, cs); r != 0 {
		return nil, cuError(C.CUresult(r), "training kernel "+name)
	}
	t.fns[name] = f
	return f, nil
}

// Launch runs kernel name of train.ptx on the engine's stream with a 1-D block of block
// threads (a multiple of 32), dynamic shared memory smem and parameters a.
func (t *TrainDevice) launch(name string, grid dim3, block, smem int, a *args) error {
	t.d.enter()
	defer t.d.exit()
	f, err := t.fn(name)
	if err != nil {
		return err
	}
	grid.y, grid.z = max(grid.y, 1), max(grid.z, 1)
	if grid.x == 0 {
		return nil
	}
	// The default limit (48 KiB) covers a kernel's static and dynamic shared memory together,
	// so any dynamic size is allowed explicitly: a kernel with static arrays fails to launch
	// below 48 KiB of dynamic memory otherwise (tr_rmsnorm_bwd_rows at d = 12288 did).
	if smem > 0 && t.smem[name] < smem {
		if r := C.tr_allow_smem(f, C.int(smem)); r != 0 {
			return fmt.Errorf("%w: %s needs %d bytes of shared memory: %v", errNoLaunch, name, smem, cuError(C.CUresult(r), "cuFuncSetAttribute"))
		}
		t.smem[name] = smem
	}
	if len(a.b) == 0 {
		a.b = append(a.b, make([]byte, 8)...)
	}
	if r := C.tr_launch(f, C.uint(grid.x), C.uint(grid.y), C.uint(grid.z), C.uint(block), C.uint(smem), unsafe.Pointer(&a.b[0]),
		C.size_t(len(a.b))); r != 0 {
		return fmt.Errorf("%w: %s grid %v block %d: %v", errNoLaunch, name, grid, block, cuError(C.CUresult(r), "cuLaunchKernel"))
	}
	return nil
}

// launch1D runs an element-wise (grid-stride) kernel over n items.
func (t *TrainDevice) launch1D(name string, n int64, a *args) error {
	blocks := min((n+255)/256, int64(t.d.sms)*32)
	return t.launch(name, dim3{x: int(blocks)}, 256, 0, a)
}

// launchRows launches a kernel that strides warps over n rows (8 warps a block).
func (t *TrainDevice) launchRows(name string, n int, a *args) error {
	return t.launch(name, dim3{x: max(1, min((n+7)/8, t.d.sms*16))}, 256, 0, a)
}

// f64 appends a float64 parameter.
func (a *args) f64(v float64) *args { return a.i64(int64(math.Float64bits(v))) }

// pOpt appends a buffer's address, or 0 for nil (optional outputs).
func (a *args) pOpt(b *DevBuf) *args {
	if b == nil {
		return a.p(0)
	}
	return a.p(b.ptr)
}

// need checks a buffer's type and minimum length (programmer errors become errors here, so
// that an executor bug surfaces as a failed step rather than memory corruption).
func need(op, what string, b *DevBuf, dt DType, n int) error {
	if b == nil {
		return fmt.Errorf("%s: %s is nil", op, what)
	}
	if b.dt != dt || b.n < n {
		return fmt.Errorf("%s: %s is %v, want %s[%d]", op, what, b, dt, n)
	}
	return nil
}

func needAll(op string, checks ...func() error) error {
	for _, c := range checks {
		if err := c(); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
	}
	return nil
}

// scratchBuf returns a cached scratch buffer of at least n elements for one purpose.
func (t *TrainDevice) scratchBuf(name string, dt DType, n int) (*DevBuf, error) {
	if b, ok := t.scratch[name]; ok && b.n >= n && b.dt == dt {
		return b, nil
	}
	if b, ok := t.scratch[name]; ok {
		b.Free()
	}
	b, err := t.Alloc(dt, max(n, 64))
	if err != nil {
		return nil, err
	}
	t.scratch[name] = b
	return b, nil
}

// Close frees the cached scratch buffers (the device, its GEMM plans and workspace stay).
func (t *TrainDevice) Close() {
	for k, b := range t.scratch {
		b.Free()
		delete(t.scratch, k)
	}
}

// rowBlock is the block size of the row kernels (one block per row of d elements).
func rowBlock(d int) int {
	switch {
	case d >= 2048:
		return 512
	case d >= 512:
		return 256
	case d >= 128:
		return 128
	}
	return 32
}
