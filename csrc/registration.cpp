// Schemas of the lcfast native ops (one TORCH_LIBRARY for the namespace) and the
// Python module init of lcfast._C.  Kernels: crossing_act_cpu.cpp, counter_normal_cpu.cpp,
// absmax_rows_cpu.cpp, row_gram_cpu.cpp, chol_inverse_cpu.cpp and tril_mix_cpu.cpp (CPU),
// cuda/crossing_act_cuda.cu, cuda/counter_normal_cuda.cu and cuda/absmax_rows_cuda.cu
// (CUDA; row_gram, chol_inverse and tril_mix_ have none).
// Fake (meta) implementations are registered from Python (lcfast/ops/native_crossing_act.py,
// lcfast/frames.py, lcfast/ops/absmax_rows.py, lcfast/ops/row_gram.py,
// lcfast/ops/chol_inverse.py, lcfast/ops/tril_mix.py).  Triton ops of the same namespace are added
// from Python with torch.library.triton_op, which registers a FRAGMENT and coexists
// with this library in either import order.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(lcfast, m) {
  // out-of-place: returns act(pre) and the crossed-neuron counts per point
  m.def("crossing_act(Tensor pre, int V, str act, float slope) -> (Tensor out, Tensor counts)");
  // in place: pre <- act(pre); returns the counts
  m.def("crossing_act_(Tensor(a!) pre, int V, str act, float slope) -> Tensor counts");
  // count only (sites at module outputs)
  m.def("crossing_count(Tensor pre, int V) -> Tensor counts");
  // counter-based standard normals of lcfast.frames: (N,) int64 keys -> (N, count) float32
  m.def("counter_normal(Tensor keys, int count) -> Tensor");
  // the offsets engine's screen: (N, R, F) -> (N, F), max over the first `rows` rows of |a|
  m.def("absmax_rows(Tensor a, int rows) -> Tensor");
  // Gram matrices of row blocks: (B, P, D) float32 -> (B, P, P) float64 (row_gram_cpu.cpp)
  m.def("row_gram(Tensor g) -> Tensor");
  // Cholesky factor's inverse of small SPD matrices: (B, P, P) float64 -> (T, info, diag(L))
  m.def("chol_inverse(Tensor a) -> (Tensor, Tensor, Tensor)");
  // in place: g[b, p] <- sum_{q <= p} t[b, p, q] g[b, q]; g (B, P, D), t (B, P, P) float32 (tril_mix_cpu.cpp)
  m.def("tril_mix_(Tensor(a!) g, Tensor t) -> ()");
}

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C",
                                   "lcfast native ops (registered in torch.ops.lcfast)", -1, nullptr};
  return PyModule_Create(&def);
}
