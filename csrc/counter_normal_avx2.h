// AVX2+FMA kernel of lcfast::counter_normal on the CPU: counter_normal.h's normal_pair
// for 8 consecutive pairs at once, written with intrinsics, operation for operation the
// same IEEE arithmetic, so the same bits (tests/test_frames.py compares the op with an
// independent numpy evaluation of the recipe with correctly rounded fma; a standalone
// check compared it with normal_pair on 1e6 values, random row lengths and ranges, and
// pair offsets near 2^31, 2^40 and 2^62).
//
// Measured (AMD EPYC Zen 3, 2 cores, Dec 2026, load 4.7, CPU time of one thread for
// 1000 rows x 19,600 values, output already paged in): GCC's own vectorisation of the
// portable loop (target_clones x86-64-v3) 2.4 ns a value; this kernel with one group of
// 8 pairs 1.6 ns, with 4 groups in lock step 1.1 ns (3 groups 1.25, 6 groups 1.25,
// 8 groups 1.6-2.5: spills).  Why: AVX2 has no 64-bit multiply, so each splitmix64
// product is three 32x32->64 vpmuludq (exact, wrapping like the scalar product); and
// log's Horner chain (kept: reassociating would change bits) is long, so that with one
// group the 64-entry FP scheduler fills with waiting operations (llvm-mca -mcpu=znver3:
// 73 cycles per 8 pairs, 66% of dispatch stalls "scheduler full"; 51 with 4 groups).
// Every step is therefore applied to K independent groups before the next step.
// Hashing on the scalar integer units instead (a tried variant, software-pipelined one
// block ahead) measured the same as 4 groups, so the hash stays in vector registers.
// Layout: pairs m, m+2, m+4, m+6 sit in one register of 64-bit lanes and m+1, m+3, m+5,
// m+7 in the other, so that one blend gives the eight 24-bit halves in pair order; the
// values are stored interleaved with unpack + permute.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#define LCFAST_HAVE_AVX2_KERNEL 1

#include "counter_normal.h"

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace lcfast {
namespace frames {

#define LCFAST_AVX2 __attribute__((target("avx2,fma")))

// Every step below is applied to K independent groups of 8 pairs before the next step
// (the loops over k unroll fully; arrays of K registers).
#define LCFAST_EACH _Pragma("GCC unroll 8") for (int k = 0; k < K; ++k)

// z * c mod 2^64 in each 64-bit lane, c given as its 32-bit halves (splat).
template <int K>
LCFAST_AVX2 inline void mul64_avx2(__m256i* z, __m256i c_lo, __m256i c_hi) {
  __m256i lo[K], cross[K];
  LCFAST_EACH lo[k] = _mm256_mul_epu32(z[k], c_lo);                                  // zl * cl
  LCFAST_EACH cross[k] = _mm256_mul_epu32(_mm256_srli_epi64(z[k], 32), c_lo);       // zh * cl
  LCFAST_EACH cross[k] = _mm256_add_epi64(cross[k], _mm256_mul_epu32(z[k], c_hi));  // + zl * ch
  LCFAST_EACH z[k] = _mm256_add_epi64(lo[k], _mm256_slli_epi64(cross[k], 32));
}

template <int K>
LCFAST_AVX2 inline void mix64_avx2(__m256i* z) {
  const __m256i c1l = _mm256_set1_epi64x(0x1CE4E5B9), c1h = _mm256_set1_epi64x(0xBF58476D);
  const __m256i c2l = _mm256_set1_epi64x(0x133111EB), c2h = _mm256_set1_epi64x(0x94D049BB);
  LCFAST_EACH z[k] = _mm256_xor_si256(z[k], _mm256_srli_epi64(z[k], 30));
  mul64_avx2<K>(z, c1l, c1h);
  LCFAST_EACH z[k] = _mm256_xor_si256(z[k], _mm256_srli_epi64(z[k], 27));
  mul64_avx2<K>(z, c2l, c2h);
  LCFAST_EACH z[k] = _mm256_xor_si256(z[k], _mm256_srli_epi64(z[k], 31));
}

// log_f of counter_normal.h, in place.
template <int K>
LCFAST_AVX2 inline void log_avx2(__m256* x) {
  __m256i e[K];
  __m256 m[K], f[K], z[K], y[K], ef[K];
  LCFAST_EACH {
    const __m256i b = _mm256_castps_si256(x[k]);
    e[k] = _mm256_sub_epi32(_mm256_srli_epi32(b, 23), _mm256_set1_epi32(126));
    m[k] = _mm256_castsi256_ps(
        _mm256_or_si256(_mm256_and_si256(b, _mm256_set1_epi32(0x007FFFFF)), _mm256_set1_epi32(0x3F000000)));
  }
  LCFAST_EACH {
    const __m256 lo = _mm256_cmp_ps(m[k], _mm256_set1_ps(0.707106781186547524f), _CMP_LT_OQ);
    e[k] = _mm256_add_epi32(e[k], _mm256_castps_si256(lo));     // e -= lo (lo = -1)
    m[k] = _mm256_add_ps(m[k], _mm256_and_ps(m[k], lo));        // m * (1 + lo): exact
  }
  LCFAST_EACH f[k] = _mm256_add_ps(m[k], _mm256_set1_ps(-1.0f));
  LCFAST_EACH z[k] = _mm256_mul_ps(f[k], f[k]);
  LCFAST_EACH y[k] = _mm256_fmadd_ps(_mm256_set1_ps(7.0376836292E-2f), f[k], _mm256_set1_ps(-1.1514610310E-1f));
  LCFAST_EACH y[k] = _mm256_fmadd_ps(y[k], f[k], _mm256_set1_ps(1.1676998740E-1f));
  LCFAST_EACH y[k] = _mm256_fmadd_ps(y[k], f[k], _mm256_set1_ps(-1.2420140846E-1f));
  LCFAST_EACH y[k] = _mm256_fmadd_ps(y[k], f[k], _mm256_set1_ps(1.4249322787E-1f));
  LCFAST_EACH y[k] = _mm256_fmadd_ps(y[k], f[k], _mm256_set1_ps(-1.6668057665E-1f));
  LCFAST_EACH y[k] = _mm256_fmadd_ps(y[k], f[k], _mm256_set1_ps(2.0000714765E-1f));
  LCFAST_EACH y[k] = _mm256_fmadd_ps(y[k], f[k], _mm256_set1_ps(-2.4999993993E-1f));
  LCFAST_EACH y[k] = _mm256_fmadd_ps(y[k], f[k], _mm256_set1_ps(3.3333331174E-1f));
  LCFAST_EACH y[k] = _mm256_mul_ps(_mm256_mul_ps(y[k], f[k]), z[k]);
  LCFAST_EACH ef[k] = _mm256_cvtepi32_ps(e[k]);
  LCFAST_EACH y[k] = _mm256_fmadd_ps(ef[k], _mm256_set1_ps(-2.12194440e-4f), y[k]);
  LCFAST_EACH y[k] = _mm256_fmadd_ps(z[k], _mm256_set1_ps(-0.5f), y[k]);
  LCFAST_EACH x[k] = _mm256_fmadd_ps(ef[k], _mm256_set1_ps(0.693359375f), _mm256_add_ps(f[k], y[k]));
}

// sincos_f of counter_normal.h (x in [0, 8)).
template <int K>
LCFAST_AVX2 inline void sincos_avx2(const __m256* x, __m256* s, __m256* c) {
  __m256i j[K];
  __m256 y[K], r[K], z[K], ps[K], pc[K];
  LCFAST_EACH j[k] = _mm256_cvttps_epi32(_mm256_mul_ps(x[k], _mm256_set1_ps(1.27323954473516f)));
  LCFAST_EACH j[k] = _mm256_and_si256(_mm256_add_epi32(j[k], _mm256_set1_epi32(1)), _mm256_set1_epi32(~1));
  LCFAST_EACH y[k] = _mm256_cvtepi32_ps(j[k]);
  LCFAST_EACH r[k] = _mm256_fmadd_ps(y[k], _mm256_set1_ps(-0.78515625f), x[k]);
  LCFAST_EACH r[k] = _mm256_fmadd_ps(y[k], _mm256_set1_ps(-2.4187564849853515625e-4f), r[k]);
  LCFAST_EACH r[k] = _mm256_fmadd_ps(y[k], _mm256_set1_ps(-3.77489497744594108e-8f), r[k]);
  LCFAST_EACH z[k] = _mm256_mul_ps(r[k], r[k]);
  LCFAST_EACH {
    ps[k] = _mm256_fmadd_ps(_mm256_set1_ps(-1.9515295891E-4f), z[k], _mm256_set1_ps(8.3321608736E-3f));
    pc[k] = _mm256_fmadd_ps(_mm256_set1_ps(2.443315711809948E-5f), z[k], _mm256_set1_ps(-1.388731625493765E-3f));
  }
  LCFAST_EACH {
    ps[k] = _mm256_fmadd_ps(ps[k], z[k], _mm256_set1_ps(-1.6666654611E-1f));
    pc[k] = _mm256_fmadd_ps(pc[k], z[k], _mm256_set1_ps(4.166664568298827E-2f));
  }
  LCFAST_EACH {
    ps[k] = _mm256_fmadd_ps(_mm256_mul_ps(ps[k], z[k]), r[k], r[k]);
    pc[k] = _mm256_fmadd_ps(_mm256_mul_ps(pc[k], z[k]), z[k],
                            _mm256_fmadd_ps(z[k], _mm256_set1_ps(-0.5f), _mm256_set1_ps(1.0f)));
  }
  const __m256i sign = _mm256_set1_epi32(int32_t(0x80000000u));
  LCFAST_EACH {
    const __m256i q = _mm256_srli_epi32(j[k], 1);                          // quadrant: bits 0, 1
    const __m256 swap = _mm256_castsi256_ps(_mm256_slli_epi32(q, 31));     // sign bit = q & 1
    const __m256 sv = _mm256_blendv_ps(ps[k], pc[k], swap), cv = _mm256_blendv_ps(pc[k], ps[k], swap);
    // negation = sign flip: bit 1 of q (sin), bit 1 of q + 1 (cos), moved to the sign bit
    s[k] = _mm256_xor_ps(sv, _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(q, 30), sign)));
    c[k] = _mm256_xor_ps(cv, _mm256_castsi256_ps(_mm256_and_si256(
                                 _mm256_slli_epi32(_mm256_add_epi32(q, _mm256_set1_epi32(1)), 30), sign)));
  }
}

// The values of K groups of 8 pairs.  Group k: ev[k] holds the counters
// key + (m + 1 + t) golden of its pairs t = 0, 2, 4, 6, od[k] those of t = 1, 3, 5, 7;
// out[2k] receives g0, g1 of pairs m .. m + 3 interleaved, out[2k + 1] of m + 4 .. m + 7.
template <int K>
LCFAST_AVX2 inline void normal8_avx2(const __m256i* ev, const __m256i* od, __m256* out) {
  __m256i he[K], ho[K];
  __m256 u1[K], u2[K], s[K], c[K];
  LCFAST_EACH he[k] = ev[k];
  LCFAST_EACH ho[k] = od[k];
  mix64_avx2<K>(he);
  mix64_avx2<K>(ho);
  const __m256 half = _mm256_set1_ps(0.5f), scale = _mm256_set1_ps(5.9604644775390625e-8f);
  LCFAST_EACH {
    // 32-bit lane 2t from he's lane t, lane 2t + 1 from ho's: pairs in order
    const __m256i hi32 = _mm256_blend_epi32(_mm256_srli_epi64(he[k], 32), ho[k], 0xAA);
    const __m256i lo32 = _mm256_blend_epi32(he[k], _mm256_slli_epi64(ho[k], 32), 0xAA);
    u1[k] = _mm256_mul_ps(_mm256_add_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(hi32, 8)), half), scale);
    u2[k] = _mm256_mul_ps(
        _mm256_add_ps(_mm256_cvtepi32_ps(_mm256_and_si256(lo32, _mm256_set1_epi32(0xFFFFFF))), half), scale);
  }
  log_avx2<K>(u1);
  LCFAST_EACH u1[k] = _mm256_sqrt_ps(_mm256_mul_ps(_mm256_set1_ps(-2.0f), u1[k]));  // rad
  LCFAST_EACH u2[k] = _mm256_mul_ps(_mm256_set1_ps(6.28318530717958647692f), u2[k]);
  sincos_avx2<K>(u2, s, c);
  LCFAST_EACH {
    const __m256 g0 = _mm256_mul_ps(u1[k], c[k]), g1 = _mm256_mul_ps(u1[k], s[k]);
    const __m256 a = _mm256_unpacklo_ps(g0, g1), b = _mm256_unpackhi_ps(g0, g1);  // pairs 0 1 4 5, 2 3 6 7
    out[2 * k] = _mm256_permute2f128_ps(a, b, 0x20);
    out[2 * k + 1] = _mm256_permute2f128_ps(a, b, 0x31);
  }
}

// Groups of 8 pairs computed in lock step (4: measured best, see the top of this file).
#ifndef LCFAST_AVX2_GROUPS
#define LCFAST_AVX2_GROUPS 4
#endif

// Pairs [m0, m1) of the stream of `key` into `row` (count values in all): groups of 8
// pairs whose 16 values are all in the row go through the vector code, the rest
// (fewer than 8 pairs a call, or an odd row's last pair) through normal_pair.
LCFAST_AVX2 inline void fill_pairs_avx2(uint64_t key, int64_t m0, int64_t m1, float* row, int64_t count) {
  const int64_t full = std::min(m1, count / 2);  // pairs before `full` have both values in the row
  int64_t m = m0;
  if (full - m >= 8) {
    const uint64_t g = kGolden, c0 = key + uint64_t(m + 1) * g;
    const __m256i one = _mm256_set1_epi64x(int64_t(g)), step = _mm256_set1_epi64x(int64_t(8 * g));
    __m256i ev = _mm256_set_epi64x(int64_t(c0 + 6 * g), int64_t(c0 + 4 * g), int64_t(c0 + 2 * g), int64_t(c0));
    constexpr int K = LCFAST_AVX2_GROUPS;
    for (; m + 8 * K <= full; m += 8 * K) {
      __m256i e[K], o[K];
      __m256 out[2 * K];
      LCFAST_EACH {
        e[k] = ev;
        o[k] = _mm256_add_epi64(ev, one);
        ev = _mm256_add_epi64(ev, step);
      }
      normal8_avx2<K>(e, o, out);
      _Pragma("GCC unroll 8") for (int k = 0; k < 2 * K; ++k) _mm256_storeu_ps(row + 2 * m + 8 * k, out[k]);
    }
    for (; m + 8 <= full; m += 8) {
      const __m256i o = _mm256_add_epi64(ev, one);
      __m256 out[2];
      normal8_avx2<1>(&ev, &o, out);
      ev = _mm256_add_epi64(ev, step);
      _mm256_storeu_ps(row + 2 * m, out[0]);
      _mm256_storeu_ps(row + 2 * m + 8, out[1]);
    }
  }
  for (; m < m1; ++m) {
    float g0, g1;
    normal_pair(key, m, &g0, &g1);
    row[2 * m] = g0;
    if (2 * m + 1 < count) row[2 * m + 1] = g1;
  }
}

#undef LCFAST_EACH
#undef LCFAST_AVX2

}  // namespace frames
}  // namespace lcfast

#endif  // x86-64 GCC/Clang
