// CPU kernel of lcfast::crossing_act / crossing_act_ / crossing_count (schemas in
// registration.cpp, shared host logic in crossing_act.h).
//
// One pass: each task owns (point p, block of kBlock neurons).  It walks the V rows of
// the point once; for every row chunk it updates the per-neuron min, max and NaN flag
// and writes act(chunk) while the chunk is in L1, then counts the crossed neurons.  Tasks run on
// at::parallel_for (OpenMP in PyTorch's CPU builds, so torch.set_num_threads
// applies); counts of one point from several blocks are combined with an atomic add
// of int64 partial sums (integer: the result does not depend on the split).
#include "crossing_act.h"
#include "cpu_clones.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <type_traits>

namespace lcfast {
namespace {

// Neurons per task.  Measured on the 2-core Xeon (AVX-512) CI machine, float32, V = 50,
// one thread, CPU time: (400 x 64x56x56) in place 32.7 ms at 1024 and 34.4 ms at 4096
// (count only: 26.1 / 26.2 ms, the same as one torch.relu_ pass, i.e. memory bound);
// (51,200 x 200) is one block per point whatever the value.  2048 keeps the
// per-task accumulators (3 * 2048 * 4 bytes = 24 KiB for float32) inside L1d.
constexpr int64_t kBlock = 2048;
// Smallest number of elements (V * block) one thread is given at a time, so that
// tiny sites do not pay the thread wake-up (at::internal::GRAIN_SIZE is 32768).
constexpr int64_t kGrainElems = 32768;

// The group loop is cloned per ISA (LCFAST_CLONES, cpu_clones.h).

template <typename scalar_t, typename acc_t>
inline scalar_t leaky(scalar_t x, acc_t z, acc_t slope) {
  return z > acc_t(0) ? x : static_cast<scalar_t>(z * slope);
}

// The activations, written as ATen's scalar CPU kernels write them (same operation
// order), computed in acc_t (float for 16-bit types, else the type itself).
template <int ACT, typename scalar_t, typename acc_t>
inline scalar_t activate(scalar_t x, acc_t slope) {
  const acc_t z = static_cast<acc_t>(x);
  if constexpr (ACT == kIdentity) {
    return x;
  } else if constexpr (ACT == kRelu) {
    // torch.relu keeps -0.0 and NaN: only a negative value becomes 0
    return z < acc_t(0) ? scalar_t(0) : x;
  } else if constexpr (ACT == kLeakyRelu) {
    return leaky<scalar_t, acc_t>(x, z, slope);
  } else if constexpr (ACT == kGelu) {
    const acc_t kAlpha = acc_t(M_SQRT1_2);
    return static_cast<scalar_t>(z * acc_t(0.5) * (acc_t(1) + std::erf(z * kAlpha)));
  } else {
    const acc_t kBeta = acc_t(M_SQRT2 * M_2_SQRTPI * 0.5);
    const acc_t kKappa = acc_t(0.044715);
    const acc_t z_cube = z * z * z;
    const acc_t inner = kBeta * (z + kKappa * z_cube);
    return static_cast<scalar_t>(acc_t(0.5) * z * (acc_t(1) + std::tanh(inner)));
  }
}

// One (point, neuron block): `in`/`out` point at row 0 of the group, neuron j0.
// Returns the crossed neurons of the block.  `out` may equal `in` (in place).
template <typename scalar_t, int ACT, bool WRITE>
LCFAST_CLONES int64_t group_block(const scalar_t* in, scalar_t* out, int64_t V, int64_t F, int64_t B,
                    at::opmath_type<scalar_t> slope) {
  using acc_t = at::opmath_type<scalar_t>;
  // Per neuron: running min and max (written as selects, so a NaN never replaces
  // them) and a NaN flag as wide as acc_t; 4 vector ops per element, which
  // measured faster than the three compare-or flags.
  using flag_t = std::conditional_t<sizeof(acc_t) == 8, int64_t, int32_t>;
  alignas(64) acc_t mn[kBlock];
  alignas(64) acc_t mx[kBlock];
  alignas(64) flag_t nan[kBlock];
  constexpr int64_t kLine = 64 / sizeof(scalar_t);
  for (int64_t v = 0; v < V; ++v) {
    const scalar_t* r = in + v * F;
    if (v + 1 < V) {
      // the next row's chunk is another stream F elements away; with V ~ 50 rows there
      // are more streams than the hardware prefetcher follows.  Measured (100 x
      // 64x56x56, V = 50, one thread, loaded machine): in place 8.0 -> 5.5..6.2 ms
      for (int64_t j = 0; j < B; j += kLine) __builtin_prefetch(r + F + j, 0, 3);
    }
    if (v == 0) {
      for (int64_t j = 0; j < B; ++j) {
        const acc_t z = static_cast<acc_t>(r[j]);
        mn[j] = z;
        mx[j] = z;
        nan[j] = static_cast<flag_t>(z != z);
      }
    } else {
      for (int64_t j = 0; j < B; ++j) {
        const acc_t z = static_cast<acc_t>(r[j]);
        mn[j] = z < mn[j] ? z : mn[j];
        mx[j] = z > mx[j] ? z : mx[j];
        nan[j] |= static_cast<flag_t>(z != z);
      }
    }
    if constexpr (WRITE) {  // the row chunk is still in L1
      scalar_t* o = out + v * F;
      for (int64_t j = 0; j < B; ++j) o[j] = activate<ACT, scalar_t, acc_t>(r[j], slope);
    }
  }
  flag_t cnt = 0;
  for (int64_t j = 0; j < B; ++j) {
    const bool same = mn[j] > acc_t(0) || mx[j] < acc_t(0) || (mn[j] == acc_t(0) && mx[j] == acc_t(0));
    cnt += static_cast<flag_t>(nan[j] | !same);
  }
  return static_cast<int64_t>(cnt);
}

template <typename scalar_t, int ACT, bool WRITE>
void run_groups(const scalar_t* in, scalar_t* out, const Geometry& g, double slope, int64_t* counts) {
  const int64_t B = std::min<int64_t>(g.F, kBlock);
  const int64_t nb = (g.F + B - 1) / B;
  const int64_t tasks = g.n * nb;
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, g.V * B));
  const auto s = static_cast<at::opmath_type<scalar_t>>(slope);
  at::parallel_for(0, tasks, grain, [&](int64_t t0, int64_t t1) {
    int64_t cur = -1, acc = 0;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t p = t / nb;
      const int64_t j0 = (t - p * nb) * B;
      const int64_t len = std::min<int64_t>(B, g.F - j0);
      const int64_t off = p * g.V * g.F + j0;  // int64 offsets throughout
      const int64_t c = group_block<scalar_t, ACT, WRITE>(in + off, WRITE ? out + off : nullptr, g.V, g.F,
                                                          len, s);
      if (p != cur) {
        if (cur >= 0) __atomic_fetch_add(counts + cur, acc, __ATOMIC_RELAXED);
        cur = p;
        acc = 0;
      }
      acc += c;
    }
    if (cur >= 0) __atomic_fetch_add(counts + cur, acc, __ATOMIC_RELAXED);
  });
}

void run_cpu(const at::Tensor& src, const at::Tensor& out, const Geometry& g, Act act, double slope,
             const at::Tensor& counts, bool write) {
  int64_t* cp = counts.data_ptr<int64_t>();
  dispatch_act(src.scalar_type(), act, write, [&]<typename scalar_t, int ACT, bool WRITE>() {
    run_groups<scalar_t, ACT, WRITE>(src.const_data_ptr<scalar_t>(), WRITE ? out.data_ptr<scalar_t>() : nullptr,
                                     g, slope, cp);
  });
}

std::tuple<at::Tensor, at::Tensor> crossing_act_cpu(const at::Tensor& pre, int64_t V, c10::string_view act,
                                                     double slope) {
  return crossing_act_host(pre, V, act, slope, run_cpu);
}

at::Tensor crossing_act_inplace_cpu(at::Tensor& pre, int64_t V, c10::string_view act, double slope) {
  return crossing_act_inplace_host(pre, V, act, slope, run_cpu);
}

at::Tensor crossing_count_cpu(const at::Tensor& pre, int64_t V) { return crossing_count_host(pre, V, run_cpu); }

}  // namespace

TORCH_LIBRARY_IMPL(lcfast, CPU, m) {
  m.impl("crossing_act", &crossing_act_cpu);
  m.impl("crossing_act_", &crossing_act_inplace_cpu);
  m.impl("crossing_count", &crossing_count_cpu);
}

}  // namespace lcfast
