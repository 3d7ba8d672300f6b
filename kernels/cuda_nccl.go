//go:build dmc_cuda

package kernels

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// NCCL is opened at run time like the driver and cuBLAS (never linked), newest SONAME first.
// Only the types of nccl.h that the calls below need are declared here.
typedef struct { char internal[128]; } nc_uid;  // ncclUniqueId (NCCL_UNIQUE_ID_BYTES)
typedef void* nc_comm;
typedef int (*nc_getuid_fn)(nc_uid*);
typedef int (*nc_init_fn)(nc_comm*, int, nc_uid, int);
typedef int (*nc_allreduce_fn)(const void*, void*, size_t, int, int, nc_comm, void*);
typedef int (*nc_reducescatter_fn)(const void*, void*, size_t, int, int, nc_comm, void*);
typedef int (*nc_allgather_fn)(const void*, void*, size_t, int, nc_comm, void*);
typedef int (*nc_group_fn)(void);
typedef int (*nc_comm_fn)(nc_comm);
typedef int (*nc_asyncerr_fn)(nc_comm, int*);
typedef const char* (*nc_errstr_fn)(int);
typedef int (*nc_version_fn)(int*);

static nc_getuid_fn nc_getuid;
static nc_init_fn nc_init;
static nc_allreduce_fn nc_allreduce;
static nc_reducescatter_fn nc_reducescatter;
static nc_allgather_fn nc_allgather;
static nc_group_fn nc_group_start, nc_group_end;
static nc_comm_fn nc_destroy, nc_abort;
static nc_asyncerr_fn nc_asyncerr;
static nc_errstr_fn nc_errstr;
static nc_version_fn nc_version;

static int nc_open(char* err, size_t n) {
  if (nc_init) return 0;
  const char* names[] = {getenv("DMC_LIBNCCL"), "libnccl.so.2", "libnccl.so", NULL};
  void* h = NULL;
  for (int i = 0; i < 3 && !h; i++) {
    if (names[i] && *names[i]) h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
  }
  if (!h) { snprintf(err, n, "%s", dlerror()); return -1; }
#define NC_LOAD(var, type, sym) var = (type)dlsym(h, sym); if (!var) { snprintf(err, n, "the NCCL library lacks %s (NCCL older than 2.12?)", sym); return -1; }
  NC_LOAD(nc_getuid, nc_getuid_fn, "ncclGetUniqueId")
  NC_LOAD(nc_allreduce, nc_allreduce_fn, "ncclAllReduce")
  NC_LOAD(nc_reducescatter, nc_reducescatter_fn, "ncclReduceScatter")
  NC_LOAD(nc_allgather, nc_allgather_fn, "ncclAllGather")
  NC_LOAD(nc_group_start, nc_group_fn, "ncclGroupStart")
  NC_LOAD(nc_group_end, nc_group_fn, "ncclGroupEnd")
  NC_LOAD(nc_destroy, nc_comm_fn, "ncclCommDestroy")
  NC_LOAD(nc_abort, nc_comm_fn, "ncclCommAbort")
  NC_LOAD(nc_asyncerr, nc_asyncerr_fn, "ncclCommGetAsyncError")
  NC_LOAD(nc_errstr, nc_errstr_fn, "ncclGetErrorString")
  NC_LOAD(nc_version, nc_version_fn, "ncclGetVersion")
  NC_LOAD(nc_init, nc_init_fn, "ncclCommInitRank")  // last: nc_init set means all are
#undef NC_LOAD
  return 0;
}

static int nc_get_uid(void* out) { return nc_getuid((nc_uid*)out); }
static int nc_init_rank(nc_comm* c, int size, const void* id, int rank) {
  nc_uid u;
  memcpy(&u, id, sizeof u);
  return nc_init(c, size, u, rank);
}
static int nc_all_reduce(unsigned long long send, unsigned long long recv, size_t count, int dt, nc_comm c, void* s) {
  return nc_allreduce((const void*)send, (void*)recv, count, dt, 0, c, s);  // 0 = ncclSum
}
static int nc_reduce_scatter(unsigned long long send, unsigned long long recv, size_t count, int dt, nc_comm c, void* s) {
  return nc_reducescatter((const void*)send, (void*)recv, count, dt, 0, c, s);
}
static int nc_all_gather(unsigned long long send, unsigned long long recv, size_t count, int dt, nc_comm c, void* s) {
  return nc_allgather((const void*)send, (void*)recv, count, dt, c, s);
}
static int nc_gstart(void) { return nc_group_start(); }
static int nc_gend(void) { return nc_group_end(); }
static int nc_free(nc_comm c) { return nc_destroy(c); }
static int nc_kill(nc_comm c) { return nc_abort(c); }
static int nc_async(nc_comm c, int* e) { return nc_asyncerr(c, e); }
static const char* nc_str(int r) { return nc_errstr(r); }
static int nc_ver(int* v) { return nc_version(v); }
*/
import "C"

import (
	"fmt"
	"os"
	"unsafe"
)

// NCCLComm is one rank's NCCL communicator. Collectives are enqueued on the training device's
// stream, so they are ordered with the kernels around them.
type NCCLComm struct {
	c          C.nc_comm
	stream     unsafe.Pointer
	rank, size int
}

// ncclDType maps a buffer type to ncclDataType_t.
func ncclDType(dt DType) (C.int, error) {
	switch dt {
	case F32:
		return 7, nil // ncclFloat32
	case BF16:
		return 9, nil // ncclBfloat16
	case F64:
		return 8, nil // ncclFloat64
	case I32:
		return 2, nil // ncclInt32
	}
	return 0, fmt.Errorf("NCCL: no data type for %s", dt)
}

func ncclError(r C.int, what string) error {
	if r == 0 {
		return nil
	}
	return fmt.Errorf("%s: NCCL error %d (%s)", what, int(r), C.GoString(C.nc_str(r)))
}

func openNCCL() error {
	// NVLink multicast (NVLS) stays off: the lent machines do not support it reliably, and a
	// user's setting is overridden on purpose (cuMulticastCreate is never called either).
	os.Setenv("NCCL_NVLS_ENABLE", "0")
	var msg [512]C.char
	if C.nc_open(&msg[0], 512) != 0 {
		return fmt.Errorf("cannot load NCCL (%s): install NCCL 2 (libnccl.so.2; pip's nvidia-nccl-cu12 has it) or set DMC_LIBNCCL to its path", C.GoString(&msg[0]))
	}
	return nil
}

// NCCLVersion is the loaded library's version code (e.g. 22105 for 2.21.5).
func NCCLVersion() (int, error) {
	if err := openNCCL(); err != nil {
		return 0, err
	}
	var v C.int
	if err := ncclError(C.nc_ver(&v), "ncclGetVersion"); err != nil {
		return 0, err
	}
	return int(v), nil
}

// NCCLGetUniqueID draws a new communicator id (on rank 0).
func NCCLGetUniqueID() (NCCLUniqueID, error) {
	var id NCCLUniqueID
	if err := openNCCL(); err != nil {
		return id, err
	}
	return id, ncclError(C.nc_get_uid(unsafe.Pointer(&id[0])), "ncclGetUniqueId")
}

// NCCLInit joins rank of a size-rank communicator named id, on this training device. It
// blocks until every rank has joined.
func (t *TrainDevice) NCCLInit(id NCCLUniqueID, rank, size int) (*NCCLComm, error) {
	if rank < 0 || rank >= size {
		return nil, fmt.Errorf("NCCL: rank %d outside a group of %d", rank, size)
	}
	if err := openNCCL(); err != nil {
		return nil, err
	}
	t.d.enter()
	defer t.d.exit()
	c := &NCCLComm{stream: t.stream(), rank: rank, size: size}
	if err := ncclError(C.nc_init_rank(&c.c, C.int(size), unsafe.Pointer(&id[0]), C.int(rank)), fmt.Sprintf("ncclCommInitRank (rank %d of %d)", rank, size)); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *NCCLComm) Rank() int { return c.rank }
func (c *NCCLComm) Size() int { return c.size }

// AllReduceSum replaces buf, on every rank, by its element-wise sum over the ranks.
func (c *NCCLComm) AllReduceSum(buf *DevBuf) error {
	dt, err := ncclDType(buf.dt)
	if err != nil {
		return err
	}
	return c.check(C.nc_all_reduce(C.ulonglong(buf.ptr), C.ulonglong(buf.ptr), C.size_t(buf.n), dt, c.c, c.stream), "ncclAllReduce")
}

// ReduceScatterSum sums send over the ranks and leaves rank r the r-th of size equal parts in
// recv (len(send) = size·len(recv)).
func (c *NCCLComm) ReduceScatterSum(send, recv *DevBuf) error {
	if send.dt != recv.dt || send.n != recv.n*c.size {
		return fmt.Errorf("ncclReduceScatter: %s into %s on %d ranks (want %d elements per rank)", send, recv, c.size, send.n/c.size)
	}
	dt, err := ncclDType(send.dt)
	if err != nil {
		return err
	}
	return c.check(C.nc_reduce_scatter(C.ulonglong(send.ptr), C.ulonglong(recv.ptr), C.size_t(recv.n), dt, c.c, c.stream), "ncclReduceScatter")
}

// AllGather concatenates every rank's send, in rank order, into recv on every rank.
func (c *NCCLComm) AllGather(send, recv *DevBuf) error {
	if send.dt != recv.dt || recv.n != send.n*c.size {
		return fmt.Errorf("ncclAllGather: %s into %s on %d ranks", send, recv, c.size)
	}
	dt, err := ncclDType(send.dt)
	if err != nil {
		return err
	}
	return c.check(C.nc_all_gather(C.ulonglong(send.ptr), C.ulonglong(recv.ptr), C.size_t(send.n), dt, c.c, c.stream), "ncclAllGather")
}

// Group runs fn's collectives as one NCCL group (one launch for many buckets).
func (c *NCCLComm) Group(fn func() error) error {
	if err := ncclError(C.nc_gstart(), "ncclGroupStart"); err != nil {
		return err
	}
	ferr := fn()
	if err := c.check(C.nc_gend(), "ncclGroupEnd"); err != nil {
		return err
	}
	return ferr
}

// check adds the communicator's asynchronous error (a peer that died) to a failed call.
func (c *NCCLComm) check(r C.int, what string) error {
	if r == 0 {
		return nil
	}
	var async C.int
	if C.nc_async(c.c, &async) == 0 && async != 0 && async != r {
		return fmt.Errorf("%w; the communicator reports %v", ncclError(r, what), ncclError(async, "async"))
	}
	return ncclError(r, what)
}

// Abort tears the communicator down without waiting for peers (a rank that failed).
func (c *NCCLComm) Abort() {
	if c.c != nil {
		C.nc_kill(c.c)
		c.c = nil
	}
}

// Close destroys the communicator after its pending work.
func (c *NCCLComm) Close() error {
	if c.c == nil {
		return nil
	}
	err := ncclError(C.nc_free(c.c), "ncclCommDestroy")
	c.c = nil
	return err
}
