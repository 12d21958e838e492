// CUDA kernel of lcfast::crossing_act / crossing_act_ / crossing_count (schemas in
// ../registration.cpp, shared host logic in ../crossing_act.h).
//
// A CUDA block owns (point p, tile of kThreads neurons); each thread owns one neuron,
// walks the V rows of its point (coalesced across the warp: neighbouring threads read
// neighbouring neurons), keeps three OR-flags, writes act(z) and the block sums the
// crossed flags with __syncthreads_count; one int64 atomicAdd per block and point.
// Tasks are grid-strided over n * tiles with int64 indices.
#include "../crossing_act.h"

#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace lcfast {
namespace {

// 256 threads: enough warps per SM to hide load latency with V sequential loads per
// thread, small enough that __syncthreads_count does not dominate for F ~ 200.
constexpr int kThreads = 256;
// Grid cap: tasks beyond it are grid-strided (H100/H200 have 132 SMs; 16 resident
// blocks of 256 threads each fill them many times over).
constexpr int64_t kMaxBlocks = int64_t(1) << 16;

template <int ACT, typename scalar_t, typename acc_t>
__device__ __forceinline__ scalar_t activate(scalar_t x, acc_t slope) {
  const acc_t z = static_cast<acc_t>(x);
  if constexpr (ACT == kIdentity) {
    return x;
  } else if constexpr (ACT == kRelu) {
    // PyTorch's CUDA ReLU (clamp_min(x, 0): NaN ? x : max(x, 0)) turns -0.0 into +0.0 and
    // keeps NaN; its CPU ReLU keeps -0.0 (so does the CPU kernel, matching it there)
    return (z > acc_t(0) || z != z) ? x : scalar_t(0);
  } else if constexpr (ACT == kLeakyRelu) {
    return z > acc_t(0) ? x : static_cast<scalar_t>(z * slope);
  } else if constexpr (ACT == kGelu) {
    const acc_t kAlpha = acc_t(M_SQRT1_2);
    return static_cast<scalar_t>(z * acc_t(0.5) * (acc_t(1) + erf(z * kAlpha)));
  } else {
    const acc_t kBeta = acc_t(M_SQRT2 * M_2_SQRTPI * 0.5);
    const acc_t kKappa = acc_t(0.044715);
    const acc_t inner = kBeta * (z + kKappa * z * z * z);
    return static_cast<scalar_t>(acc_t(0.5) * z * (acc_t(1) + tanh(inner)));
  }
}

template <typename scalar_t, int ACT, bool WRITE>
__global__ void __launch_bounds__(kThreads)
crossing_kernel(const scalar_t* __restrict__ in, scalar_t* out, int64_t n, int64_t V, int64_t F,
                int64_t tiles, at::opmath_type<scalar_t> slope, unsigned long long* counts) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t tasks = n * tiles;
  for (int64_t t = blockIdx.x; t < tasks; t += gridDim.x) {
    const int64_t p = t / tiles;
    const int64_t j = (t - p * tiles) * kThreads + threadIdx.x;
    int crossed = 0;
    if (j < F) {
      bool fa = false, fb = false, fc = false;
      int64_t off = p * V * F + j;
      for (int64_t v = 0; v < V; ++v, off += F) {
        const scalar_t x = in[off];
        const acc_t z = static_cast<acc_t>(x);
        fa |= !(z > acc_t(0));
        fb |= !(z < acc_t(0));
        fc |= (z != acc_t(0));
        if constexpr (WRITE) out[off] = activate<ACT, scalar_t, acc_t>(x, slope);
      }
      crossed = fa && fb && fc;
    }
    const int total = __syncthreads_count(crossed);
    if (threadIdx.x == 0 && total) atomicAdd(counts + p, static_cast<unsigned long long>(total));
  }
}

template <typename scalar_t, int ACT, bool WRITE>
void launch_one(const at::Tensor& src, const at::Tensor& out, const Geometry& g, double slope,
                const at::Tensor& counts) {
  const int64_t tiles = (g.F + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(std::min<int64_t>(g.n * tiles, kMaxBlocks));
  crossing_kernel<scalar_t, ACT, WRITE><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      src.const_data_ptr<scalar_t>(), WRITE ? out.data_ptr<scalar_t>() : nullptr, g.n, g.V, g.F, tiles,
      static_cast<at::opmath_type<scalar_t>>(slope),
      reinterpret_cast<unsigned long long*>(counts.data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void run_cuda(const at::Tensor& src, const at::Tensor& out, const Geometry& g, Act act, double slope,
              const at::Tensor& counts, bool write) {
  dispatch_act(src.scalar_type(), act, write, [&]<typename scalar_t, int ACT, bool WRITE>() {
    launch_one<scalar_t, ACT, WRITE>(src, out, g, slope, counts);
  });
}

std::tuple<at::Tensor, at::Tensor> crossing_act_cuda(const at::Tensor& pre, int64_t V, c10::string_view act,
                                                      double slope) {
  c10::cuda::CUDAGuard guard(pre.device());
  return crossing_act_host(pre, V, act, slope, run_cuda);
}

at::Tensor crossing_act_inplace_cuda(at::Tensor& pre, int64_t V, c10::string_view act, double slope) {
  c10::cuda::CUDAGuard guard(pre.device());
  return crossing_act_inplace_host(pre, V, act, slope, run_cuda);
}

at::Tensor crossing_count_cuda(const at::Tensor& pre, int64_t V) {
  c10::cuda::CUDAGuard guard(pre.device());
  return crossing_count_host(pre, V, run_cuda);
}

}  // namespace

TORCH_LIBRARY_IMPL(lcfast, CUDA, m) {
  m.impl("crossing_act", &crossing_act_cuda);
  m.impl("crossing_act_", &crossing_act_inplace_cuda);
  m.impl("crossing_count", &crossing_count_cuda);
}

}  // namespace lcfast
