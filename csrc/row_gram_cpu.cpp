// CPU kernel of lcfast::row_gram (schema in registration.cpp; Python wrapper and fake
// impl in lcfast/ops/row_gram.py): out[b, i, j] = sum_d g[b, i, d] g[b, j, d] for float32
// g (B, P, D), in float64.
//
// Arithmetic: every product of two float32 values is exact in float64 (24 + 24 bits of
// mantissa < 53), so the only rounding is the float64 summation: four lanes each sum
// the terms d = l mod 4 in order of d, then (l0 + l1) + (l2 + l3).  |out - exact| <=
// (D - 1) 2^-53 sum_d |g_id g_jd| <= (D - 1) 2^-53 |g_i| |g_j| (tests/test_row_gram_op.py
// checks D 2^-52 against torch's float64 Gram).  The AVX2 kernel and the portable loop
// do these same operations (an fma of an exact product rounds like the add), so they
// give the same bits.  Only j <= i is computed; out[j, i] is a copy (exactly symmetric).
//
// Layout of the work: one point per iteration of at::parallel_for.  Its rows are
// converted to float64, kChunk columns at a time, into a scratch block (zero rows and
// columns pad P and the chunk to the tile sizes), then tiles of kR x kC rows (kR*kC lane
// accumulators + kR rows + 1 stream = 16 ymm registers) run over the chunk, their lane
// accumulators kept in memory between chunks (loading them back and going on is the same
// running sum).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LCFAST_ROW_GRAM_AVX2 1
#endif

namespace lcfast {
namespace {

constexpr int64_t kR = 3, kC = 4, kLanes = 4;
// Columns converted per chunk: 28 padded rows x 512 doubles = 112 KiB, in L2.
// (Unmeasured against other sizes.)
constexpr int64_t kChunk = 512;
// Row stride of the chunk: n + kSkew doubles, so that the 7 rows a tile reads are not all
// 4 KiB apart (same L1 sets, 4K aliasing of loads and stores).
constexpr int64_t kSkew = 8;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// acc[(i * Pp + j) * 4 + l] += sum over d = l mod 4 of x[i][d] x[j][d], for the tile of
// rows i0 .. i0 + kR - 1, j0 .. j0 + kC - 1; x is the (Pp, n) chunk (row stride ld; n
// and ld multiples of 4, 32-byte aligned rows).
using TileFn = void (*)(const double* x, int64_t n, int64_t ld, int64_t i0, int64_t j0, int64_t Pp, double* acc);

void tile_portable(const double* x, int64_t n, int64_t ld, int64_t i0, int64_t j0, int64_t Pp, double* acc) {
  for (int64_t r = 0; r < kR; ++r) {
    const double* a = x + (i0 + r) * ld;
    for (int64_t c = 0; c < kC; ++c) {
      const double* b = x + (j0 + c) * ld;
      double* s = acc + ((i0 + r) * Pp + j0 + c) * kLanes;
      double s0 = s[0], s1 = s[1], s2 = s[2], s3 = s[3];
      for (int64_t d = 0; d < n; d += kLanes) {
        s0 += a[d] * b[d];
        s1 += a[d + 1] * b[d + 1];
        s2 += a[d + 2] * b[d + 2];
        s3 += a[d + 3] * b[d + 3];
      }
      s[0] = s0, s[1] = s1, s[2] = s2, s[3] = s3;
    }
  }
}

// dst[0, m) = src[0, m) as doubles.
using ConvertFn = void (*)(const float* src, int64_t m, double* dst);

void convert_portable(const float* src, int64_t m, double* dst) {
  for (int64_t d = 0; d < m; ++d) dst[d] = double(src[d]);
}

#ifdef LCFAST_ROW_GRAM_AVX2
// (GCC's code for the portable loop, baseline ISA, stored pairs of floats to the stack and
// reloaded them: the conversion took longer than the tiles, perf, 1000 x 25 x 784.)
__attribute__((target("avx2,fma"))) void convert_avx2(const float* src, int64_t m, double* dst) {
  int64_t d = 0;
  for (; d + 4 <= m; d += 4) _mm256_store_pd(dst + d, _mm256_cvtps_pd(_mm_loadu_ps(src + d)));
  for (; d < m; ++d) dst[d] = double(src[d]);
}

__attribute__((target("avx2,fma"))) void tile_avx2(const double* x, int64_t n, int64_t ld, int64_t i0, int64_t j0,
                                                   int64_t Pp, double* acc) {
  __m256d s[kR][kC];
  const double* a[kR];
  const double* b[kC];
  for (int64_t r = 0; r < kR; ++r) a[r] = x + (i0 + r) * ld;
  for (int64_t c = 0; c < kC; ++c) b[c] = x + (j0 + c) * ld;
#pragma GCC unroll 4
  for (int64_t r = 0; r < kR; ++r)
#pragma GCC unroll 4
    for (int64_t c = 0; c < kC; ++c) s[r][c] = _mm256_loadu_pd(acc + ((i0 + r) * Pp + j0 + c) * kLanes);
  for (int64_t d = 0; d < n; d += kLanes) {
    __m256d va[kR];
#pragma GCC unroll 4
    for (int64_t r = 0; r < kR; ++r) va[r] = _mm256_load_pd(a[r] + d);
#pragma GCC unroll 4
    for (int64_t c = 0; c < kC; ++c) {
      const __m256d vb = _mm256_load_pd(b[c] + d);
#pragma GCC unroll 4
      for (int64_t r = 0; r < kR; ++r) s[r][c] = _mm256_fmadd_pd(va[r], vb, s[r][c]);
    }
  }
#pragma GCC unroll 4
  for (int64_t r = 0; r < kR; ++r)
#pragma GCC unroll 4
    for (int64_t c = 0; c < kC; ++c) _mm256_storeu_pd(acc + ((i0 + r) * Pp + j0 + c) * kLanes, s[r][c]);
}
#endif

struct Kernels {
  ConvertFn convert;
  TileFn tile;
};

Kernels pick_kernels() {
#ifdef LCFAST_ROW_GRAM_AVX2
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return {&convert_avx2, &tile_avx2};
#endif
  return {&convert_portable, &tile_portable};
}

// The Gram matrix of one point: rows g (P, D) float32 -> out (P, P) float64.
// x: scratch of Pp * kChunk doubles (32-byte aligned, rows >= P zero); acc: Pp * Pp * 4.
void gram_point(const float* g, int64_t P, int64_t D, int64_t Pp, double* x, double* acc, double* out,
                const Kernels& k) {
  std::fill(acc, acc + Pp * Pp * kLanes, 0.0);
  for (int64_t d0 = 0; d0 < D; d0 += kChunk) {
    const int64_t m = std::min(kChunk, D - d0), n = round_up(m, kLanes), ld = n + kSkew;
    for (int64_t i = 0; i < P; ++i) {
      double* dst = x + i * ld;
      k.convert(g + i * D + d0, m, dst);
      for (int64_t d = m; d < n; ++d) dst[d] = 0.0;
    }
    // rows P .. Pp - 1 of this chunk's layout: zero
    std::fill(x + P * ld, x + Pp * ld, 0.0);
    for (int64_t i0 = 0; i0 < P; i0 += kR)
      for (int64_t j0 = 0; j0 <= std::min(i0 + kR - 1, P - 1); j0 += kC) k.tile(x, n, ld, i0, j0, Pp, acc);
  }
  for (int64_t i = 0; i < P; ++i)
    for (int64_t j = 0; j <= i; ++j) {
      const double* s = acc + (i * Pp + j) * kLanes;
      out[i * P + j] = out[j * P + i] = (s[0] + s[1]) + (s[2] + s[3]);
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
  static const Kernels kernels = pick_kernels();
  const int64_t Pp = std::max(round_up(P, kR), round_up(P, kC));
  const float* gp = g.data_ptr<float>();
  double* op = out.data_ptr<double>();
  // Points per task: at least ~2^22 multiply-adds (~1 ms), so that small batches do not
  // wake the thread pool (unmeasured).
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 22) / std::max<int64_t>(1, P * P * D / 2));
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    // scratch: 32-byte aligned chunk rows (n is a multiple of 4 doubles)
    std::vector<double> buf(Pp * (kChunk + kSkew) + Pp * Pp * kLanes + 4);
    double* x = reinterpret_cast<double*>((reinterpret_cast<uintptr_t>(buf.data()) + 31) & ~uintptr_t(31));
    double* acc = x + Pp * (kChunk + kSkew);
    for (int64_t b = begin; b < end; ++b) gram_point(gp + b * P * D, P, D, Pp, x, acc, op + b * P * P, kernels);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lcfast, CPU, m) {
  m.impl("row_gram", &row_gram_cpu);
}

}  // namespace lcfast
