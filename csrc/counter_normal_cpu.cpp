// CPU kernel of lcfast::counter_normal (schema in registration.cpp, the recipe and its
// arithmetic in counter_normal.h).
//
// Tasks of at::parallel_for are ranges of the flattened (point, pair) index, so a few
// large points (ResNet inputs) and many small ones (MNIST) both use every thread.  On a
// CPU with AVX2 and FMA a task runs fill_pairs_avx2 (counter_normal_avx2.h: intrinsics,
// the same bits); elsewhere the portable loop below: a block of kBlock pairs into two
// stack arrays (a loop the compiler may vectorise; it needs -fno-math-errno, set in
// setup.py, else the sqrtf call keeps it scalar), then interleaved into the row.
#include "counter_normal.h"
#include "counter_normal_avx2.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

namespace lcfast {
namespace {

// Pairs per block: two float arrays of 1 KiB, in L1 while they are interleaved into the
// row.  (Unmeasured beyond "vectorised loops of this length run at full speed".)
constexpr int64_t kBlock = 256;
// Pairs one thread is given at least (at::internal::GRAIN_SIZE is 32768 elements):
// about 0.1 ms of work, so that one small point does not wake the thread pool.
constexpr int64_t kGrainPairs = 16384;

// Pairs [m0, m1) of the stream of `key` into `row` (count values in all): the portable
// loop, built for the baseline ISA (fmaf is a library call there; the same bits as
// the vfmadd of the AVX2 kernel, every operation of counter_normal.h being an IEEE
// operation).  It was cloned for x86-64-v3/v4 (LCFAST_CLONES) before the AVX2 kernel:
// the v3 clone ran at 2.4 ns a value against 1.1 for fill_pairs_avx2 (see there).
void fill_pairs_portable(uint64_t key, int64_t m0, int64_t m1, float* row, int64_t count) {
  alignas(64) float a[kBlock], b[kBlock];
  const int64_t full = count / 2;  // pairs whose two values are both in the row
  for (int64_t m = m0; m < m1; m += kBlock) {
    const int64_t n = std::min(kBlock, m1 - m);
    for (int64_t t = 0; t < n; ++t) frames::normal_pair(key, m + t, &a[t], &b[t]);
    const int64_t nf = std::max<int64_t>(0, std::min(n, full - m));
    float* out = row + 2 * m;
    for (int64_t t = 0; t < nf; ++t) {
      out[2 * t] = a[t];
      out[2 * t + 1] = b[t];
    }
    if (nf < n) out[2 * nf] = a[nf];  // odd count: the last pair keeps its cosine value
  }
}

// No huge-page advice on the output (removed 1 Dec 2026).  madvise(MADV_HUGEPAGE) on the
// fresh 78 MB output (1000 x 19,600 values) made first touch cheap when free 2 MiB pages
// were at hand (80 -> 27 ms on an AVX2 EPYC VM at load 4.4), but with THP defrag
// "madvise" (the kernel default) a fault then compacts memory synchronously once they are
// not: on a 2-core Zen 5 EPYC, 12 draws of 1,000 x 25 x 784 in a process that grows took
// 9-20 ms or 91-101 ms (bimodal) with the advice and 20-21 ms every time without it;
// factored_frames 19-101 ms against 30-32 ms.  A steady 20 ms beats a 100 ms tail.
using FillPairs = void (*)(uint64_t, int64_t, int64_t, float*, int64_t);

FillPairs pick_fill_pairs() {
#ifdef LCFAST_HAVE_AVX2_KERNEL
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &frames::fill_pairs_avx2;
#endif
  return &fill_pairs_portable;
}

at::Tensor counter_normal_cpu(const at::Tensor& keys, int64_t count) {
  at::Tensor out = counter_normal_empty(keys, count);
  const at::Tensor k = keys.contiguous();
  const int64_t N = k.size(0), half = (count + 1) / 2;
  if (N == 0 || count == 0) return out;
  const uint64_t* kp = reinterpret_cast<const uint64_t*>(k.data_ptr<int64_t>());
  float* op = out.data_ptr<float>();
  static const FillPairs fill_pairs = pick_fill_pairs();
  at::parallel_for(0, N * half, kGrainPairs, [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end;) {
      const int64_t p = q / half, m0 = q - p * half;
      const int64_t m1 = std::min(half, m0 + (end - q));
      fill_pairs(kp[p], m0, m1, op + p * count, count);
      q += m1 - m0;
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lcfast, CPU, m) {
  m.impl("counter_normal", &counter_normal_cpu);
}

}  // namespace lcfast
