// Schemas of the lcfast native ops (one TORCH_LIBRARY for the namespace) and the
// Python module init of lcfast._C.  Kernels: crossing_act_cpu.cpp (CPU),
// cuda/crossing_act_cuda.cu (CUDA).  Fake (meta) implementations are registered from
// Python (lcfast/ops/native_crossing_act.py).  Triton ops of the same namespace are added
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
}

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C",
                                   "lcfast native ops (registered in torch.ops.lcfast)", -1, nullptr};
  return PyModule_Create(&def);
}
