// A layer's rotary positions and KV write in one pass on the CPU (kv/paged_store.py calls it): the
// queries and keys rotated (the model's Rotary.apply), keys and values stored at their pool slots
// (PagedKVStore.write), queries returned. It stands for five torch ops and rounds as they do:
// x * cos, rotate_half(x) * sin and their sum are each rounded to the tensor's dtype (and the
// build turns floating-point contraction off), so every output bit is theirs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>

namespace {

// The tensor dtype's values as the arithmetic type A, and A rounded back (round to nearest even,
// NaN as 0xffff: what torch's vectorized conversion gives); plain integer operations, so that loops
// of them vectorize.
template <typename T> struct Round {
  typedef T A;
  static A up(T x) { return x; }
  static T down(A x) { return x; }
};
template <> struct Round<c10::BFloat16> {
  typedef float A;
  static float up(c10::BFloat16 x) {
    const uint32_t bits = static_cast<uint32_t>(x.x) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
  static c10::BFloat16 down(float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof bits);
    const bool nan = (bits & 0x7fffffffu) > 0x7f800000u;
    c10::BFloat16 out;
    out.x = nan ? uint16_t{0xffff} : static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
    return out;
  }
};
template <> struct Round<c10::Half> {
  typedef float A;
  static float up(c10::Half x) { return static_cast<float>(x); }
  static c10::Half down(float f) { return static_cast<c10::Half>(f); }
};

template <typename T>
inline T rotated(T x, T c, T swapped, T s) {  // x * cos + swapped * sin, each op rounded to T
  typedef Round<T> R;
  const T a = R::down(R::up(x) * R::up(c));
  const T b = R::down(R::up(swapped) * R::up(s));
  return R::down(R::up(a) + R::up(b));
}

template <typename T>
void rotate_rows(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, int64_t heads,
                 at::Tensor& k_pool, at::Tensor& v_pool, const at::Tensor& slots, at::Tensor& q) {
  const int64_t rows = qkv.size(0), kv_heads = (qkv.size(1) - heads) / 2, d = qkv.size(2), half = d / 2;
  const int64_t row_stride = qkv.stride(0), head_stride = qkv.stride(1);
  const int64_t cos_stride = cos.stride(0), sin_stride = sin.stride(0);
  const T* src = qkv.data_ptr<T>();
  const T* cp = cos.data_ptr<T>();
  const T* sp = sin.data_ptr<T>();
  const int64_t* slot = slots.data_ptr<int64_t>();
  T* kp = k_pool.data_ptr<T>();
  T* vp = v_pool.data_ptr<T>();
  T* qp = q.data_ptr<T>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* c = cp + r * cos_stride;
      const T* s = sp + r * sin_stride;
      for (int64_t h = 0; h < heads + kv_heads; ++h) {
        const T* x = src + r * row_stride + h * head_stride;
        T* out = h < heads ? qp + (r * heads + h) * d : kp + (slot[r] * kv_heads + h - heads) * d;
        for (int64_t j = 0; j < half; ++j) out[j] = rotated(x[j], c[j], x[j + half], s[j]);
        for (int64_t j = half; j < d; ++j) out[j] = rotated(x[j], c[j], x[j - half], s[j]);
      }
      for (int64_t h = 0; h < kv_heads; ++h)
        std::memcpy(vp + (slot[r] * kv_heads + h) * d, src + r * row_stride + (heads + kv_heads + h) * head_stride,
                    d * sizeof(T));
    }
  });
}

at::Tensor rotary_write(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, int64_t heads,
                        at::Tensor k_pool, at::Tensor v_pool, const at::Tensor& slots) {
  TORCH_CHECK(qkv.dim() == 3 && qkv.stride(2) == 1, "rotary_write: qkv must be [rows, heads, d] with contiguous rows");
  const int64_t rows = qkv.size(0), d = qkv.size(2), kv_heads = (qkv.size(1) - heads) / 2;
  TORCH_CHECK(heads > 0 && kv_heads > 0 && heads + 2 * kv_heads == qkv.size(1) && d % 2 == 0,
              "rotary_write: qkv holds ", qkv.size(1), " heads of ", d, ", not queries, keys and values of ", heads,
              " query heads and an even size");
  for (const at::Tensor* t : {&cos, &sin})
    TORCH_CHECK(t->dim() == 3 && t->size(0) == rows && t->size(1) == 1 && t->size(2) == d && t->stride(2) == 1 &&
                    t->scalar_type() == qkv.scalar_type(),
                "rotary_write: cos and sin must be [rows, 1, d] in qkv's dtype");
  TORCH_CHECK(k_pool.is_contiguous() && v_pool.is_contiguous() && k_pool.dim() == 3 && v_pool.sizes() == k_pool.sizes() &&
                  k_pool.size(1) == kv_heads && k_pool.size(2) == d && k_pool.scalar_type() == qkv.scalar_type() &&
                  v_pool.scalar_type() == qkv.scalar_type(),
              "rotary_write: pools must be contiguous [slots, kv_heads, d] in qkv's dtype");
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.is_contiguous() && slots.numel() == rows,
              "rotary_write: slots must be int64 [rows]");
  const int64_t* slot = slots.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r)
    TORCH_CHECK(slot[r] >= 0 && slot[r] < k_pool.size(0), "rotary_write: row ", r, " names slot ", slot[r],
                " outside the pool");
  auto q = at::empty({rows, heads, d}, qkv.options());
  switch (qkv.scalar_type()) {
    case at::kFloat: rotate_rows<float>(qkv, cos, sin, heads, k_pool, v_pool, slots, q); break;
    case at::kDouble: rotate_rows<double>(qkv, cos, sin, heads, k_pool, v_pool, slots, q); break;
    case at::kBFloat16: rotate_rows<c10::BFloat16>(qkv, cos, sin, heads, k_pool, v_pool, slots, q); break;
    case at::kHalf: rotate_rows<c10::Half>(qkv, cos, sin, heads, k_pool, v_pool, slots, q); break;
    default: TORCH_CHECK(false, "rotary_write: float32, float64, bfloat16 or float16, not ", qkv.scalar_type());
  }
  return q;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(cbtui, m) {
  m.def("rotary_write(Tensor qkv, Tensor cos, Tensor sin, int heads, Tensor(a!) k_pool, Tensor(b!) v_pool, "
        "Tensor slots) -> Tensor");
  m.impl("rotary_write", c10::DispatchKey::CPU, TORCH_FN(rotary_write));
}
