// The counter-based Gaussian of lcfast.frames (docs/design.md#frames), written once
// for the CPU (counter_normal_cpu.cpp) and CUDA (cuda/counter_normal_cuda.cu) kernels.
//
// lcfast::counter_normal(keys, count) -> out
//   keys:  int64 (N,), the per-point keys mix(seed * golden + id) (lcfast.frames.frame_keys)
//   out:   float32 (N, count); out[n, j] is value j of point n's stream:
//          h = mix(key + (j / 2 + 1) * golden)                (splitmix64, integer: exact)
//          u1 = (h >> 40 + 0.5) * 2^-24,  u2 = (h & 0xFFFFFF + 0.5) * 2^-24
//          rad = sqrt(-2 log u1),  ang = fl32(2 pi) * u2
//          out = rad * cos(ang) (j even),  rad * sin(ang) (j odd),  all in float32.
//
// The integer part is bit-identical to the torch code of lcfast.frames.  log, sin and
// cos are the Cephes single-precision polynomials (about 1 ulp each), evaluated with
// explicit fmaf for every multiply-add and no other multiply feeding an add, so that
// the compiler cannot contract differently on the host and on the device: every IEEE
// operation here (add, mul, fma, sqrt, int<->float) is correctly rounded on both, so a
// CPU and a CUDA build give the same bits (by construction; not run here: no GPU).
// Checked on the host: 4e7 values hash to the same bits built with -march=x86-64
// (fmaf from libm), x86-64-v3 with -ffp-contract=off, =fast and with -ffast-math.
// The torch fallback (ATen's log/cos/sin) differs from these in the last bits; the
// largest difference is measured in tests/test_frames.py.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define LCFAST_HD __host__ __device__ __forceinline__
#else
#define LCFAST_HD inline __attribute__((always_inline))
#endif

namespace lcfast {
namespace frames {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;

LCFAST_HD uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

LCFAST_HD float fma_f(float a, float b, float c) {
#ifdef __CUDA_ARCH__
  return __fmaf_rn(a, b, c);
#else
  return __builtin_fmaf(a, b, c);
#endif
}

// a plain product that the device compiler may not fuse with a following add
LCFAST_HD float mul_f(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

LCFAST_HD float add_f(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

LCFAST_HD uint32_t float_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

LCFAST_HD float bits_float(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// Natural log of a normal positive float (Cephes logf, branch-free).
LCFAST_HD float log_f(float x) {
  const uint32_t b = float_bits(x);
  int32_t e = int32_t(b >> 23) - 126;                      // x = m * 2^e, m in [0.5, 1)
  float m = bits_float((b & 0x007FFFFFu) | 0x3F000000u);
  const int32_t lo = m < 0.707106781186547524f;            // SQRTHF
  e -= lo;
  m = mul_f(m, float(1 + lo));                             // exact: m or 2 m
  const float f = add_f(m, -1.0f);                         // exact (Sterbenz)
  const float z = mul_f(f, f);
  float y = 7.0376836292E-2f;
  y = fma_f(y, f, -1.1514610310E-1f);
  y = fma_f(y, f, 1.1676998740E-1f);
  y = fma_f(y, f, -1.2420140846E-1f);
  y = fma_f(y, f, 1.4249322787E-1f);
  y = fma_f(y, f, -1.6668057665E-1f);
  y = fma_f(y, f, 2.0000714765E-1f);
  y = fma_f(y, f, -2.4999993993E-1f);
  y = fma_f(y, f, 3.3333331174E-1f);
  y = mul_f(mul_f(y, f), z);
  const float ef = float(e);
  y = fma_f(ef, -2.12194440e-4f, y);
  y = fma_f(z, -0.5f, y);
  return fma_f(ef, 0.693359375f, add_f(f, y));
}

// sin and cos of x in [0, 8) (Cephes sinf/cosf: reduction to [-pi/4, pi/4] by a
// three-part pi/4, branch-free quadrant selection).
LCFAST_HD void sincos_f(float x, float* s, float* c) {
  int32_t j = int32_t(mul_f(x, 1.27323954473516f));        // 4 / pi; x >= 0: truncation
  j = (j + 1) & ~1;
  const float y = float(j);
  float r = fma_f(y, -0.78515625f, x);
  r = fma_f(y, -2.4187564849853515625e-4f, r);
  r = fma_f(y, -3.77489497744594108e-8f, r);
  const float z = mul_f(r, r);
  float ps = -1.9515295891E-4f;                            // sin(r) = r + r z P(z)
  ps = fma_f(ps, z, 8.3321608736E-3f);
  ps = fma_f(ps, z, -1.6666654611E-1f);
  ps = fma_f(mul_f(ps, z), r, r);
  float pc = 2.443315711809948E-5f;                        // cos(r) = 1 - z/2 + z^2 Q(z)
  pc = fma_f(pc, z, -1.388731625493765E-3f);
  pc = fma_f(pc, z, 4.166664568298827E-2f);
  pc = fma_f(mul_f(pc, z), z, fma_f(z, -0.5f, 1.0f));
  const int32_t q = (j >> 1) & 3;                          // quadrant of x
  const bool swap = q & 1;
  const float sv = swap ? pc : ps, cv = swap ? ps : pc;
  *s = (q & 2) ? -sv : sv;                                 // sin negative in quadrants 2, 3
  *c = ((q + 1) & 2) ? -cv : cv;                           // cos negative in quadrants 1, 2
}

// The two values of pair m of the stream of `key`.
LCFAST_HD void normal_pair(uint64_t key, int64_t m, float* g0, float* g1) {
  const uint64_t h = mix64(key + uint64_t(m + 1) * kGolden);
  const float u1 = mul_f(add_f(float(int32_t(h >> 40)), 0.5f), 5.9604644775390625e-8f);
  const float u2 = mul_f(add_f(float(int32_t(h & 0xFFFFFFu)), 0.5f), 5.9604644775390625e-8f);
  float rad = mul_f(-2.0f, log_f(u1));
#ifdef __CUDA_ARCH__
  rad = __fsqrt_rn(rad);
#else
  rad = __builtin_sqrtf(rad);
#endif
  float s, c;
  sincos_f(mul_f(6.28318530717958647692f, u2), &s, &c);
  *g0 = mul_f(rad, c);
  *g1 = mul_f(rad, s);
}

}  // namespace frames

// Host side, shared by both kernels: checks the arguments and allocates the output
// (N, count) float32 on the keys' device.
inline at::Tensor counter_normal_empty(const at::Tensor& keys, int64_t count) {
  TORCH_CHECK(keys.dim() == 1 && keys.scalar_type() == at::kLong,
              "lcfast::counter_normal: keys must be a 1-d int64 tensor, got ", keys.scalar_type(), " of shape ",
              keys.sizes());
  TORCH_CHECK(count >= 0, "lcfast::counter_normal: count must be >= 0, got ", count);
  return at::empty({keys.size(0), count}, keys.options().dtype(at::kFloat));
}

}  // namespace lcfast
