// The kernels' shared vocabulary: sixteen lanes in GCC vector types (-march=native lowers them to
// AVX-512, AVX2 or SSE, so nothing is written for one instruction set), and a tensor's values loaded
// into them as the arithmetic type.
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>

namespace cbtui {

constexpr int W = 16;  // lanes per vector

// Lanes of A, the arithmetic type: float32, or float64 for float64 tensors.
template <typename A> struct Lanes;
template <> struct Lanes<float> { typedef float type __attribute__((vector_size(W * 4))); };
template <> struct Lanes<double> { typedef double type __attribute__((vector_size(W * 8))); };
typedef int32_t vint __attribute__((vector_size(W * 4)));
typedef uint16_t vhalf __attribute__((vector_size(W * 2)));

template <typename A, typename T>
inline typename Lanes<A>::type load_vec(const T* p) {
  typename Lanes<A>::type r;
  for (int l = 0; l < W; ++l) r[l] = static_cast<A>(p[l]);
  return r;
}
template <>
inline Lanes<float>::type load_vec<float, float>(const float* p) {
  Lanes<float>::type r;
  std::memcpy(&r, p, sizeof r);
  return r;
}
template <>
inline Lanes<float>::type load_vec<float, c10::BFloat16>(const c10::BFloat16* p) {  // float32's upper half
  vhalf h;
  std::memcpy(&h, p, sizeof h);
  return (Lanes<float>::type)(__builtin_convertvector(h, vint) << 16);
}

}  // namespace cbtui
