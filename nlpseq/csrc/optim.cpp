// Adam / AdamW steps over all of a model's CPU float32 tensors in one call, and the sum of
// squares that gradient clipping needs; both also take row-sparse gradients (an embedding
// table's, from nn.Embedding(sparse=True)).
//
// Why: at nlpseq's sizes a training step's optimizer work is a dozen small tensors, and on
// these machines every small tensor op costs tens of microseconds once the LSTM kernels have
// evicted the caches. torch's fused CPU Adam walks the tensors one at a time, clipping's norm
// is one reduction per tensor, and a sparse gradient needs a coalesce (a sort and a dozen
// ops) before either. Here each is one call: the tensors are cut into chunks of similar size
// that both cores share, each element is read and written once, and a sparse gradient's rows
// are summed per row here (a plain pass when they are already sorted and unique).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

namespace {

constexpr int64_t kChunk = 16384;  // elements per parallel task

// One gradient: a dense tensor, or a sparse one as the rows it touches (each once, in
// increasing order) and their values (rows, width).
struct Grad {
  at::Tensor values;  // contiguous
  bool sparse = false;
  std::vector<int64_t> rows;
  int64_t width = 0;  // of a sparse gradient's rows

  // work is counted in elements of a dense gradient, rows of a sparse one
  int64_t units() const { return sparse ? static_cast<int64_t>(rows.size()) : values.numel(); }
  int64_t unit_width() const { return sparse ? width : 1; }
};

Grad gather(const at::Tensor& grad) {
  TORCH_CHECK(grad.scalar_type() == at::kFloat && grad.device().is_cpu(),
              "CPU float32 gradients expected");
  Grad g;
  if (!grad.is_sparse()) {
    g.values = grad.contiguous();
    return g;
  }
  TORCH_CHECK(grad.sparse_dim() == 1 && grad.dense_dim() == 1,
              "a sparse gradient must hold whole rows of a 2-d table");
  const at::Tensor index = grad._indices().select(0, 0).contiguous();
  const at::Tensor values = grad._values().contiguous();  // (n, width)
  const int64_t n = index.numel(), w = values.size(1);
  const int64_t* ix = index.data_ptr<int64_t>();
  g.sparse = true;
  g.width = w;
  bool unique_sorted = true;
  for (int64_t k = 1; k < n && unique_sorted; ++k) unique_sorted = ix[k - 1] < ix[k];
  if (unique_sorted) {
    g.rows.assign(ix, ix + n);
    g.values = values;
    return g;
  }
  // Repeated rows (one per use, as the embedding's backward writes them): sort (row, position)
  // packed in one integer, then sum each row's values.
  constexpr int kPositionBits = 24;
  TORCH_CHECK(n < (int64_t{1} << kPositionBits), "sparse gradient with too many rows");
  std::vector<int64_t> keys(n);
  for (int64_t k = 0; k < n; ++k) {
    TORCH_CHECK(ix[k] >= 0 && ix[k] < (int64_t{1} << 38), "sparse gradient row out of range");
    keys[k] = (ix[k] << kPositionBits) | k;
  }
  std::sort(keys.begin(), keys.end());
  for (int64_t key : keys) {
    if (g.rows.empty() || g.rows.back() != key >> kPositionBits) g.rows.push_back(key >> kPositionBits);
  }
  g.values = at::zeros({static_cast<int64_t>(g.rows.size()), w}, values.options());
  float* out = g.values.data_ptr<float>() - w;  // advanced to row 0 by the first row
  const float* in = values.data_ptr<float>();
  int64_t last = -1;
  for (int64_t key : keys) {
    if (key >> kPositionBits != last) {
      out += w;
      last = key >> kPositionBits;
    }
    const float* row = in + (key & ((int64_t{1} << kPositionBits) - 1)) * w;
    for (int64_t j = 0; j < w; ++j) out[j] += row[j];
  }
  return g;
}

// A contiguous run of work: units [begin, end) of gradient `grad` (elements of a dense one,
// rows of a sparse one).
struct Span {
  int64_t grad, begin, end;
};

std::vector<Span> split(const std::vector<Grad>& grads) {
  std::vector<Span> spans;
  for (size_t t = 0; t < grads.size(); ++t) {
    const int64_t units = grads[t].units();
    const int64_t step = std::max<int64_t>(1, kChunk / std::max<int64_t>(1, grads[t].unit_width()));
    for (int64_t b = 0; b < units; b += step) {
      spans.push_back({static_cast<int64_t>(t), b, std::min(units, b + step)});
    }
  }
  return spans;
}

// The sum of the squares of all elements (accumulated in double); spans = split(grads).
double sum_of_squares(const std::vector<Grad>& grads, const std::vector<Span>& spans) {
  std::vector<double> partial(spans.size(), 0.0);
  at::parallel_for(0, static_cast<int64_t>(spans.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      const Grad& grad = grads[spans[s].grad];
      const int64_t w = grad.unit_width();
      const float* x = grad.values.data_ptr<float>();
      const int64_t first = spans[s].begin * w, last = spans[s].end * w;
      // 16 independent partial sums: vectorises, and keeps rounding small
      float lanes[16] = {0.0f};
      int64_t k = first;
      for (; k + 16 <= last; k += 16) {
        for (int64_t j = 0; j < 16; ++j) lanes[j] += x[k + j] * x[k + j];
      }
      double total = 0.0;
      for (; k < last; ++k) total += static_cast<double>(x[k]) * x[k];
      for (float lane : lanes) total += lane;
      partial[s] = total;
    }
  });
  return std::accumulate(partial.begin(), partial.end(), 0.0);
}

// Per tensor: the scalars of one Adam step at that tensor's step count.
struct Coeffs {
  float scale, beta1, beta2, eps, l2, decay, step_size, bias2_sqrt;
};

// n elements: p param, g gradient (times c.scale), m first and v second moment (as torch's
// Adam: decoupled decay scales p by 1 - lr * wd, L2 adds wd * p to the gradient).
void adam_run(float* __restrict p, const float* __restrict g, float* __restrict m,
              float* __restrict v, int64_t n, const Coeffs& c) {
  for (int64_t k = 0; k < n; ++k) {
    const float param = p[k] * c.decay;
    const float grad = g[k] * c.scale + c.l2 * p[k];
    const float mk = m[k] + (1.0f - c.beta1) * (grad - m[k]);
    const float vk = c.beta2 * v[k] + (1.0f - c.beta2) * grad * grad;
    m[k] = mk;
    v[k] = vk;
    p[k] = param - c.step_size * mk / (std::sqrt(vk) / c.bias2_sqrt + c.eps);
  }
}

// One Adam (decoupled = AdamW) step on the gradients times grad_scale, first clipped to
// global L2 norm max_norm when that is > 0 (as clip_grad_norm_); returns their norm before
// clipping (0 when not clipping). A sparse grads[t] updates only the rows it holds, and
// their moments. steps[t], tensor t's step count (a 0-d float tensor, as torch's Adam keeps
// it), is incremented here and gives the bias corrections. The gradients are not modified.
double adam_step(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                 at::TensorList exp_avg_sqs, at::TensorList steps, double lr, double beta1,
                 double beta2, double eps, double weight_decay, bool decoupled,
                 double grad_scale, double max_norm) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n &&
              steps.size() == n, "adam_step: lists differ in length");
  std::vector<Grad> g(n);
  for (size_t t = 0; t < n; ++t) {
    const at::Tensor& p = params[t];
    TORCH_CHECK(p.scalar_type() == at::kFloat && p.device().is_cpu() && p.is_contiguous() &&
                exp_avgs[t].is_contiguous() && exp_avg_sqs[t].is_contiguous() &&
                exp_avgs[t].numel() == p.numel() && exp_avg_sqs[t].numel() == p.numel(),
                "adam_step: contiguous CPU float32 parameters and moments expected");
    g[t] = gather(grads[t]);
    TORCH_CHECK(!g[t].sparse ? g[t].values.numel() == p.numel()
                             : p.dim() == 2 && g[t].width == p.size(1) &&
                                   (g[t].rows.empty() ||
                                    (g[t].rows.front() >= 0 && g[t].rows.back() < p.size(0))),
                "adam_step: gradient ", t, " does not match its parameter's shape");
    TORCH_CHECK(steps[t].numel() == 1 && steps[t].scalar_type() == at::kFloat &&
                steps[t].device().is_cpu(), "adam_step: steps must be 0-d float32 CPU tensors");
  }
  const std::vector<Span> spans = split(g);
  double norm = 0.0, scale = grad_scale;
  if (max_norm > 0.0) {
    norm = std::sqrt(sum_of_squares(g, spans)) * grad_scale;
    scale *= std::min(1.0, max_norm / (norm + 1e-6));
  }
  std::vector<Coeffs> coeffs(n);
  for (size_t t = 0; t < n; ++t) {
    float* count = steps[t].data_ptr<float>();
    *count += 1.0f;
    const double bias1 = 1.0 - std::pow(beta1, static_cast<double>(*count));
    const double bias2 = 1.0 - std::pow(beta2, static_cast<double>(*count));
    coeffs[t] = {static_cast<float>(scale), static_cast<float>(beta1),
                 static_cast<float>(beta2), static_cast<float>(eps),
                 decoupled ? 0.0f : static_cast<float>(weight_decay),
                 decoupled ? static_cast<float>(1.0 - lr * weight_decay) : 1.0f,
                 static_cast<float>(lr / bias1), static_cast<float>(std::sqrt(bias2))};
  }
  at::parallel_for(0, static_cast<int64_t>(spans.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      const Span& span = spans[s];
      const Grad& grad = g[span.grad];
      float* p = params[span.grad].data_ptr<float>();
      float* m = exp_avgs[span.grad].data_ptr<float>();
      float* v = exp_avg_sqs[span.grad].data_ptr<float>();
      const float* gv = grad.values.data_ptr<float>();
      if (!grad.sparse) {
        adam_run(p + span.begin, gv + span.begin, m + span.begin, v + span.begin,
                 span.end - span.begin, coeffs[span.grad]);
        continue;
      }
      const int64_t w = grad.width;
      for (int64_t k = span.begin; k < span.end; ++k) {
        const int64_t at = grad.rows[k] * w;
        adam_run(p + at, gv + k * w, m + at, v + at, w, coeffs[span.grad]);
      }
    }
  });
  return norm;
}

// The sum of the squares of all elements of all tensors; a sparse tensor counts each row's
// summed values once.
double sum_squares(at::TensorList tensors) {
  std::vector<Grad> g;
  for (const at::Tensor& x : tensors) g.push_back(gather(x));
  return sum_of_squares(g, split(g));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(nlpseq, m) {
  m.def("adam_step(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
        "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] steps, float lr, float beta1, float beta2, "
        "float eps, float weight_decay, bool decoupled, float grad_scale, float max_norm) "
        "-> float");
  m.def("sum_squares(Tensor[] tensors) -> float");
}

// A list holding a sparse gradient dispatches to SparseCPU; the same code serves both.
TORCH_LIBRARY_IMPL(nlpseq, CPU, m) {
  m.impl("adam_step", adam_step);
  m.impl("sum_squares", sum_squares);
}

TORCH_LIBRARY_IMPL(nlpseq, SparseCPU, m) {
  m.impl("adam_step", adam_step);
  m.impl("sum_squares", sum_squares);
}
