// Device kernels of the CUDA training executor: forward and backward of the fused ops of the
// CPU training graph (graph/ops/doc.go), the fused AdamW step and the global gradient norm.
// Compiled to PTX (kernels/ptx/train.ptx) by `make -C kernels ptx`, loaded by cuda_train.go.
//
// Conventions: fp32 activations and gradients, row-major, rows n = b·T + t; bf16 only as GEMM
// operands (tr_cast_bf16). Every kernel writes all of its output. No kernel uses floating-point
// atomics: every reduction has a fixed order (block trees of a fixed shape, or per-output
// sequential sums), so results are bit-reproducible run to run. Block sizes are multiples of 32.
#include <cuda_bf16.h>
#include <stdint.h>

#define FULL 0xffffffffu

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
  return v;
}
__device__ __forceinline__ double warp_sumd(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL, v, o));
  return v;
}

// block_sum returns the sum of v over the block to every thread (fixed order; sh holds 32).
__device__ float block_sum(float v, float* sh) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  float r = lane < nw ? sh[lane] : 0.f;
  return warp_sum(r);
}
__device__ double block_sumd(double v, double* sh) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_sumd(v);
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  double r = lane < nw ? sh[lane] : 0.0;
  return warp_sumd(r);
}
__device__ float block_max(float v, float* sh) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  float r = lane < nw ? sh[lane] : -INFINITY;
  return warp_max(r);
}

__device__ __forceinline__ double sigmoid_d(double x) {  // dmc.Sigmoid
  if (x >= 0) return 1.0 / (1.0 + exp(-x));
  double e = exp(x);
  return e / (1.0 + e);
}

#define GRID_STRIDE(i, n) for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

extern "C" {

// ---- utilities -------------------------------------------------------------------------------

__global__ void tr_fill_f32(float* p, long long n, float v) {
  GRID_STRIDE(i, n) p[i] = v;
}

__global__ void tr_cast_bf16(__nv_bfloat16* dst, const float* src, long long n) {
  GRID_STRIDE(i, n) dst[i] = __float2bfloat16_rn(src[i]);
}

// tr_colsum: out[c] (+)= Σ_k part[k·d + c], k ascending (second pass of column reductions).
__global__ void tr_colsum(float* out, const float* part, int chunks, int d, int accumulate) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= d) return;
  float s = 0.f;
  for (int k = 0; k < chunks; k++) s += part[(long long)k * d + c];
  out[c] = accumulate ? out[c] + s : s;
}

// ---- RMSNorm ---------------------------------------------------------------------------------

// One block per row: y = x·r·w with r = 1/sqrt(mean(x²)+eps); y16, when set, gets bf16(y);
// y may be null when only the bf16 copy is read (a GEMM operand).
__global__ void tr_rmsnorm_fwd(float* y, __nv_bfloat16* y16, const float* x, const float* w, int rows, int d, float eps) {
  __shared__ float sh[32];
  const long long o = (long long)blockIdx.x * d;
  const float* xr = x + o;
  float ss = 0.f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) ss += xr[i] * xr[i];
  ss = block_sum(ss, sh);
  float r = rsqrtf(ss / d + eps);
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    float v = xr[i] * r * w[i];
    if (y) y[o + i] = v;
    if (y16) y16[o + i] = __float2bfloat16_rn(v);
  }
}

// dx = r·(w⊙dy) − x·r³/d·Σ(w⊙dy⊙x); rinv, when set, gets r per row (for tr_rmsnorm_dw_part).
// The row's 1/rms r and the coefficient c of dx = r·w·dy − c·x (row offset o).
__device__ __forceinline__ void rms_dx_coeffs(float& r, float& c, const float* x, const float* w, const float* dy, long long o, int d,
                                              float eps, float* sh) {
  float ss = 0.f, dot = 0.f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    float xv = x[o + i];
    ss += xv * xv;
    dot += w[i] * dy[o + i] * xv;
  }
  ss = block_sum(ss, sh);
  dot = block_sum(dot, sh);
  r = rsqrtf(ss / d + eps);
  c = dot * r * r * r / d;
}

// dx16, when set, gets bf16(dx) (a GEMM operand).
__global__ void tr_rmsnorm_dx(float* dx, __nv_bfloat16* dx16, float* rinv, const float* x, const float* w, const float* dy, int rows,
                              int d, float eps) {
  __shared__ float sh[32];
  long long o = (long long)blockIdx.x * d;
  float r, c;
  rms_dx_coeffs(r, c, x, w, dy, o, d, eps, sh);
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    const float v = r * w[i] * dy[o + i] - c * x[o + i];
    dx[o + i] = v;
    if (dx16) dx16[o + i] = __float2bfloat16_rn(v);
  }
  if (rinv && threadIdx.x == 0) rinv[blockIdx.x] = r;
}

// The same dx added into dx's existing contents (a gradient sum folded into the op,
// graph/device foldSums); no rinv; dx16, when set, gets bf16 of the sum.
__global__ void tr_rmsnorm_dx_add(float* dx, __nv_bfloat16* dx16, const float* x, const float* w, const float* dy, int rows, int d,
                                  float eps) {
  __shared__ float sh[32];
  long long o = (long long)blockIdx.x * d;
  float r, c;
  rms_dx_coeffs(r, c, x, w, dy, o, d, eps, sh);
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    const float v = r * w[i] * dy[o + i] - c * x[o + i];
    const float sum = dx[o + i] + v;
    dx[o + i] = sum;
    if (dx16) dx16[o + i] = __float2bfloat16_rn(sum);
  }
}

// tr_rms_inv: rinv[row] = 1/sqrt(mean(x²)+eps), one block per row.
__global__ void tr_rms_inv(float* rinv, const float* x, int rows, int d, float eps) {
  __shared__ float sh[32];
  const float* xr = x + (long long)blockIdx.x * d;
  float ss = 0.f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) ss += xr[i] * xr[i];
  ss = block_sum(ss, sh);
  if (threadIdx.x == 0) rinv[blockIdx.x] = rsqrtf(ss / d + eps);
}

// First pass of dw = Σ_rows dy⊙x·r: part[chunk·d + c] over rows [chunk·per, (chunk+1)·per).
__global__ void tr_rmsnorm_dw_part(float* part, const float* x, const float* dy, const float* rinv, int rows, int d, int per) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= d) return;
  int r0 = blockIdx.y * per, r1 = min(rows, r0 + per);
  float s = 0.f;
  for (int r = r0; r < r1; r++) s += dy[(long long)r * d + c] * x[(long long)r * d + c] * rinv[r];
  part[(long long)blockIdx.y * d + c] = s;
}

// dx and the first pass of dw in one read of x and dy: block k takes rows [k·per, (k+1)·per)
// in order, writes each row's dx as tr_rmsnorm_dx does (add: into dx's contents, as
// tr_rmsnorm_dx_add; dx16, when set, gets bf16 of what dx holds) and keeps its columns' dw sums
// in shared memory (d floats, each column a thread's own), which it writes to part[k·d + c]:
// the same products in the same order as tr_rmsnorm_dx, tr_rmsnorm_dx_add and
// tr_rmsnorm_dw_part, so the same bits. blockDim as tr_rmsnorm_dx's (the same block sums).
__global__ void tr_rmsnorm_bwd_rows(float* dx, __nv_bfloat16* dx16, float* part, const float* x, const float* w, const float* dy,
                                    int rows, int d, float eps, int per, int add) {
  __shared__ float sh[32];
  extern __shared__ float colsums[];
  for (int i = threadIdx.x; i < d; i += blockDim.x) colsums[i] = 0.f;
  const int r0 = blockIdx.x * per, r1 = min(rows, r0 + per);
  for (int row = r0; row < r1; row++) {
    const long long o = (long long)row * d;
    float r, c;
    rms_dx_coeffs(r, c, x, w, dy, o, d, eps, sh);
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
      const float xv = x[o + i], g = dy[o + i];
      const float v = r * w[i] * g - c * xv;
      const float out = add ? dx[o + i] + v : v;
      dx[o + i] = out;
      if (dx16) dx16[o + i] = __float2bfloat16_rn(out);
      colsums[i] += g * xv * r;
    }
  }
  for (int i = threadIdx.x; i < d; i += blockDim.x) part[(long long)blockIdx.x * d + i] = colsums[i];
}

// ---- RoPE ------------------------------------------------------------------------------------

// In float64 with the host's cos/sin tables [T, D/2] and no contraction (as ropeKernel):
// forward y = R_t(S x), inverse dx = S R_tᵀ dy, S scaling channel ch by s (ch < 0: none). One
// thread per (head, pair) column, its indices computed once in 32 bits (per-element 64-bit
// divisions cost more than the memory traffic), the rows strided over the blocks: grid (row
// blocks, ceil(H·D/2 / blockDim)). y16, when set, gets bf16(y) (the attention's operand); y may
// then be null.
__global__ void tr_rope_rows(float* y, __nv_bfloat16* y16, const float* x, const double* cosT, const double* sinT, const int* pa,
                             const int* pb, int rows, int H, int D, int T, int ch, double s, int inverse) {
  const int half = D / 2, p = blockIdx.y * blockDim.x + threadIdx.x;
  if (p >= H * half) return;
  const int h = p / half, i = p - h * half, a = pa[i], b = pb[i], ca = h * D + a, cb = h * D + b;
  const bool sa = ch >= 0 && a == ch, sb = ch >= 0 && b == ch;
  for (int row = blockIdx.x; row < rows; row += gridDim.x) {
    const int t = row % T;
    const long long base = (long long)row * H * D;
    const double c = cosT[t * half + i];
    double si = sinT[t * half + i];
    if (inverse) si = -si;
    float xa = x[base + ca], xb = x[base + cb];
    if (!inverse) {
      if (sa) xa = (float)__dmul_rn((double)xa, s);
      if (sb) xb = (float)__dmul_rn((double)xb, s);
    }
    const double x0 = xa, x1 = xb;
    float ya = (float)__dsub_rn(__dmul_rn(x0, c), __dmul_rn(x1, si));
    float yb = (float)__dadd_rn(__dmul_rn(x0, si), __dmul_rn(x1, c));
    if (inverse) {
      if (sa) ya = (float)__dmul_rn((double)ya, s);
      if (sb) yb = (float)__dmul_rn((double)yb, s);
    }
    if (y) {
      y[base + ca] = ya;
      y[base + cb] = yb;
    }
    if (y16) {
      y16[base + ca] = __float2bfloat16_rn(ya);
      y16[base + cb] = __float2bfloat16_rn(yb);
    }
  }
}

// ---- SwiGLU ----------------------------------------------------------------------------------

// out = silu(a)·b; out16, when set, gets bf16(out) (the down projection's operand); out may
// be null when only the bf16 copy is read.
__global__ void tr_swiglu_fwd(float* out, __nv_bfloat16* out16, const float* a, const float* b, long long n) {
  GRID_STRIDE(i, n) {
    float x = a[i];
    float v = x / (1.f + expf(-x)) * b[i];
    if (out) out[i] = v;
    if (out16) out16[i] = __float2bfloat16_rn(v);
  }
}

// da = dy·b·σ(a)(1 + a(1−σ(a))), db = dy·silu(a); da16 and db16, when set, get their bf16
// copies (the gate and up projections' backward GEMM operands).
__global__ void tr_swiglu_bwd(float* da, float* db, __nv_bfloat16* da16, __nv_bfloat16* db16, const float* a, const float* b,
                              const float* dy, long long n) {
  GRID_STRIDE(i, n) {
    float x = a[i];
    float sg = 1.f / (1.f + expf(-x));
    float g = dy[i];
    const float p = g * b[i] * sg * (1.f + x * (1.f - sg)), q = g * x * sg;
    da[i] = p;
    db[i] = q;
    if (da16) da16[i] = __float2bfloat16_rn(p);
    if (db16) db16[i] = __float2bfloat16_rn(q);
  }
}

// Four bf16 values of v in one 8-byte word.
__device__ __forceinline__ uint2 bf16x4(float4 v) {
  __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
  return make_uint2(*reinterpret_cast<unsigned*>(&lo), *reinterpret_cast<unsigned*>(&hi));
}

// The same two kernels on four elements a thread with 16-byte accesses (every pointer 16-byte
// aligned, n a multiple of 4): the per-element arithmetic of the scalar kernels, so the same
// bits, with four times the bytes in flight per thread.
__global__ void tr_swiglu_fwd4(float4* out, uint2* out16, const float4* a, const float4* b, long long n4) {
  GRID_STRIDE(i, n4) {
    const float4 x = a[i], y = b[i];
    float4 v;
    v.x = x.x / (1.f + expf(-x.x)) * y.x;
    v.y = x.y / (1.f + expf(-x.y)) * y.y;
    v.z = x.z / (1.f + expf(-x.z)) * y.z;
    v.w = x.w / (1.f + expf(-x.w)) * y.w;
    if (out) out[i] = v;
    if (out16) out16[i] = bf16x4(v);
  }
}

__device__ __forceinline__ void swiglu_bwd1(float& da, float& db, float x, float y, float g) {
  const float sg = 1.f / (1.f + expf(-x));
  da = g * y * sg * (1.f + x * (1.f - sg));
  db = g * x * sg;
}

__global__ void tr_swiglu_bwd4(float4* da, float4* db, uint2* da16, uint2* db16, const float4* a, const float4* b, const float4* dy,
                               long long n4) {
  GRID_STRIDE(i, n4) {
    const float4 x = a[i], y = b[i], g = dy[i];
    float4 p, q;
    swiglu_bwd1(p.x, q.x, x.x, y.x, g.x);
    swiglu_bwd1(p.y, q.y, x.y, y.y, g.y);
    swiglu_bwd1(p.z, q.z, x.z, y.z, g.z);
    swiglu_bwd1(p.w, q.w, x.w, y.w, g.w);
    da[i] = p;
    db[i] = q;
    if (da16) da16[i] = bf16x4(p);
    if (db16) db16[i] = bf16x4(q);
  }
}

// ---- Embedding -------------------------------------------------------------------------------

__global__ void tr_embed_fwd(float* out, const float* E, const int* ids, int N, int d) {
  long long n = (long long)N * d;
  GRID_STRIDE(i, n) {
    long long r = i / d;
    out[i] = E[(long long)ids[r] * d + (i % d)];
  }
}

// dE[v, c] (+)= Σ dy[pos[k], c] for k in [off[v], off[v+1]), positions ascending: a sequential
// fp32 sum per element, the order of the CPU's scatterAdd, so the result is the same bit for bit.
__global__ void tr_embed_bwd(float* dE, const float* dy, const int* off, const int* pos, int V, int d, int accumulate) {
  long long n = (long long)V * d;
  GRID_STRIDE(i, n) {
    int v = (int)(i / d), c = (int)(i % d);
    float s = accumulate ? dE[i] : 0.f;
    for (int k = off[v]; k < off[v + 1]; k++) s += dy[(long long)pos[k] * d + c];
    dE[i] = s;
  }
}

// ---- Losses ----------------------------------------------------------------------------------

// Per row log Σ exp of a row, normalised by its own maximum.
__device__ float row_lse(const float* row, int V, float* sh) {
  float m = -INFINITY;
  for (int i = threadIdx.x; i < V; i += blockDim.x) m = fmaxf(m, row[i]);
  m = block_max(m, sh);
  float z = 0.f;
  for (int i = threadIdx.x; i < V; i += blockDim.x) z += expf(row[i] - m);
  z = block_sum(z, sh);
  return m + logf(z);
}

// rowloss[n] = lse(logits[n]) − logits[n][t] (0 where t < 0). One block per row.
__global__ void tr_xent_rows(float* rowloss, const float* logits, const int* tg, int N, int V) {
  __shared__ float sh[32];
  int t = tg[blockIdx.x];
  if (t < 0) {
    if (threadIdx.x == 0) rowloss[blockIdx.x] = 0.f;
    return;
  }
  const float* row = logits + (long long)blockIdx.x * V;
  float lz = row_lse(row, V, sh);
  if (threadIdx.x == 0) rowloss[blockIdx.x] = lz - row[t];
}

// dl = scale·(softmax − onehot), zero rows where t < 0 (scale = g / counted tokens, times
// gscale[0] when set: the loss's upstream gradient as a device scalar). dl16, when set, gets
// bf16(dl) (the head's GEMM operand); dl may then be null.
__global__ void tr_xent_bwd(float* dl, __nv_bfloat16* dl16, const float* logits, const int* tg, int N, int V, float scale,
                            const float* gscale) {
  __shared__ float sh[32];
  if (gscale != nullptr) scale *= gscale[0];
  int t = tg[blockIdx.x];
  const long long o = (long long)blockIdx.x * V;
  if (t < 0) {
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
      if (dl) dl[o + i] = 0.f;
      if (dl16) dl16[o + i] = __float2bfloat16_rn(0.f);
    }
    return;
  }
  const float* row = logits + o;
  float lz = row_lse(row, V, sh);
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    float p = expf(row[i] - lz);
    const float g = scale * (i == t ? p - 1.f : p);
    if (dl) dl[o + i] = g;
    if (dl16) dl16[o + i] = __float2bfloat16_rn(g);
  }
}

// rowloss[n] = KL(softmax(teacher[n]) ‖ softmax(logits[n])) (0 where t < 0).
__global__ void tr_kl_rows(float* rowloss, const float* logits, const float* teacher, const int* tg, int N, int V) {
  __shared__ float sh[32];
  if (tg[blockIdx.x] < 0) {
    if (threadIdx.x == 0) rowloss[blockIdx.x] = 0.f;
    return;
  }
  const float* ls = logits + (long long)blockIdx.x * V;
  const float* lt = teacher + (long long)blockIdx.x * V;
  float zs = row_lse(ls, V, sh), zt = row_lse(lt, V, sh);
  float kl = 0.f;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    float a = lt[i] - zt, b = ls[i] - zs;
    kl += expf(a) * (a - b);
  }
  kl = block_sum(kl, sh);
  if (threadIdx.x == 0) rowloss[blockIdx.x] = kl;
}

__global__ void tr_kl_bwd(float* dl, const float* logits, const float* teacher, const int* tg, int N, int V, float scale,
                          const float* gscale) {
  __shared__ float sh[32];
  if (gscale != nullptr) scale *= gscale[0];
  float* out = dl + (long long)blockIdx.x * V;
  if (tg[blockIdx.x] < 0) {
    for (int i = threadIdx.x; i < V; i += blockDim.x) out[i] = 0.f;
    return;
  }
  const float* ls = logits + (long long)blockIdx.x * V;
  const float* lt = teacher + (long long)blockIdx.x * V;
  float zs = row_lse(ls, V, sh), zt = row_lse(lt, V, sh);
  for (int i = threadIdx.x; i < V; i += blockDim.x) out[i] = scale * (expf(ls[i] - zs) - expf(lt[i] - zt));
}

// out[0] = Σ rowloss / count, out[1] = count (targets ≥ 0); one block, float64 sums, fixed order.
__global__ void tr_mean_loss(float* out, const float* rowloss, const int* tg, int N) {
  __shared__ double sh[32];
  double s = 0.0, c = 0.0;
  for (int i = threadIdx.x; i < N; i += blockDim.x) {
    if (tg[i] >= 0) {
      s += rowloss[i];
      c += 1.0;
    }
  }
  s = block_sumd(s, sh);
  c = block_sumd(c, sh);
  if (threadIdx.x == 0) {
    out[0] = c > 0 ? (float)(s / c) : 0.f;
    out[1] = (float)c;
  }
}

// ---- DMC gates -------------------------------------------------------------------------------

// α [N,H]; mode 0 soft σ((k[ch]−off+noise)/τ), 1 hard 1[k[ch]−off > 0], 2 straight-through (the
// hard forward); 0 at t = 0. Float64 as the CPU.
__global__ void tr_dmc_decide(float* alpha, const float* k, const float* noise, int N, int H, int D, int T, int ch,
                              double off, double tau, int mode) {
  long long n = (long long)N * H;
  GRID_STRIDE(i, n) {
    long long row = i / H;
    double a = (double)k[i * D + ch] - off;
    double al;
    if (row % T == 0) al = 0;
    else if (mode != 0) al = a > 0 ? 1 : 0;
    else al = sigmoid_d((a + (double)noise[i]) / tau);
    alpha[i] = (float)al;
  }
}

// dk [N, H·D] on channel ch (t > 0), zero elsewhere: mode 0 dα·α̃(1−α̃)/τ with α̃ =
// σ((k[ch]−off+noise)/τ); mode 2 (straight-through) dα·p(1−p) with p = σ(k[ch]−off); mode 1 none.
// One warp per head row (the D channels of one (row, head)): the row's indices in 32 bits once,
// channel ch's value computed by the lane that stores it, coalesced zero stores elsewhere.
__global__ void tr_dmc_decide_bwd_rows(float* dk, const float* k, const float* noise, const float* dA, int N, int H, int D, int T,
                                       int ch, double off, double tau, int mode) {
  const int lane = threadIdx.x & 31, warps = (gridDim.x * blockDim.x) >> 5, NH = N * H;
  for (int nh = (blockIdx.x * blockDim.x + threadIdx.x) >> 5; nh < NH; nh += warps) {
    const int row = nh / H;
    const long long at = (long long)nh * D;
    float v = 0.f;
    if (lane == (ch & 31) && mode != 1 && row % T != 0) {
      double z = (double)k[at + ch] - off, t = 1;
      if (mode == 0) z += (double)noise[nh], t = tau;
      double al = sigmoid_d(z / t);
      v = (float)((double)dA[nh] * al * (1 - al) / t);
    }
    for (int c = lane; c < D; c += 32) dk[at + c] = c == ch ? v : 0.f;
  }
}

// dk[row, h, ch] += the same gradient, every other element untouched: tr_dmc_decide_bwd_rows and the
// gradient sum it feeds in one (graph/device foldGateGrads), one thread per (row, head).
__global__ void tr_dmc_decide_bwd_add(float* dk, const float* k, const float* noise, const float* dA, int N, int H, int D, int T,
                                      int ch, double off, double tau, int mode) {
  const long long n = (long long)N * H;
  GRID_STRIDE(nh, n) {
    const long long row = nh / H, at = nh * D + ch;
    if (mode == 1 || row % T == 0) continue;
    double z = (double)k[at] - off, t = 1;
    if (mode == 0) z += (double)noise[nh], t = tau;
    double al = sigmoid_d(z / t);
    dk[at] += (float)((double)dA[nh] * al * (1 - al) / t);
  }
}

// ω [N,Hkv] = σ(mean over the group of q[ch] + off) + eps.
__global__ void tr_dmc_importance(float* omega, const float* q, int N, int Hq, int Hkv, int D, int ch, double off, double eps) {
  long long n = (long long)N * Hkv;
  int G = Hq / Hkv;
  GRID_STRIDE(i, n) {
    long long row = i / Hkv;
    int h = (int)(i % Hkv);
    double s = 0;
    for (int g = h * G; g < (h + 1) * G; g++) s += (double)q[(row * Hq + g) * D + ch];
    omega[i] = (float)(sigmoid_d(s / G + off) + eps);
  }
}

// dq[row, g, ch] += the same gradient, every other element untouched (as tr_dmc_decide_bwd_add).
__global__ void tr_dmc_importance_bwd_add(float* dq, const float* q, const float* dW, int N, int Hq, int Hkv, int D, int ch, double off) {
  const long long n = (long long)N * Hq;
  const int G = Hq / Hkv;
  GRID_STRIDE(nq, n) {
    const long long row = nq / Hq;
    const int h = (int)(nq % Hq) / G;
    double s = 0;
    for (int g = h * G; g < (h + 1) * G; g++) s += (double)q[(row * Hq + g) * D + ch];
    double sg = sigmoid_d(s / G + off);
    dq[nq * D + ch] += (float)((double)dW[row * Hkv + h] * sg * (1 - sg) / G);
  }
}

// dq [N, Hq·D]: dω·σ'(·)/G on channel ch of every head of the group, zero elsewhere; one warp per
// head row, as tr_dmc_decide_bwd_rows.
__global__ void tr_dmc_importance_bwd_rows(float* dq, const float* q, const float* dW, int N, int Hq, int Hkv, int D, int ch,
                                           double off) {
  const int lane = threadIdx.x & 31, warps = (gridDim.x * blockDim.x) >> 5, NQ = N * Hq, G = Hq / Hkv;
  for (int nq = (blockIdx.x * blockDim.x + threadIdx.x) >> 5; nq < NQ; nq += warps) {
    const int row = nq / Hq, h = (nq - row * Hq) / G;
    const long long at = (long long)nq * D;
    float v = 0.f;
    if (lane == (ch & 31)) {
      double s = 0;
      for (int g = h * G; g < (h + 1) * G; g++) s += (double)q[((long long)row * Hq + g) * D + ch];
      double sg = sigmoid_d(s / G + off);
      v = (float)((double)dW[(long long)row * Hkv + h] * sg * (1 - sg) / G);
    }
    for (int c = lane; c < D; c += 32) dq[at + c] = c == ch ? v : 0.f;
  }
}

// count[b] = #{α > 0.5} over the b-th block of per = T·H values (exact integer sums).
__global__ void tr_dmc_hardcount(float* count, const float* alpha, int per) {
  __shared__ float sh[32];
  const float* a = alpha + (long long)blockIdx.x * per;
  float c = 0.f;  // exact: per-thread and block sums stay far below 2^24
  for (int i = threadIdx.x; i < per; i += blockDim.x) c += a[i] > 0.5f ? 1.f : 0.f;
  c = block_sum(c, sh);
  if (threadIdx.x == 0) count[blockIdx.x] = c;
}

__global__ void tr_dmc_hardcount_bwd(float* dA, const float* g, long long n, int per) {
  GRID_STRIDE(i, n) dA[i] = g[i / per];
}

// count[b·H + h] = #{t : α[(b·T + t)·H + h] > 0.5}: one block per (sequence, head).
__global__ void tr_dmc_headcount(float* count, const float* alpha, int T, int H) {
  __shared__ float sh[32];
  const int b = blockIdx.x / H, h = blockIdx.x % H;
  const float* a = alpha + (long long)b * T * H + h;
  float c = 0.f;  // exact, as tr_dmc_hardcount
  for (int t = threadIdx.x; t < T; t += blockDim.x) c += a[(long long)t * H] > 0.5f ? 1.f : 0.f;
  c = block_sum(c, sh);
  if (threadIdx.x == 0) count[blockIdx.x] = c;
}

__global__ void tr_dmc_headcount_bwd(float* dA, const float* g, long long n, int T, int H) {
  GRID_STRIDE(i, n) dA[i] = g[i / ((long long)T * H) * H + i % H];
}

// ---- DMC merge -------------------------------------------------------------------------------
// x̃_i = Σ_{j=lo..i} c_ij ω_j x_j / Σ c_ij ω_j, c_ij = Π_{m=j+1..i} α_m, lo = max(0, i−W+1) (0 for
// W = 0). One warp per row i (blockDim = 32·warps, grid (ceil(T/warps), B·H)); lane l holds
// channels l + 32c, in chunks of MG_C·32 channels; no block-wide synchronisation.
#define MG_C 4

__global__ void tr_dmc_merge_fwd(float* y, __nv_bfloat16* y16, const float* x, const float* alpha, const float* omega, int T, int H, int D,
                                 int W) {
  const int wpb = blockDim.x >> 5, lane = threadIdx.x & 31;
  const int i = blockIdx.x * wpb + (threadIdx.x >> 5), bh = blockIdx.y, b = bh / H, h = bh % H;
  if (i >= T) return;
  const int lo = W > 0 ? max(0, i - W + 1) : 0;
  const long long ri = ((long long)b * T + i) * H + h;
  for (int d0 = 0; d0 < D; d0 += 32 * MG_C) {
    float num[MG_C], den = 0.f, c = 1.f;
#pragma unroll
    for (int u = 0; u < MG_C; u++) num[u] = 0.f;
#pragma unroll 4
    for (int j = i; j >= lo; j--) {
      const long long r = ((long long)b * T + j) * H + h;
      const float wt = c * omega[r];
#pragma unroll
      for (int u = 0; u < MG_C; u++) {
        const int d = d0 + lane + 32 * u;
        if (d < D) num[u] += wt * x[r * D + d];
      }
      den += wt;
      c *= alpha[r];
    }
#pragma unroll
    for (int u = 0; u < MG_C; u++) {
      const int d = d0 + lane + 32 * u;
      if (d < D) {
        const float v = num[u] / den;
        if (y) y[ri * D + d] = v;
        if (y16) y16[ri * D + d] = __float2bfloat16_rn(v);
      }
    }
  }
}

// Backward, first pass (one warp per output row i, dynamic smem 3·span floats per warp): Z_i,
// and per window slot k = i − j the contributions cW[i][k] = c_ij·e_ij to dω_j and
// cA[i][k] = c_{i,i−k}·S_{i−k} to dα_{i−k} (zero in unused slots), with
// e_ij = (g_i/Z_i)·x_j − (g_i·x̃_i)/Z_i and S the CPU kernel's recursion. The second pass gathers
// them per j, so no two threads ever add into one value.
__global__ void tr_dmc_merge_bwd_a(float* rowZ, float* cW, float* cA, const float* x, const float* alpha, const float* omega,
                                   const float* dy, int T, int H, int D, int W, int span) {
  extern __shared__ float smem[];
  const int wpb = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float* cs = smem + warp * 3 * span;  // [span] c_{i,i−k}
  float* rho = cs + span;              // [span]
  float* dots = rho + span;            // [span] Σ_d (g/Z)·x_{i−k}
  const int i = blockIdx.x * wpb + warp, bh = blockIdx.y, b = bh / H, h = bh % H;
  if (i >= T) return;
  const int lo = W > 0 ? max(0, i - W + 1) : 0, len = i - lo + 1;
  const long long ri = ((long long)b * T + i) * H + h;
  float den = 0.f, c = 1.f;
  for (int j = i; j >= lo; j--) {
    const long long r = ((long long)b * T + j) * H + h;
    if (lane == 0) cs[i - j] = c;
    den += c * omega[r];
    c *= alpha[r];
  }
  for (int k = lane; k < len; k += 32) dots[k] = 0.f;
  __syncwarp();
  float gy = 0.f;
  for (int d0 = 0; d0 < D; d0 += 32 * MG_C) {
    float num[MG_C], g[MG_C];
#pragma unroll
    for (int u = 0; u < MG_C; u++) num[u] = 0.f;
#pragma unroll 4
    for (int j = i; j >= lo; j--) {
      const long long r = ((long long)b * T + j) * H + h;
      const float wt = cs[i - j] * omega[r];
#pragma unroll
      for (int u = 0; u < MG_C; u++) {
        const int d = d0 + lane + 32 * u;
        if (d < D) num[u] += wt * x[r * D + d];
      }
    }
#pragma unroll
    for (int u = 0; u < MG_C; u++) {
      const int d = d0 + lane + 32 * u;
      g[u] = d < D ? dy[ri * D + d] : 0.f;
      gy += g[u] * (num[u] / den);
      g[u] /= den;
    }
#pragma unroll 4
    for (int k = 0; k < len; k++) {
      const long long r = ((long long)b * T + (i - k)) * H + h;
      float v = 0.f;
#pragma unroll
      for (int u = 0; u < MG_C; u++) {
        const int d = d0 + lane + 32 * u;
        if (d < D) v += g[u] * x[r * D + d];
      }
      v = warp_sum(v);
      if (lane == 0) dots[k] += v;
    }
  }
  gy = warp_sum(gy);
  const float dZ = -gy / den;
  __syncwarp();
  for (int k = lane; k < span; k += 32) {
    float cw = 0.f;
    if (k < len) {
      const float e = dots[k] + dZ;
      cw = cs[k] * e;
      rho[k] = omega[((long long)b * T + (i - k)) * H + h] * e;
    }
    cW[ri * span + k] = cw;
  }
  __syncwarp();
  if (lane == 0) {
    rowZ[ri] = den;
    // dα_m (m = lo+1..i) gets c_im·S_m, S_{m} = S_{m−1}·α_{m−1} + ρ_{m−1}; slot k = i − m.
    float S = 0.f;
    for (int m = lo + 1; m <= i; m++) {
      const long long r = ((long long)b * T + (m - 1)) * H + h;
      S = S * alpha[r] + rho[i - (m - 1)];
      cA[ri * span + (i - m)] = cs[i - m] * S;
    }
    for (int k = i - lo; k < span; k++) cA[ri * span + k] = 0.f;
  }
}

// Backward, second pass (one warp per row j): with i over the rows whose window holds j,
// dx_j = ω_j Σ_i c_ij g_i/Z_i, dω_j = Σ_i cW[i][i−j], dα_j = Σ_i cA[i][i−j].
__global__ void tr_dmc_merge_bwd_b(float* dx, float* dA, float* dW, const float* alpha, const float* omega, const float* dy,
                                   const float* rowZ, const float* cW, const float* cA, int T, int H, int D, int W, int span) {
  const int wpb = blockDim.x >> 5, lane = threadIdx.x & 31;
  const int j = blockIdx.x * wpb + (threadIdx.x >> 5), bh = blockIdx.y, b = bh / H, h = bh % H;
  if (j >= T) return;
  const int hi = W > 0 ? min(T - 1, j + W - 1) : T - 1;
  const long long rj = ((long long)b * T + j) * H + h;
  for (int d0 = 0; d0 < D; d0 += 32 * MG_C) {
    float u[MG_C], c = 1.f;
#pragma unroll
    for (int q = 0; q < MG_C; q++) u[q] = 0.f;
#pragma unroll 4
    for (int i = j; i <= hi; i++) {
      const long long r = ((long long)b * T + i) * H + h;
      if (i > j) c *= alpha[r];
      const float gz = c / rowZ[r];
#pragma unroll
      for (int q = 0; q < MG_C; q++) {
        const int d = d0 + lane + 32 * q;
        if (d < D) u[q] += gz * dy[r * D + d];
      }
    }
#pragma unroll
    for (int q = 0; q < MG_C; q++) {
      const int d = d0 + lane + 32 * q;
      if (d < D) dx[rj * D + d] = omega[rj] * u[q];
    }
  }
  if (lane == 0) {
    float sw = 0.f, sa = 0.f;
    for (int i = j; i <= hi; i++) {
      const long long r = ((long long)b * T + i) * H + h;
      sw += cW[r * span + (i - j)];
      sa += cA[r * span + (i - j)];
    }
    dW[rj] = sw;
    dA[rj] = sa;
  }
}

// ---- DMC merge, windows of 1..32 tokens -------------------------------------------------------
// The same three passes when the window fits a warp (1 ≤ W ≤ 32, the recipes' case): lane k
// holds slot k of a row's window (j = i − k in the forward and the first backward pass, i = j + k
// in the second), its α, ω and window weight in registers. The products c_ij come from a prefix
// scan over the lanes instead of a serial walk of dependent global loads, the forward's x̃ is
// not recomputed in the backward (Σ_d g·x̃ = Σ_k wt_k·dots_k), and the dα recursion, a serial
// loop of one lane in tr_dmc_merge_bwd_a, is a scan of affine maps.
// Same grid and block as the general kernels above.

// Inclusive prefix product over the lanes.
__device__ __forceinline__ float mg_prefix_prod(float a) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const float t = __shfl_up_sync(FULL, a, o);
    if (lane >= o) a *= t;
  }
  return a;
}

// Row i's window: lane k < len gets α and ω of row j = i − k, c = Π_{m=j+1..i} α_m and returns
// its weight c·ω (0 on lanes past the window).
__device__ __forceinline__ float mg_window(const float* alpha, const float* omega, long long base, int H, int i, int len, float& a,
                                           float& o, float& c) {
  const int lane = threadIdx.x & 31;
  const long long r = base + (long long)(i - lane) * H;
  a = lane < len ? alpha[r] : 1.f;
  o = lane < len ? omega[r] : 0.f;
  c = __shfl_up_sync(FULL, mg_prefix_prod(a), 1);
  if (lane == 0) c = 1.f;
  return c * o;
}

}  // extern "C" (a template)
// dst[d] = Σ_{k<n} w_k·src_{row + dir·k}[d], divided by f (DIV) or times f, for this lane's
// channels; w_k is lane k's w and rows are H·D floats apart.
template <bool DIV>
__device__ __forceinline__ void mg_window_sum(float* dst, __nv_bfloat16* dst16, const float* __restrict__ src, long long base, int H,
                                              int D, int row, int dir, int n, float w, float f) {
  const int lane = threadIdx.x & 31;
  for (int d0 = 0; d0 < D; d0 += 32 * MG_C) {
    float acc[MG_C];
#pragma unroll
    for (int u = 0; u < MG_C; u++) acc[u] = 0.f;
#pragma unroll 4
    for (int k = 0; k < n; k++) {
      const float wk = __shfl_sync(FULL, w, k);
      const float* sr = src + (base + (long long)(row + dir * k) * H) * D;
#pragma unroll
      for (int u = 0; u < MG_C; u++) {
        const int d = d0 + lane + 32 * u;
        if (d < D) acc[u] += wk * sr[d];
      }
    }
#pragma unroll
    for (int u = 0; u < MG_C; u++) {
      const int d = d0 + lane + 32 * u;
      if (d < D) {
        const float v = DIV ? acc[u] / f : f * acc[u];
        if (dst) dst[d] = v;
        if (dst16) dst16[d] = __float2bfloat16_rn(v);
      }
    }
  }
}
extern "C" {

__global__ void tr_dmc_merge_fwd_w(float* __restrict__ y, __nv_bfloat16* __restrict__ y16, const float* __restrict__ x,
                                   const float* __restrict__ alpha, const float* __restrict__ omega, int T, int H, int D, int W) {
  const int wpb = blockDim.x >> 5;
  const int i = blockIdx.x * wpb + (threadIdx.x >> 5), bh = blockIdx.y, b = bh / H, h = bh % H;
  if (i >= T) return;
  const int len = i - max(0, i - W + 1) + 1;
  const long long base = (long long)b * T * H + h, ri = base + (long long)i * H;
  float a, o, c;
  const float wt = mg_window(alpha, omega, base, H, i, len, a, o, c), den = warp_sum(wt);
  mg_window_sum<true>(y ? y + ri * D : nullptr, y16 ? y16 + ri * D : nullptr, x, base, H, D, i, -1, len, wt, den);
}

// The end of the first backward pass for row ri (all lanes; writes only when store): lane k
// holds slot k's dot product, α, ω and c. dα of slot k (m = i − k ≥ lo + 1) is c_k·S_k with
// S_k = a_{k+1}·S_{k+1} + ρ_{k+1}, S_{len−1} = 0: a suffix scan of the affine maps S ↦ A·S + B.
__device__ __forceinline__ void mg_bwd_a_store(float* __restrict__ rowZ, float* __restrict__ cW, float* __restrict__ cA, long long ri,
                                               int span, int len, float wt, float den, float dot, float a, float o, float c, bool store) {
  const int lane = threadIdx.x & 31;
  const float dZ = -warp_sum(wt * dot) / den;  // −(Σ_d g·x̃)/Z
  const float e = dot + dZ;
  const float rho = lane < len ? o * e : 0.f;
  float A = __shfl_down_sync(FULL, a, 1), Bv = __shfl_down_sync(FULL, rho, 1);
  if (lane >= len - 1) A = Bv = 0.f;
#pragma unroll
  for (int w = 1; w < 32; w <<= 1) {
    const float A2 = __shfl_down_sync(FULL, A, w), B2 = __shfl_down_sync(FULL, Bv, w);
    if (lane + w < 32) {
      Bv = fmaf(A, B2, Bv);
      A *= A2;
    }
  }
  if (!store) return;
  if (lane < span) {
    cW[ri * span + lane] = lane < len ? c * e : 0.f;
    cA[ri * span + lane] = lane < len - 1 ? c * Bv : 0.f;
  }
  if (lane == 0) rowZ[ri] = den;
}

// First backward pass (the layout of tr_dmc_merge_bwd_a: rowZ, cW and cA with span slots).
__global__ void tr_dmc_merge_bwd_a_w(float* __restrict__ rowZ, float* __restrict__ cW, float* __restrict__ cA,
                                     const float* __restrict__ x, const float* __restrict__ alpha, const float* __restrict__ omega,
                                     const float* __restrict__ dy, int T, int H, int D, int W, int span) {
  const int wpb = blockDim.x >> 5, lane = threadIdx.x & 31;
  const int i = blockIdx.x * wpb + (threadIdx.x >> 5), bh = blockIdx.y, b = bh / H, h = bh % H;
  if (i >= T) return;
  const int len = i - max(0, i - W + 1) + 1;
  const long long base = (long long)b * T * H + h, ri = base + (long long)i * H;
  float a, o, c;
  const float wt = mg_window(alpha, omega, base, H, i, len, a, o, c), den = warp_sum(wt);
  // dot (lane k) = dots_k = Σ_d (g_d/Z)·x_{i−k,d}: the slots' sums are independent, so the
  // unrolled loop keeps several loads and warp sums in flight.
  float dot = 0.f;
  for (int d0 = 0; d0 < D; d0 += 32 * MG_C) {
    float g[MG_C];
#pragma unroll
    for (int u = 0; u < MG_C; u++) {
      const int d = d0 + lane + 32 * u;
      g[u] = d < D ? dy[ri * D + d] / den : 0.f;
    }
#pragma unroll 4
    for (int k = 0; k < len; k++) {
      const float* xr = x + (base + (long long)(i - k) * H) * D;
      float t = 0.f;
#pragma unroll
      for (int u = 0; u < MG_C; u++) {
        const int d = d0 + lane + 32 * u;
        if (d < D) t += g[u] * xr[d];
      }
      t = warp_sum(t);
      if (lane == k) dot += t;
    }
  }
  mg_bwd_a_store(rowZ, cW, cA, ri, span, len, wt, den, dot, a, o, c, true);
}

// Second backward pass: lane k holds row i = j + k of the rows whose window holds j.
__global__ void tr_dmc_merge_bwd_b_w(float* __restrict__ dx, float* __restrict__ dA, float* __restrict__ dW,
                                     const float* __restrict__ alpha, const float* __restrict__ omega, const float* __restrict__ dy,
                                     const float* __restrict__ rowZ, const float* __restrict__ cW, const float* __restrict__ cA, int T,
                                     int H, int D, int W, int span) {
  const int wpb = blockDim.x >> 5, lane = threadIdx.x & 31;
  const int j = blockIdx.x * wpb + (threadIdx.x >> 5), bh = blockIdx.y, b = bh / H, h = bh % H;
  if (j >= T) return;
  const int n = min(T - 1, j + W - 1) - j + 1;
  const long long base = (long long)b * T * H + h, rj = base + (long long)j * H, rk = base + (long long)(j + lane) * H;
  const bool in = lane < n;
  const float c = mg_prefix_prod(in && lane > 0 ? alpha[rk] : 1.f);  // Π_{m=j+1..j+k} α_m
  const float gz = in ? c / rowZ[rk] : 0.f;
  mg_window_sum<false>(dx + rj * D, nullptr, dy, base, H, D, j, 1, n, gz, omega[rj]);
  const float sw = warp_sum(in ? cW[rk * span + lane] : 0.f), sa = warp_sum(in ? cA[rk * span + lane] : 0.f);
  if (lane == 0) {
    dW[rj] = sw;
    dA[rj] = sa;
  }
}

// ---- DMC merge, windows of 1..32 tokens, MG_R rows per warp ------------------------------------
// The warp-window kernels above with each warp on MG_R consecutive rows (grid x = ceil(T /
// (warps per block · MG_R))) and 16-byte loads (D a multiple of 4, 16-byte aligned rows): every
// source row the warp's windows share is loaded once for all of them instead of once per row,
// and a lane's four channels come in one load. Per output row the products are added in the
// same order as in the one-row kernels (window slot k ascending), so the forward and the
// second backward pass give the same bits; the first backward pass sums its dot products over
// other lane groupings (rounding differs, within fp32 tolerance).
#define MG_R 4
// Register caps for three (forward, first pass) and four (second pass) blocks of 8 warps per SM,
// without spills (ptxas: 80 and 64 registers).

// Channels d..d+3 of row `row` of the [T, H, D] rows from base (zeros where off).
__device__ __forceinline__ float4 mg_row4(const float* __restrict__ src, long long base, int H, int D, int row, int d, bool on) {
  return on ? *reinterpret_cast<const float4*>(src + (base + (long long)row * H) * D + d) : make_float4(0.f, 0.f, 0.f, 0.f);
}

// acc[r] += w_r(k)·v for each of the warp's rows r whose window slot k = k0 + dk·r holds v
// (0 ≤ k < len[r]); w_r(k) is lane k's w[r].
__device__ __forceinline__ void mg_rows_fma(float4 (&acc)[MG_R], float4 v, const float (&w)[MG_R], const int (&len)[MG_R], int k0, int dk) {
#pragma unroll
  for (int r = 0; r < MG_R; r++) {
    const int k = k0 + dk * r;
    const float wk = __shfl_sync(FULL, w[r], k & 31);
    if (k >= 0 && k < len[r]) {
      acc[r].x += wk * v.x;
      acc[r].y += wk * v.y;
      acc[r].z += wk * v.z;
      acc[r].w += wk * v.w;
    }
  }
}

// The windows of the warp's rows i0 + r (mg_window for each; rows past T get the last row's
// window and are not stored): weights wt, their sums den, lengths len, and slot k's α, ω, c.
__device__ __forceinline__ void mg_rows_windows(const float* alpha, const float* omega, long long base, int H, int T, int W, int i0,
                                                float (&wt)[MG_R], float (&den)[MG_R], int (&len)[MG_R], float (&a)[MG_R],
                                                float (&o)[MG_R], float (&c)[MG_R]) {
#pragma unroll
  for (int r = 0; r < MG_R; r++) {
    const int i = min(i0 + r, T - 1);
    len[r] = i - max(0, i - W + 1) + 1;
    wt[r] = mg_window(alpha, omega, base, H, i, len[r], a[r], o[r], c[r]);
    den[r] = warp_sum(wt[r]);
  }
}

// The forward: y_i = Σ_k wt_k x_{i−k} / Z_i for the warp's rows.
__global__ void __launch_bounds__(256, 3) tr_dmc_merge_fwd_wr(float* __restrict__ y, uint2* __restrict__ y16, const float* __restrict__ x,
                                                              const float* __restrict__ alpha, const float* __restrict__ omega, int T,
                                                              int H, int D, int W) {
  const int wpb = blockDim.x >> 5, lane = threadIdx.x & 31;
  const int i0 = (blockIdx.x * wpb + (threadIdx.x >> 5)) * MG_R, bh = blockIdx.y, b = bh / H, h = bh % H;
  if (i0 >= T) return;
  const long long base = (long long)b * T * H + h;
  float wt[MG_R], den[MG_R], a[MG_R], o[MG_R], c[MG_R];
  int len[MG_R];
  mg_rows_windows(alpha, omega, base, H, T, W, i0, wt, den, len, a, o, c);
  const int jhi = min(i0 + MG_R, T) - 1, jlo = max(0, i0 - W + 1);
  for (int c0 = 0; c0 < D; c0 += 128) {
    const int d = c0 + 4 * lane;
    const bool on = d < D;
    float4 acc[MG_R];
#pragma unroll
    for (int r = 0; r < MG_R; r++) acc[r] = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int j = jhi; j >= jlo; j--) mg_rows_fma(acc, mg_row4(x, base, H, D, j, d, on), wt, len, i0 - j, 1);
#pragma unroll
    for (int r = 0; r < MG_R; r++)
      if (on && i0 + r < T) {
        const long long at = (base + (long long)(i0 + r) * H) * D + d;
        const float4 v = make_float4(acc[r].x / den[r], acc[r].y / den[r], acc[r].z / den[r], acc[r].w / den[r]);
        if (y) *reinterpret_cast<float4*>(y + at) = v;
        if (y16) y16[at / 4] = bf16x4(v);
      }
  }
}

// First backward pass (tr_dmc_merge_bwd_a_w's outputs) for the warp's rows.
__global__ void __launch_bounds__(256, 3) tr_dmc_merge_bwd_a_wr(float* __restrict__ rowZ, float* __restrict__ cW, float* __restrict__ cA,
                                      const float* __restrict__ x, const float* __restrict__ alpha, const float* __restrict__ omega,
                                      const float* __restrict__ dy, int T, int H, int D, int W, int span) {
  const int wpb = blockDim.x >> 5, lane = threadIdx.x & 31;
  const int i0 = (blockIdx.x * wpb + (threadIdx.x >> 5)) * MG_R, bh = blockIdx.y, b = bh / H, h = bh % H;
  if (i0 >= T) return;
  const long long base = (long long)b * T * H + h;
  float wt[MG_R], den[MG_R], a[MG_R], o[MG_R], c[MG_R], dot[MG_R] = {};
  int len[MG_R];
  mg_rows_windows(alpha, omega, base, H, T, W, i0, wt, den, len, a, o, c);
  const int jhi = min(i0 + MG_R, T) - 1, jlo = max(0, i0 - W + 1);
  // dot[r] (lane k) = Σ_d (g_d/Z)·x_{i−k,d} for row i = i0 + r
  for (int c0 = 0; c0 < D; c0 += 128) {
    const int d = c0 + 4 * lane;
    const bool on = d < D;
    float4 g[MG_R];
#pragma unroll
    for (int r = 0; r < MG_R; r++) {
      const int i = min(i0 + r, T - 1);
      g[r] = make_float4(0.f, 0.f, 0.f, 0.f);
      if (on) {
        const float4 v = *reinterpret_cast<const float4*>(dy + (base + (long long)i * H) * D + d);
        g[r] = make_float4(v.x / den[r], v.y / den[r], v.z / den[r], v.w / den[r]);
      }
    }
    for (int j = jhi; j >= jlo; j--) {
      const float4 v = mg_row4(x, base, H, D, j, d, on);
#pragma unroll
      for (int r = 0; r < MG_R; r++) {
        const int k = i0 + r - j;
        if (k >= 0 && k < len[r]) {
          const float t = warp_sum(g[r].x * v.x + g[r].y * v.y + g[r].z * v.z + g[r].w * v.w);
          if (lane == k) dot[r] += t;
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < MG_R; r++)
    mg_bwd_a_store(rowZ, cW, cA, base + (long long)(i0 + r) * H, span, len[r], wt[r], den[r], dot[r], a[r], o[r], c[r], i0 + r < T);
}

// Second backward pass for the warp's rows j0 .. j0 + MG_R − 1 (lane k of row j: row j + k).
__global__ void __launch_bounds__(256, 4) tr_dmc_merge_bwd_b_wr(float* __restrict__ dx, float* __restrict__ dA, float* __restrict__ dW,
                                      const float* __restrict__ alpha, const float* __restrict__ omega, const float* __restrict__ dy,
                                      const float* __restrict__ rowZ, const float* __restrict__ cW, const float* __restrict__ cA, int T,
                                      int H, int D, int W, int span) {
  const int wpb = blockDim.x >> 5, lane = threadIdx.x & 31;
  const int j0 = (blockIdx.x * wpb + (threadIdx.x >> 5)) * MG_R, bh = blockIdx.y, b = bh / H, h = bh % H;
  if (j0 >= T) return;
  const long long base = (long long)b * T * H + h;
  float gz[MG_R];
  int n[MG_R];
#pragma unroll
  for (int r = 0; r < MG_R; r++) {  // rows past T: n = 0, nothing stored
    const int j = j0 + r;
    n[r] = j < T ? min(T - 1, j + W - 1) - j + 1 : 0;
    const long long rk = base + (long long)(j + lane) * H;
    const bool in = lane < n[r];
    const float c = mg_prefix_prod(in && lane > 0 ? alpha[rk] : 1.f);
    gz[r] = in ? c / rowZ[rk] : 0.f;
    const float sw = warp_sum(in ? cW[rk * span + lane] : 0.f), sa = warp_sum(in ? cA[rk * span + lane] : 0.f);
    if (lane == 0 && j < T) {
      dW[base + (long long)j * H] = sw;
      dA[base + (long long)j * H] = sa;
    }
  }
  const int ihi = min(T - 1, j0 + MG_R - 1 + W - 1);
  for (int c0 = 0; c0 < D; c0 += 128) {
    const int d = c0 + 4 * lane;
    const bool on = d < D;
    float4 acc[MG_R];
#pragma unroll
    for (int r = 0; r < MG_R; r++) acc[r] = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int i = j0; i <= ihi; i++) mg_rows_fma(acc, mg_row4(dy, base, H, D, i, d, on), gz, n, i - j0, -1);
#pragma unroll
    for (int r = 0; r < MG_R; r++) {
      const int j = j0 + r;
      if (on && j < T) {
        const float om = omega[base + (long long)j * H];
        *reinterpret_cast<float4*>(dx + (base + (long long)j * H) * D + d) =
            make_float4(om * acc[r].x, om * acc[r].y, om * acc[r].z, om * acc[r].w);
      }
    }
  }
}

// ---- Gumbel noise ----------------------------------------------------------------------------
// out[(b·T + t)·Hkv + h] = logistic noise of element i = (b·Hkv + h)·T + t of the stream whose
// SplitMix64 state is given (dmc.NoiseKey: x_i = mix(state + (i+1)·γ), u = ((x>>11) + ½)·2⁻⁵³,
// log u − log1p(−u) in float64, times scale: 1 − the step's noise damping).
__device__ __forceinline__ unsigned long long sm_mix(unsigned long long z) {
  z ^= z >> 30;
  z *= 0xbf58476d1ce4e5b9ULL;
  z ^= z >> 27;
  z *= 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

__global__ void tr_noise(float* out, unsigned long long state, int B, int T, int Hkv, double scale) {
  const long long n = (long long)B * T * Hkv;
  GRID_STRIDE(r, n) {
    const int h = (int)(r % Hkv);
    const long long bt = r / Hkv;
    const int t = (int)(bt % T), b = (int)(bt / T);
    const unsigned long long i = ((unsigned long long)b * Hkv + h) * T + t;
    const unsigned long long x = sm_mix(state + (i + 1) * 0x9e3779b97f4a7c15ULL);
    const double u = ((double)(x >> 11) + 0.5) * 0x1p-53;
    out[r] = (float)(scale * (log(u) - log1p(-u)));
  }
}

// ---- Optimiser -------------------------------------------------------------------------------

// One AdamW step, trainer.AdamW.Update's formula operation for operation in fp32 with no
// contraction (bit-identical to the CPU): g ← g·clip (clip: device scalar or null),
// m ← β1 m + c1 g, v ← β2 v + c2 g g, w ← w·keep − step·m/(√v·invSqrtBC2 + eps). w16, when set,
// gets bf16(w) for the next forward's GEMMs.
__global__ void tr_adamw(float* w, __nv_bfloat16* w16, const float* g, float* m, float* v, const float* clip, long long n,
                         float b1, float b2, float c1, float c2, float step, float invSqrtBC2, float eps, float keep) {
  float cl = clip ? clip[0] : 1.f;
  GRID_STRIDE(j, n) {
    float gj = clip ? __fmul_rn(g[j], cl) : g[j];
    float mj = __fadd_rn(__fmul_rn(b1, m[j]), __fmul_rn(c1, gj));
    float vj = __fadd_rn(__fmul_rn(b2, v[j]), __fmul_rn(__fmul_rn(c2, gj), gj));
    m[j] = mj;
    v[j] = vj;
    float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(vj), invSqrtBC2), eps);
    float wj = __fsub_rn(__fmul_rn(w[j], keep), __fdiv_rn(__fmul_rn(step, mj), denom));
    w[j] = wj;
    if (w16) w16[j] = __float2bfloat16_rn(wj);
  }
}

// First pass of the global norm: part[blockIdx.x] = Σ g² over the block's chunk (float64).
__global__ void tr_sumsq_part(double* part, const float* g, long long n, long long chunk) {
  __shared__ double sh[32];
  long long lo = (long long)blockIdx.x * chunk, hi = min(n, lo + chunk);
  double s = 0.0;
  for (long long i = lo + threadIdx.x; i < hi; i += blockDim.x) s += (double)g[i] * (double)g[i];
  s = block_sumd(s, sh);
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}

// Second pass: norm[0] = sqrt(Σ part), clip[0] = maxNorm/norm when maxNorm > 0 and the norm is
// finite and above it, else 1 (trainer.ClipGlobalNorm).
__global__ void tr_norm_finish(double* norm, float* clip, const double* part, int nparts, double maxNorm) {
  __shared__ double sh[32];
  double s = 0.0;
  for (int i = threadIdx.x; i < nparts; i += blockDim.x) s += part[i];
  s = block_sumd(s, sh);
  if (threadIdx.x == 0) {
    double nr = sqrt(s);
    norm[0] = nr;
    float c = 1.f;
    if (maxNorm > 0 && nr > maxNorm && !isinf(nr) && !isnan(nr)) c = (float)(maxNorm / nr);
    clip[0] = c;
  }
}


// ---- attention ---------------------------------------------------------------------------------
// Causal GQA attention with the DMC mask, in the flash-attention manner: no T×T matrix. The
// forward keeps per (row, query head) the row maximum m and lse = m + log L (stats [2][N·Hq]);
// the backward recomputes the probabilities tile by tile. One row of D channels belongs to a
// group of tpr lanes (tpr a power of two ≤ 32, ch = D/tpr ≤ ATT_MAXCH channels each, channel
// c·tpr + lane), dot products are reduced by shuffles within the group. Every lane of a block
// runs every loop iteration (shuffles are never divergent); rows past T and keys after the
// query are masked arithmetically. No atomics: dK, dV and dα belong to the key's group (it loops
// over the G query heads of its KV head and every later query), dQ to the query's group.
// Scores are s = (q·k)·scale; masked scores add log(1 − α_{j+1}) for keys j < i.
#define ATT_MAXCH 16

__device__ __forceinline__ float group_sum(float v, int tpr) {
  for (int o = tpr >> 1; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
  return v;
}

__device__ __forceinline__ float att_logm(const float* alpha, int b, int j, int T, int Hkv, int hk) {
  return (alpha != nullptr && j + 1 < T) ? log1pf(-alpha[((long long)b * T + j + 1) * Hkv + hk]) : 0.f;
}

// grid (ceil(T/rows), Hq, B), rows = blockDim/tpr query rows per block; smem (2·bk·D + bk) floats.
__global__ void tr_attn_fwd(float* o, float* stats, const float* q, const float* k, const float* v, const float* alpha,
                            int T, int Hq, int Hkv, int D, int tpr, int bk, float scale) {
  extern __shared__ float smf[];
  float *Ks = smf, *Vs = smf + bk * D, *Lm = smf + 2 * bk * D;
  const int rowsPer = blockDim.x / tpr, g = threadIdx.x / tpr, lane = threadIdx.x % tpr, ch = D / tpr;
  const int b = blockIdx.z, h = blockIdx.y, hk = h / (Hq / Hkv);
  const int i0 = blockIdx.x * rowsPer, i = i0 + g;
  const bool live = i < T;
  const long long N = (long long)gridDim.z * T;
  const long long qoff = ((long long)b * T + (live ? i : T - 1)) * Hq * D + h * D;
  float qr[ATT_MAXCH], acc[ATT_MAXCH];
#pragma unroll
  for (int c = 0; c < ATT_MAXCH; c++) {
    qr[c] = c < ch ? q[qoff + c * tpr + lane] : 0.f;
    acc[c] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  const int iLast = min(T, i0 + rowsPer) - 1;
  for (int j0 = 0; j0 <= iLast; j0 += bk) {
    const int nk = min(bk, iLast + 1 - j0);
    __syncthreads();
    for (int x = threadIdx.x; x < nk * D; x += blockDim.x) {
      int jj = x / D, d = x % D;
      long long r = ((long long)b * T + j0 + jj) * Hkv * D + hk * D + d;
      Ks[x] = k[r];
      Vs[x] = v[r];
    }
    for (int jj = threadIdx.x; jj < nk; jj += blockDim.x) Lm[jj] = att_logm(alpha, b, j0 + jj, T, Hkv, hk);
    __syncthreads();
    for (int jj = 0; jj < nk; jj++) {
      const float* kr = Ks + jj * D + lane;
      float s = 0.f;
#pragma unroll
      for (int c = 0; c < ATT_MAXCH; c++)
        if (c < ch) s += qr[c] * kr[c * tpr];
      s = group_sum(s, tpr) * scale;
      const int j = j0 + jj;
      float sm = j < i ? s + Lm[jj] : s;
      if (j > i) sm = -INFINITY;
      if (sm > -INFINITY) {
        float mn = fmaxf(m, sm);
        float corr = expf(m - mn), p = expf(sm - mn);
        l = l * corr + p;
        const float* vr = Vs + jj * D + lane;
#pragma unroll
        for (int c = 0; c < ATT_MAXCH; c++)
          if (c < ch) acc[c] = acc[c] * corr + p * vr[c * tpr];
        m = mn;
      }
    }
  }
  if (!live) return;
  const float inv = 1.f / l;
#pragma unroll
  for (int c = 0; c < ATT_MAXCH; c++)
    if (c < ch) o[qoff + c * tpr + lane] = acc[c] * inv;
  if (lane == 0) {
    long long r = ((long long)b * T + i) * Hq + h;
    stats[r] = m;
    stats[N * Hq + r] = m + logf(l);
  }
}

// delta[n·Hq + h] = Σ_d dO·O over the head's channels (one thread per row and head).
__global__ void tr_attn_delta(float* delta, const float* o, const float* dO, long long NH, int D) {
  GRID_STRIDE(r, NH) {
    const float *a = o + r * D, *b = dO + r * D;
    float s = 0.f;
    for (int d = 0; d < D; d++) s += a[d] * b[d];
    delta[r] = s;
  }
}

// The tensor-core backward's delta and bf16(dO) in one coalesced pass: D/4 lanes per row
// (D = 16, 32, 64 or 128), a float4 of o and dO each, the row's sum by shuffles in a fixed
// order; threads over ceil(NH·D/4 / 32) whole warps.
__global__ void tr_attn_delta_rows(float* delta, uint2* dO16, const float4* o, const float4* dO, long long NH, int D) {
  const int L = D >> 2;
  const long long n = NH * L, padded = (n + 31) / 32 * 32;
  GRID_STRIDE(t, padded) {
    const bool on = t < n;
    float4 a = make_float4(0.f, 0.f, 0.f, 0.f), b = a;
    if (on) {
      a = o[t];
      b = dO[t];
      dO16[t] = bf16x4(b);
    }
    float s = a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
    for (int w = L >> 1; w > 0; w >>= 1) s += __shfl_xor_sync(FULL, s, w);
    if (on && t % L == 0) delta[t / L] = s;
  }
}

// dq: grid as tr_attn_fwd; smem (2·bk·D + bk) floats.
__global__ void tr_attn_bwd_q(float* dq, const float* q, const float* k, const float* v, const float* alpha,
                              const float* stats, const float* delta, const float* dO, int T, int Hq, int Hkv, int D,
                              int tpr, int bk, float scale) {
  extern __shared__ float smf[];
  float *Ks = smf, *Vs = smf + bk * D, *Lm = smf + 2 * bk * D;
  const int rowsPer = blockDim.x / tpr, g = threadIdx.x / tpr, lane = threadIdx.x % tpr, ch = D / tpr;
  const int b = blockIdx.z, h = blockIdx.y, hk = h / (Hq / Hkv);
  const int i0 = blockIdx.x * rowsPer, i = i0 + g;
  const bool live = i < T;
  const long long N = (long long)gridDim.z * T;
  const long long r = ((long long)b * T + (live ? i : T - 1)) * Hq + h;
  const long long qoff = r * D;
  const float lse = stats[N * Hq + r], dl = delta[r];
  float qr[ATT_MAXCH], gr[ATT_MAXCH], acc[ATT_MAXCH];
#pragma unroll
  for (int c = 0; c < ATT_MAXCH; c++) {
    qr[c] = c < ch ? q[qoff + c * tpr + lane] : 0.f;
    gr[c] = c < ch ? dO[qoff + c * tpr + lane] : 0.f;
    acc[c] = 0.f;
  }
  const int iLast = min(T, i0 + rowsPer) - 1;
  for (int j0 = 0; j0 <= iLast; j0 += bk) {
    const int nk = min(bk, iLast + 1 - j0);
    __syncthreads();
    for (int x = threadIdx.x; x < nk * D; x += blockDim.x) {
      int jj = x / D, d = x % D;
      long long kr = ((long long)b * T + j0 + jj) * Hkv * D + hk * D + d;
      Ks[x] = k[kr];
      Vs[x] = v[kr];
    }
    for (int jj = threadIdx.x; jj < nk; jj += blockDim.x) Lm[jj] = att_logm(alpha, b, j0 + jj, T, Hkv, hk);
    __syncthreads();
    for (int jj = 0; jj < nk; jj++) {
      const float *kr = Ks + jj * D + lane, *vr = Vs + jj * D + lane;
      float s = 0.f, dp = 0.f;
#pragma unroll
      for (int c = 0; c < ATT_MAXCH; c++)
        if (c < ch) {
          s += qr[c] * kr[c * tpr];
          dp += gr[c] * vr[c * tpr];
        }
      s = group_sum(s, tpr) * scale;
      dp = group_sum(dp, tpr);
      const int j = j0 + jj;
      float sm = j < i ? s + Lm[jj] : s;
      float p = (j <= i && sm > -INFINITY) ? expf(sm - lse) : 0.f;
      float ds = p * (dp - dl) * scale;
#pragma unroll
      for (int c = 0; c < ATT_MAXCH; c++)
        if (c < ch) acc[c] += ds * kr[c * tpr];
    }
  }
  if (!live) return;
#pragma unroll
  for (int c = 0; c < ATT_MAXCH; c++)
    if (c < ch) dq[qoff + c * tpr + lane] = acc[c];
}

// dk, dv [N, Hkv·D] and dα [N, Hkv] (when alpha is set): grid (ceil(T/rows), Hkv, B), one key row
// per group; smem (2·bq·D + 3·bq) floats.
__global__ void tr_attn_bwd_kv(float* dk, float* dv, float* dA, const float* q, const float* k, const float* v,
                               const float* alpha, const float* stats, const float* delta, const float* dO, int T, int Hq,
                               int Hkv, int D, int tpr, int bq, float scale) {
  extern __shared__ float smf[];
  float *Qs = smf, *Gs = smf + bq * D, *Ls = smf + 2 * bq * D, *Ms = Ls + bq, *Ds = Ms + bq;
  const int rowsPer = blockDim.x / tpr, g = threadIdx.x / tpr, lane = threadIdx.x % tpr, ch = D / tpr;
  const int b = blockIdx.z, hk = blockIdx.y, G = Hq / Hkv;
  const int j0 = blockIdx.x * rowsPer, j = j0 + g;
  const bool live = j < T;
  const long long N = (long long)gridDim.z * T;
  const long long koff = ((long long)b * T + (live ? j : T - 1)) * Hkv * D + hk * D;
  const float logm = att_logm(alpha, b, live ? j : T - 1, T, Hkv, hk);
  float kr[ATT_MAXCH], vr[ATT_MAXCH], dkA[ATT_MAXCH], dvA[ATT_MAXCH];
#pragma unroll
  for (int c = 0; c < ATT_MAXCH; c++) {
    kr[c] = c < ch ? k[koff + c * tpr + lane] : 0.f;
    vr[c] = c < ch ? v[koff + c * tpr + lane] : 0.f;
    dkA[c] = dvA[c] = 0.f;
  }
  float accA = 0.f;
  for (int h = hk * G; h < (hk + 1) * G; h++) {
    for (int q0 = j0; q0 < T; q0 += bq) {
      const int nq = min(bq, T - q0);
      __syncthreads();
      for (int x = threadIdx.x; x < nq * D; x += blockDim.x) {
        int ii = x / D, d = x % D;
        long long qr = (((long long)b * T + q0 + ii) * Hq + h) * D + d;
        Qs[x] = q[qr];
        Gs[x] = dO[qr];
      }
      for (int ii = threadIdx.x; ii < nq; ii += blockDim.x) {
        long long r = ((long long)b * T + q0 + ii) * Hq + h;
        Ms[ii] = stats[r];
        Ls[ii] = stats[N * Hq + r];
        Ds[ii] = delta[r];
      }
      __syncthreads();
      for (int ii = 0; ii < nq; ii++) {
        const float *qq = Qs + ii * D + lane, *gg = Gs + ii * D + lane;
        float s = 0.f, dp = 0.f;
#pragma unroll
        for (int c = 0; c < ATT_MAXCH; c++)
          if (c < ch) {
            s += qq[c * tpr] * kr[c];
            dp += gg[c * tpr] * vr[c];
          }
        s = group_sum(s, tpr) * scale;
        dp = group_sum(dp, tpr);
        const int i = q0 + ii;
        const bool ok = live && j <= i;
        float sm = j < i ? s + logm : s;
        float p = (ok && sm > -INFINITY) ? expf(sm - Ls[ii]) : 0.f;
        float gd = dp - Ds[ii];
        float ds = p * gd * scale;
#pragma unroll
        for (int c = 0; c < ATT_MAXCH; c++)
          if (c < ch) {
            dvA[c] += p * gg[c * tpr];
            dkA[c] += ds * qq[c * tpr];
          }
        // A key masked exactly to −∞ (α rounded to 1) had weight 0 in the forward: no α-gradient
        // (e^{s−m} would be unbounded there, and the decision's backward multiplies it by a
        // recomputed α(1−α) that is not 0).
        if (alpha != nullptr && ok && j < i && logm > -INFINITY) accA -= expf(fminf(s - Ms[ii], 40.f) - (Ls[ii] - Ms[ii])) * gd;
      }
    }
  }
  if (!live) return;
#pragma unroll
  for (int c = 0; c < ATT_MAXCH; c++)
    if (c < ch) {
      dk[koff + c * tpr + lane] = dkA[c];
      dv[koff + c * tpr + lane] = dvA[c];
    }
  if (dA != nullptr && lane == 0) {
    if (j + 1 < T) dA[((long long)b * T + j + 1) * Hkv + hk] = accA;
    if (j == 0) dA[(long long)b * T * Hkv + hk] = 0.f;
  }
}

// ---- small element-wise ops of the loss head and the gradient sums -----------------------------

// out[i] = a[i·sa] op b[i·sb] (sa, sb ∈ {0, 1}: a stride of 0 broadcasts a scalar).
// op: 0 add, 1 sub, 2 mul, 3 div, 4 a ≥ b (1 or 0), 5 −a, 6 a, 7 max(a, 0).
__global__ void tr_ew(float* out, const float* a, const float* b, long long n, int sa, int sb, int op) {
  GRID_STRIDE(i, n) {
    float x = a[i * sa], y = b != nullptr ? b[i * sb] : 0.f, r;
    switch (op) {
      case 0: r = x + y; break;
      case 1: r = x - y; break;
      case 2: r = x * y; break;
      case 3: r = x / y; break;
      case 4: r = x >= y ? 1.f : 0.f; break;
      case 5: r = -x; break;
      case 6: r = x; break;
      default: r = x > 0.f ? x : 0.f; break;
    }
    out[i] = r;
  }
}

// out = a + b on four elements a thread (16-byte accesses; the gradient sums of tensors of one
// shape), out16, when set, getting bf16(out): tr_ew's fp32 add, so the same bits.
__global__ void tr_add4(float4* out, uint2* out16, const float4* a, const float4* b, long long n4) {
  GRID_STRIDE(i, n4) {
    const float4 x = a[i], y = b[i];
    const float4 v = make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
    out[i] = v;
    if (out16) out16[i] = bf16x4(v);
  }
}

// out[0] = Σ a in float64, one block, fixed order.
__global__ void tr_sum_all(float* out, const float* a, long long n) {
  __shared__ double sh[32];
  double s = 0.0;
  for (long long i = threadIdx.x; i < n; i += blockDim.x) s += a[i];
  s = block_sumd(s, sh);
  if (threadIdx.x == 0) out[0] = (float)s;
}

// out[k·cols + c] = in[rows[k]·cols + c] (gather) and the reverse (scatter): the trained rows of
// a parameter (recipe train: decisions) as a compact block for the norm and the AdamW kernel.
__global__ void tr_gather_rows(float* out, const float* in, const int* rows, long long n, int cols) {
  GRID_STRIDE(i, n) out[i] = in[(long long)rows[i / cols] * cols + i % cols];
}
__global__ void tr_scatter_rows(float* out, const float* in, const int* rows, long long n, int cols) {
  GRID_STRIDE(i, n) out[(long long)rows[i / cols] * cols + i % cols] = in[i];
}

// x[i] *= s.
__global__ void tr_scale(float* x, long long n, float s) {
  GRID_STRIDE(i, n) x[i] *= s;
}


// ---- attention on tensor cores (flash-attention 2 style) ----------------------------------------
// The same three passes as tr_attn_* with bf16 mma.sync m16n8k16 products (fp32 accumulation),
// in the FlashAttention-2 manner: each warp owns 16 rows, the score tile, the probabilities and
// the output accumulator stay in registers (the score fragment is re-packed as the A operand of
// the next product), and only K/V (or Q/dO) tiles pass through shared memory, padded by 8
// elements per row so that ldmatrix is free of bank conflicts. q, k, v, dO arrive as bf16 copies
// (kernels.AttentionForward/Backward round them) and are staged with cp.async, the next tile's
// copy running under the current tile's products; the softmax runs in base 2 (exp2 of log2(e)-scaled scores) and
// the stats are stored in natural units as by tr_attn_fwd. Causal tiles above the diagonal are
// never visited and tiles below it skip the per-element causal test. No atomics: dk, dv and dα
// belong to the key block (looping over the G query heads), dq to the query block; dα of a key
// is summed by one thread per column share and combined across the four lanes of a quad.
#define FA_THREADS 128
#define FA_LOG2E 1.4426950408889634f
#define FA_LN2 0.6931471805599453f

}  // extern "C" (templates below)

__device__ __forceinline__ uint32_t fa_pack(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ void fa_ldsm(uint32_t* r, const __nv_bfloat16* p) {
  unsigned a = (unsigned)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

__device__ __forceinline__ void fa_ldsm_t(uint32_t* r, const __nv_bfloat16* p) {
  unsigned a = (unsigned)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// c[16×8] += a[16×16] · b[16×8] (bf16 operands, fp32 accumulators).
__device__ __forceinline__ void fa_mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x with flush-to-zero (one MUFU.EX2; exp2f adds denormal handling around it). 2^−∞ = 0, so
// masked scores need no select.
__device__ __forceinline__ float fa_ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// fa_stage copies rows [r0, r0+ROWS) of a [T, stride] bf16 matrix (columns base..base+D) into
// dst [ROWS][D+8] with cp.async (16 bytes a copy, zero-filled past T); the caller commits and
// waits. base, stride and D are multiples of 8 elements.
__device__ __forceinline__ void fa_cp16(void* dst, const void* src, bool valid) {
  unsigned d = (unsigned)__cvta_generic_to_shared(dst);
  int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(n));
}
__device__ __forceinline__ void fa_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void fa_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

template <int D, int ROWS>
__device__ __forceinline__ void fa_stage(__nv_bfloat16* dst, const __nv_bfloat16* src, int r0, int T, long long stride,
                                         long long base) {
  constexpr int C8 = D / 8, RSTEP = FA_THREADS / C8, ITER = (ROWS + RSTEP - 1) / RSTEP;
  static_assert(FA_THREADS % C8 == 0, "a thread's column chunk must stay fixed");
  const unsigned tid = threadIdx.x;
  const int r = (int)(tid / C8), c = (int)(tid % C8) * 8;
  __nv_bfloat16* d = dst + r * (D + 8) + c;
  if (r0 + ROWS <= T) {
    // Every row exists (all tiles but the last): each thread copies one fixed 16-byte column
    // chunk of every RSTEP-th row, its source address advancing by a constant. The flat loop
    // below costs ~24 instructions per cp.async (division, 64-bit multiply, clamp).
    const __nv_bfloat16* s = src + base + (long long)(r0 + r) * stride + c;
#pragma unroll
    for (int it = 0; it < ITER; it++) {
      if (ROWS % RSTEP == 0 || r + it * RSTEP < ROWS) fa_cp16(d + it * RSTEP * (D + 8), s, true);
      s += (long long)RSTEP * stride;
    }
    return;
  }
#pragma unroll 2
  for (int it = 0; it < ITER; it++) {
    const int rr = r + it * RSTEP, t = r0 + rr;
    if (ROWS % RSTEP == 0 || rr < ROWS) {
      const bool ok = t < T;
      fa_cp16(d + it * RSTEP * (D + 8), src + base + (long long)(ok ? t : 0) * stride + c, ok);
    }
  }
}

// A fragment (16 rows × 16 columns at column c0) of a staged tile whose warp rows start at row0.
template <int D>
__device__ __forceinline__ void fa_afrag(uint32_t* a, const __nv_bfloat16* tile, int row0, int c0) {
  const int lane = threadIdx.x & 31;
  fa_ldsm(a, tile + (row0 + (lane & 15)) * (D + 8) + c0 + (lane >> 4) * 8);
}

// B fragments of two adjacent n8 tiles from a tile stored [n][k] (rows n0.., columns k0..):
// b[0], b[1] for rows n0..n0+7 and b[2], b[3] for n0+8..n0+15.
template <int D>
__device__ __forceinline__ void fa_bfrag(uint32_t* b, const __nv_bfloat16* tile, int n0, int k0) {
  const int lane = threadIdx.x & 31;
  fa_ldsm(b, tile + (n0 + (lane & 7) + ((lane >> 4) << 3)) * (D + 8) + k0 + ((lane >> 3) & 1) * 8);
}

// The same from a tile stored [k][n] (rows k0.., columns n0..), transposed by ldmatrix.
template <int D>
__device__ __forceinline__ void fa_bfrag_t(uint32_t* b, const __nv_bfloat16* tile, int k0, int n0) {
  const int lane = threadIdx.x & 31;
  fa_ldsm_t(b, tile + (k0 + (lane & 15)) * (D + 8) + n0 + (lane >> 4) * 8);
}

// The products below walk their (k, n) fragment pairs in one unrolled sequence and load the B
// fragment FA_AHEAD steps ahead into a small register ring. The asm statements are volatile, so
// they are emitted in source order: loading each fragment right before its mma (as a plain
// nested loop does) serialises every ldmatrix latency with the tensor-core work (seen in the
// SASS: each LDSM's registers consumed by the next HMMA).
#define FA_AHEAD 3

// s[NT][4] = A(16×D, fragments af) · Bᵀ for NT·8 rows of a [n][D] tile starting at row n0.
template <int D, int NT>
__device__ __forceinline__ void fa_scores(float (*s)[4], const uint32_t (*af)[4], const __nv_bfloat16* tile, int n0) {
  constexpr int NP = NT / 2, L = (D / 16) * NP, P = L - 1 < FA_AHEAD ? L - 1 : FA_AHEAD;
  uint32_t b[P + 1][4];
#pragma unroll
  for (int n = 0; n < NT; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
  for (int i = 0; i < P; i++) fa_bfrag<D>(b[i], tile, n0 + (i % NP) * 16, (i / NP) * 16);
#pragma unroll
  for (int i = 0; i < L; i++) {
    if (i + P < L) fa_bfrag<D>(b[(i + P) % (P + 1)], tile, n0 + ((i + P) % NP) * 16, ((i + P) / NP) * 16);
    const uint32_t* f = b[i % (P + 1)];
    fa_mma(s[2 * (i % NP)], af[i / NP], f[0], f[1]);
    fa_mma(s[2 * (i % NP) + 1], af[i / NP], f[2], f[3]);
  }
}

// acc[D/8][4] += P(16×KT·16, as score fragments p) · tile rows [KT·16][D] (stored [k][n]).
template <int D, int KT>
__device__ __forceinline__ void fa_pv(float (*acc)[4], const float (*p)[4], const __nv_bfloat16* tile) {
  constexpr int NP = D / 16, L = KT * NP, P = L - 1 < FA_AHEAD ? L - 1 : FA_AHEAD;
  uint32_t a[KT][4], b[P + 1][4];
#pragma unroll
  for (int kk = 0; kk < KT; kk++) {
    a[kk][0] = fa_pack(p[2 * kk][0], p[2 * kk][1]);
    a[kk][1] = fa_pack(p[2 * kk][2], p[2 * kk][3]);
    a[kk][2] = fa_pack(p[2 * kk + 1][0], p[2 * kk + 1][1]);
    a[kk][3] = fa_pack(p[2 * kk + 1][2], p[2 * kk + 1][3]);
  }
#pragma unroll
  for (int i = 0; i < P; i++) fa_bfrag_t<D>(b[i], tile, (i / NP) * 16, (i % NP) * 16);
#pragma unroll
  for (int i = 0; i < L; i++) {
    if (i + P < L) fa_bfrag_t<D>(b[(i + P) % (P + 1)], tile, ((i + P) / NP) * 16, ((i + P) % NP) * 16);
    const uint32_t* f = b[i % (P + 1)];
    fa_mma(acc[2 * (i % NP)], a[i / NP], f[0], f[1]);
    fa_mma(acc[2 * (i % NP) + 1], a[i / NP], f[2], f[3]);
  }
}

// The forward's base-2 logits of a warp's 16×(NT·8) score fragment, in place, and their row
// maxima folded into mx: x = s·scale·log2(e) + log2(1 − α_j) for keys j < i, s·scale·log2(e)
// for j = i, −∞ above the diagonal and past T (tested only in diagonal tiles). Lt holds the
// tile's log2(1 − α) per key; each lane reads its two adjacent keys per n8 block at once.
template <int NT, bool MAX = true>
__device__ __forceinline__ void fa_logits(float (*s)[4], float* mx, const float* Lt, int j0, int ra, int rb, int T, float sl2,
                                          bool diag) {
  const int t4 = threadIdx.x & 3;
#pragma unroll
  for (int n = 0; n < NT; n++) {
    const float2 lt = *reinterpret_cast<const float2*>(Lt + n * 8 + 2 * t4);
#pragma unroll
    for (int e = 0; e < 4; e++) {
      const float l = (e & 1) ? lt.y : lt.x;
      float x;
      if (diag) {
        const int j = j0 + n * 8 + 2 * t4 + (e & 1), i = e < 2 ? ra : rb;
        x = fmaf(s[n][e], sl2, j < i ? l : 0.f);
        if (j > i || j >= T) x = -INFINITY;
      } else {
        x = fmaf(s[n][e], sl2, l);
      }
      s[n][e] = x;
      if (MAX) mx[e >> 1] = fmaxf(mx[e >> 1], x);
    }
  }
}

// Writes a warp's 16×D accumulator (rows r0.. of a [T, stride] fp32 matrix at column base).
template <int D>
__device__ __forceinline__ void fa_store(float* dst, const float (*acc)[4], int r0, int T, long long stride, long long base,
                                         float sa, float sb) {
  const int lane = threadIdx.x & 31, ra = r0 + (lane >> 2), rb = ra + 8, c = 2 * (lane & 3);
#pragma unroll
  for (int n = 0; n < D / 8; n++) {
    if (ra < T) *reinterpret_cast<float2*>(dst + base + (long long)ra * stride + n * 8 + c) = make_float2(acc[n][0] * sa, acc[n][1] * sa);
    if (rb < T) *reinterpret_cast<float2*>(dst + base + (long long)rb * stride + n * 8 + c) = make_float2(acc[n][2] * sb, acc[n][3] * sb);
  }
}

#define FA_FWD_BQ 64
#define FA_FWD_BK 64
#define FA_BWDQ_BK 32
#define FA_BWDKV_BK 64
#define FA_BWDKV_BQ 32

// Forward: grid (ceil(T/64), Hq, B), the last query blocks (the longest) first. q, k, v are the
// bf16 copies. K/V tiles are double-buffered: the next tile's cp.async runs under this tile's
// products. Dynamic smem 2·2·64·(D+8) bf16 + 2·64 floats.
template <int D>
__device__ void fa_attn_fwd(float* o, float* stats, const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                            const float* alpha, int T, int Hq, int Hkv, float scale) {
  constexpr int SD = D + 8, BK = FA_FWD_BK, NT = BK / 8;
  extern __shared__ __align__(16) unsigned char fa_sm[];
  __nv_bfloat16* buf = reinterpret_cast<__nv_bfloat16*>(fa_sm);  // [2][K | V][BK][SD]
  float* Lm = reinterpret_cast<float*>(buf + 4 * BK * SD);       // [2][BK]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, t4 = lane & 3;
  const int nblk = (T + FA_FWD_BQ - 1) / FA_FWD_BQ, i0 = (nblk - 1 - (int)blockIdx.x) * FA_FWD_BQ;
  const int b = blockIdx.z, h = blockIdx.y, hk = h / (Hq / Hkv);
  const long long N = (long long)gridDim.z * T;
  const long long qbase = (long long)b * T * Hq * D + (long long)h * D, kbase = (long long)b * T * Hkv * D + (long long)hk * D;
  const int w0 = i0 + warp * 16, ra = w0 + (lane >> 2), rb = ra + 8;
  const bool live = w0 < T;
  const int iLast = min(T, i0 + FA_FWD_BQ) - 1, wLast = min(T - 1, w0 + 15), ntiles = iLast / BK + 1;
  auto issue = [&](int tile) {
    __nv_bfloat16* Kt = buf + (tile & 1) * 2 * BK * SD;
    const int j0 = tile * BK;
    fa_stage<D, BK>(Kt, k, j0, T, (long long)Hkv * D, kbase);
    fa_stage<D, BK>(Kt + BK * SD, v, j0, T, (long long)Hkv * D, kbase);
    fa_commit();
    if (threadIdx.x < BK) {
      const int j = j0 + threadIdx.x;
      Lm[(tile & 1) * BK + threadIdx.x] = j < T ? att_logm(alpha, b, j, T, Hkv, hk) * FA_LOG2E : 0.f;
    }
  };
  fa_stage<D, FA_FWD_BQ>(buf + 2 * BK * SD, q, i0, T, (long long)Hq * D, qbase);  // Q through buffer 1
  fa_commit();
  issue(0);
  fa_wait<1>();
  __syncthreads();
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; kk++) fa_afrag<D>(qf[kk], buf + 2 * BK * SD, warp * 16, kk * 16);
  __syncthreads();
  float acc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
  float mr[2] = {-INFINITY, -INFINITY}, lr[2] = {0.f, 0.f};
  const float sl2 = scale * FA_LOG2E;
  for (int tile = 0; tile < ntiles; tile++) {
    if (tile + 1 < ntiles) {
      issue(tile + 1);
      fa_wait<1>();
    } else {
      fa_wait<0>();
    }
    __syncthreads();
    const int j0 = tile * BK;
    const __nv_bfloat16* Ks = buf + (tile & 1) * 2 * BK * SD;
    const __nv_bfloat16* Vs = Ks + BK * SD;
    const float* Lt = Lm + (tile & 1) * BK;
    if (live && j0 <= wLast) {
      float s[NT][4];
      fa_scores<D, NT>(s, qf, Ks, 0);
      const bool diag = j0 + BK - 1 >= w0;
      float mx[2] = {mr[0], mr[1]};
      fa_logits<NT>(s, mx, Lt, j0, ra, rb, T, sl2, diag);
      float corr[2], ms[2];
#pragma unroll
      for (int r = 0; r < 2; r++) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL, mx[r], 2));
        corr[r] = mx[r] == mr[r] ? 1.f : fa_ex2(mr[r] - mx[r]);  // also when both are −∞
        ms[r] = mx[r] == -INFINITY ? 0.f : mx[r];
        mr[r] = mx[r];
        lr[r] *= corr[r];
      }
#pragma unroll
      for (int n = 0; n < NT; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const float p = fa_ex2(s[n][e] - ms[e >> 1]);
          s[n][e] = p;
          lr[e >> 1] += p;
        }
#pragma unroll
      for (int n = 0; n < D / 8; n++) {
        acc[n][0] *= corr[0];
        acc[n][1] *= corr[0];
        acc[n][2] *= corr[1];
        acc[n][3] *= corr[1];
      }
      fa_pv<D, BK / 16>(acc, s, Vs);
    }
    __syncthreads();  // the buffer is refilled by the next iteration's issue
  }
  if (!live) return;
#pragma unroll
  for (int r = 0; r < 2; r++) {
    lr[r] += __shfl_xor_sync(FULL, lr[r], 1);
    lr[r] += __shfl_xor_sync(FULL, lr[r], 2);
  }
  fa_store<D>(o, acc, w0, T, (long long)Hq * D, qbase, 1.f / lr[0], 1.f / lr[1]);
  if (t4 == 0) {
    if (ra < T) {
      long long rr = ((long long)b * T + ra) * Hq + h;
      stats[rr] = mr[0] * FA_LN2;
      stats[N * Hq + rr] = (mr[0] + log2f(lr[0])) * FA_LN2;
    }
    if (rb < T) {
      long long rr = ((long long)b * T + rb) * Hq + h;
      stats[rr] = mr[1] * FA_LN2;
      stats[N * Hq + rr] = (mr[1] + log2f(lr[1])) * FA_LN2;
    }
  }
}

// Forward with 32 query rows per warp (two m16 fragments sharing every K and V fragment, as
// FlashAttention-2 does): grid (ceil(T/128), Hq, B), the longest blocks first. Q stays in its
// own shared tile and its A fragments are reloaded per k-step (two per step, one step ahead),
// which keeps the registers at ~230 for D = 128; K/V tiles of 64 keys double-buffered as in
// fa_attn_fwd. Half the shared-memory reads per product of the 16-row kernel and twice the
// independent accumulators. Dynamic smem (128 + 4·64)·(D+8) bf16 + 2·64 floats. Opt-in
// (TrainDevice.Attn32Rows): on the H200 it measured no faster than fa_attn_fwd (255 registers
// leave two blocks per SM), with a bit-identical output.
#define FA_FWD2_BQ 128
template <int D>
__device__ void fa_attn_fwd2(float* o, float* stats, const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                             const float* alpha, int T, int Hq, int Hkv, float scale) {
  constexpr int SD = D + 8, BK = FA_FWD_BK, NT = BK / 8, NP = NT / 2, KK = D / 16, BQ = FA_FWD2_BQ;
  extern __shared__ __align__(16) unsigned char fa_sm[];
  __nv_bfloat16* Qs = reinterpret_cast<__nv_bfloat16*>(fa_sm);  // [BQ][SD]
  __nv_bfloat16* buf = Qs + BQ * SD;                              // [2][K | V][BK][SD]
  float* Lm = reinterpret_cast<float*>(buf + 4 * BK * SD);        // [2][BK]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, t4 = lane & 3;
  const int nblk = (T + BQ - 1) / BQ, i0 = (nblk - 1 - (int)blockIdx.x) * BQ;
  const int b = blockIdx.z, h = blockIdx.y, hk = h / (Hq / Hkv);
  const long long N = (long long)gridDim.z * T;
  const long long qbase = (long long)b * T * Hq * D + (long long)h * D, kbase = (long long)b * T * Hkv * D + (long long)hk * D;
  const int w0 = i0 + warp * 32;
  const bool live = w0 < T;
  const int iLast = min(T, i0 + BQ) - 1, wLast = min(T - 1, w0 + 31), ntiles = iLast / BK + 1;
  auto issue = [&](int tile) {
    __nv_bfloat16* Kt = buf + (tile & 1) * 2 * BK * SD;
    const int j0 = tile * BK;
    fa_stage<D, BK>(Kt, k, j0, T, (long long)Hkv * D, kbase);
    fa_stage<D, BK>(Kt + BK * SD, v, j0, T, (long long)Hkv * D, kbase);
    fa_commit();
    if (threadIdx.x < BK) {
      const int j = j0 + threadIdx.x;
      Lm[(tile & 1) * BK + threadIdx.x] = j < T ? att_logm(alpha, b, j, T, Hkv, hk) * FA_LOG2E : 0.f;
    }
  };
  fa_stage<D, BQ>(Qs, q, i0, T, (long long)Hq * D, qbase);
  fa_commit();
  issue(0);
  float acc[2][D / 8][4];
#pragma unroll
  for (int m = 0; m < 2; m++)
#pragma unroll
    for (int n = 0; n < D / 8; n++) acc[m][n][0] = acc[m][n][1] = acc[m][n][2] = acc[m][n][3] = 0.f;
  float mr[2][2] = {{-INFINITY, -INFINITY}, {-INFINITY, -INFINITY}}, lr[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
  const float sl2 = scale * FA_LOG2E;
  for (int tile = 0; tile < ntiles; tile++) {
    if (tile + 1 < ntiles) {
      issue(tile + 1);
      fa_wait<1>();
    } else {
      fa_wait<0>();
    }
    __syncthreads();
    const int j0 = tile * BK;
    const __nv_bfloat16* Ks = buf + (tile & 1) * 2 * BK * SD;
    const __nv_bfloat16* Vs = Ks + BK * SD;
    const float* Lt = Lm + (tile & 1) * BK;
    if (live && j0 <= wLast) {
      float s[2][NT][4];
      {  // S = Q·Kᵀ for both fragments: B fragments three steps ahead, A fragments one k-step ahead
        constexpr int L = KK * NP, P = L - 1 < FA_AHEAD ? L - 1 : FA_AHEAD;
        uint32_t bq[P + 1][4], aq[2][2][4];
#pragma unroll
        for (int m = 0; m < 2; m++)
#pragma unroll
          for (int n = 0; n < NT; n++) s[m][n][0] = s[m][n][1] = s[m][n][2] = s[m][n][3] = 0.f;
        fa_afrag<D>(aq[0][0], Qs, warp * 32, 0);
        fa_afrag<D>(aq[0][1], Qs, warp * 32 + 16, 0);
#pragma unroll
        for (int i = 0; i < P; i++) fa_bfrag<D>(bq[i], Ks, (i % NP) * 16, (i / NP) * 16);
#pragma unroll
        for (int i = 0; i < L; i++) {
          const int kk = i / NP, np = i % NP;
          if (np == 0 && kk + 1 < KK) {
            fa_afrag<D>(aq[(kk + 1) & 1][0], Qs, warp * 32, (kk + 1) * 16);
            fa_afrag<D>(aq[(kk + 1) & 1][1], Qs, warp * 32 + 16, (kk + 1) * 16);
          }
          if (i + P < L) fa_bfrag<D>(bq[(i + P) % (P + 1)], Ks, ((i + P) % NP) * 16, ((i + P) / NP) * 16);
          const uint32_t* f = bq[i % (P + 1)];
#pragma unroll
          for (int m = 0; m < 2; m++) {
            fa_mma(s[m][2 * np], aq[kk & 1][m], f[0], f[1]);
            fa_mma(s[m][2 * np + 1], aq[kk & 1][m], f[2], f[3]);
          }
        }
      }
      const bool diag = j0 + BK - 1 >= w0;
      float corr[2][2];
#pragma unroll
      for (int m = 0; m < 2; m++) {
        const int ra = w0 + 16 * m + (lane >> 2), rb = ra + 8;
        float mx[2] = {mr[m][0], mr[m][1]}, ms[2];
        fa_logits<NT>(s[m], mx, Lt, j0, ra, rb, T, sl2, diag);
#pragma unroll
        for (int r = 0; r < 2; r++) {
          mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL, mx[r], 1));
          mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL, mx[r], 2));
          corr[m][r] = mx[r] == mr[m][r] ? 1.f : fa_ex2(mr[m][r] - mx[r]);
          ms[r] = mx[r] == -INFINITY ? 0.f : mx[r];
          mr[m][r] = mx[r];
          lr[m][r] *= corr[m][r];
        }
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
          for (int e = 0; e < 4; e++) {
            const float p = fa_ex2(s[m][n][e] - ms[e >> 1]);
            s[m][n][e] = p;
            lr[m][e >> 1] += p;
          }
#pragma unroll
        for (int n = 0; n < D / 8; n++) {
          acc[m][n][0] *= corr[m][0];
          acc[m][n][1] *= corr[m][0];
          acc[m][n][2] *= corr[m][1];
          acc[m][n][3] *= corr[m][1];
        }
      }
      {  // O += P·V, every V fragment used by both row fragments
        constexpr int NPV = D / 16, KT = BK / 16, L = KT * NPV, P = L - 1 < FA_AHEAD ? L - 1 : FA_AHEAD;
        uint32_t bv[P + 1][4];
#pragma unroll
        for (int i = 0; i < P; i++) fa_bfrag_t<D>(bv[i], Vs, (i / NPV) * 16, (i % NPV) * 16);
#pragma unroll
        for (int i = 0; i < L; i++) {
          const int kk = i / NPV, np = i % NPV;
          if (i + P < L) fa_bfrag_t<D>(bv[(i + P) % (P + 1)], Vs, ((i + P) / NPV) * 16, ((i + P) % NPV) * 16);
          const uint32_t* f = bv[i % (P + 1)];
#pragma unroll
          for (int m = 0; m < 2; m++) {
            const uint32_t a[4] = {fa_pack(s[m][2 * kk][0], s[m][2 * kk][1]), fa_pack(s[m][2 * kk][2], s[m][2 * kk][3]),
                                   fa_pack(s[m][2 * kk + 1][0], s[m][2 * kk + 1][1]), fa_pack(s[m][2 * kk + 1][2], s[m][2 * kk + 1][3])};
            fa_mma(acc[m][2 * np], a, f[0], f[1]);
            fa_mma(acc[m][2 * np + 1], a, f[2], f[3]);
          }
        }
      }
    }
    __syncthreads();  // the buffer is refilled by the next iteration's issue
  }
  if (!live) return;
#pragma unroll
  for (int m = 0; m < 2; m++) {
    const int r0 = w0 + 16 * m;
    if (r0 >= T) break;
#pragma unroll
    for (int r = 0; r < 2; r++) {
      lr[m][r] += __shfl_xor_sync(FULL, lr[m][r], 1);
      lr[m][r] += __shfl_xor_sync(FULL, lr[m][r], 2);
    }
    fa_store<D>(o, acc[m], r0, T, (long long)Hq * D, qbase, 1.f / lr[m][0], 1.f / lr[m][1]);
    if (t4 == 0) {
#pragma unroll
      for (int r = 0; r < 2; r++) {
        const int row = r0 + (lane >> 2) + 8 * r;
        if (row < T) {
          long long rr = ((long long)b * T + row) * Hq + h;
          stats[rr] = mr[m][r] * FA_LN2;
          stats[N * Hq + rr] = (mr[m][r] + log2f(lr[m][r])) * FA_LN2;
        }
      }
    }
  }
}

// dq: grid (ceil(T/64), Hq, B); q and dO fragments stay in registers (staged through the
// buffers), 32-key tiles of K and V double-buffered: dynamic smem 2·2·32·(D+8) bf16 (at least
// the 2·64 staging rows) + 2·32 floats.
template <int D>
__device__ void fa_attn_bwd_q(float* dq, const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, const float* alpha,
                              const float* stats, const float* delta, const __nv_bfloat16* dO, int T, int Hq, int Hkv, float scale) {
  constexpr int SD = D + 8, BK = FA_BWDQ_BK, NT = BK / 8;
  extern __shared__ __align__(16) unsigned char fa_sm[];
  __nv_bfloat16* buf = reinterpret_cast<__nv_bfloat16*>(fa_sm);  // [2][K | V][BK][SD]
  float* Lm = reinterpret_cast<float*>(buf + 4 * 32 * SD);      // [2][BK]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int nblk = (T + 63) / 64, i0 = (nblk - 1 - (int)blockIdx.x) * 64;
  const int b = blockIdx.z, h = blockIdx.y, hk = h / (Hq / Hkv);
  const long long N = (long long)gridDim.z * T;
  const long long qbase = (long long)b * T * Hq * D + (long long)h * D, kbase = (long long)b * T * Hkv * D + (long long)hk * D;
  const int w0 = i0 + warp * 16, ra = w0 + (lane >> 2), rb = ra + 8;
  const bool live = w0 < T;
  fa_stage<D, 64>(buf, q, i0, T, (long long)Hq * D, qbase);
  fa_stage<D, 64>(buf + 64 * SD, dO, i0, T, (long long)Hq * D, qbase);
  fa_commit();
  fa_wait<0>();
  __syncthreads();
  uint32_t qf[D / 16][4], gf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; kk++) {
    fa_afrag<D>(qf[kk], buf, warp * 16, kk * 16);
    fa_afrag<D>(gf[kk], buf + 64 * SD, warp * 16, kk * 16);
  }
  __syncthreads();
  float lse2[2], dl[2];
  {
    long long rra = ((long long)b * T + min(ra, T - 1)) * Hq + h, rrb = ((long long)b * T + min(rb, T - 1)) * Hq + h;
    lse2[0] = stats[N * Hq + rra] * FA_LOG2E;
    lse2[1] = stats[N * Hq + rrb] * FA_LOG2E;
    dl[0] = delta[rra];
    dl[1] = delta[rrb];
  }
  float acc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
  const float sl2 = scale * FA_LOG2E;
  const int iLast = min(T, i0 + 64) - 1, wLast = min(T - 1, w0 + 15), ntiles = iLast / BK + 1;
  auto issue = [&](int tile) {
    __nv_bfloat16* Kt = buf + (tile & 1) * 2 * BK * SD;
    const int j0 = tile * BK;
    fa_stage<D, BK>(Kt, k, j0, T, (long long)Hkv * D, kbase);
    fa_stage<D, BK>(Kt + BK * SD, v, j0, T, (long long)Hkv * D, kbase);
    fa_commit();
    if (threadIdx.x < BK) {
      const int j = j0 + threadIdx.x;
      Lm[(tile & 1) * BK + threadIdx.x] = j < T ? att_logm(alpha, b, j, T, Hkv, hk) * FA_LOG2E : 0.f;
    }
  };
  issue(0);
  for (int tile = 0; tile < ntiles; tile++) {
    if (tile + 1 < ntiles) {
      issue(tile + 1);
      fa_wait<1>();
    } else {
      fa_wait<0>();
    }
    __syncthreads();
    const int j0 = tile * BK;
    const __nv_bfloat16* Ks = buf + (tile & 1) * 2 * BK * SD;
    const __nv_bfloat16* Vs = Ks + BK * SD;
    const float* Lt = Lm + (tile & 1) * BK;
    if (live && j0 <= wLast) {
      float s[NT][4], dp[NT][4];
      fa_scores<D, NT>(s, qf, Ks, 0);
      fa_scores<D, NT>(dp, gf, Vs, 0);
      // dS = P ∘ (dP − δ); the softmax scale is applied once, to dq at the store. Rows past T
      // are computed on zero-filled Q and dO and never stored.
      fa_logits<NT, false>(s, nullptr, Lt, j0, ra, rb, T, sl2, j0 + BK - 1 >= w0);
#pragma unroll
      for (int n = 0; n < NT; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) s[n][e] = fa_ex2(s[n][e] - lse2[e >> 1]) * (dp[n][e] - dl[e >> 1]);
      fa_pv<D, BK / 16>(acc, s, Ks);
    }
    __syncthreads();
  }
  if (!live) return;
  fa_store<D>(dq, acc, w0, T, (long long)Hq * D, qbase, scale, scale);
}

// The dk/dv pass's probabilities of a warp's 16 keys × (NT·8) queries (Sᵀ in s, dPᵀ in dp,
// both in place): P = 2^(s·scale·log2 e + log2(1 − α_j) − L_i) for j < i (no mask term at
// j = i, zero above the diagonal and past T, tested only when EDGE), dS/scale = P ∘ (dP − δ_i),
// and the dα sums of the keys (the unmasked probability times dP − δ, accumulated
// negatively). Lq/Mq hold L and M in base 2. No α-gradient through a key masked exactly to
// −∞ (see tr_attn_bwd_kv).
template <int NT, bool EDGE>
__device__ __forceinline__ void fa_kv_probs(float (*s)[4], float (*dp)[4], float* accA, const float* lm2, const float* Lq,
                                            const float* Mq, const float* Dq, int q0, int ja, int jb, int T, float sl2, bool diag,
                                            bool masked) {
  const int t4 = threadIdx.x & 3;
#pragma unroll
  for (int n = 0; n < NT; n++) {
    const float2 lq = *reinterpret_cast<const float2*>(Lq + n * 8 + 2 * t4);
    const float2 mq = *reinterpret_cast<const float2*>(Mq + n * 8 + 2 * t4);
    const float2 dq = *reinterpret_cast<const float2*>(Dq + n * 8 + 2 * t4);
#pragma unroll
    for (int e = 0; e < 4; e++) {
      const int r = e >> 1;
      const float l = (e & 1) ? lq.y : lq.x, m = (e & 1) ? mq.y : mq.x, d = (e & 1) ? dq.y : dq.x;
      const float r2 = s[n][e] * sl2;
      bool ok = true, below = true;
      if (EDGE) {
        const int i = q0 + n * 8 + 2 * t4 + (e & 1), j = r ? jb : ja;
        ok = i < T;
        if (diag) {
          ok = ok && j < T && j <= i;
          below = j < i;
        }
      }
      const float p = ok ? fa_ex2(r2 + (below ? lm2[r] : 0.f) - l) : 0.f;
      const float gd = dp[n][e] - d;
      s[n][e] = p;
      dp[n][e] = p * gd;
      if (masked && ok && below && lm2[r] > -INFINITY) accA[r] -= fa_ex2(fminf(r2 - m, 40.f * FA_LOG2E) - (l - m)) * gd;
    }
  }
}

// dk, dv, dα: grid (ceil(T/64), Hkv, B), each warp 16 keys against every later query of the G
// query heads in 32-query tiles (double-buffered Q/dO tiles and their stats); dynamic smem
// (2·64 + 2·2·32)·(D+8) bf16 + 2·3·32 floats.
template <int D>
__device__ void fa_attn_bwd_kv(float* dk, float* dv, float* dA, const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                               const float* alpha, const float* stats, const float* delta, const __nv_bfloat16* dO, int T, int Hq,
                               int Hkv, float scale) {
  constexpr int SD = D + 8, BQ = FA_BWDKV_BQ, NT = BQ / 8, BKEY = FA_BWDKV_BK;
  extern __shared__ __align__(16) unsigned char fa_sm[];
  __nv_bfloat16* Ks = reinterpret_cast<__nv_bfloat16*>(fa_sm);
  __nv_bfloat16* Vs = Ks + BKEY * SD;
  __nv_bfloat16* qbuf = Vs + BKEY * SD;                         // [2][Q | dO][BQ][SD]
  float* st = reinterpret_cast<float*>(qbuf + 4 * BQ * SD);     // [2][L | M | delta][BQ]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, t4 = lane & 3;
  const int j0 = (int)blockIdx.x * BKEY;
  const int b = blockIdx.z, hk = blockIdx.y, G = Hq / Hkv;
  const long long N = (long long)gridDim.z * T;
  const long long kbase = (long long)b * T * Hkv * D + (long long)hk * D;
  const int w0 = j0 + warp * 16, ja = w0 + (lane >> 2), jb = ja + 8;
  const bool live = w0 < T;
  fa_stage<D, BKEY>(Ks, k, j0, T, (long long)Hkv * D, kbase);
  fa_stage<D, BKEY>(Vs, v, j0, T, (long long)Hkv * D, kbase);
  fa_commit();
  const float lm2[2] = {ja < T ? att_logm(alpha, b, ja, T, Hkv, hk) * FA_LOG2E : 0.f,
                        jb < T ? att_logm(alpha, b, jb, T, Hkv, hk) * FA_LOG2E : 0.f};
  const bool masked = alpha != nullptr;
  const float sl2 = scale * FA_LOG2E;
  float accK[D / 8][4], accV[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; n++)
#pragma unroll
    for (int e = 0; e < 4; e++) accK[n][e] = accV[n][e] = 0.f;
  float accA[2] = {0.f, 0.f};
  // The (head, query tile) pairs in order: tile u of head hk·G + u / per.
  const int per = (T - j0 + BQ - 1) / BQ, ntiles = G * per;
  auto issue = [&](int u) {
    const int h = hk * G + u / per, q0 = j0 + (u % per) * BQ;
    const long long qbase = (long long)b * T * Hq * D + (long long)h * D;
    __nv_bfloat16* Qt = qbuf + (u & 1) * 2 * BQ * SD;
    fa_stage<D, BQ>(Qt, q, q0, T, (long long)Hq * D, qbase);
    fa_stage<D, BQ>(Qt + BQ * SD, dO, q0, T, (long long)Hq * D, qbase);
    fa_commit();
    if (threadIdx.x < BQ) {
      float* sb = st + (u & 1) * 3 * BQ;
      long long rr = ((long long)b * T + min(q0 + (int)threadIdx.x, T - 1)) * Hq + h;
      sb[threadIdx.x] = stats[N * Hq + rr] * FA_LOG2E;  // L and M in base 2
      sb[BQ + threadIdx.x] = stats[rr] * FA_LOG2E;
      sb[2 * BQ + threadIdx.x] = delta[rr];
    }
  };
  if (ntiles > 0) issue(0);
  for (int u = 0; u < ntiles; u++) {
    if (u + 1 < ntiles) {
      issue(u + 1);
      fa_wait<1>();
    } else {
      fa_wait<0>();
    }
    __syncthreads();
    const int q0 = j0 + (u % per) * BQ;
    const __nv_bfloat16* Qs = qbuf + (u & 1) * 2 * BQ * SD;
    const __nv_bfloat16* Gs = Qs + BQ * SD;
    const float *Lq = st + (u & 1) * 3 * BQ, *Mq = Lq + BQ, *Dq = Mq + BQ;
    if (live && q0 + BQ - 1 >= w0) {
      float s[NT][4], dp[NT][4];
      uint32_t af[D / 16][4];
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) fa_afrag<D>(af[kk], Ks, warp * 16, kk * 16);
      fa_scores<D, NT>(s, af, Qs, 0);  // Sᵀ = K·Qᵀ
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) fa_afrag<D>(af[kk], Vs, warp * 16, kk * 16);
      fa_scores<D, NT>(dp, af, Gs, 0);  // dPᵀ = V·dOᵀ
      const bool diag = q0 <= w0 + 15;
      // Per-element tests only where a tile crosses the diagonal or the end of the sequence.
      if (diag || q0 + BQ > T)
        fa_kv_probs<NT, true>(s, dp, accA, lm2, Lq, Mq, Dq, q0, ja, jb, T, sl2, diag, masked);
      else
        fa_kv_probs<NT, false>(s, dp, accA, lm2, Lq, Mq, Dq, q0, ja, jb, T, sl2, false, masked);
      fa_pv<D, BQ / 16>(accV, s, Gs);   // dV += Pᵀ·dO
      fa_pv<D, BQ / 16>(accK, dp, Qs);  // dK += dSᵀ·Q (the softmax scale applied at the store)
    }
    __syncthreads();
  }
  fa_wait<0>();
  if (!live) return;
  fa_store<D>(dk, accK, w0, T, (long long)Hkv * D, kbase, scale, scale);
  fa_store<D>(dv, accV, w0, T, (long long)Hkv * D, kbase, 1.f, 1.f);
#pragma unroll
  for (int r = 0; r < 2; r++) {
    accA[r] += __shfl_xor_sync(FULL, accA[r], 1);
    accA[r] += __shfl_xor_sync(FULL, accA[r], 2);
  }
  if (dA != nullptr && t4 == 0) {
#pragma unroll
    for (int r = 0; r < 2; r++) {
      const int j = r ? jb : ja;
      if (j + 1 < T) dA[((long long)b * T + j + 1) * Hkv + hk] = accA[r];
      if (j == 0) dA[(long long)b * T * Hkv + hk] = 0.f;
    }
  }
}

extern "C" {

#define FA_INST(D)                                                                                                         \
  __global__ void __launch_bounds__(FA_THREADS, 3) tc_attn_fwd_##D(float* o, float* stats, const __nv_bfloat16* q,            \
                                                                const __nv_bfloat16* k, const __nv_bfloat16* v,             \
                                                                const float* alpha, int T, int Hq, int Hkv, float scale) {                                              \
    fa_attn_fwd<D>(o, stats, q, k, v, alpha, T, Hq, Hkv, scale);                                                           \
  }                                                                                                                        \
  __global__ void __launch_bounds__(FA_THREADS) tc_attn_fwd2_##D(float* o, float* stats, const __nv_bfloat16* q,           \
                                                                 const __nv_bfloat16* k, const __nv_bfloat16* v,            \
                                                                 const float* alpha, int T, int Hq, int Hkv, float scale) { \
    fa_attn_fwd2<D>(o, stats, q, k, v, alpha, T, Hq, Hkv, scale);                                                          \
  }                                                                                                                        \
  __global__ void __launch_bounds__(FA_THREADS)                                                                            \
      tc_attn_bwd_q_##D(float* dq, const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,                \
                        const float* alpha, const float* stats, const float* delta, const __nv_bfloat16* dO, int T, int Hq, \
                        int Hkv, float scale) {                        \
    fa_attn_bwd_q<D>(dq, q, k, v, alpha, stats, delta, dO, T, Hq, Hkv, scale);                                      \
  }                                                                                                                        \
  __global__ void __launch_bounds__(FA_THREADS)                                                                            \
      tc_attn_bwd_kv_##D(float* dk, float* dv, float* dA, const __nv_bfloat16* q, const __nv_bfloat16* k,                \
                         const __nv_bfloat16* v, const float* alpha, const float* stats, const float* delta,               \
                         const __nv_bfloat16* dO, int T, int Hq, int Hkv, float scale) {                                                                           \
    fa_attn_bwd_kv<D>(dk, dv, dA, q, k, v, alpha, stats, delta, dO, T, Hq, Hkv, scale);                             \
  }
FA_INST(16)
FA_INST(32)
FA_INST(64)
FA_INST(128)

}  // extern "C"
