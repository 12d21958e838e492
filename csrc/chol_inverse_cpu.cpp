// CPU kernel of lcfast::chol_inverse (schema in registration.cpp; Python wrapper and fake
// impl in lcfast/ops/chol_inverse.py): for each small symmetric positive definite
// A (B, P, P) float64, its Cholesky factor L (A = L L^T, lower) and T = L^-1, returned
// as (T, info, diag): info[b] = 0, or k > 0 when the leading k x k minor is not positive
// definite (T[b] is then zero); diag[b] = diag(L) (what lcfast.frames' condition test reads).
//
// Why a kernel for 25 x 25 matrices: torch.linalg.cholesky_ex and solve_triangular run
// one LAPACK call per matrix, each its own parallel region; with 2 torch threads on a
// loaded 2-core machine (load ~4) solve_triangular on 1,000 such matrices took 7.8 s and
// on 26 of them 200 ms, against 6.5 ms and 0.17 ms on one thread (1 Dec 2026, measured).
// Measured again with two busy-loop processes beside it (2 threads, 1,000 matrices from
// MNIST frames, 3 calls): this kernel 15.6-19.6 ms, cholesky_ex + solve_triangular
// 23-344 ms; quiet (min of 5): 7.4 / 7.7 ms on one thread, 4.4 / 8.0 ms on two; the
// results agree to 2e-17 (|T| <= 0.04) and the info codes are the same.
// Here the whole batch is one at::parallel_for, each matrix done serially in float64
// (the textbook Cholesky-Banachiewicz order and forward substitution; not LAPACK's
// blocked order, so the last bits differ from torch's).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

namespace lcfast {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> chol_inverse_cpu(const at::Tensor& a) {
  TORCH_CHECK(a.dim() == 3 && a.size(1) == a.size(2) && a.scalar_type() == at::kDouble,
              "lcfast::chol_inverse: expected a (B, P, P) float64 tensor, got ", a.scalar_type(), " of shape ",
              a.sizes());
  const at::Tensor A = a.contiguous();
  const int64_t B = A.size(0), P = A.size(1);
  at::Tensor T = at::zeros({B, P, P}, A.options());
  at::Tensor info = at::zeros({B}, A.options().dtype(at::kLong));
  at::Tensor diag = at::zeros({B, P}, A.options());
  if (B == 0 || P == 0) return {T, info, diag};
  const double* ap = A.data_ptr<double>();
  double* tp = T.data_ptr<double>();
  int64_t* ip = info.data_ptr<int64_t>();
  double* dp = diag.data_ptr<double>();
  // ~P^3 / 2 flops per matrix: a grain of 64 matrices keeps small batches on one thread
  at::parallel_for(0, B, 64, [&](int64_t b0, int64_t b1) {
    std::vector<double> L(P * P);
    for (int64_t b = b0; b < b1; ++b) {
      const double* Ab = ap + b * P * P;
      double* Tb = tp + b * P * P;
      std::fill(L.begin(), L.end(), 0.0);
      int64_t fail = 0;
      for (int64_t i = 0; i < P && !fail; ++i) {
        for (int64_t j = 0; j <= i; ++j) {
          double s = Ab[i * P + j];
          for (int64_t k = 0; k < j; ++k) s -= L[i * P + k] * L[j * P + k];
          if (i == j) {
            if (!(s > 0.0)) {  // also NaN
              fail = i + 1;
              break;
            }
            L[i * P + i] = std::sqrt(s);
          } else {
            L[i * P + j] = s / L[j * P + j];
          }
        }
      }
      ip[b] = fail;
      if (fail) continue;
      for (int64_t i = 0; i < P; ++i) dp[b * P + i] = L[i * P + i];
      // T = L^-1, lower triangular: column c by forward substitution
      for (int64_t c = 0; c < P; ++c) {
        Tb[c * P + c] = 1.0 / L[c * P + c];
        for (int64_t i = c + 1; i < P; ++i) {
          double s = 0.0;
          for (int64_t k = c; k < i; ++k) s -= L[i * P + k] * Tb[k * P + c];
          Tb[i * P + c] = s / L[i * P + i];
        }
      }
    }
  });
  return {T, info, diag};
}

}  // namespace

TORCH_LIBRARY_IMPL(lcfast, CPU, m) {
  m.impl("chol_inverse", &chol_inverse_cpu);
}

}  // namespace lcfast
