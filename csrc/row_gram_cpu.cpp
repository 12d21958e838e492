// CPU kernel of lcfast::row_gram (schema in registration.cpp; Python wrapper and fake
// impl in lcfast/ops/row_gram.py): out[b, i, j] = sum_d g[b, i, d] g[b, j, d] for float32
// g (B, P, D), returned in float64.  Only j <= i is computed; out[j, i] is a copy
// (exactly symmetric).
//
// Arithmetic: lane l of 8 sums the columns d = l mod 8 of a block of kBlock columns in
// float32 with fma (32 terms), the block's lane sums are added in float64, and the 8
// lanes are added as ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)).  So
// |out - exact| <= (kBlock / 8 + 1) 2^-24 sum_d |g_id g_jd| <= 33 2^-24 |g_i| |g_j|
// (+ float64 terms), whatever D (tests/test_row_gram_op.py checks this bound).  The
// AVX2 kernel and the portable loop (std::fma) do the same operations: the same bits.
//
// Measured (AMD EPYC Zen 3, 2 cores, 1 Dec 2026, load 2.5, process CPU time, one thread,
// min of 7; 1000 x 25 x 784): this kernel 19.5 ms, torch's float32 bmm + cast 35-43 ms;
// max |out - exact| / (|g_i| |g_j|) 7.5e-8 here, 4.0e-7 for the bmm (200 points).  A
// variant summing exact float64 products (4 lanes, rows converted to float64) reached
// 2e-15 but took 41.5 ms: twice the FMAs plus the conversion.  Of the 19.5 ms about
// half is copying the rows (78 MB from memory) into the chunk (perf), half the tiles.
// Again at load ~1 (min of 5, one thread / two threads wall): 24.5-26.7 ms / 12.4 ms
// against 43.5 / 20.3 for the bmm; 2 x 25 x 3x224x224 9.2 / 5.0 against 15.7 / 8.2.
// Tried without a measurable gain at load 3 (noise +-20%): reading the rows in place
// where they are not 4K-aliased (no copy), and prefetching the next chunk.
//
// Layout of the work: one point per iteration of at::parallel_for.  Its rows are copied
// kChunk columns at a time into a scratch block (zero rows and columns pad P and the
// chunk to the tile sizes), then tiles of kR x kC rows run over the chunk, their float64
// lane sums kept in memory between blocks.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LCFAST_ROW_GRAM_AVX2 1
#endif

namespace lcfast {
namespace {

// Tiles of kR x kC rows: kR*kC accumulators + kR rows + 1 stream = 16 ymm registers.
constexpr int64_t kR = 3, kC = 4, kW = 8;
// Columns copied per chunk: 28 padded rows x 1,024 floats = 112 KiB, in L2 (unmeasured
// against other sizes).
constexpr int64_t kChunk = 1024;
// Row stride of the chunk: n + kSkew floats, so that the 7 rows a tile reads are not all
// 4 KiB apart (same L1 sets, 4K aliasing; D = 3x224x224 rows are 147 x 4 KiB).
constexpr int64_t kSkew = 16;
// Columns summed in float32 before the lanes are added into float64: kBlock / 8 = 32
// terms a lane, so |error| <= (kBlock / 8 + 1) 2^-24 |g_i| |g_j| (see the top).
constexpr int64_t kBlock = 256;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// For the tile of rows i0 .. i0 + kR - 1, j0 .. j0 + kC - 1 of the chunk x ((Pp, n) floats,
// row stride ld; n, ld multiples of 8; 32-byte aligned rows): for each block of kBlock
// columns, lane l (the columns d = l mod 8) is summed in float32 with fma, then added to
// acc[(i * Pp + j) * 8 + l] (float64).
using TileFn = void (*)(const float* x, int64_t n, int64_t ld, int64_t i0, int64_t j0, int64_t Pp, double* acc);

void tile_portable(const float* x, int64_t n, int64_t ld, int64_t i0, int64_t j0, int64_t Pp, double* acc) {
  for (int64_t r = 0; r < kR; ++r) {
    const float* a = x + (i0 + r) * ld;
    for (int64_t c = 0; c < kC; ++c) {
      const float* b = x + (j0 + c) * ld;
      double* s = acc + ((i0 + r) * Pp + j0 + c) * kW;
      for (int64_t e0 = 0; e0 < n; e0 += kBlock) {
        const int64_t e1 = std::min(n, e0 + kBlock);
        for (int64_t l = 0; l < kW; ++l) {
          float t = 0.0f;
          for (int64_t d = e0 + l; d < e1; d += kW) t = std::fma(a[d], b[d], t);
          s[l] += double(t);
        }
      }
    }
  }
}

#ifdef LCFAST_ROW_GRAM_AVX2
__attribute__((target("avx2,fma"))) void tile_avx2(const float* x, int64_t n, int64_t ld, int64_t i0, int64_t j0,
                                                   int64_t Pp, double* acc) {
  const float* a[kR];
  const float* b[kC];
  for (int64_t r = 0; r < kR; ++r) a[r] = x + (i0 + r) * ld;
  for (int64_t c = 0; c < kC; ++c) b[c] = x + (j0 + c) * ld;
  for (int64_t e0 = 0; e0 < n; e0 += kBlock) {
    const int64_t e1 = std::min(n, e0 + kBlock);
    __m256 s[kR][kC];
#pragma GCC unroll 4
    for (int64_t r = 0; r < kR; ++r)
#pragma GCC unroll 4
      for (int64_t c = 0; c < kC; ++c) s[r][c] = _mm256_setzero_ps();
    for (int64_t d = e0; d < e1; d += kW) {
      __m256 va[kR];
#pragma GCC unroll 4
      for (int64_t r = 0; r < kR; ++r) va[r] = _mm256_load_ps(a[r] + d);
#pragma GCC unroll 4
      for (int64_t c = 0; c < kC; ++c) {
        const __m256 vb = _mm256_load_ps(b[c] + d);
#pragma GCC unroll 4
        for (int64_t r = 0; r < kR; ++r) s[r][c] = _mm256_fmadd_ps(va[r], vb, s[r][c]);
      }
    }
#pragma GCC unroll 4
    for (int64_t r = 0; r < kR; ++r)
#pragma GCC unroll 4
      for (int64_t c = 0; c < kC; ++c) {
        double* p = acc + ((i0 + r) * Pp + j0 + c) * kW;
        _mm256_storeu_pd(p, _mm256_add_pd(_mm256_loadu_pd(p), _mm256_cvtps_pd(_mm256_castps256_ps128(s[r][c]))));
        _mm256_storeu_pd(p + 4,
                         _mm256_add_pd(_mm256_loadu_pd(p + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(s[r][c], 1))));
      }
  }
}
#endif

TileFn pick_tile() {
#ifdef LCFAST_ROW_GRAM_AVX2
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &tile_avx2;
#endif
  return &tile_portable;
}

// The Gram matrix of one point: rows g (P, D) float32 -> out (P, P) float64.
// x: scratch of Pp * (kChunk + kSkew) floats (32-byte aligned); acc: Pp * Pp * 8 doubles.
void gram_point(const float* g, int64_t P, int64_t D, int64_t Pp, float* x, double* acc, double* out, TileFn tile) {
  std::fill(acc, acc + Pp * Pp * kW, 0.0);
  for (int64_t d0 = 0; d0 < D; d0 += kChunk) {
    const int64_t m = std::min(kChunk, D - d0), n = round_up(m, kW), ld = n + kSkew;
    for (int64_t i = 0; i < P; ++i) {
      float* dst = x + i * ld;
      std::memcpy(dst, g + i * D + d0, m * sizeof(float));
      std::fill(dst + m, dst + n, 0.0f);
    }
    std::fill(x + P * ld, x + Pp * ld, 0.0f);  // padding rows
    for (int64_t i0 = 0; i0 < P; i0 += kR)
      for (int64_t j0 = 0; j0 <= std::min(i0 + kR - 1, P - 1); j0 += kC) tile(x, n, ld, i0, j0, Pp, acc);
  }
  for (int64_t i = 0; i < P; ++i)
    for (int64_t j = 0; j <= i; ++j) {
      const double* s = acc + (i * Pp + j) * kW;
      out[i * P + j] = out[j * P + i] = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    }
}

at::Tensor row_gram_cpu(const at::Tensor& g_in) {
  TORCH_CHECK(g_in.dim() == 3 && g_in.scalar_type() == at::kFloat,
              "row_gram: g must be a 3-d float32 tensor (B, P, D), got ", g_in.dim(), "-d ", g_in.scalar_type());
  const at::Tensor g = g_in.contiguous();
  const int64_t B = g.size(0), P = g.size(1), D = g.size(2);
  at::Tensor out = at::empty({B, P, P}, g.options().dtype(at::kDouble));
  if (B == 0 || P == 0) return out;
  if (D == 0) return out.zero_();
  static const TileFn tile = pick_tile();
  const int64_t Pp = std::max(round_up(P, kR), round_up(P, kC));
  const float* gp = g.data_ptr<float>();
  double* op = out.data_ptr<double>();
  // Points per task: at least ~2^22 multiply-adds, so that small batches do not wake
  // the thread pool (unmeasured).
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 22) / std::max<int64_t>(1, P * P * D / 2));
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    // scratch: the chunk (32-byte aligned; n and ld are multiples of 8 floats) and the lane sums
    std::vector<double> acc(Pp * Pp * kW);
    std::vector<float> buf(Pp * (kChunk + kSkew) + 8);
    float* x = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buf.data()) + 31) & ~uintptr_t(31));
    for (int64_t b = begin; b < end; ++b) gram_point(gp + b * P * D, P, D, Pp, x, acc.data(), op + b * P * P, tile);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lcfast, CPU, m) {
  m.impl("row_gram", &row_gram_cpu);
}

}  // namespace lcfast
