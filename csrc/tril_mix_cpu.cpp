// CPU kernel of lcfast::tril_mix_ (schema in registration.cpp; Python wrapper and fake
// impl in lcfast/ops/tril_mix.py): for each point b, the rows of g (B, P, D) float32 are
// replaced in place by g[b, p, :] <- sum_{q <= p} t[b, p, q] g[b, q, :], t (B, P, P)
// float32 lower triangular (its strictly upper triangle is never read).  This is the
// product L^-1 G of a CholeskyQR pass in lcfast.frames, written over the Gaussian rows
// instead of into a fresh N x P x D output.
//
// In place: rows are produced from p = P-1 down to 0 (row p needs rows q <= p only,
// which are still unmodified), kR rows at a time; within a block every column tile is
// read for all the block's rows before any of them is stored, so the block's own rows
// are read unmodified too.
//
// Arithmetic (fixed, whatever the ISA, the tiling or the thread count): each column of
// each row is the float32 chain acc = 0; acc = fma(t[p, q], g[q, d], acc) for q = 0, 1,
// .., p in that order (one rounding per fma).  The AVX-512 and AVX2 kernels below apply
// that chain to 16 / 8 columns per instruction, the column tails and the portable path
// (no AVX2+FMA, or not x86-64) use std::fma per column: correctly rounded in every case,
// so every path gives the same bits (tests/test_tril_mix_op.py compares with an
// independent numpy evaluation of the chain; on this machine all three paths were forced
// in turn and passed it).  Intrinsics rather than LCFAST_CLONES on a plain loop, so that
// the register tiles are explicit (kR rows x 4 vectors of accumulators held over the whole
// q loop, each g[q] vector loaded once for the kR rows) instead of left to the vectoriser
// (a LCFAST_CLONES version was not tried).  Error against exact arithmetic: with
// gamma = P 2^-24 / (1 - P 2^-24), |out - exact| <= gamma sum_q |t_pq| |g_qd| (the
// standard bound for a recursive sum of products, an fma rounding once per step).
//
// Measured (2-core AMD EPYC Zen 5 with AVX-512, shared VM, 1 Dec 2026; 1,000 x 25 x 784
// float32; wall time, min / median of 5-7 calls).  The op alone, one thread: 6.0-6.4 /
// 6.1-6.9 ms right after the Gram step (load 0.5-2; 11-12 ms when it follows a bmm that
// freed 78 MB, interleaved A/B), two threads 3.3-3.4 / 3.9-4.2 (load ~1); forced AVX2
// kernel 11.6 / 12.1 (load 2), forced portable loop 419 / 424 (std::fma is a libm call on
// baseline x86-64; only machines without AVX2+FMA take it).  torch's float32 bmm into a
// fresh output: 42-45 ms one thread, 24.7-26 two; its 19,000 page faults (4 KiB pages,
// THP 'madvise') are most of it (clone alone 29-32 ms, one thread).  In lcfast.frames,
// interleaved A/B in one process of the parent commit's frames.py (bmm) and this one, 7
// rounds, load 0.7-0.9: random_frames 100.6 / 102.6 -> 64.2 / 66.0 ms one thread, 55.6 /
// 60.0 -> 36.2 / 37.1 two threads (the target is 50); FactoredFrames.dense() 42.3 /
// 43.2 -> 37.7 / 38.7 and 25.1 / 25.9 -> 23.4 / 24.2 (still a fresh output: a copy of the
// Gaussians); factored_frames does no product (63-68 / 35-40 ms either way).  At load 2.5-3.4
// (same A/B): random_frames 109 / 161 -> 72 / 90 one thread, 140 / 141 -> 58 / 90 two.
// Steps of random_frames now, two threads, load ~0.8: Gaussians 20.4, Gram 5.2, Cholesky
// and inverse 2.2, this op 3.4, total 40.3 ms (one thread 37.8, 9.6, 4.7, 6.1; 64.7).
// The frames' bits are unchanged on this machine: MKL's bmm gave exactly the fma chain's
// bits for 1,000 x 25 x 784 and 4 points of 3x32x32, 3x224x224 and 50 x 25 (that is BLAS-
// and CPU-dependent; this op fixes the order).
//
// Parallel over points (at::parallel_for): one point's rows (25 x 784 floats = 78 KB)
// stay in L2 while its row blocks sweep them.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LCFAST_TRIL_MIX_X86 1
#endif

namespace lcfast {
namespace {

// Rows per block: kR x 4 accumulator vectors + 4 loaded g vectors + 1 broadcast = 21 of
// the 32 zmm registers (AVX-512); AVX2 uses kR x 2 of its 16 ymm.
constexpr int64_t kR = 4;

// Rows p0 .. p0 + NR - 1 of one point (g: P x D, row stride D; t: P x P), columns
// [d0, d1), with std::fma (the tails and the portable path): kCols columns at a time, the
// accumulators in a local array so that the column loop can be vectorised where fma is
// an instruction of the baseline ISA (aarch64); on baseline x86-64 std::fma is a libm
// call (the portable path then took 420 ms for 1,000 x 25 x 784, one thread).
constexpr int64_t kCols = 64;
template <int NR>
inline void block_scalar(float* g, const float* t, int64_t D, int64_t P, int64_t p0, int64_t d0, int64_t d1) {
  for (int64_t c0 = d0; c0 < d1; c0 += kCols) {
    const int64_t n = std::min(kCols, d1 - c0);
    float acc[NR][kCols];
    for (int r = 0; r < NR; ++r)
      for (int64_t j = 0; j < n; ++j) acc[r][j] = 0.0f;
    for (int64_t q = 0; q < p0 + NR; ++q) {
      const float* x = g + q * D + c0;
      for (int r = 0; r < NR; ++r) {
        if (q > p0 + r) continue;
        const float c = t[(p0 + r) * P + q];
        for (int64_t j = 0; j < n; ++j) acc[r][j] = std::fma(c, x[j], acc[r][j]);
      }
    }
    for (int r = 0; r < NR; ++r)
      for (int64_t j = 0; j < n; ++j) g[(p0 + r) * D + c0 + j] = acc[r][j];
  }
}

using PointFn = void (*)(float* g, const float* t, int64_t P, int64_t D);

// Block rows [p0, p0 + nr), nr <= kR, from the bottom of the point up.
template <template <int> class Block>
inline void point_blocks(float* g, const float* t, int64_t P, int64_t D) {
  for (int64_t p1 = P; p1 > 0; p1 -= kR) {
    const int64_t nr = std::min(kR, p1), p0 = p1 - nr;
    switch (nr) {
      case 4: Block<4>::run(g, t, D, P, p0); break;
      case 3: Block<3>::run(g, t, D, P, p0); break;
      case 2: Block<2>::run(g, t, D, P, p0); break;
      default: Block<1>::run(g, t, D, P, p0); break;
    }
  }
}

template <int NR>
struct PortableBlock {
  static void run(float* g, const float* t, int64_t D, int64_t P, int64_t p0) {
    block_scalar<NR>(g, t, D, P, p0, 0, D);
  }
};

void point_portable(float* g, const float* t, int64_t P, int64_t D) { point_blocks<PortableBlock>(g, t, P, D); }

#ifdef LCFAST_TRIL_MIX_X86
// One macro body for both ISAs: V (vector type), W (lanes), the intrinsics' names.  The
// tile is NR rows x NV vectors; q runs over 0 .. p0 + NR - 1, row r taking q <= p0 + r.
#define LCFAST_TRIL_MIX_TILE(ATTR, V, W, LOAD, STORE, ZERO, FMA, BCAST)                                        \
  template <int NR, int NV>                                                                                    \
  ATTR static inline void tile(float* g, const float* t, int64_t D, int64_t P, int64_t p0, int64_t d) {        \
    V acc[NR][NV];                                                                                             \
    _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r)                                                       \
      _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) acc[r][v] = ZERO();                                 \
    for (int64_t q = 0; q <= p0; ++q) { /* every row of the block */                                           \
      V x[NV];                                                                                                 \
      _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) x[v] = LOAD(g + q * D + d + v * W);                 \
      _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r) {                                                   \
        const V c = BCAST(t + (p0 + r) * P + q);                                                               \
        _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) acc[r][v] = FMA(c, x[v], acc[r][v]);              \
      }                                                                                                        \
    }                                                                                                          \
    _Pragma("GCC unroll 4") for (int k = 1; k < NR; ++k) { /* the triangle: q = p0 + k, rows r >= k */         \
      V x[NV];                                                                                                 \
      _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) x[v] = LOAD(g + (p0 + k) * D + d + v * W);          \
      _Pragma("GCC unroll 4") for (int r = k; r < NR; ++r) {                                                   \
        const V c = BCAST(t + (p0 + r) * P + p0 + k);                                                          \
        _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) acc[r][v] = FMA(c, x[v], acc[r][v]);              \
      }                                                                                                        \
    }                                                                                                          \
    _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r)                                                       \
      _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) STORE(g + (p0 + r) * D + d + v * W, acc[r][v]);     \
  }                                                                                                            \
  template <int NR>                                                                                            \
  struct Block {                                                                                               \
    ATTR static void run(float* g, const float* t, int64_t D, int64_t P, int64_t p0) {                         \
      int64_t d = 0;                                                                                           \
      for (; d + 4 * W <= D; d += 4 * W) tile<NR, 4>(g, t, D, P, p0, d);                                       \
      for (; d + W <= D; d += W) tile<NR, 1>(g, t, D, P, p0, d);                                               \
      block_scalar<NR>(g, t, D, P, p0, d, D);                                                                  \
    }                                                                                                          \
  };

#define LCFAST_ISA_FN __attribute__((target("avx2,fma"), always_inline))
namespace avx2 {
LCFAST_ISA_FN inline __m256 load(const float* p) { return _mm256_loadu_ps(p); }
LCFAST_ISA_FN inline void store(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
LCFAST_ISA_FN inline __m256 zero() { return _mm256_setzero_ps(); }
LCFAST_ISA_FN inline __m256 fma(__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); }
LCFAST_ISA_FN inline __m256 bcast(const float* p) { return _mm256_broadcast_ss(p); }
LCFAST_TRIL_MIX_TILE(__attribute__((target("avx2,fma"))), __m256, 8, load, store, zero, fma, bcast)
__attribute__((target("avx2,fma"))) void point(float* g, const float* t, int64_t P, int64_t D) {
  point_blocks<Block>(g, t, P, D);
}
}  // namespace avx2
#undef LCFAST_ISA_FN

#define LCFAST_ISA_FN __attribute__((target("avx512f"), always_inline))
namespace avx512 {
LCFAST_ISA_FN inline __m512 load(const float* p) { return _mm512_loadu_ps(p); }
LCFAST_ISA_FN inline void store(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
LCFAST_ISA_FN inline __m512 zero() { return _mm512_setzero_ps(); }
LCFAST_ISA_FN inline __m512 fma(__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); }
LCFAST_ISA_FN inline __m512 bcast(const float* p) { return _mm512_set1_ps(*p); }
LCFAST_TRIL_MIX_TILE(__attribute__((target("avx512f,avx2,fma"))), __m512, 16, load, store, zero, fma, bcast)
__attribute__((target("avx512f,avx2,fma"))) void point(float* g, const float* t, int64_t P, int64_t D) {
  point_blocks<Block>(g, t, P, D);
}
}  // namespace avx512
#undef LCFAST_ISA_FN
#undef LCFAST_TRIL_MIX_TILE
#endif

PointFn pick_point() {
#ifdef LCFAST_TRIL_MIX_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return &avx512::point;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &avx2::point;
#endif
  return &point_portable;
}

void tril_mix_cpu(const at::Tensor& g, const at::Tensor& t_in) {
  TORCH_CHECK(g.dim() == 3 && g.scalar_type() == at::kFloat,
              "lcfast::tril_mix_: g must be a 3-d float32 tensor (B, P, D), got ", g.dim(), "-d ", g.scalar_type());
  TORCH_CHECK(g.is_contiguous(), "lcfast::tril_mix_: g must be contiguous (it is overwritten in place), got strides ",
              g.strides());
  TORCH_CHECK(t_in.dim() == 3 && t_in.scalar_type() == at::kFloat,
              "lcfast::tril_mix_: t must be a 3-d float32 tensor (B, P, P), got ", t_in.dim(), "-d ",
              t_in.scalar_type());
  TORCH_CHECK(t_in.size(0) == g.size(0) && t_in.size(1) == g.size(1) && t_in.size(2) == g.size(1),
              "lcfast::tril_mix_: t must have shape (B, P, P) = (", g.size(0), ", ", g.size(1), ", ", g.size(1),
              ") for g of shape ", g.sizes(), ", got ", t_in.sizes());
  TORCH_CHECK(g.device().is_cpu() && t_in.device().is_cpu(), "lcfast::tril_mix_: g and t must be CPU tensors, got ",
              g.device(), " and ", t_in.device());
  const at::Tensor t = t_in.contiguous();
  const int64_t B = g.size(0), P = g.size(1), D = g.size(2);
  if (B == 0 || P == 0 || D == 0) return;
  static const PointFn point = pick_point();
  float* gp = g.data_ptr<float>();
  const float* tp = t.data_ptr<float>();
  // Points per task: at least ~2^20 fmas (unmeasured), so that a few small points do not
  // wake the thread pool.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 20) / std::max<int64_t>(1, P * (P + 1) / 2 * D));
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) point(gp + b * P * D, tp + b * P * P, P, D);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(lcfast, CPU, m) {
  m.impl("tril_mix_", &tril_mix_cpu);
}

}  // namespace lcfast
