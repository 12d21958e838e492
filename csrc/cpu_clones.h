// LCFAST_CLONES: the extension is built for the baseline ISA (x86-64: SSE2); a hot CPU
// loop marked with it is cloned for AVX-512 (x86-64-v4) and AVX2+FMA (x86-64-v3) and
// the clone is picked at load time (GCC/Clang ifunc).  Used by crossing_act_cpu.cpp
// (count only, 400 x 64x56x56: 37.3 ms with SSE2, 26.1 ms with AVX-512).  (The
// counter_normal kernel has its own AVX2 intrinsics instead: counter_normal_avx2.h.)
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define LCFAST_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LCFAST_CLONES
#endif
