// Decode attention on the CPU straight from the paged KV pool (attention/paged_decode_cpp.py calls it).
//
// One query per decode against its own keys, read once through its block table: no gather into a
// padded copy, no mask. A task is one decode (all its heads), so a decode's output depends only on
// its own keys and is the same bits whatever else runs in the step. Keys go by in tiles of 16: the
// scores of a tile for every query head, an online softmax (running max and sum per head), then
// the tile's values; K and V rows of the coming tile are prefetched while this one is computed.
// Arithmetic is float32 (float64 for a float64 pool), in the vector types of lanes.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "lanes.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

using cbtui::Lanes;
using cbtui::load_vec;
using cbtui::vint;
constexpr int W = cbtui::W;  // keys per tile

template <typename V>
inline auto hsum(V v) {
  V a = v + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
  a += __builtin_shufflevector(a, a, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
  a += __builtin_shufflevector(a, a, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
  return a[0] + a[1];
}

// exp(x) for x <= 0 (scores minus their running max), every lane: 2^n * p(r) with |r| <= ln2/2 and
// a degree-6 Taylor polynomial (relative error ~2e-7); plain arithmetic, so it vectorizes.
inline Lanes<float>::type exp_nonpositive(Lanes<float>::type x) {
  typedef Lanes<float>::type vfloat;
  const vfloat low = vfloat{} - 87.0f;  // exp(-87) ~ 1.6e-38, still a normal float
  x = x < low ? low : x;
  const vfloat round = vfloat{} + 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds
  const vfloat n = (x * 1.44269504088896341f + round) - round;
  const vfloat r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;  // ln2 in two parts
  vfloat p = vfloat{} + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * (vfloat)((__builtin_convertvector(n, vint) + 127) << 23);
}
inline Lanes<double>::type exp_nonpositive(Lanes<double>::type x) {  // float64: exactness tests, not speed
  for (int l = 0; l < W; ++l) x[l] = std::exp(x[l]);
  return x;
}

inline void prefetch_row(const void* row, int64_t bytes) {
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(static_cast<const char*>(row) + b);
}

template <typename T, typename A, int D>
void decode_rows(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool,
                 const at::Tensor& tables, const at::Tensor& key_lens, int64_t block_size, double scale,
                 at::Tensor& out) {
  constexpr int C = D / W;  // vectors per head
  const int64_t n = q.size(0), heads = q.size(1), kv_heads = k_pool.size(1), group = heads / kv_heads;
  const int64_t q_item = q.stride(0), q_head = q.stride(1), table_row = tables.stride(0);
  const T* qp = q.data_ptr<T>();
  const T* kp = k_pool.data_ptr<T>();
  const T* vp = v_pool.data_ptr<T>();
  const int64_t* tp = tables.data_ptr<int64_t>();
  const int64_t* lp = key_lens.data_ptr<int64_t>();
  T* op = out.data_ptr<T>();
  const int64_t slot = kv_heads * D;  // one key position's elements, all kv heads
  const int64_t slot_bytes = slot * static_cast<int64_t>(sizeof(T));
  typedef typename Lanes<A>::type vec;
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    std::vector<vec> qv(heads * C), acc(heads * C);
    std::vector<A> running_max(heads), running_sum(heads), scores(heads * W);
    std::vector<int64_t> rows(W), next_rows(W);  // pool offsets of this tile's keys and the next's
    for (int64_t i = begin; i < end; ++i) {
      const int64_t len = lp[i];
      const int64_t* table = tp + i * table_row;
      for (int64_t h = 0; h < heads; ++h)
        for (int c = 0; c < C; ++c) qv[h * C + c] = load_vec<A>(qp + i * q_item + h * q_head + c * W) * static_cast<A>(scale);
      std::fill(acc.begin(), acc.end(), vec{});
      std::fill(running_max.begin(), running_max.end(), -INFINITY);
      std::fill(running_sum.begin(), running_sum.end(), A(0));
      int64_t block = 0, in_block = 0;  // where the next key lies: no division per key
      auto locate = [&](std::vector<int64_t>& offsets, int64_t first) {
        const int count = static_cast<int>(std::clamp<int64_t>(len - first, 0, W));
        for (int t = 0; t < count; ++t) {
          offsets[t] = (table[block] * block_size + in_block) * slot;
          if (++in_block == block_size) in_block = 0, ++block;
        }
        return count;
      };
      int next_count = locate(next_rows, 0);
      for (int t = 0; t < next_count; ++t) prefetch_row(kp + next_rows[t], slot_bytes);
      for (int64_t first = 0; first < len; first += W) {
        const int count = next_count;
        std::swap(rows, next_rows);
        next_count = locate(next_rows, first + W);
        for (int t = 0; t < count; ++t) {  // scores
          prefetch_row(vp + rows[t], slot_bytes);
          for (int64_t kh = 0; kh < kv_heads; ++kh) {
            vec k[C];
            for (int c = 0; c < C; ++c) k[c] = load_vec<A>(kp + rows[t] + kh * D + c * W);
            for (int64_t h = kh * group; h < (kh + 1) * group; ++h) {
              vec prod = qv[h * C] * k[0];
              for (int c = 1; c < C; ++c) prod += qv[h * C + c] * k[c];
              scores[h * W + t] = hsum(prod);
            }
          }
        }
        for (int64_t h = 0; h < heads; ++h) {  // online softmax: fold the tile into the running sums
          vec s;
          std::memcpy(&s, scores.data() + h * W, sizeof s);
          A top = running_max[h];
          for (int t = 0; t < count; ++t) top = std::max(top, s[t]);
          const A rescale = running_max[h] == -INFINITY ? A(0) : exp_nonpositive(vec{} + (running_max[h] - top))[0];
          vec p = exp_nonpositive(s - top);
          for (int t = count; t < W; ++t) p[t] = 0;
          std::memcpy(scores.data() + h * W, &p, sizeof p);
          running_sum[h] = running_sum[h] * rescale + hsum(p);
          running_max[h] = top;
          if (rescale != A(1))
            for (int c = 0; c < C; ++c) acc[h * C + c] *= rescale;
        }
        for (int t = 0; t < count; ++t) {  // values
          if (t < next_count) prefetch_row(kp + next_rows[t], slot_bytes);
          for (int64_t kh = 0; kh < kv_heads; ++kh) {
            vec v[C];
            for (int c = 0; c < C; ++c) v[c] = load_vec<A>(vp + rows[t] + kh * D + c * W);
            for (int64_t h = kh * group; h < (kh + 1) * group; ++h) {
              const A p = scores[h * W + t];
              for (int c = 0; c < C; ++c) acc[h * C + c] += p * v[c];
            }
          }
        }
      }
      for (int64_t h = 0; h < heads; ++h) {
        const A inv = A(1) / running_sum[h];
        T* o = op + (i * heads + h) * D;
        for (int c = 0; c < C; ++c)
          for (int e = 0; e < W; ++e) o[c * W + e] = static_cast<T>(acc[h * C + c][e] * inv);
      }
    }
  });
}

template <typename T, typename A>
void for_head_size(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool, const at::Tensor& tables,
                   const at::Tensor& key_lens, int64_t block_size, double scale, at::Tensor& out) {
  switch (q.size(2)) {
    case 16: return decode_rows<T, A, 16>(q, k_pool, v_pool, tables, key_lens, block_size, scale, out);
    case 32: return decode_rows<T, A, 32>(q, k_pool, v_pool, tables, key_lens, block_size, scale, out);
    case 64: return decode_rows<T, A, 64>(q, k_pool, v_pool, tables, key_lens, block_size, scale, out);
    case 128: return decode_rows<T, A, 128>(q, k_pool, v_pool, tables, key_lens, block_size, scale, out);
    case 256: return decode_rows<T, A, 256>(q, k_pool, v_pool, tables, key_lens, block_size, scale, out);
    default: TORCH_CHECK(false, "paged_decode: head size ", q.size(2), " is not 16, 32, 64, 128 or 256");
  }
}

at::Tensor paged_decode(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool,
                        const at::Tensor& tables, const at::Tensor& key_lens, int64_t block_size, double scale) {
  TORCH_CHECK(q.dim() == 3 && q.stride(2) == 1, "paged_decode: q must be [n, heads, d] with contiguous rows");
  TORCH_CHECK(k_pool.dim() == 3 && k_pool.is_contiguous() && v_pool.sizes() == k_pool.sizes() && v_pool.is_contiguous(),
              "paged_decode: pools must be contiguous [slots, kv_heads, d] of one shape");
  TORCH_CHECK(k_pool.scalar_type() == q.scalar_type() && v_pool.scalar_type() == q.scalar_type(),
              "paged_decode: q and the pools must share a dtype");
  TORCH_CHECK(k_pool.size(2) == q.size(2) && q.size(1) % k_pool.size(1) == 0,
              "paged_decode: head sizes differ, or kv heads do not divide query heads");
  TORCH_CHECK(tables.scalar_type() == at::kLong && tables.dim() == 2 && tables.stride(1) == 1 && tables.size(0) == q.size(0),
              "paged_decode: tables must be int64 [n, blocks] with contiguous rows");
  TORCH_CHECK(key_lens.scalar_type() == at::kLong && key_lens.is_contiguous() && key_lens.numel() == q.size(0),
              "paged_decode: key_lens must be int64 [n]");
  TORCH_CHECK(block_size > 0 && k_pool.size(0) % block_size == 0, "paged_decode: the pool holds whole blocks");
  const int64_t num_blocks = k_pool.size(0) / block_size;
  const int64_t* lp = key_lens.data_ptr<int64_t>();
  const int64_t* tp = tables.data_ptr<int64_t>();
  for (int64_t i = 0; i < q.size(0); ++i) {  // every block a decode reads lies in the pool
    TORCH_CHECK(lp[i] >= 1 && lp[i] <= tables.size(1) * block_size, "paged_decode: key length ", lp[i],
                " of decode ", i, " does not fit its table");
    for (int64_t b = 0; b < (lp[i] + block_size - 1) / block_size; ++b)
      TORCH_CHECK(tp[i * tables.stride(0) + b] >= 0 && tp[i * tables.stride(0) + b] < num_blocks,
                  "paged_decode: decode ", i, " names block ", tp[i * tables.stride(0) + b], " outside the pool");
  }
  auto out = at::empty({q.size(0), q.size(1), q.size(2)}, q.options());
  switch (q.scalar_type()) {
    case at::kFloat: for_head_size<float, float>(q, k_pool, v_pool, tables, key_lens, block_size, scale, out); break;
    case at::kBFloat16: for_head_size<c10::BFloat16, float>(q, k_pool, v_pool, tables, key_lens, block_size, scale, out); break;
    case at::kHalf: for_head_size<c10::Half, float>(q, k_pool, v_pool, tables, key_lens, block_size, scale, out); break;
    case at::kDouble: for_head_size<double, double>(q, k_pool, v_pool, tables, key_lens, block_size, scale, out); break;
    default: TORCH_CHECK(false, "paged_decode: float32, bfloat16, float16 or float64, not ", q.scalar_type());
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(cbtui, m) {
  m.def("paged_decode(Tensor q, Tensor k_pool, Tensor v_pool, Tensor tables, Tensor key_lens, int block_size, "
        "float scale) -> Tensor");
  m.impl("paged_decode", c10::DispatchKey::CPU, TORCH_FN(paged_decode));
}
