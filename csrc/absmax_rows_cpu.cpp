// CPU kernel of lcfast::absmax_rows (schema in registration.cpp, the arithmetic and the
// layout rule in absmax_rows.h).
//
// Tasks of at::parallel_for are ranges of the flattened (point, neuron block) index, so
// many small points (MNIST: 1,000 x 200) and a few large ones (a ResNet site: 2 x
// 64*56*56) both use every thread.  A task keeps a block of kBlock neurons' maxima in
// the output row (in L1) and streams the rows of the point over it: one pass over a,
// a loop of integer max the compiler vectorises.
#include "absmax_rows.h"
#include "cpu_clones.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

namespace lcfast {
namespace {

// Neurons per block: 8 KiB of float32 maxima, in L1 while every row is streamed over
// them.  (Unmeasured beyond "a vectorised loop of this length runs at full speed".)
constexpr int64_t kBlock = 2048;
// Elements of a one thread is given at least: about 0.1 ms of streaming, so that one
// small call does not wake the thread pool (at::internal::GRAIN_SIZE is 32768).
// Unmeasured.
constexpr int64_t kGrainElems = 65536;

// Neurons [0, n) of one point: acc[f] = max_{p < rows} |row_p[f]| on the patterns.
// Cloned per ISA (cpu_clones.h): integer max, so every clone computes the same bits.
// The loop alone on (1000, 25, 200) float32, one thread, the 2-core AMD EPYC CI VM
// (AVX2, no AVX-512), load 4.7: 3.5 ms built for SSE2, 1.6-2.4 ms for x86-64-v3.
template <typename T>
LCFAST_CLONES void absmax_block(const T* __restrict__ src, int64_t row_stride, int64_t rows, int64_t n,
                                T* __restrict__ acc) {
  constexpr T mask = absmax::Lane<sizeof(T)>::kMask;
  for (int64_t f = 0; f < n; ++f) acc[f] = src[f] & mask;
  for (int64_t p = 1; p < rows; ++p) {
    const T* r = src + p * row_stride;
    for (int64_t f = 0; f < n; ++f) acc[f] = absmax::step<T>(acc[f], r[f], mask);
  }
}

template <typename T>
void absmax_rows_impl(const at::Tensor& a, int64_t rows, at::Tensor& out) {
  const int64_t N = a.size(0), F = a.size(2);
  const int64_t sn = a.stride(0), sp = a.stride(1);
  const T* ap = reinterpret_cast<const T*>(a.const_data_ptr());
  T* op = reinterpret_cast<T*>(out.data_ptr());
  const int64_t nb = (F + kBlock - 1) / kBlock;
  const int64_t per_task = rows * std::min(F, kBlock);
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, per_task));
  at::parallel_for(0, N * nb, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / nb, f0 = (t - n * nb) * kBlock;
      absmax_block<T>(ap + n * sn + f0, sp, rows, std::min(kBlock, F - f0), op + n * F + f0);
    }
  });
}

at::Tensor absmax_rows_cpu(const at::Tensor& a, int64_t rows) {
  return absmax_rows_host(a, rows, [](auto lane, const at::Tensor& in, int64_t r, at::Tensor& out) {
    absmax_rows_impl<decltype(lane)>(in, r, out);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(lcfast, CPU, m) {
  m.impl("absmax_rows", &absmax_rows_cpu);
}

}  // namespace lcfast
