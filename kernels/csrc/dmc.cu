// CUDA kernels of the dmc inference engine. Compiled to PTX (see Makefile) and embedded in the
// Go binary; every entry point is extern "C" so the host looks it up by name.
//
// Conventions
//   - Activations: residual stream fp32; GEMM inputs bf16; GEMM outputs fp32.
//   - KV pool: pages of P tokens (P = PAGE below). A page belongs to one (layer, sequence, KV
//     head) "row" and holds K [P][D] then V [P][D], bf16. bt[row*maxPages + i] is the row's
//     i-th page, lens[row] its number of slots.
//   - Rows: row = (slot*L + layer)*Hkv + h, slot = the sequence's batch slot.
//   - Pages come from a device-side free stack (freeList[0..*freeTop)); the DMC update pops a
//     page when a row crosses a page boundary, freeing a sequence pushes its pages back. Pops
//     and pushes never share a launch. On exhaustion the kernel sets *status and drops the write.
//   - DMC state per row (fp32): S_k[D] S_v[D] Z n ringK[W][D] ringV[W][D] ringW[W].
#include <cuda_bf16.h>
#include <stdint.h>

#define PAGE 16
typedef __nv_bfloat16 bf16;

// Programmatic dependent launch (the sm_90 build, launched with the attribute by the host):
// a kernel may be scheduled while the previous one drains, so every kernel starts with
// PDL_ENTER, which waits until the previous kernels have finished and their writes are visible
// (griddepcontrol.wait), then lets the next kernel be scheduled. Only the GEMVs do work before
// it: they fetch their first weights, which no kernel writes. Empty in the compute_80 build.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define PDL_ENTER() asm volatile("griddepcontrol.wait;\n\tgriddepcontrol.launch_dependents;" ::: "memory")
#else
#define PDL_ENTER()
#endif

__device__ __forceinline__ float bf(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ bf16 tobf(float x) { return __float2bfloat16_rn(x); }

// ---------------------------------------------------------------- elementwise / norm kernels

// x[b,:] = E[tok[b],:] (bf16 -> fp32).
extern "C" __global__ void embed_gather(const bf16* __restrict__ E, const int* __restrict__ tok,
                                        float* __restrict__ x, int d) {
  PDL_ENTER();
  int b = blockIdx.x;
  const bf16* e = E + (size_t)tok[b] * d;
  for (int i = threadIdx.x; i < d; i += blockDim.x) x[(size_t)b * d + i] = bf(e[i]);
}

// out[r,:] = x[r,:] / rms(x[r,:]) * w (bf16 out). One block per row.
extern "C" __global__ void rmsnorm_bf16(const float* __restrict__ x, const float* __restrict__ w,
                                        bf16* __restrict__ out, int d, float eps) {
  PDL_ENTER();
  int r = blockIdx.x;
  const float* xr = x + (size_t)r * d;
  float ss = 0.f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) ss += xr[i] * xr[i];
  __shared__ float red[32];
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffff, ss, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    if (threadIdx.x == 0) red[0] = v;
  }
  __syncthreads();
  float scale = rsqrtf(red[0] / d + eps);
  for (int i = threadIdx.x; i < d; i += blockDim.x) out[(size_t)r * d + i] = tobf(xr[i] * scale * w[i]);
}

// Single-pass variant for d = 4*blockDim.x: each thread keeps its float4 of the row in
// registers, so the row is read once (decode rows are latency-bound, not bandwidth-bound).
extern "C" __global__ void rmsnorm_bf16_v4(const float* __restrict__ x, const float* __restrict__ w,
                                           bf16* __restrict__ out, int d, float eps) {
  PDL_ENTER();
  int r = blockIdx.x, i = threadIdx.x;
  float4 v = reinterpret_cast<const float4*>(x + (size_t)r * d)[i];
  float4 g = reinterpret_cast<const float4*>(w)[i];
  float ss = v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
  __shared__ float red[32];
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffff, ss, o);
  if ((i & 31) == 0) red[i >> 5] = ss;
  __syncthreads();
  if (i < 32) {
    float t = i < (blockDim.x >> 5) ? red[i] : 0.f;
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffff, t, o);
    if (i == 0) red[0] = t;
  }
  __syncthreads();
  float scale = rsqrtf(red[0] / d + eps);
  __nv_bfloat162 lo = __floats2bfloat162_rn(v.x * scale * g.x, v.y * scale * g.y);
  __nv_bfloat162 hi = __floats2bfloat162_rn(v.z * scale * g.z, v.w * scale * g.w);
  uint2 packed;
  packed.x = *reinterpret_cast<unsigned*>(&lo);
  packed.y = *reinterpret_cast<unsigned*>(&hi);
  reinterpret_cast<uint2*>(out + (size_t)r * d)[i] = packed;
}

// fp32 variant (conformance tests).
extern "C" __global__ void rmsnorm_f32(const float* __restrict__ x, const float* __restrict__ w,
                                       float* __restrict__ out, int d, float eps) {
  PDL_ENTER();
  int r = blockIdx.x;
  const float* xr = x + (size_t)r * d;
  float ss = 0.f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) ss += xr[i] * xr[i];
  __shared__ float red[32];
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffff, ss, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    if (threadIdx.x == 0) red[0] = v;
  }
  __syncthreads();
  float scale = rsqrtf(red[0] / d + eps);
  for (int i = threadIdx.x; i < d; i += blockDim.x) out[(size_t)r * d + i] = xr[i] * scale * w[i];
}

// h[b, i] = silu(h13[b, i]) * h13[b, hd + i] (gate then up in one GEMM output), bf16 out.
extern "C" __global__ void swiglu_bf16(const float* __restrict__ h13, bf16* __restrict__ out, int hd) {
  PDL_ENTER();
  int b = blockIdx.y;
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= hd) return;
  float g = h13[(size_t)b * 2 * hd + i], u = h13[(size_t)b * 2 * hd + hd + i];
  out[(size_t)b * hd + i] = tobf(g / (1.f + __expf(-g)) * u);
}

extern "C" __global__ void swiglu_f32(const float* __restrict__ g, const float* __restrict__ u,
                                      float* __restrict__ out, int n) {
  PDL_ENTER();
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = g[i] / (1.f + expf(-g[i])) * u[i];
}

// dst[r, :] = src[idx[r], :] (fp32 rows of width d).
extern "C" __global__ void gather_rows(const float* __restrict__ src, const int* __restrict__ idx,
                                       float* __restrict__ dst, int d) {
  PDL_ENTER();
  int r = blockIdx.x;
  for (int i = threadIdx.x; i < d; i += blockDim.x) dst[(size_t)r * d + i] = src[(size_t)idx[r] * d + i];
}

// out[b] = argmax_i logits[b, i] (first maximum).
extern "C" __global__ void argmax_rows(const float* __restrict__ logits, int* __restrict__ out, int V) {
  PDL_ENTER();
  int b = blockIdx.x;
  const float* l = logits + (size_t)b * V;
  float best = -INFINITY;
  int bi = 0x7fffffff;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    float v = l[i];
    if (v > best || (v == best && i < bi)) { best = v; bi = i; }
  }
  __shared__ float sv[32];
  __shared__ int si[32];
  for (int o = 16; o > 0; o >>= 1) {
    float ov = __shfl_xor_sync(0xffffffff, best, o);
    int oi = __shfl_xor_sync(0xffffffff, bi, o);
    if (ov > best || (ov == best && oi < bi)) { best = ov; bi = oi; }
  }
  if ((threadIdx.x & 31) == 0) { sv[threadIdx.x >> 5] = best; si[threadIdx.x >> 5] = bi; }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < (blockDim.x >> 5); w++)
      if (sv[w] > best || (sv[w] == best && si[w] < bi)) { best = sv[w]; bi = si[w]; }
    out[b] = bi;
  }
}

// out[b] = logits[b][targets[b]] − log Σ_v exp(logits[b][v]): the log-probability of a given
// token, one block of 32·k threads per row, float64 sums in a fixed order (deterministic).
// Scoring needs B numbers back instead of B×V logits.
extern "C" __global__ void logprob_rows(const float* __restrict__ logits, const int* __restrict__ targets,
                                        double* __restrict__ out, int V) {
  PDL_ENTER();
  int b = blockIdx.x;
  const float* l = logits + (size_t)b * V;
  __shared__ float sm[32];
  __shared__ double ss[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  float m = -INFINITY;
  for (int i = threadIdx.x; i < V; i += blockDim.x) m = fmaxf(m, l[i]);
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, o));
  if (lane == 0) sm[warp] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < nw; w++) m = fmaxf(m, sm[w]);
    sm[0] = m;
  }
  __syncthreads();
  m = sm[0];
  double s = 0;
  for (int i = threadIdx.x; i < V; i += blockDim.x) s += exp((double)l[i] - (double)m);
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
  if (lane == 0) ss[warp] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0;
    for (int w = 0; w < nw; w++) t += ss[w];
    out[b] = (double)l[targets[b]] - (double)m - log(t);
  }
}

// Converters and fills.
extern "C" __global__ void bf16_to_f32(const bf16* __restrict__ in, float* __restrict__ out, long n) {
  PDL_ENTER();
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) out[i] = bf(in[i]);
}

__device__ __forceinline__ uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// p[i] = N(0, std) drawn from a counter-based hash of (seed, i): deterministic for a seed.
extern "C" __global__ void fill_normal_bf16(bf16* __restrict__ p, long n, unsigned long long seed, float std) {
  PDL_ENTER();
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
    uint64_t r = splitmix(seed ^ splitmix((uint64_t)i));
    float u1 = ((r >> 40) + 1) * (1.0f / 16777217.0f);
    float u2 = ((r & 0xffffff)) * (1.0f / 16777216.0f);
    p[i] = tobf(std * sqrtf(-2.f * __logf(u1)) * __cosf(6.2831853f * u2));
  }
}

extern "C" __global__ void fill_f32(float* __restrict__ p, long n, float v) {
  PDL_ENTER();
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) p[i] = v;
}

// ---------------------------------------------------------------- page pool

extern "C" __global__ void pool_init(int* __restrict__ freeList, int* __restrict__ freeTop, int nPages) {
  PDL_ENTER();
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < nPages; i += gridDim.x * blockDim.x) freeList[i] = i;
  if (blockIdx.x == 0 && threadIdx.x == 0) *freeTop = nPages;
}

// Returns the pages of every row of batch slot `slot` to the free stack and empties the rows.
// One thread per row (L*Hkv rows per slot).
extern "C" __global__ void pool_free_slot(int* __restrict__ bt, int* __restrict__ lens, int* __restrict__ freeList,
                                          int* __restrict__ freeTop, int slot, int rowsPerSlot, int maxPages) {
  PDL_ENTER();
  int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rowsPerSlot) return;
  long row = (long)slot * rowsPerSlot + r;
  int n = (lens[row] + PAGE - 1) / PAGE;
  if (n > 0) {
    int at = atomicAdd(freeTop, n);
    for (int i = 0; i < n; i++) freeList[at + i] = bt[row * maxPages + i];
  }
  lens[row] = 0;
}

__device__ __forceinline__ int pool_pop(int* freeList, int* freeTop, int* status) {
  int i = atomicSub(freeTop, 1) - 1;
  if (i < 0) {
    atomicAdd(freeTop, 1);
    atomicOr(status, 1);
    return -1;
  }
  return freeList[i];
}

// ---------------------------------------------------------------- RoPE helpers

// Rotates the D-vector held in shared memory v (one element per thread c < D) at position pos
// and returns element c. cs holds cos/sin [maxPos][D/2][2].
__device__ __forceinline__ float rope_elem(const float* v, int c, int D, int pos, const float* __restrict__ cs, int interleaved) {
  int i, a, b;
  if (interleaved) { i = c >> 1; a = i * 2; b = a + 1; }
  else { int h = D >> 1; i = c < h ? c : c - h; a = i; b = i + h; }
  float co = cs[((size_t)pos * (D >> 1) + i) * 2], si = cs[((size_t)pos * (D >> 1) + i) * 2 + 1];
  return c == a ? v[a] * co - v[b] * si : v[a] * si + v[b] * co;
}

// out = rope(x) for rows of H heads (conformance tests and prefill q). One block per (row, head).
extern "C" __global__ void rope_f32(const float* __restrict__ x, float* __restrict__ out, const int* __restrict__ pos,
                                    const float* __restrict__ cs, int H, int D, int interleaved) {
  PDL_ENTER();
  __shared__ float v[256];
  int r = blockIdx.y, h = blockIdx.x, c = threadIdx.x;
  size_t off = ((size_t)r * H + h) * D;
  if (c < D) v[c] = x[off + c];
  __syncthreads();
  if (c < D) out[off + c] = rope_elem(v, c, D, pos[r], cs, interleaved);
}

// ---------------------------------------------------------------- the KV / DMC update

struct UpdateArgs {
  const float* qkv;   // [rows][qkvStride]: q (Hq*D), k (Hkv*D), v (Hkv*D), pre-RoPE
  int qkvStride;
  const int* slots;   // [B] batch slot of each sequence
  const int* pos;     // decode: [B] position of the token; prefill: [B] position of its first token
  const int* tokStart;// prefill: [B] first qkv row of each sequence; decode: null (row = b)
  const int* tokCount;// prefill: [B] number of tokens; decode: null (1)
  bf16* pool;         // KV pages
  int* bt;            // block tables
  int* lens;          // slot counts per row
  int* freeList;
  int* freeTop;
  int* status;        // bit 0: pool exhausted
  float* state;       // DMC state rows (null in vanilla)
  const float* cs;    // RoPE cos/sin
  float* qOut;        // decode: rotated q fp32 [B][Hq*D]
  bf16* qPre;         // prefill: rotated q bf16 [rows][Hq*D]
  bf16* kPre;         // prefill: partial-state keys (rotated) [rows][Hkv*D]
  bf16* vPre;         // prefill: partial-state values [rows][Hkv*D]
  int* alphaPre;      // prefill: decisions [Hkv][alphaStride]
  int layer, L, Hq, Hkv, D, maxPages, window, channel, dmc, forceCR, interleaved;
  float decOffset, impOffset;  // a = k[ch] - decOffset, ω = σ(mean q[ch] + impOffset) + ε
  int alphaStride;    // prefill per-head arrays are [Hkv][alphaStride], indexed by qkv row
  float* omegaPre;    // prefill: importance per (head, row)
  int* slotPre;       // prefill: slot index per (head, row)
  int* segPre;        // prefill: first row offset (within the prompt) of the token's merge segment
};

__device__ __forceinline__ long row_of(const UpdateArgs& a, int slot, int h) {
  return ((long)slot * a.L + a.layer) * a.Hkv + h;
}

// One step of the per-head cache update for one token. Called by all D (or more) threads of the
// block; thread c owns channel c. Returns nothing; writes the slot into the pool. sh is shared
// scratch of 2*D floats + a few ints.
struct HeadState {
  float sk, sv, z, n;  // per-thread S_k[c], S_v[c]; z and n identical across threads
};

__device__ void update_token(const UpdateArgs& a, long row, const float* qrow, const float* krow, const float* vrow,
                             int t, int h, HeadState& st, float* sh, int* shInt, int& len, int prefillRow) {
  const int c = threadIdx.x, D = a.D, G = a.Hq / a.Hkv, ch = a.channel;
  const bool act = c < D;
  float kk = act ? krow[c] : 0.f, vv = act ? vrow[c] : 0.f;
  int alpha = 0;
  if (a.dmc) {
    if (a.forceCR > 0) {
      // Forced merge pattern for benchmarks (dmc.ForcedCR): a new slot every forceCR positions.
      alpha = (t % a.forceCR) != 0;
    } else {
      alpha = krow[ch] - a.decOffset > 0.f;
    }
    if (len == 0) alpha = 0;  // the first token of a sequence is always appended
    float qm = 0.f;
    for (int g = 0; g < G; g++) qm += qrow[(h * G + g) * D + ch];
    qm /= G;
    float w = 1.f / (1.f + expf(-(qm + a.impOffset))) + 1.1920928955078125e-07f;
    if (c == ch) kk = 0.f;
    float* ring = a.state + row * (long)(2 * D + 2 + a.window * (2 * D + 1)) + 2 * D + 2;
    float nn = alpha ? st.n + 1.f : 1.f;
    float sk = alpha ? st.sk : 0.f, sv = alpha ? st.sv : 0.f, z = alpha ? st.z : 0.f;
    sk += w * kk; sv += w * vv; z += w;
    if (a.window > 0) {
      int idx = ((int)nn - 1) % a.window;
      float* rk = ring + idx * D;
      float* rv = ring + a.window * D + idx * D;
      float* rw = ring + 2 * a.window * D + idx;
      bool full = nn > a.window;
      // Only this thread touches channel c of the ring; z's ring entry is read by all threads
      // before thread 0 overwrites it, hence the barrier.
      float oldw = *rw;
      if (act) {
        if (full) { sk -= rk[c]; sv -= rv[c]; }
        rk[c] = w * kk; rv[c] = w * vv;
      }
      if (full) z -= oldw;
      __syncthreads();
      if (c == 0) *rw = w;
    }
    st.sk = sk; st.sv = sv; st.z = z; st.n = nn;
    kk = sk / z; vv = sv / z;
  }
  if (act) sh[c] = kk;
  __syncthreads();
  // As the project's CPU reference (package dmc) and training graph: the decision channel is
  // zeroed before RoPE only; its RoPE partner's rotation may leave a value in it.
  float kr = act ? rope_elem(sh, c, D, t, a.cs, a.interleaved) : 0.f;
  // Slot index and page.
  int idx;
  if (alpha) {
    idx = len - 1;
  } else {
    idx = len;
    if (len % PAGE == 0) {
      if (c == 0) shInt[0] = pool_pop(a.freeList, a.freeTop, a.status);
      __syncthreads();
      int page = shInt[0];
      if (page < 0) return;  // exhausted: status set, token dropped
      if (c == 0) a.bt[row * a.maxPages + len / PAGE] = page;
    }
    len++;
  }
  int page = (alpha || len % PAGE != 1) ? a.bt[row * a.maxPages + idx / PAGE] : shInt[0];
  if (act) {
    bf16* base = a.pool + (size_t)page * (2 * PAGE * D);
    base[(idx % PAGE) * D + c] = tobf(kr);
    base[PAGE * D + (idx % PAGE) * D + c] = tobf(vv);
    if (prefillRow >= 0) {
      a.kPre[(size_t)prefillRow * a.Hkv * D + h * D + c] = tobf(kr);
      a.vPre[(size_t)prefillRow * a.Hkv * D + h * D + c] = tobf(vv);
    }
  }
  if (prefillRow >= 0 && c == 0) a.alphaPre[(size_t)h * a.alphaStride + prefillRow] = alpha;
  __syncthreads();  // sh is reused by the next token / q rotation
}

// Rotates the G query heads of KV head h at position t (zeroing the decision channel in DMC
// mode, before rotation) and writes them to qOut (fp32) or qPre (bf16).
__device__ void rotate_queries(const UpdateArgs& a, const float* qrow, int t, int h, float* sh, float* qOut, bf16* qPre) {
  const int c = threadIdx.x, D = a.D, G = a.Hq / a.Hkv;
  for (int g = 0; g < G; g++) {
    int off = (h * G + g) * D;
    if (c < D) sh[c] = (a.dmc && c == a.channel) ? 0.f : qrow[off + c];
    __syncthreads();
    if (c < D) {
      float r = rope_elem(sh, c, D, t, a.cs, a.interleaved);
      if (qOut) qOut[off + c] = r;
      else qPre[off + c] = tobf(r);
    }
    __syncthreads();
  }
}

__device__ __forceinline__ void load_state(const UpdateArgs& a, long row, HeadState& st) {
  if (!a.dmc) return;
  const float* s = a.state + row * (long)(2 * a.D + 2 + a.window * (2 * a.D + 1));
  int c = threadIdx.x;
  st.sk = c < a.D ? s[c] : 0.f;
  st.sv = c < a.D ? s[a.D + c] : 0.f;
  st.z = s[2 * a.D];
  st.n = s[2 * a.D + 1];
}

__device__ __forceinline__ void store_state(const UpdateArgs& a, long row, const HeadState& st) {
  if (!a.dmc) return;
  float* s = a.state + row * (long)(2 * a.D + 2 + a.window * (2 * a.D + 1));
  int c = threadIdx.x;
  if (c < a.D) { s[c] = st.sk; s[a.D + c] = st.sv; }
  __syncthreads();
  if (c == 0) { s[2 * a.D] = st.z; s[2 * a.D + 1] = st.n; }
}

// Decode: one token per sequence. Grid (Hkv, B), block >= D threads (multiple of 32).
extern "C" __global__ void kv_update_decode(UpdateArgs a) {
  PDL_ENTER();
  __shared__ float sh[256];
  __shared__ int shInt[4];
  int h = blockIdx.x, b = blockIdx.y;
  int slot = a.slots[b], t = a.pos[b];
  long row = row_of(a, slot, h);
  const float* qrow = a.qkv + (size_t)b * a.qkvStride;
  const float* krow = qrow + a.Hq * a.D + h * a.D;
  const float* vrow = qrow + (a.Hq + a.Hkv) * a.D + h * a.D;
  HeadState st;
  load_state(a, row, st);
  int len = a.lens[row];
  update_token(a, row, qrow, krow, vrow, t, h, st, sh, shInt, len, -1);
  if (threadIdx.x == 0) a.lens[row] = len;
  store_state(a, row, st);
  rotate_queries(a, qrow, t, h, sh, a.qOut + (size_t)b * a.Hq * a.D, nullptr);
}

// Prefill: scans every prompt token of each sequence in order, building the compressed cache in
// one pass per (sequence, KV head), and writes the per-token partial states (what the parallel
// training form calls x̃, rotated) plus the decisions for the prompt's attention.
// Grid (Hkv, nSeq), block >= D threads.
extern "C" __global__ void kv_update_prefill(UpdateArgs a) {
  PDL_ENTER();
  __shared__ float sh[256];
  __shared__ int shInt[4];
  int h = blockIdx.x, b = blockIdx.y;
  int slot = a.slots[b], t0 = a.pos[b], start = a.tokStart[b], n = a.tokCount[b];
  long row = row_of(a, slot, h);
  HeadState st;
  load_state(a, row, st);
  int len = a.lens[row];
  for (int i = 0; i < n; i++) {
    const float* qrow = a.qkv + (size_t)(start + i) * a.qkvStride;
    const float* krow = qrow + a.Hq * a.D + h * a.D;
    const float* vrow = qrow + (a.Hq + a.Hkv) * a.D + h * a.D;
    update_token(a, row, qrow, krow, vrow, t0 + i, h, st, sh, shInt, len, start + i);
    rotate_queries(a, qrow, t0 + i, h, sh, nullptr, a.qPre + (size_t)(start + i) * a.Hq * a.D);
  }
  if (threadIdx.x == 0) a.lens[row] = len;
  store_state(a, row, st);
}

// Vanilla prefill, parallel over tokens: every token is appended, so the slot of token i is
// len0 + i and each row's pages are taken from the free stack in one atomic.
// Step 1: grid (Hkv, nSeq), thread 0 of each block.
extern "C" __global__ void kv_alloc_prefill(UpdateArgs a) {
  PDL_ENTER();
  int h = blockIdx.x, b = blockIdx.y;
  if (threadIdx.x != 0) return;
  long row = row_of(a, a.slots[b], h);
  int len = a.lens[row], n = a.tokCount[b];
  int have = (len + PAGE - 1) / PAGE, need = (len + n + PAGE - 1) / PAGE, k = need - have;
  if (k <= 0) return;
  int at = atomicSub(a.freeTop, k) - k;
  if (at < 0) {
    atomicAdd(a.freeTop, k);
    atomicOr(a.status, 1);
    for (int p = have; p < need; p++) a.bt[row * a.maxPages + p] = -1;
    return;
  }
  for (int p = 0; p < k; p++) a.bt[row * a.maxPages + have + p] = a.freeList[at + p];
}

// Step 2: grid (Hkv, tokens-of-all-sequences) with tokIdx mapping -> (seq); block >= D.
// tokSeq[r] is the sequence of qkv row r.
extern "C" __global__ void kv_write_prefill(UpdateArgs a, const int* __restrict__ tokSeq) {
  PDL_ENTER();
  __shared__ float sh[256];
  int h = blockIdx.x, r = blockIdx.y, c = threadIdx.x, D = a.D;
  int b = tokSeq[r];
  int i = r - a.tokStart[b], t = a.pos[b] + i;
  long row = row_of(a, a.slots[b], h);
  int idx = a.lens[row] + i;
  int page = a.bt[row * a.maxPages + idx / PAGE];
  const float* qrow = a.qkv + (size_t)r * a.qkvStride;
  const float* krow = qrow + a.Hq * D + h * D;
  const float* vrow = qrow + (a.Hq + a.Hkv) * D + h * D;
  if (c < D) sh[c] = krow[c];
  __syncthreads();
  if (c < D && page >= 0) {
    float kr = rope_elem(sh, c, D, t, a.cs, a.interleaved);
    bf16* base = a.pool + (size_t)page * (2 * PAGE * D);
    base[(idx % PAGE) * D + c] = tobf(kr);
    base[PAGE * D + (idx % PAGE) * D + c] = tobf(vrow[c]);
    a.kPre[(size_t)r * a.Hkv * D + h * D + c] = tobf(kr);
    a.vPre[(size_t)r * a.Hkv * D + h * D + c] = tobf(vrow[c]);
  }
  if (c == 0) a.alphaPre[(size_t)h * a.alphaStride + r] = 0;
  __syncthreads();
  rotate_queries(a, qrow, t, h, sh, nullptr, a.qPre + (size_t)r * a.Hq * D);
}

// Step 3: lens += tokCount (after every write of step 2 read the old length).
extern "C" __global__ void kv_commit_prefill(UpdateArgs a) {
  PDL_ENTER();
  int h = blockIdx.x, b = blockIdx.y;
  if (threadIdx.x != 0) return;
  long row = row_of(a, a.slots[b], h);
  int len = a.lens[row], n = a.tokCount[b];
  int have = (len + PAGE - 1) / PAGE, need = (len + n + PAGE - 1) / PAGE;
  bool ok = true;
  for (int p = have; p < need; p++) ok = ok && a.bt[row * a.maxPages + p] >= 0;
  if (ok) a.lens[row] = len + n;
}

// ---------------------------------------------------------------- decode attention (split-K)

struct AttnArgs {
  const float* q;     // [B][Hq*D] rotated
  const bf16* pool;
  const int* bt;
  const int* lens;
  const int* slots;
  float* part;        // [B][Hq][S][D+2]: m, l, acc[D]
  int layer, L, Hq, Hkv, maxPages, S;
  float scale;        // log2(e)/sqrt(D)
};

__device__ __forceinline__ void unpack8(uint4 u, float* f) {
  const __nv_bfloat162* p = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float2 t = __bfloat1622float2(p[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}

// One block per (split, KV head, sequence); 4 warps. Lanes are grouped LPR = D/8 per key row,
// each lane loading 16 bytes of K and of V; a warp covers RPW = 32/LPR rows per load and U
// loads in flight. Each lane group keeps its own online-softmax state for the G query heads,
// merged across lanes and warps at the end.
template <int D, int G>
__device__ void attn_decode_impl(const AttnArgs& a) {
  constexpr int LPR = D / 8, RPW = 32 / LPR, U = RPW >= 8 ? 1 : 8 / RPW, NW = 4;
  constexpr int STEP = NW * RPW * U;
  const int s = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int sub = lane % LPR, rw = lane / LPR;
  const long row = ((long)a.slots[b] * a.L + a.layer) * a.Hkv + h;
  const int len = a.lens[row];
  // Each split takes at least 128 slots of this row (DMC rows are shorter than the position
  // bound the host split by); splits past the end only mark themselves empty.
  int chunk = (len + a.S - 1) / a.S;
  chunk = max(128, (chunk + 7) & ~7);
  const int t0 = s * chunk, t1 = min(len, t0 + chunk);
  if (t0 >= t1) {
    if (threadIdx.x < G) {
      float* out = a.part + (((size_t)b * a.Hq + h * G + threadIdx.x) * a.S + s) * (D + 2);
      out[0] = -1e30f;
      out[1] = 0.f;
    }
    return;
  }
  const int* bt = a.bt + row * a.maxPages;

  float qf[G][8];
#pragma unroll
  for (int g = 0; g < G; g++) {
    const float* qp = a.q + (size_t)b * a.Hq * D + (h * G + g) * D + sub * 8;
    float4 x0 = *reinterpret_cast<const float4*>(qp), x1 = *reinterpret_cast<const float4*>(qp + 4);
    qf[g][0] = x0.x * a.scale; qf[g][1] = x0.y * a.scale; qf[g][2] = x0.z * a.scale; qf[g][3] = x0.w * a.scale;
    qf[g][4] = x1.x * a.scale; qf[g][5] = x1.y * a.scale; qf[g][6] = x1.z * a.scale; qf[g][7] = x1.w * a.scale;
  }
  float m[G], l[G], acc[G][8];
#pragma unroll
  for (int g = 0; g < G; g++) {
    m[g] = -1e30f; l[g] = 0.f;
#pragma unroll
    for (int i = 0; i < 8; i++) acc[g][i] = 0.f;
  }
  for (int base = t0 + warp * RPW * U; base < t1; base += STEP) {
    uint4 kr[U], vr[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
      int t = base + u * RPW + rw;
      if (t < t1) {
        const bf16* pg = a.pool + (size_t)bt[t / PAGE] * (2 * PAGE * D) + (t % PAGE) * D + sub * 8;
        kr[u] = *reinterpret_cast<const uint4*>(pg);
        vr[u] = *reinterpret_cast<const uint4*>(pg + PAGE * D);
      } else {
        kr[u] = make_uint4(0, 0, 0, 0);
        vr[u] = kr[u];
      }
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
      int t = base + u * RPW + rw;
      float kf[8], vf[8];
      unpack8(kr[u], kf);
      unpack8(vr[u], vf);
      float sc[G];
#pragma unroll
      for (int g = 0; g < G; g++) {
        float x = 0.f;
#pragma unroll
        for (int i = 0; i < 8; i++) x += qf[g][i] * kf[i];
#pragma unroll
        for (int o = LPR / 2; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffff, x, o);
        sc[g] = x;
      }
      if (t < t1) {
#pragma unroll
        for (int g = 0; g < G; g++) {
          float mn = fmaxf(m[g], sc[g]);
          float corr = exp2f(m[g] - mn), p = exp2f(sc[g] - mn);
          l[g] = l[g] * corr + p;
#pragma unroll
          for (int i = 0; i < 8; i++) acc[g][i] = acc[g][i] * corr + p * vf[i];
          m[g] = mn;
        }
      }
    }
  }
  // Merge the RPW row groups of the warp (lanes with the same sub).
#pragma unroll
  for (int o = LPR; o < 32; o <<= 1) {
#pragma unroll
    for (int g = 0; g < G; g++) {
      float om = __shfl_xor_sync(0xffffffff, m[g], o), ol = __shfl_xor_sync(0xffffffff, l[g], o);
      float mn = fmaxf(m[g], om), c1 = exp2f(m[g] - mn), c2 = exp2f(om - mn);
      l[g] = l[g] * c1 + ol * c2;
#pragma unroll
      for (int i = 0; i < 8; i++) {
        float oa = __shfl_xor_sync(0xffffffff, acc[g][i], o);
        acc[g][i] = acc[g][i] * c1 + oa * c2;
      }
      m[g] = mn;
    }
  }
  // Merge the warps through shared memory.
  __shared__ float sm[NW][G][D + 2];
  if (rw == 0) {
#pragma unroll
    for (int g = 0; g < G; g++) {
#pragma unroll
      for (int i = 0; i < 8; i++) sm[warp][g][2 + sub * 8 + i] = acc[g][i];
      if (sub == 0) { sm[warp][g][0] = m[g]; sm[warp][g][1] = l[g]; }
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < G * D; e += NW * 32) {
    int g = e / D, c = e % D;
    float mx = -1e30f;
#pragma unroll
    for (int w = 0; w < NW; w++) mx = fmaxf(mx, sm[w][g][0]);
    float lsum = 0.f, asum = 0.f;
#pragma unroll
    for (int w = 0; w < NW; w++) {
      float f = exp2f(sm[w][g][0] - mx);
      lsum += sm[w][g][1] * f;
      asum += sm[w][g][2 + c] * f;
    }
    float* out = a.part + (((size_t)b * a.Hq + h * G + g) * a.S + s) * (D + 2);
    out[2 + c] = asum;
    if (c == 0) { out[0] = mx; out[1] = lsum; }
  }
}

#define ATTN_INST(D, G) \
  extern "C" __global__ void __launch_bounds__(128) attn_decode_d##D##_g##G(AttnArgs a) { PDL_ENTER(); attn_decode_impl<D, G>(a); }
#define ATTN_INST_D(D) ATTN_INST(D, 1) ATTN_INST(D, 2) ATTN_INST(D, 4) ATTN_INST(D, 8)
ATTN_INST_D(8)
ATTN_INST_D(16)
ATTN_INST_D(32)
ATTN_INST_D(64)
ATTN_INST_D(128)
ATTN_INST_D(256)

// Combines the S split partials of each (sequence, query head). Grid (Hq, B), block D.
// Writes bf16 (engine) or fp32 (tests) output [B][Hq*D].
extern "C" __global__ void attn_reduce(const float* __restrict__ part, bf16* __restrict__ outBf, float* __restrict__ outF,
                                       int Hq, int D, int S) {
  PDL_ENTER();
  int hq = blockIdx.x, b = blockIdx.y, c = threadIdx.x;
  if (c >= D) return;
  const float* p = part + ((size_t)b * Hq + hq) * S * (D + 2);
  float mx = -1e30f;
  for (int s = 0; s < S; s++)
    if (p[s * (D + 2) + 1] > 0.f) mx = fmaxf(mx, p[s * (D + 2)]);
  float lsum = 0.f, asum = 0.f;
  for (int s = 0; s < S; s++) {
    if (!(p[s * (D + 2) + 1] > 0.f)) continue;  // empty split: its accumulator was never written
    float f = exp2f(p[s * (D + 2)] - mx);
    lsum += p[s * (D + 2) + 1] * f;
    asum += p[s * (D + 2) + 2 + c] * f;
  }
  float o = asum / lsum;
  size_t at = ((size_t)b * Hq + hq) * D + c;
  if (outBf) outBf[at] = tobf(o);
  else outF[at] = o;
}

// ---------------------------------------------------------------- prefill attention

// Masked softmax of one sequence's prompt scores. S holds, for nh query heads (i0 .. i0+nh),
// a [T][T] fp32 matrix each (row = query t, column = key state j); P receives bf16 probs.
// Key state j is visible to query t iff j == t, or j < t and token j+1 did not merge into it
// (alpha[j+1] == 0): dmc-spec.md §5 with hard decisions. alpha points at the prompt's first row
// of head 0; head h's decisions are alphaStride further. Vanilla (dmc = 0) reads no decisions.
// Grid (T, nh), block 256.
__device__ __forceinline__ bool visible(const int* __restrict__ al, int j, int t, int dmc) {
  return j == t || (j < t && (!dmc || al[j + 1] == 0));
}

extern "C" __global__ void prefill_softmax(const float* __restrict__ S, bf16* __restrict__ P, const int* __restrict__ alpha,
                                           int alphaStride, int T, int G, int i0, float scale, int dmc) {
  PDL_ENTER();
  int t = blockIdx.x, ih = blockIdx.y;
  int h = (i0 + ih) / G;
  const int* al = alpha + (size_t)h * alphaStride;
  const float* sr = S + ((size_t)ih * T + t) * T;
  bf16* pr = P + ((size_t)ih * T + t) * T;
  __shared__ float red[32];
  float mx = -INFINITY;
  for (int j = threadIdx.x; j <= t; j += blockDim.x)
    if (visible(al, j, t, dmc)) mx = fmaxf(mx, sr[j] * scale);
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, o));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = mx;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : -INFINITY;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    if (threadIdx.x == 0) red[0] = v;
  }
  __syncthreads();
  mx = red[0];
  __syncthreads();
  float sum = 0.f;
  for (int j = threadIdx.x; j <= t; j += blockDim.x)
    if (visible(al, j, t, dmc)) sum += __expf(sr[j] * scale - mx);
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = sum;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    if (threadIdx.x == 0) red[0] = v;
  }
  __syncthreads();
  float inv = 1.f / red[0];
  for (int j = threadIdx.x; j < T; j += blockDim.x)
    pr[j] = tobf(visible(al, j, t, dmc) ? __expf(sr[j] * scale - mx) * inv : 0.f);
}

// ---------------------------------------------------------------- parallel DMC prefill (W > 0)

// Step 1, grid (Hkv, nSeq), block 1024: decisions and importances of every prompt token, a
// block-wide prefix sum of the appends (-> each token's slot) and of the segment starts, and one
// bulk page allocation per row. Only for rows that start empty (new sequences).
extern "C" __global__ void __launch_bounds__(1024) dmc_prefill_plan(UpdateArgs a) {
  PDL_ENTER();
  const int h = blockIdx.x, b = blockIdx.y, tid = threadIdx.x, nt = blockDim.x;
  const int start = a.tokStart[b], n = a.tokCount[b], p0 = a.pos[b], G = a.Hq / a.Hkv, D = a.D, ch = a.channel;
  const long row = row_of(a, a.slots[b], h);
  const size_t base = (size_t)h * a.alphaStride + start;
  const int ipt = (n + nt - 1) / nt, lo = min(n, tid * ipt), hi = min(n, lo + ipt);
  const int len0 = a.lens[row];  // read before the barrier: the last thread rewrites it
  int appends = 0, lastAppend = -1;
  for (int i = lo; i < hi; i++) {
    const float* q = a.qkv + (size_t)(start + i) * a.qkvStride;
    const float* k = q + a.Hq * D + h * D;
    int alpha = a.forceCR > 0 ? ((p0 + i) % a.forceCR) != 0 : k[ch] - a.decOffset > 0.f;
    if (i == 0) alpha = 0;  // the first token of a sequence is always appended
    float qm = 0.f;
    for (int g = 0; g < G; g++) qm += q[(h * G + g) * D + ch];
    qm /= G;
    a.alphaPre[base + i] = alpha;
    a.omegaPre[base + i] = 1.f / (1.f + expf(-(qm + a.impOffset))) + 1.1920928955078125e-07f;
    if (!alpha) { appends++; lastAppend = i; }
  }
  // Block-wide inclusive scans: sum of appends, max of the last append.
  __shared__ int sSum[32], sMax[32];
  const int lane = tid & 31, warp = tid >> 5;
  int incl = appends, mx = lastAppend;
  for (int o = 1; o < 32; o <<= 1) {
    int v = __shfl_up_sync(0xffffffff, incl, o), m = __shfl_up_sync(0xffffffff, mx, o);
    if (lane >= o) { incl += v; mx = max(mx, m); }
  }
  if (lane == 31) { sSum[warp] = incl; sMax[warp] = mx; }
  __syncthreads();
  if (warp == 0) {
    int v = lane < (nt >> 5) ? sSum[lane] : 0, m = lane < (nt >> 5) ? sMax[lane] : -1;
    for (int o = 1; o < 32; o <<= 1) {
      int v2 = __shfl_up_sync(0xffffffff, v, o), m2 = __shfl_up_sync(0xffffffff, m, o);
      if (lane >= o) { v += v2; m = max(m, m2); }
    }
    sSum[lane] = v; sMax[lane] = m;
  }
  __syncthreads();
  // Exclusive prefix of this thread: appends and last append in the ranges before it.
  int before = incl - appends + (warp > 0 ? sSum[warp - 1] : 0);
  int exclWarp = __shfl_up_sync(0xffffffff, mx, 1);
  if (lane == 0) exclWarp = -1;
  int lastBefore = max(exclWarp, warp > 0 ? sMax[warp - 1] : -1);
  int count = before, seg = lastBefore;
  for (int i = lo; i < hi; i++) {
    if (!a.alphaPre[base + i]) { count++; seg = i; }
    a.slotPre[base + i] = len0 + count - 1;
    a.segPre[base + i] = seg;
  }
  if (tid == nt - 1) {
    int total = before + appends;
    int have = (len0 + PAGE - 1) / PAGE, need = (len0 + total + PAGE - 1) / PAGE, k = need - have;
    bool ok = true;
    if (k > 0) {
      int at = atomicSub(a.freeTop, k) - k;
      if (at < 0) {
        atomicAdd(a.freeTop, k);
        atomicOr(a.status, 1);
        ok = false;
      } else {
        for (int p = 0; p < k; p++) a.bt[row * a.maxPages + have + p] = a.freeList[at + p];
      }
    }
    if (ok) a.lens[row] = len0 + total;
    else a.lens[row] = -1 - len0;  // marks the row for step 2 to skip; restored there
  }
}

// Step 2, grid (ceil(maxN/16), Hkv, nSeq), block >= D: the partial state of every token (the
// ω-weighted mean of the last <= W tokens of its segment), rotated at its position, written to
// the dense prefill buffers, and into its slot when it is its segment's last token; the rotated
// queries; and the decode state after the prompt's last token.
#define PCH 16
extern "C" __global__ void dmc_prefill_states(UpdateArgs a) {
  PDL_ENTER();
  __shared__ float sh[256];
  const int h = blockIdx.y, b = blockIdx.z, c = threadIdx.x, D = a.D, W = a.window, ch = a.channel;
  const int start = a.tokStart[b], n = a.tokCount[b], p0 = a.pos[b];
  const int t0 = blockIdx.x * PCH;
  if (t0 >= n) return;
  const long row = row_of(a, a.slots[b], h);
  const bool ok = a.lens[row] >= 0;
  const size_t base = (size_t)h * a.alphaStride + start;
  const bool act = c < D;
  const int koff = a.Hq * D + h * D, voff = (a.Hq + a.Hkv) * D + h * D;
  for (int t = t0; t < min(n, t0 + PCH); t++) {
    const int seg = a.segPre[base + t], lo = max(seg, t - W + 1);
    float sk = 0.f, sv = 0.f, z = 0.f;
    for (int j = lo; j <= t; j++) {
      const float* r = a.qkv + (size_t)(start + j) * a.qkvStride;
      float w = a.omegaPre[base + j];
      z += w;
      if (act && c != ch) sk += w * r[koff + c];
      if (act) sv += w * r[voff + c];
    }
    if (act) sh[c] = sk / z;
    __syncthreads();
    float kr = act ? rope_elem(sh, c, D, p0 + t, a.cs, a.interleaved) : 0.f, vr = sv / z;
    if (act) {
      a.kPre[(size_t)(start + t) * a.Hkv * D + h * D + c] = tobf(kr);
      a.vPre[(size_t)(start + t) * a.Hkv * D + h * D + c] = tobf(vr);
      bool last = t == n - 1 || a.alphaPre[base + t + 1] == 0;
      if (last && ok) {
        int idx = a.slotPre[base + t];
        bf16* pg = a.pool + (size_t)a.bt[row * a.maxPages + idx / PAGE] * (2 * PAGE * D);
        pg[(idx % PAGE) * D + c] = tobf(kr);
        pg[PAGE * D + (idx % PAGE) * D + c] = tobf(vr);
      }
    }
    __syncthreads();
    rotate_queries(a, a.qkv + (size_t)(start + t) * a.qkvStride, p0 + t, h, sh, nullptr, a.qPre + (size_t)(start + t) * a.Hq * D);
    if (t == n - 1) {
      // Decode state: S, Z, segment length and the ring of the window (token j at (j-seg) % W).
      float* st = a.state + row * (long)(2 * D + 2 + W * (2 * D + 1));
      float* ring = st + 2 * D + 2;
      if (act) { st[c] = sk; st[D + c] = sv; }
      if (c == 0) { st[2 * D] = z; st[2 * D + 1] = (float)(t - seg + 1); }
      for (int j = lo; j <= t; j++) {
        const float* r = a.qkv + (size_t)(start + j) * a.qkvStride;
        float w = a.omegaPre[base + j];
        int idx = (j - seg) % W;
        if (act) {
          ring[idx * D + c] = w * (c == ch ? 0.f : r[koff + c]);
          ring[W * D + idx * D + c] = w * r[voff + c];
        }
        if (c == 0) ring[2 * W * D + idx] = w;
      }
    }
  }
}

// Step 3, grid (Hkv, nSeq): restores the length of rows whose allocation failed.
extern "C" __global__ void dmc_prefill_commit(UpdateArgs a) {
  PDL_ENTER();
  int h = blockIdx.x, b = blockIdx.y;
  if (threadIdx.x != 0) return;
  long row = row_of(a, a.slots[b], h);
  if (a.lens[row] < 0) a.lens[row] = -1 - a.lens[row];
}

// Reads the slots of rows back into a dense [rows][maxSlots][D] fp32 buffer (tests).
extern "C" __global__ void kv_gather(const bf16* __restrict__ pool, const int* __restrict__ bt, const int* __restrict__ lens,
                                     float* __restrict__ keys, float* __restrict__ vals, int maxPages, int maxSlots, int D) {
  PDL_ENTER();
  int row = blockIdx.y, j = blockIdx.x, c = threadIdx.x;
  if (c >= D || j >= lens[row]) return;
  const bf16* pg = pool + (size_t)bt[(size_t)row * maxPages + j / PAGE] * (2 * PAGE * D) + (j % PAGE) * D;
  keys[((size_t)row * maxSlots + j) * D + c] = bf(pg[c]);
  vals[((size_t)row * maxSlots + j) * D + c] = bf(pg[PAGE * D + c]);
}

// Small-batch GEMV for decode: y[r, o] (+)= Σ_i w[o, i] · x[r, i] for rows ≤ GEMV_MAX_ROWS,
// bf16 weights and inputs, fp32 accumulation; y fp32 (yBF16 = 0) or bf16. At batch 1–4 the
// step reads every weight once, so what counts is bytes in flight: one warp per output row,
// each lane streaming 16-byte loads of it (4 in flight), x read through the read-only cache.
// Needs in % 8 == 0 (16-byte rows). The engine's tuner times it against cuBLASLt per shape
// and keeps the faster.
//
// SWIGLU: w holds gate rows then up rows ([2·out][in]); warp o streams both and writes bf16
// silu(gate) · up (what swiglu_bf16 writes), so the SwiGLU needs no launch of its own.
#define GEMV_MAX_ROWS 4

template <bool SWIGLU>
__device__ __forceinline__ void gemv_impl(const bf16* __restrict__ w, const bf16* __restrict__ x, void* __restrict__ y,
                                          int rows, int in, int out, int yBF16, int accumulate) {
  constexpr int NR = SWIGLU ? 2 : 1;  // weight rows per warp
  int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (warp >= out) return;
  const uint4* wr[NR];
#pragma unroll
  for (int q = 0; q < NR; q++) wr[q] = reinterpret_cast<const uint4*>(w + ((size_t)q * out + warp) * in);
  int n = in >> 3;  // 16-byte chunks per row
  float acc[NR][GEMV_MAX_ROWS];
#pragma unroll
  for (int q = 0; q < NR; q++)
#pragma unroll
    for (int r = 0; r < GEMV_MAX_ROWS; r++) acc[q][r] = 0.f;
  int i = lane;
  // The first weights are fetched before PDL_ENTER: no kernel writes them, so with
  // programmatic dependent launch their loads overlap the previous kernel's tail.
  uint4 a[NR][4];
  if (i + 96 < n) {
#pragma unroll
    for (int q = 0; q < NR; q++) {
      a[q][0] = __ldcs(wr[q] + i), a[q][1] = __ldcs(wr[q] + i + 32);
      a[q][2] = __ldcs(wr[q] + i + 64), a[q][3] = __ldcs(wr[q] + i + 96);
    }
  }
  PDL_ENTER();
  for (; i + 96 < n; i += 128) {
    if (i != lane) {
#pragma unroll
      for (int q = 0; q < NR; q++) {
        a[q][0] = __ldcs(wr[q] + i), a[q][1] = __ldcs(wr[q] + i + 32);
        a[q][2] = __ldcs(wr[q] + i + 64), a[q][3] = __ldcs(wr[q] + i + 96);
      }
    }
#pragma unroll
    for (int r = 0; r < GEMV_MAX_ROWS; r++) {
      if (r >= rows) break;
      const uint4* xr = reinterpret_cast<const uint4*>(x + (size_t)r * in);
      float g[4][8];
#pragma unroll
      for (int u = 0; u < 4; u++) unpack8(__ldg(xr + i + 32 * u), g[u]);
#pragma unroll
      for (int q = 0; q < NR; q++) {
        float f[8], s = 0.f;
#pragma unroll
        for (int u = 0; u < 4; u++) {
          unpack8(a[q][u], f);
#pragma unroll
          for (int k = 0; k < 8; k++) s += f[k] * g[u][k];
        }
        acc[q][r] += s;
      }
    }
  }
  for (; i < n; i += 32) {
    uint4 a[NR];
#pragma unroll
    for (int q = 0; q < NR; q++) a[q] = __ldcs(wr[q] + i);
    float f[8], g[8];
#pragma unroll
    for (int r = 0; r < GEMV_MAX_ROWS; r++) {
      if (r >= rows) break;
      unpack8(__ldg(reinterpret_cast<const uint4*>(x + (size_t)r * in) + i), g);
#pragma unroll
      for (int q = 0; q < NR; q++) {
        unpack8(a[q], f);
#pragma unroll
        for (int k = 0; k < 8; k++) acc[q][r] += f[k] * g[k];
      }
    }
  }
#pragma unroll
  for (int r = 0; r < GEMV_MAX_ROWS; r++) {
    if (r >= rows) break;
    float s[NR];
#pragma unroll
    for (int q = 0; q < NR; q++) {
      s[q] = acc[q][r];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) s[q] += __shfl_xor_sync(0xffffffffu, s[q], o);
    }
    if (lane != 0) continue;  // the shuffles above are done: lane 0 alone writes
    size_t at = (size_t)r * out + warp;
    if (SWIGLU) {
      reinterpret_cast<bf16*>(y)[at] = tobf(s[0] / (1.f + __expf(-s[0])) * s[NR - 1]);
    } else if (yBF16) {
      bf16* yb = reinterpret_cast<bf16*>(y);
      yb[at] = tobf(accumulate ? s[0] + __bfloat162float(yb[at]) : s[0]);
    } else {
      float* yf = reinterpret_cast<float*>(y);
      yf[at] = accumulate ? s[0] + yf[at] : s[0];
    }
  }
}

extern "C" __global__ void gemv_bf16(const bf16* __restrict__ w, const bf16* __restrict__ x, void* __restrict__ y,
                                     int rows, int in, int out, int yBF16, int accumulate) {
  gemv_impl<false>(w, x, y, rows, in, out, yBF16, accumulate);
}

// The gate and up GEMVs ([2·hd][in] weights) and SwiGLU: h [rows][hd] bf16.
extern "C" __global__ void gemv_swiglu_bf16(const bf16* __restrict__ w13, const bf16* __restrict__ x,
                                            bf16* __restrict__ h, int rows, int in, int hd) {
  gemv_impl<true>(w13, x, h, rows, in, hd, 1, 0);
}
