// CUDA kernel of lcfast::counter_normal (schema in ../registration.cpp, the recipe and
// its arithmetic in ../counter_normal.h, the same code as the CPU kernel's).
//
// One thread per pair of the flattened (point, pair) index, grid-strided with int64
// indices; a thread writes the pair's two values (one at the end of an odd row).
// Neighbouring threads write neighbouring pairs: coalesced 8-byte stores.
#include "../counter_normal.h"

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

__global__ void __launch_bounds__(kThreads)
counter_normal_kernel(const int64_t* __restrict__ keys, float* __restrict__ out, int64_t half, int64_t count,
                      int64_t pairs) {
  for (int64_t q = blockIdx.x * int64_t(kThreads) + threadIdx.x; q < pairs; q += int64_t(gridDim.x) * kThreads) {
    const int64_t p = q / half, m = q - p * half;
    float g0, g1;
    frames::normal_pair(static_cast<uint64_t>(keys[p]), m, &g0, &g1);
    float* row = out + p * count;
    row[2 * m] = g0;
    if (2 * m + 1 < count) row[2 * m + 1] = g1;
  }
}

at::Tensor counter_normal_cuda(const at::Tensor& keys, int64_t count) {
  c10::cuda::CUDAGuard guard(keys.device());
  at::Tensor out = counter_normal_empty(keys, count);
  const at::Tensor k = keys.contiguous();
  const int64_t half = (count + 1) / 2, pairs = k.size(0) * half;
  if (pairs == 0) return out;
  const int blocks = static_cast<int>(std::min<int64_t>((pairs + kThreads - 1) / kThreads, kMaxBlocks));
  counter_normal_kernel<<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      k.const_data_ptr<int64_t>(), out.data_ptr<float>(), half, count, pairs);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lcfast, CUDA, m) {
  m.impl("counter_normal", &counter_normal_cuda);
}

}  // namespace lcfast
