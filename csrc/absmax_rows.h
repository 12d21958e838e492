// The screen reduction of the offsets engine (lcfast/engine/offsets/screen.py), written
// once for the CPU (absmax_rows_cpu.cpp) and CUDA (cuda/absmax_rows_cuda.cu) kernels.
//
// lcfast::absmax_rows(a, rows) -> out
//   a:    (N, R, F) float32 / float64 / bfloat16 / float16, any strides
//   rows: 1 <= rows <= R
//   out:  (N, F) contiguous, a's dtype;  out[n, f] = max_{p < rows} |a[n, p, f]|
//
// Arithmetic on the bits, not the values: |x| is x with the sign bit cleared, and for
// sign-cleared IEEE floats of one width the order of the values is the order of the
// bit patterns read as (non-negative) integers, with every NaN above +inf.  So a max of
// the cleared patterns as integers IS max |x|: exact, the same on any ISA and on the
// device, and a NaN among the rows gives a NaN (the one with the largest payload, sign
// cleared), as torch.maximum(a.amax(1), -a.amin(1)) propagates NaN.  The result differs
// from that expression only in the sign of a zero: all-zero rows give +0.0 here, where
// the torch expression gives +0.0 or -0.0 depending on its vectorised/scalar path
// (measured: torch 2.14 CPU gives -0.0 for F = 1 and some tails of F = 20).
//
// Integer lanes: int16 (bfloat16, float16), int32 (float32), int64 (float64); signed
// integers because the cleared patterns are non-negative and a signed max vectorises
// on more ISAs (SSE2 pmaxsw, AVX2 pmaxsd) than an unsigned one.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <cstdint>

#ifdef __CUDACC__
#define LCFAST_AM_HD __host__ __device__ __forceinline__
#else
#define LCFAST_AM_HD inline __attribute__((always_inline))
#endif

namespace lcfast {
namespace absmax {

// the integer lane of a float width and its mask clearing the sign bit
template <int Bytes> struct Lane;
template <> struct Lane<2> { using T = int16_t; static constexpr T kMask = 0x7FFF; };
template <> struct Lane<4> { using T = int32_t; static constexpr T kMask = 0x7FFFFFFF; };
template <> struct Lane<8> { using T = int64_t; static constexpr T kMask = 0x7FFFFFFFFFFFFFFFLL; };

// one step of the reduction: acc = max(acc, |x|), on the patterns (acc already cleared)
template <typename T>
LCFAST_AM_HD T step(T acc, T x, T mask) {
  x &= mask;
  return x > acc ? x : acc;
}

}  // namespace absmax

// Host side, shared by both kernels: checks the arguments and allocates the output
// (N, F) in a's dtype on a's device.
inline at::Tensor absmax_rows_empty(const at::Tensor& a, int64_t rows) {
  TORCH_CHECK(a.dim() == 3, "lcfast::absmax_rows: a must be 3-d (N, R, F), got shape ", a.sizes());
  const auto st = a.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf,
              "lcfast::absmax_rows: a must be float32, float64, bfloat16 or float16, got ", st);
  TORCH_CHECK(rows >= 1 && rows <= a.size(1), "lcfast::absmax_rows: rows must be in [1, R = ", a.size(1),
              "], got ", rows);
  return at::empty({a.size(0), a.size(2)}, a.options());
}

// The host side of both kernels: checks, allocates, and calls
// run(T{}, input, rows, out) with T the integer lane of a's width, where the input is
// a itself when its neurons are adjacent (stride(2) == 1 or F <= 1; the point and row
// strides are free, e.g. a narrowed or point-permuted view), else a contiguous copy
// (one extra pass).
template <typename Run>
at::Tensor absmax_rows_host(const at::Tensor& a_in, int64_t rows, Run&& run) {
  at::Tensor out = absmax_rows_empty(a_in, rows);
  if (out.numel() == 0) return out;
  const at::Tensor a = (a_in.size(2) <= 1 || a_in.stride(2) == 1) ? a_in : a_in.contiguous();
  switch (a.element_size()) {
    case 2: run(int16_t{}, a, rows, out); break;
    case 4: run(int32_t{}, a, rows, out); break;
    default: run(int64_t{}, a, rows, out); break;
  }
  return out;
}

}  // namespace lcfast
