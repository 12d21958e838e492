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

#ifdef __linux__
#include <sys/mman.h>
#endif

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

// Asks Linux for transparent huge pages on the (fresh, untouched) output.  Writing the
// output is first touch: a 78 MB output (1000 x 19,600 values) is a new mmap from glibc
// on every call (above its 32 MB mmap threshold), and its 19,000 4-KiB page faults cost
// more than the Gaussians on this VM (AMD EPYC, 2 cores, THP "madvise", Dec 2026,
// load 4.4: torch.empty + fill_ of 78 MB 80 ms, 27 ms after this madvise; the kernel
// itself 30 ms).  Advice only (errors ignored; the bits written are the same); applied
// from kHugeFrom bytes (unmeasured below; a huge page is 2 MiB).
constexpr int64_t kHugeFrom = int64_t(4) << 20;

void advise_huge_pages(float* p, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (bytes < kHugeFrom) return;
  const uintptr_t a = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + uintptr_t(bytes)) & ~(kHuge - 1);
  if (e > a) madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

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
  advise_huge_pages(op, out.numel() * int64_t(sizeof(float)));
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
