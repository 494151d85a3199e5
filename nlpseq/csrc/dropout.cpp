// Dropout masks on CPU from a counter-based generator (SplitMix64), vectorised.
//
// Why: torch draws CPU dropout masks one double at a time (bernoulli_, about 25 ns per
// element on these machines) and numpy's bulk bytes still cost several small tensor ops; a
// hash of (seed, position) gives each element its 16 random bits in a few vector
// instructions, and the same seed always gives the same mask.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>

namespace {

inline uint64_t splitmix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// A float tensor shaped like x: 0 where dropped, 1 / (keep rate) elsewhere. Each element
// drops when its 16-bit draw is below round(p * 65536), so p is used to 1/65536 and the
// scale is the exact inverse of the rounded keep rate (the layer stays unbiased).
at::Tensor dropout_mask(const at::Tensor& x, double p, int64_t seed) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, "dropout probability must be in [0, 1)");
  const int64_t drop = std::llround(p * 65536.0);
  TORCH_CHECK(drop < 65536, "dropout probability rounds to 1");
  const float scale = static_cast<float>(65536.0 / static_cast<double>(65536 - drop));
  at::Tensor mask = at::empty(x.sizes(), x.options().dtype(at::kFloat));
  float* out = mask.data_ptr<float>();
  const int64_t n = mask.numel();
  const uint64_t base = static_cast<uint64_t>(seed);
  // Four elements share one 64-bit hash: element 4w + k takes its bits 16k .. 16k+15.
  auto word = [base](int64_t w) {
    return splitmix64(base + static_cast<uint64_t>(w + 1) * 0x9E3779B97F4A7C15ULL);
  };
  const int64_t full = n / 4;
  for (int64_t w = 0; w < full; ++w) {
    const uint64_t bits = word(w);
    for (int64_t k = 0; k < 4; ++k) {
      out[w * 4 + k] = static_cast<int64_t>((bits >> (16 * k)) & 0xFFFF) >= drop ? scale : 0.0f;
    }
  }
  const uint64_t bits = word(full);
  for (int64_t k = 0; k < n - full * 4; ++k) {
    out[full * 4 + k] = static_cast<int64_t>((bits >> (16 * k)) & 0xFFFF) >= drop ? scale : 0.0f;
  }
  return mask;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(nlpseq, m) {
  m.def("dropout_mask(Tensor x, float p, int seed) -> Tensor");
}

TORCH_LIBRARY_IMPL(nlpseq, CPU, m) { m.impl("dropout_mask", dropout_mask); }
