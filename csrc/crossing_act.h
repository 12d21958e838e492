// Shared host-side logic of the fused crossing epilogue (CPU and CUDA kernels).
//
// lcfast::crossing_act(pre, V, act, slope) -> (out, counts)
//   pre:    (n*V, *F) site pre-activations, the V vertices of each point contiguous
//           in dim 0 (point-major).  float32 / float64 / bfloat16 / float16.
//   out:    act(pre), same shape and dtype.
//   counts: int64 (n,), neurons j whose three-valued signs over the group are not
//           all equal (docs/design.md#definition).
//
// The CPU kernel keeps the per-neuron min and max over the group plus a NaN flag:
// crossed = NaN seen or not (mn > 0 or mx < 0 or (mn == 0 and mx == 0)).  The CUDA
// kernel keeps three OR-flags a = any(!(z > 0)), b = any(!(z < 0)), c = any(z != 0)
// and crossed = a & b & c (the same rule).  Either way a NaN counts as crossed, as the
// reference's NaN-propagating amin/amax make it.
//
// Layout: a tensor whose rows are contiguous blocks of F elements ("row-flat": non-
// overlapping and dense with dim 0 outermost -- contiguous, channels-last, any dense
// permutation of the trailing dims) is read in place and `out` gets the same strides
// (empty_like), with no copy: counting is a sum over neurons, so the order of the
// neurons inside a row does not matter.  Any other layout is first copied to a
// contiguous tensor (one extra pass) and `out` is contiguous.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <string_view>
#include <tuple>

namespace lcfast {

enum Act : int { kIdentity = 0, kRelu = 1, kLeakyRelu = 2, kGelu = 3, kGeluTanh = 4 };

inline Act parse_act(std::string_view act) {
  if (act == "relu") return kRelu;
  if (act == "leaky_relu") return kLeakyRelu;
  if (act == "gelu") return kGelu;
  if (act == "gelu_tanh") return kGeluTanh;
  if (act == "identity") return kIdentity;
  TORCH_CHECK(false, "lcfast::crossing_act: act must be one of 'relu', 'leaky_relu', 'gelu', "
              "'gelu_tanh', 'identity', got '", act, "'");
}

// Geometry of one call: n points of V rows of F neurons.
struct Geometry {
  int64_t n = 0, V = 0, F = 0;
};

inline Geometry check_geometry(const at::Tensor& pre, int64_t V) {
  TORCH_CHECK(pre.dim() >= 1, "lcfast::crossing_act: pre must have a batch dimension, got a 0-d tensor");
  TORCH_CHECK(V >= 1, "lcfast::crossing_act: V must be >= 1, got ", V);
  const auto st = pre.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf,
              "lcfast::crossing_act: pre must be float32, float64, bfloat16 or float16, got ", st);
  const int64_t rows = pre.size(0);
  TORCH_CHECK(rows % V == 0, "lcfast::crossing_act: pre.shape[0] = ", rows,
              " is not a multiple of V = ", V);
  Geometry g;
  g.n = rows / V;
  g.V = V;
  g.F = 1;
  for (int64_t d = 1; d < pre.dim(); ++d) g.F *= pre.size(d);
  return g;
}

// Rows are contiguous blocks of F elements (see the header comment).
inline bool row_flat(const at::Tensor& t, const Geometry& g) {
  if (!t.is_non_overlapping_and_dense()) return false;
  return t.size(0) <= 1 || t.stride(0) == g.F;
}

// The tensor the kernel reads: `pre` itself when row-flat, else a contiguous copy.
inline at::Tensor row_flat_source(const at::Tensor& pre, const Geometry& g) {
  return row_flat(pre, g) ? pre : pre.contiguous();
}

// Calls `f.template operator()<scalar_t, ACT, WRITE>()` for the runtime dtype, act and
// write flag (count only: ACT = kIdentity, WRITE = false).
template <typename F>
void dispatch_act(at::ScalarType st, Act act, bool write, F&& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st, "lcfast_crossing_act", [&] {
    if (!write) {
      f.template operator()<scalar_t, kIdentity, false>();
      return;
    }
    switch (act) {
      case kIdentity: f.template operator()<scalar_t, kIdentity, true>(); break;
      case kRelu: f.template operator()<scalar_t, kRelu, true>(); break;
      case kLeakyRelu: f.template operator()<scalar_t, kLeakyRelu, true>(); break;
      case kGelu: f.template operator()<scalar_t, kGelu, true>(); break;
      case kGeluTanh: f.template operator()<scalar_t, kGeluTanh, true>(); break;
    }
  });
}

// The three ops' host logic, shared by the CPU and CUDA files.  `run(src, out, g, act,
// slope, counts, write)` launches the device kernel on row-flat `src` (out undefined
// when !write; out may equal src).
template <typename Run>
std::tuple<at::Tensor, at::Tensor> crossing_act_host(const at::Tensor& pre, int64_t V, c10::string_view act,
                                                     double slope, Run run) {
  const Act a = parse_act(std::string_view(act.data(), act.size()));
  const Geometry g = check_geometry(pre, V);
  const at::Tensor src = row_flat_source(pre, g);
  at::Tensor out = at::empty_like(src);
  at::Tensor counts = at::zeros({g.n}, pre.options().dtype(at::kLong));
  if (g.n && g.F) run(src, out, g, a, slope, counts, true);
  return {out, counts};
}

template <typename Run>
at::Tensor crossing_act_inplace_host(at::Tensor& pre, int64_t V, c10::string_view act, double slope, Run run) {
  const Act a = parse_act(std::string_view(act.data(), act.size()));
  const Geometry g = check_geometry(pre, V);
  at::Tensor counts = at::zeros({g.n}, pre.options().dtype(at::kLong));
  if (!g.n || !g.F) return counts;
  if (row_flat(pre, g)) {
    run(pre, pre, g, a, slope, counts, true);
  } else {  // work on a contiguous copy, then write back (two extra passes)
    at::Tensor tmp = pre.contiguous();
    run(tmp, tmp, g, a, slope, counts, true);
    pre.copy_(tmp);
  }
  return counts;
}

template <typename Run>
at::Tensor crossing_count_host(const at::Tensor& pre, int64_t V, Run run) {
  const Geometry g = check_geometry(pre, V);
  const at::Tensor src = row_flat_source(pre, g);
  at::Tensor counts = at::zeros({g.n}, pre.options().dtype(at::kLong));
  if (g.n && g.F) run(src, at::Tensor(), g, kIdentity, 0.0, counts, false);
  return counts;
}

}  // namespace lcfast
