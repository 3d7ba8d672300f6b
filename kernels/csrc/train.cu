// Device kernels of the CUDA training executor: forward and backward of the fused ops of the
// CPU training graph (graph/ops/doc.go), the fused AdamW step and the global gradient norm.
// Compiled to PTX (kernels/ptx/train.ptx) by `make -C kernels ptx`, loaded by cuda_train.go.
//
// Conventions: fp32 activations and gradients, row-major, rows n = b·T + t; bf16 only as GEMM
// operands (tr_cast_bf16). Every kernel writes all of its output. No kernel uses floating-point
// atomics: every reduction has a fixed order (block trees of a fixed shape, or per-output
// sequential sums), so results are bit-reproducible run to run. Block sizes are multiples of 32.
#include <cuda_bf16.h>
#include <mma.h>
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

// One block per row: y = x·r·w with r = 1/sqrt(mean(x²)+eps); y16, when set, gets bf16(y).
__global__ void tr_rmsnorm_fwd(float* y, __nv_bfloat16* y16, const float* x, const float* w, int rows, int d, float eps) {
  __shared__ float sh[32];
  const float* xr = x + (long long)blockIdx.x * d;
  float ss = 0.f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) ss += xr[i] * xr[i];
  ss = block_sum(ss, sh);
  float r = rsqrtf(ss / d + eps);
  float* yr = y + (long long)blockIdx.x * d;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    float v = xr[i] * r * w[i];
    yr[i] = v;
    if (y16) y16[(long long)blockIdx.x * d + i] = __float2bfloat16_rn(v);
  }
}

// dx = r·(w⊙dy) − x·r³/d·Σ(w⊙dy⊙x); rinv, when set, gets r per row (for tr_rmsnorm_dw_part).
__global__ void tr_rmsnorm_dx(float* dx, float* rinv, const float* x, const float* w, const float* dy, int rows, int d, float eps) {
  __shared__ float sh[32];
  long long o = (long long)blockIdx.x * d;
  float ss = 0.f, dot = 0.f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    float xv = x[o + i];
    ss += xv * xv;
    dot += w[i] * dy[o + i] * xv;
  }
  ss = block_sum(ss, sh);
  dot = block_sum(dot, sh);
  float r = rsqrtf(ss / d + eps);
  float c = dot * r * r * r / d;
  for (int i = threadIdx.x; i < d; i += blockDim.x) dx[o + i] = r * w[i] * dy[o + i] - c * x[o + i];
  if (rinv && threadIdx.x == 0) rinv[blockIdx.x] = r;
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

// ---- RoPE ------------------------------------------------------------------------------------

// One thread per (row, head, pair), in float64 with the host's cos/sin tables [T, D/2] and no
// contraction (as ropeKernel): forward y = R_t(S x), inverse dx = S R_tᵀ dy, S scaling channel ch
// by s (ch < 0: none).
__global__ void tr_rope(float* y, const float* x, const double* cosT, const double* sinT, const int* pa, const int* pb,
                        int rows, int H, int D, int T, int ch, double s, int inverse) {
  int half = D / 2;
  long long n = (long long)rows * H * half;
  GRID_STRIDE(idx, n) {
    int i = (int)(idx % half);
    long long rh = idx / half;
    int h = (int)(rh % H);
    long long row = rh / H;
    int t = (int)(row % T);
    int a = pa[i], b = pb[i];
    long long base = row * (long long)H * D + (long long)h * D;
    double c = cosT[t * half + i], si = sinT[t * half + i];
    if (inverse) si = -si;
    float xa = x[base + a], xb = x[base + b];
    if (!inverse && ch >= 0) {
      if (a == ch) xa = (float)__dmul_rn((double)xa, s);
      if (b == ch) xb = (float)__dmul_rn((double)xb, s);
    }
    double x0 = xa, x1 = xb;
    float ya = (float)__dsub_rn(__dmul_rn(x0, c), __dmul_rn(x1, si));
    float yb = (float)__dadd_rn(__dmul_rn(x0, si), __dmul_rn(x1, c));
    if (inverse && ch >= 0) {
      if (a == ch) ya = (float)__dmul_rn((double)ya, s);
      if (b == ch) yb = (float)__dmul_rn((double)yb, s);
    }
    y[base + a] = ya;
    y[base + b] = yb;
  }
}

// ---- SwiGLU ----------------------------------------------------------------------------------

// out = silu(a)·b; out16, when set, gets bf16(out) (the down projection's operand).
__global__ void tr_swiglu_fwd(float* out, __nv_bfloat16* out16, const float* a, const float* b, long long n) {
  GRID_STRIDE(i, n) {
    float x = a[i];
    float v = x / (1.f + expf(-x)) * b[i];
    out[i] = v;
    if (out16) out16[i] = __float2bfloat16_rn(v);
  }
}

// da = dy·b·σ(a)(1 + a(1−σ(a))), db = dy·silu(a).
__global__ void tr_swiglu_bwd(float* da, float* db, const float* a, const float* b, const float* dy, long long n) {
  GRID_STRIDE(i, n) {
    float x = a[i];
    float sg = 1.f / (1.f + expf(-x));
    float g = dy[i];
    da[i] = g * b[i] * sg * (1.f + x * (1.f - sg));
    db[i] = g * x * sg;
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
// gscale[0] when set: the loss's upstream gradient as a device scalar).
__global__ void tr_xent_bwd(float* dl, const float* logits, const int* tg, int N, int V, float scale, const float* gscale) {
  __shared__ float sh[32];
  if (gscale != nullptr) scale *= gscale[0];
  int t = tg[blockIdx.x];
  float* out = dl + (long long)blockIdx.x * V;
  if (t < 0) {
    for (int i = threadIdx.x; i < V; i += blockDim.x) out[i] = 0.f;
    return;
  }
  const float* row = logits + (long long)blockIdx.x * V;
  float lz = row_lse(row, V, sh);
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    float p = expf(row[i] - lz);
    out[i] = scale * (i == t ? p - 1.f : p);
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

// α [N,H]: soft σ((k[ch]−off+noise)/τ), hard 1[k[ch]−off > 0]; 0 at t = 0. Float64 as the CPU.
__global__ void tr_dmc_decide(float* alpha, const float* k, const float* noise, int N, int H, int D, int T, int ch,
                              double off, double tau, int hard) {
  long long n = (long long)N * H;
  GRID_STRIDE(i, n) {
    long long row = i / H;
    double a = (double)k[i * D + ch] - off;
    double al;
    if (row % T == 0) al = 0;
    else if (hard) al = a > 0 ? 1 : 0;
    else al = sigmoid_d((a + (double)noise[i]) / tau);
    alpha[i] = (float)al;
  }
}

// dk [N, H·D]: dα·α(1−α)/τ on channel ch (soft, t > 0), zero elsewhere.
__global__ void tr_dmc_decide_bwd(float* dk, const float* k, const float* noise, const float* dA, int N, int H, int D, int T,
                                  int ch, double off, double tau, int hard) {
  long long n = (long long)N * H * D;
  GRID_STRIDE(i, n) {
    int c = (int)(i % D);
    long long nh = i / D;
    long long row = nh / H;
    float v = 0.f;
    if (c == ch && !hard && row % T != 0) {
      double al = sigmoid_d(((double)k[i] - off + (double)noise[nh]) / tau);
      v = (float)((double)dA[nh] * al * (1 - al) / tau);
    }
    dk[i] = v;
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

// dq [N, Hq·D]: dω·σ'(·)/G on channel ch of every head of the group, zero elsewhere.
__global__ void tr_dmc_importance_bwd(float* dq, const float* q, const float* dW, int N, int Hq, int Hkv, int D, int ch, double off) {
  long long n = (long long)N * Hq * D;
  int G = Hq / Hkv;
  GRID_STRIDE(i, n) {
    int c = (int)(i % D);
    float v = 0.f;
    if (c == ch) {
      long long nq = i / D;
      long long row = nq / Hq;
      int h = (int)(nq % Hq) / G;
      double s = 0;
      for (int g = h * G; g < (h + 1) * G; g++) s += (double)q[(row * Hq + g) * D + ch];
      double sg = sigmoid_d(s / G + off);
      v = (float)((double)dW[row * Hkv + h] * sg * (1 - sg) / G);
    }
    dq[i] = v;
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

// ---- DMC merge -------------------------------------------------------------------------------
// x̃_i = Σ_{j=lo..i} c_ij ω_j x_j / Σ c_ij ω_j, c_ij = Π_{m=j+1..i} α_m, lo = max(0, i−W+1) (0 for
// W = 0). Grid (T, B·H), one thread per channel (blockDim ≥ D).

__global__ void tr_dmc_merge_fwd(float* y, const float* x, const float* alpha, const float* omega, int T, int H, int D, int W) {
  int i = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H, d = threadIdx.x;
  int lo = W > 0 ? max(0, i - W + 1) : 0;
  float num = 0.f, den = 0.f, c = 1.f;
  for (int j = i; j >= lo; j--) {
    long long r = ((long long)b * T + j) * H + h;
    float wt = c * omega[r];
    if (d < D) num += wt * x[r * D + d];
    den += wt;
    c *= alpha[r];
  }
  if (d < D) y[(((long long)b * T + i) * H + h) * D + d] = num / den;
}

// Backward, first pass (grid (T, B·H), blockDim ≥ D, dynamic smem (2·span + span·nwarps) floats):
// per output row i, Z_i, and per window slot k = i − j the contributions cW[i][k] = c_ij·e_ij to
// dω_j and cA[i][k] = c_{i,i−k}·S_{i−k} to dα_{i−k} (zero in unused slots), with
// e_ij = (g_i/Z_i)·x_j − (g_i·x̃_i)/Z_i and S the CPU kernel's recursion. The second pass gathers
// them per j, so no two threads ever add into one value.
__global__ void tr_dmc_merge_bwd_a(float* rowZ, float* cW, float* cA, const float* x, const float* alpha, const float* omega,
                                   const float* dy, int T, int H, int D, int W, int span) {
  extern __shared__ float smem[];
  __shared__ float sh[32];
  int nw = blockDim.x >> 5;
  float* cs = smem;               // [span]
  float* rho = smem + span;       // [span]
  float* dots = smem + 2 * span;  // [span·nw]
  int i = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H, d = threadIdx.x, lane = d & 31, w = d >> 5;
  int lo = W > 0 ? max(0, i - W + 1) : 0, len = i - lo + 1;
  long long ri = ((long long)b * T + i) * H + h;
  float num = 0.f, den = 0.f, c = 1.f;
  for (int j = i; j >= lo; j--) {
    long long r = ((long long)b * T + j) * H + h;
    if (d == 0) cs[i - j] = c;
    float wt = c * omega[r];
    if (d < D) num += wt * x[r * D + d];
    den += wt;
    c *= alpha[r];
  }
  float g = d < D ? dy[ri * D + d] : 0.f;
  float gy = block_sum(g * (num / den), sh);
  float dZ = -gy / den;
  float gd = g / den;
  for (int k = 0; k < len; k++) {
    long long r = ((long long)b * T + (i - k)) * H + h;
    float v = warp_sum(d < D ? gd * x[r * D + d] : 0.f);
    if (lane == 0) dots[k * nw + w] = v;
  }
  __syncthreads();
  for (int k = d; k < span; k += blockDim.x) {
    float cw = 0.f;
    if (k < len) {
      float dot = 0.f;
      for (int u = 0; u < nw; u++) dot += dots[k * nw + u];
      float e = dot + dZ;
      long long r = ((long long)b * T + (i - k)) * H + h;
      cw = cs[k] * e;
      rho[k] = omega[r] * e;
    }
    cW[ri * span + k] = cw;
  }
  __syncthreads();
  if (d == 0) {
    rowZ[ri] = den;
    // dα_m (m = lo+1..i) gets c_im·S_m, S_{m} = S_{m−1}·α_{m−1} + ρ_{m−1}; slot k = i − m.
    float S = 0.f;
    for (int m = lo + 1; m <= i; m++) {
      long long r = ((long long)b * T + (m - 1)) * H + h;
      S = S * alpha[r] + rho[i - (m - 1)];
      cA[ri * span + (i - m)] = cs[i - m] * S;
    }
    for (int k = i - lo; k < span; k++) cA[ri * span + k] = 0.f;
  }
}

// Backward, second pass (grid (T, B·H), blockDim ≥ D): for row j, with i over the rows whose
// window holds j, dx_j = ω_j Σ_i c_ij g_i/Z_i, dω_j = Σ_i cW[i][i−j], dα_j = Σ_i cA[i][i−j].
__global__ void tr_dmc_merge_bwd_b(float* dx, float* dA, float* dW, const float* alpha, const float* omega, const float* dy,
                                   const float* rowZ, const float* cW, const float* cA, int T, int H, int D, int W, int span) {
  int j = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H, d = threadIdx.x;
  int hi = W > 0 ? min(T - 1, j + W - 1) : T - 1;
  long long rj = ((long long)b * T + j) * H + h;
  float u = 0.f, c = 1.f, sw = 0.f, sa = 0.f;
  for (int i = j; i <= hi; i++) {
    long long r = ((long long)b * T + i) * H + h;
    if (i > j) c *= alpha[r];
    if (d < D) u += c * (dy[r * D + d] / rowZ[r]);
    sw += cW[r * span + (i - j)];
    sa += cA[r * span + (i - j)];
  }
  if (d < D) dx[rj * D + d] = omega[rj] * u;
  if (d == 0) {
    dW[rj] = sw;
    dA[rj] = sa;
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
        if (alpha != nullptr && ok && j < i) accA -= expf(fminf(s - Ms[ii], 40.f) - (Ls[ii] - Ms[ii])) * gd;
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


// ---- attention on tensor cores ------------------------------------------------------------------
// The same three passes as tr_attn_* with bf16 WMMA products (fp32 accumulation): a block holds
// 32 query rows (forward, dq) or 32 key rows (dk, dv, dα) of one head, two warps of 16 rows
// each, and walks 32-row tiles of the other side. q, k, v, dO are fp32 in memory and rounded to
// bf16 into shared memory; P and dS are rounded to bf16 for their products. The forward keeps O
// in shared memory (it is rescaled per row); dk, dv and dq stay in accumulator fragments. No
// atomics: dα of a key is summed by two fixed threads in a fixed order and combined once.
#define TC_B 32
#define TC_THREADS 64

}  // extern "C" (templates below)

template <int D>
__device__ __forceinline__ void tc_load_tile(__nv_bfloat16* dst, const float* src, int r0, int rows, int T, long long rowStride,
                                             long long base) {
  for (int x = threadIdx.x; x < TC_B * D; x += TC_THREADS) {
    int r = x / D, d = x % D;
    int t = r0 + r;
    dst[x] = __float2bfloat16_rn(r < rows && t < T ? src[base + (long long)t * rowStride + d] : 0.f);
  }
}

template <int D>
__device__ void tc_attn_fwd(float* o, float* stats, const float* q, const float* k, const float* v, const float* alpha, int T,
                            int Hq, int Hkv, float scale) {
  using namespace nvcuda;
  __shared__ __align__(32) __nv_bfloat16 Qs[TC_B * D], Ks[TC_B * D], Vs[TC_B * D], Ps[TC_B * TC_B];
  __shared__ __align__(32) float Ss[TC_B * TC_B], Os[TC_B * D];
  __shared__ float Mr[TC_B], Lr[TC_B], Lm[TC_B];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int b = blockIdx.z, h = blockIdx.y, hk = h / (Hq / Hkv), i0 = blockIdx.x * TC_B;
  const long long N = (long long)gridDim.z * T;
  tc_load_tile<D>(Qs, q, i0, TC_B, T, (long long)Hq * D, (long long)b * T * Hq * D + (long long)h * D);
  for (int x = threadIdx.x; x < TC_B * D; x += TC_THREADS) Os[x] = 0.f;
  if (threadIdx.x < TC_B) {
    Mr[threadIdx.x] = -INFINITY;
    Lr[threadIdx.x] = 0.f;
  }
  const int iLast = min(T, i0 + TC_B) - 1;
  const int r = warp * 16 + lane / 2, half = lane % 2, i = i0 + r;  // softmax: 2 lanes per row
  for (int j0 = 0; j0 <= iLast; j0 += TC_B) {
    __syncthreads();
    long long kb = (long long)b * T * Hkv * D + (long long)hk * D;
    tc_load_tile<D>(Ks, k, j0, TC_B, T, (long long)Hkv * D, kb);
    tc_load_tile<D>(Vs, v, j0, TC_B, T, (long long)Hkv * D, kb);
    if (threadIdx.x < TC_B) Lm[threadIdx.x] = j0 + threadIdx.x < T ? att_logm(alpha, b, j0 + threadIdx.x, T, Hkv, hk) : 0.f;
    __syncthreads();
    for (int n = 0; n < TC_B / 16; n++) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
      wmma::fill_fragment(c, 0.f);
      for (int kk = 0; kk < D / 16; kk++) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> bb;
        wmma::load_matrix_sync(a, Qs + warp * 16 * D + kk * 16, D);
        wmma::load_matrix_sync(bb, Ks + n * 16 * D + kk * 16, D);
        wmma::mma_sync(c, a, bb, c);
      }
      wmma::store_matrix_sync(Ss + warp * 16 * TC_B + n * 16, c, TC_B, wmma::mem_row_major);
    }
    __syncwarp();
    float sv[16], mt = -INFINITY;
#pragma unroll
    for (int c = 0; c < 16; c++) {
      int col = half * 16 + c, j = j0 + col;
      float s = Ss[r * TC_B + col] * scale;
      float sm = j < i ? s + Lm[col] : s;
      if (j > i || j >= T) sm = -INFINITY;
      sv[c] = sm;
      mt = fmaxf(mt, sm);
    }
    mt = fmaxf(mt, __shfl_xor_sync(FULL, mt, 1));
    const float mold = Mr[r], mnew = fmaxf(mold, mt);
    const float corr = mnew == -INFINITY ? 1.f : expf(mold - mnew);
    float ls = 0.f;
#pragma unroll
    for (int c = 0; c < 16; c++) {
      float p = sv[c] == -INFINITY ? 0.f : expf(sv[c] - mnew);
      ls += p;
      Ps[r * TC_B + half * 16 + c] = __float2bfloat16_rn(p);
    }
    ls += __shfl_xor_sync(FULL, ls, 1);
    for (int d = half; d < D; d += 2) Os[r * D + d] *= corr;
    __syncwarp();
    if (half == 0) {
      Lr[r] = Lr[r] * corr + ls;
      Mr[r] = mnew;
    }
    for (int n = 0; n < D / 16; n++) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
      wmma::load_matrix_sync(c, Os + warp * 16 * D + n * 16, D, wmma::mem_row_major);
      for (int kk = 0; kk < TC_B / 16; kk++) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> bb;
        wmma::load_matrix_sync(a, Ps + warp * 16 * TC_B + kk * 16, TC_B);
        wmma::load_matrix_sync(bb, Vs + kk * 16 * D + n * 16, D);
        wmma::mma_sync(c, a, bb, c);
      }
      wmma::store_matrix_sync(Os + warp * 16 * D + n * 16, c, D, wmma::mem_row_major);
    }
    __syncwarp();
  }
  __syncthreads();
  for (int x = threadIdx.x; x < TC_B * D; x += TC_THREADS) {
    int rr = x / D, d = x % D, ii = i0 + rr;
    if (ii < T) o[(((long long)b * T + ii) * Hq + h) * D + d] = Os[x] / Lr[rr];
  }
  if (threadIdx.x < TC_B && i0 + (int)threadIdx.x < T) {
    long long rr = ((long long)b * T + i0 + threadIdx.x) * Hq + h;
    stats[rr] = Mr[threadIdx.x];
    stats[N * Hq + rr] = Mr[threadIdx.x] + logf(Lr[threadIdx.x]);
  }
}

// S (or Sᵀ) tile products for the backward: C[16 rows of this warp][32] = A·Bᵀ with A, B row-major
// [32][D] bf16 tiles (rows of A: this warp's 16).
template <int D>
__device__ __forceinline__ void tc_abT(float* C, const __nv_bfloat16* A, const __nv_bfloat16* B, int warp) {
  using namespace nvcuda;
  for (int n = 0; n < TC_B / 16; n++) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
    wmma::fill_fragment(c, 0.f);
    for (int kk = 0; kk < D / 16; kk++) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> bb;
      wmma::load_matrix_sync(a, A + warp * 16 * D + kk * 16, D);
      wmma::load_matrix_sync(bb, B + n * 16 * D + kk * 16, D);
      wmma::mma_sync(c, a, bb, c);
    }
    wmma::store_matrix_sync(C + warp * 16 * TC_B + n * 16, c, TC_B, wmma::mem_row_major);
  }
}

// dq: grid (ceil(T/32), Hq, B).
template <int D>
__device__ void tc_attn_bwd_q(float* dq, const float* q, const float* k, const float* v, const float* alpha, const float* stats,
                              const float* delta, const float* dO, int T, int Hq, int Hkv, float scale) {
  using namespace nvcuda;
  __shared__ __align__(32) __nv_bfloat16 Qs[TC_B * D], Gs[TC_B * D], Ks[TC_B * D], Vs[TC_B * D], dSs[TC_B * TC_B];
  __shared__ __align__(32) float Ss[TC_B * TC_B], Ps[TC_B * TC_B];
  __shared__ float Lm[TC_B];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int b = blockIdx.z, h = blockIdx.y, hk = h / (Hq / Hkv), i0 = blockIdx.x * TC_B;
  const long long N = (long long)gridDim.z * T;
  long long qb = (long long)b * T * Hq * D + (long long)h * D;
  tc_load_tile<D>(Qs, q, i0, TC_B, T, (long long)Hq * D, qb);
  tc_load_tile<D>(Gs, dO, i0, TC_B, T, (long long)Hq * D, qb);
  const int r = warp * 16 + lane / 2, half = lane % 2, i = i0 + r;
  const long long rr = ((long long)b * T + min(i, T - 1)) * Hq + h;
  const float lse = stats[N * Hq + rr], dl = delta[rr];
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[D / 16];
  for (int n = 0; n < D / 16; n++) wmma::fill_fragment(acc[n], 0.f);
  const int iLast = min(T, i0 + TC_B) - 1;
  for (int j0 = 0; j0 <= iLast; j0 += TC_B) {
    __syncthreads();
    long long kb = (long long)b * T * Hkv * D + (long long)hk * D;
    tc_load_tile<D>(Ks, k, j0, TC_B, T, (long long)Hkv * D, kb);
    tc_load_tile<D>(Vs, v, j0, TC_B, T, (long long)Hkv * D, kb);
    if (threadIdx.x < TC_B) Lm[threadIdx.x] = j0 + threadIdx.x < T ? att_logm(alpha, b, j0 + threadIdx.x, T, Hkv, hk) : 0.f;
    __syncthreads();
    tc_abT<D>(Ss, Qs, Ks, warp);
    tc_abT<D>(Ps, Gs, Vs, warp);  // dP = dO·Vᵀ
    __syncwarp();
#pragma unroll
    for (int c = 0; c < 16; c++) {
      int col = half * 16 + c, j = j0 + col;
      float s = Ss[r * TC_B + col] * scale;
      float sm = j < i ? s + Lm[col] : s;
      float p = (j <= i && i < T && sm > -INFINITY) ? expf(sm - lse) : 0.f;
      dSs[r * TC_B + col] = __float2bfloat16_rn(p * (Ps[r * TC_B + col] - dl) * scale);
    }
    __syncwarp();
    for (int n = 0; n < D / 16; n++) {
      for (int kk = 0; kk < TC_B / 16; kk++) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> bb;
        wmma::load_matrix_sync(a, dSs + warp * 16 * TC_B + kk * 16, TC_B);
        wmma::load_matrix_sync(bb, Ks + kk * 16 * D + n * 16, D);
        wmma::mma_sync(acc[n], a, bb, acc[n]);
      }
    }
  }
  __syncthreads();
  float* out = Ss;  // reuse: 16 rows × 16 columns per fragment, one warp at a time per row block
  for (int n = 0; n < D / 16; n++) {
    wmma::store_matrix_sync(out + warp * 16 * 16, acc[n], 16, wmma::mem_row_major);
    __syncwarp();
    for (int x = lane; x < 256; x += 32) {
      int rr2 = x / 16, d = n * 16 + x % 16, ii = i0 + warp * 16 + rr2;
      if (ii < T) dq[(((long long)b * T + ii) * Hq + h) * D + d] = out[warp * 256 + x];
    }
    __syncwarp();
  }
}

// dk, dv, dα: grid (ceil(T/32), Hkv, B); the block's 32 keys against every later query of the
// G query heads.
template <int D>
__device__ void tc_attn_bwd_kv(float* dk, float* dv, float* dA, const float* q, const float* k, const float* v, const float* alpha,
                               const float* stats, const float* delta, const float* dO, int T, int Hq, int Hkv, float scale) {
  using namespace nvcuda;
  __shared__ __align__(32) __nv_bfloat16 Ks[TC_B * D], Vs[TC_B * D], Qs[TC_B * D], Gs[TC_B * D], Pt[TC_B * TC_B], dSt[TC_B * TC_B];
  __shared__ __align__(32) float St[TC_B * TC_B], DPt[TC_B * TC_B];
  __shared__ float Mq[TC_B], Lq[TC_B], Dq[TC_B];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int b = blockIdx.z, hk = blockIdx.y, G = Hq / Hkv, j0 = blockIdx.x * TC_B;
  const long long N = (long long)gridDim.z * T;
  long long kb = (long long)b * T * Hkv * D + (long long)hk * D;
  tc_load_tile<D>(Ks, k, j0, TC_B, T, (long long)Hkv * D, kb);
  tc_load_tile<D>(Vs, v, j0, TC_B, T, (long long)Hkv * D, kb);
  const int r = warp * 16 + lane / 2, half = lane % 2, j = j0 + r;  // elementwise: key row r, 16 queries
  const float logm = j < T ? att_logm(alpha, b, j, T, Hkv, hk) : 0.f;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> accK[D / 16], accV[D / 16];
  for (int n = 0; n < D / 16; n++) {
    wmma::fill_fragment(accK[n], 0.f);
    wmma::fill_fragment(accV[n], 0.f);
  }
  float accA = 0.f;
  for (int h = hk * G; h < (hk + 1) * G; h++) {
    long long qb = (long long)b * T * Hq * D + (long long)h * D;
    for (int q0 = j0; q0 < T; q0 += TC_B) {
      __syncthreads();
      tc_load_tile<D>(Qs, q, q0, TC_B, T, (long long)Hq * D, qb);
      tc_load_tile<D>(Gs, dO, q0, TC_B, T, (long long)Hq * D, qb);
      if (threadIdx.x < TC_B) {
        int ii = min(q0 + (int)threadIdx.x, T - 1);
        long long rr = ((long long)b * T + ii) * Hq + h;
        Mq[threadIdx.x] = stats[rr];
        Lq[threadIdx.x] = stats[N * Hq + rr];
        Dq[threadIdx.x] = delta[rr];
      }
      __syncthreads();
      tc_abT<D>(St, Ks, Qs, warp);   // Sᵀ = K·Qᵀ
      tc_abT<D>(DPt, Vs, Gs, warp);  // dPᵀ = V·dOᵀ
      __syncwarp();
#pragma unroll
      for (int c = 0; c < 16; c++) {
        int col = half * 16 + c, i = q0 + col;
        float s = St[r * TC_B + col] * scale;
        bool ok = j < T && i < T && j <= i;
        float sm = j < i ? s + logm : s;
        float p = (ok && sm > -INFINITY) ? expf(sm - Lq[col]) : 0.f;
        float gd = DPt[r * TC_B + col] - Dq[col];
        Pt[r * TC_B + col] = __float2bfloat16_rn(p);
        dSt[r * TC_B + col] = __float2bfloat16_rn(p * gd * scale);
        if (alpha != nullptr && ok && j < i) accA -= expf(fminf(s - Mq[col], 40.f) - (Lq[col] - Mq[col])) * gd;
      }
      __syncwarp();
      for (int n = 0; n < D / 16; n++) {
        for (int kk = 0; kk < TC_B / 16; kk++) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
          wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> bb;
          wmma::load_matrix_sync(a, Pt + warp * 16 * TC_B + kk * 16, TC_B);
          wmma::load_matrix_sync(bb, Gs + kk * 16 * D + n * 16, D);
          wmma::mma_sync(accV[n], a, bb, accV[n]);
          wmma::load_matrix_sync(a, dSt + warp * 16 * TC_B + kk * 16, TC_B);
          wmma::load_matrix_sync(bb, Qs + kk * 16 * D + n * 16, D);
          wmma::mma_sync(accK[n], a, bb, accK[n]);
        }
      }
    }
  }
  accA += __shfl_xor_sync(FULL, accA, 1);
  __syncthreads();
  float* out = St;  // reuse as a 16×16 staging tile per warp (St and DPt are contiguous 2×1024 floats)
  for (int n = 0; n < D / 16; n++) {
    for (int which = 0; which < 2; which++) {
      wmma::store_matrix_sync(out + warp * 256, which ? accV[n] : accK[n], 16, wmma::mem_row_major);
      __syncwarp();
      float* dst = which ? dv : dk;
      for (int x = lane; x < 256; x += 32) {
        int rr2 = x / 16, d = n * 16 + x % 16, jj = j0 + warp * 16 + rr2;
        if (jj < T) dst[((long long)b * T + jj) * Hkv * D + (long long)hk * D + d] = out[warp * 256 + x];
      }
      __syncwarp();
    }
  }
  if (dA != nullptr && half == 0 && j < T) {
    if (j + 1 < T) dA[((long long)b * T + j + 1) * Hkv + hk] = accA;
    if (j == 0) dA[(long long)b * T * Hkv + hk] = 0.f;
  }
}

extern "C" {

#define TC_INST(D)                                                                                                         \
  __global__ void __launch_bounds__(TC_THREADS) tc_attn_fwd_##D(float* o, float* stats, const float* q, const float* k,     \
                                                                const float* v, const float* alpha, int T, int Hq, int Hkv, \
                                                                float scale) {                                              \
    tc_attn_fwd<D>(o, stats, q, k, v, alpha, T, Hq, Hkv, scale);                                                           \
  }                                                                                                                        \
  __global__ void __launch_bounds__(TC_THREADS)                                                                            \
      tc_attn_bwd_q_##D(float* dq, const float* q, const float* k, const float* v, const float* alpha, const float* stats, \
                        const float* delta, const float* dO, int T, int Hq, int Hkv, float scale) {                        \
    tc_attn_bwd_q<D>(dq, q, k, v, alpha, stats, delta, dO, T, Hq, Hkv, scale);                                             \
  }                                                                                                                        \
  __global__ void __launch_bounds__(TC_THREADS)                                                                            \
      tc_attn_bwd_kv_##D(float* dk, float* dv, float* dA, const float* q, const float* k, const float* v,                  \
                         const float* alpha, const float* stats, const float* delta, const float* dO, int T, int Hq,       \
                         int Hkv, float scale) {                                                                           \
    tc_attn_bwd_kv<D>(dk, dv, dA, q, k, v, alpha, stats, delta, dO, T, Hq, Hkv, scale);                                    \
  }
TC_INST(16)
TC_INST(32)
TC_INST(64)
TC_INST(128)

}  // extern "C"
