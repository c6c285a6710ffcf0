// Greedy tokens on the CPU (sampling.py's greedy_batch calls it): each row's first largest logit,
// as torch's max(dim=-1).indices picks it (a row holding NaN picks its first NaN), in two passes
// of 16 lanes at a time: the row's maximum, then the first 16 holding it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "lanes.h"

#include <cstdint>
#include <cstring>

namespace {

using cbtui::W;
typedef cbtui::Lanes<float>::type vfloat;
typedef cbtui::vint vint;

// A lane matches: the largest value, or NaN where the row holds one.
inline bool matches(float v, float top, bool nan) { return nan ? v != v : v == top; }

template <typename T>
int64_t first_largest(const T* row, int64_t n) {
  const int64_t whole = n / W * W;
  vfloat top_lanes = vfloat{} - INFINITY;
  vint nan_lanes = vint{};
  for (int64_t j = 0; j < whole; j += W) {
    const vfloat v = cbtui::load_vec<float>(row + j);
    top_lanes = v > top_lanes ? v : top_lanes;
    nan_lanes |= v != v;
  }
  float top = -INFINITY;
  bool nan = false;
  for (int l = 0; l < W; ++l) top = top_lanes[l] > top ? top_lanes[l] : top, nan |= nan_lanes[l] != 0;
  for (int64_t j = whole; j < n; ++j) {
    const float v = static_cast<float>(row[j]);
    top = v > top ? v : top;
    nan |= v != v;
  }
  for (int64_t j = 0; j < whole; j += W) {  // the first 16 that hold it, then its place among them
    const vfloat v = cbtui::load_vec<float>(row + j);
    const vint hit = nan ? v != v : v == top;
    bool any = false;
    for (int l = 0; l < W; ++l) any |= hit[l] != 0;
    if (any)
      for (int l = 0; l < W; ++l)
        if (hit[l]) return j + l;
  }
  for (int64_t j = whole; j < n; ++j)
    if (matches(static_cast<float>(row[j]), top, nan)) return j;
  return 0;  // a row of -inf only: its first
}

at::Tensor greedy(const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2 && logits.stride(1) == 1 && logits.size(1) > 0,
              "greedy: logits must be [rows, vocab] with contiguous rows");
  const int64_t rows = logits.size(0), vocab = logits.size(1), stride = logits.stride(0);
  auto out = at::empty({rows}, logits.options().dtype(at::kLong));
  int64_t* op = out.data_ptr<int64_t>();
  auto run = [&](auto* data) {
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) op[r] = first_largest(data + r * stride, vocab);
    });
  };
  switch (logits.scalar_type()) {
    case at::kFloat: run(logits.data_ptr<float>()); break;
    case at::kBFloat16: run(logits.data_ptr<c10::BFloat16>()); break;
    default: TORCH_CHECK(false, "greedy: float32 or bfloat16 logits, not ", logits.scalar_type());
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(cbtui, m) {
  m.def("greedy(Tensor logits) -> Tensor");
  m.impl("greedy", c10::DispatchKey::CPU, TORCH_FN(greedy));
}
