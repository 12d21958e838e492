// CUDA kernel of lcfast::absmax_rows (schema in ../registration.cpp, the arithmetic and
// the layout rule in ../absmax_rows.h, the same integer max as the CPU kernel's, so both
// give the same bits).
//
// One thread per (point, neuron) of the flattened output, grid-strided with int64
// indices; a thread walks the point's rows.  Neighbouring threads read neighbouring
// neurons of a row (stride 1 by the layout rule): coalesced loads, and one store each.
#include "../absmax_rows.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

namespace lcfast {
namespace {

// Unmeasured (no GPU in the session that wrote this): 256 threads, a grid capped at
// 2^16 blocks (H200: 132 SMs) and grid-strided beyond it.
constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 16;

template <typename T>
__global__ void __launch_bounds__(kThreads)
absmax_rows_kernel(const T* __restrict__ a, T* __restrict__ out, int64_t F, int64_t sn, int64_t sp, int64_t rows,
                   int64_t total) {
  constexpr T mask = absmax::Lane<sizeof(T)>::kMask;
  for (int64_t q = blockIdx.x * int64_t(kThreads) + threadIdx.x; q < total; q += int64_t(gridDim.x) * kThreads) {
    const int64_t n = q / F, f = q - n * F;
    const T* src = a + n * sn + f;
    T acc = src[0] & mask;
    for (int64_t p = 1; p < rows; ++p) acc = absmax::step<T>(acc, src[p * sp], mask);
    out[q] = acc;
  }
}

template <typename T>
void launch(const at::Tensor& a, int64_t rows, at::Tensor& out) {
  const int64_t total = out.numel();
  const int blocks = static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks));
  absmax_rows_kernel<T><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const T*>(a.const_data_ptr()), reinterpret_cast<T*>(out.data_ptr()), a.size(2),
      a.stride(0), a.stride(1), rows, total);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor absmax_rows_cuda(const at::Tensor& a, int64_t rows) {
  c10::cuda::CUDAGuard guard(a.device());
  return absmax_rows_host(a, rows, [](auto lane, const at::Tensor& in, int64_t r, at::Tensor& out) {
    launch<decltype(lane)>(in, r, out);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(lcfast, CUDA, m) {
  m.impl("absmax_rows", &absmax_rows_cuda);
}

}  // namespace lcfast
