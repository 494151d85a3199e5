// One (bi)directional LSTM layer over padded batches on CPU, each direction on its own core.
//
// Why: at the sizes nlpseq trains (batch 64, hidden 128, ~10 steps) torch's oneDNN LSTM runs
// both directions one after the other and barely gains from a second thread. Here the two
// directions' whole work -- input projection, recurrence, and in the backward pass the weight
// gradients -- runs as two independent single-threaded tasks, and each step's gate arithmetic
// is one fused, vectorised loop.
//
// Padding: a row is active at step t when t < length. An inactive row keeps its state (the
// forward direction has finished; the backward one has not started, so it still holds the zero
// initial state and begins exactly at the row's last real token) and outputs zeros.
//
// Layouts: x (B, T, I); out (B, T, D*H) with direction d in columns d*H..(d+1)*H; the saved
// activations `acts` (D, B, T, 4H) hold i, f, g, o after their nonlinearities and `cells`
// (D, B, T, H) the cell state after each step. Gate order i, f, g, o as in torch.nn.LSTM.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// e^x for x clamped to [-87, 87]: 2^k * e^r with |r| <= ln2/2 and the degree-7 Taylor
// polynomial of e^r (truncation error < 3e-9 relative). Plain arithmetic, so the loops that
// call it vectorise (with -fno-trapping-math); libm's expf would not.
inline float exp_approx(float x) {
  x = std::min(std::max(x, -87.0f), 87.0f);
  const float k = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;  // ln2 split in two parts
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;  // 2^k
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline float sigmoid_approx(float x) { return 1.0f / (1.0f + exp_approx(-x)); }

inline float tanh_approx(float x) { return 1.0f - 2.0f / (exp_approx(2.0f * x) + 1.0f); }

// One row, one step. ab holds the gate pre-activations' input part (x W_ih^T + biases) and
// is overwritten with the activations i, f, g, o; rb holds h W_hh^T. Updates the state
// (hb, cb), writes the output (ob) and saves the new cell (sb).
void cell_forward(int64_t H, float* __restrict ab, const float* __restrict rb,
                  float* __restrict hb, float* __restrict cb, float* __restrict ob,
                  float* __restrict sb) {
  for (int64_t j = 0; j < H; ++j) {
    const float i = sigmoid_approx(ab[j] + rb[j]);
    const float f = sigmoid_approx(ab[H + j] + rb[H + j]);
    const float g = tanh_approx(ab[2 * H + j] + rb[2 * H + j]);
    const float o = sigmoid_approx(ab[3 * H + j] + rb[3 * H + j]);
    const float c = f * cb[j] + i * g;
    const float h = o * tanh_approx(c);
    ab[j] = i;
    ab[H + j] = f;
    ab[2 * H + j] = g;
    ab[3 * H + j] = o;
    sb[j] = c;
    cb[j] = c;
    hb[j] = h;
    ob[j] = h;
  }
}

// One row, one step backwards. dL/dh is the carried dhb plus this step's output gradient gb;
// dcb carries dL/dc and is updated to the previous step's. Writes the gradient of the gate
// pre-activations (db). cprev: the cell state before this step.
void cell_backward(int64_t H, const float* __restrict ab, const float* __restrict sb,
                   const float* __restrict cprev, const float* __restrict gb,
                   const float* __restrict dhb, float* __restrict dcb, float* __restrict db) {
  for (int64_t j = 0; j < H; ++j) {
    const float i = ab[j], f = ab[H + j], g = ab[2 * H + j], o = ab[3 * H + j];
    const float tc = tanh_approx(sb[j]);
    const float dh = dhb[j] + gb[j];
    const float dc = dcb[j] + dh * o * (1.0f - tc * tc);
    db[j] = dc * g * i * (1.0f - i);
    db[H + j] = dc * cprev[j] * f * (1.0f - f);
    db[2 * H + j] = dc * i * (1.0f - g * g);
    db[3 * H + j] = dh * tc * o * (1.0f - o);
    dcb[j] = dc * f;
  }
}

struct Shape {
  int64_t batch, steps, input, hidden, directions;
};

// Step t of direction d at position s of its own order (right to left for d = 1).
inline int64_t step_at(int64_t d, int64_t s, int64_t T) { return d == 0 ? s : T - 1 - s; }

void forward_direction(int64_t d, const Shape& n, const int64_t* lengths, const at::Tensor& x,
                       const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& bias,
                       at::Tensor& out, at::Tensor& acts, at::Tensor& cells) {
  const int64_t B = n.batch, T = n.steps, H = n.hidden, G = 4 * H, DH = n.directions * H;
  // The input part of every step's gates in one product, written where the activations go.
  at::Tensor gates = acts[d].view({B * T, G});
  at::addmm_out(gates, bias, x.reshape({B * T, n.input}), w_ih.t());
  at::Tensor h = at::zeros({B, H}, x.options());
  at::Tensor c = at::zeros({B, H}, x.options());
  at::Tensor rec = at::empty({B, G}, x.options());
  at::Tensor w_hh_t = w_hh.t();  // (H, 4H)
  const float* rp = rec.data_ptr<float>();
  float* hp = h.data_ptr<float>();
  float* cp = c.data_ptr<float>();
  float* op = out.data_ptr<float>() + d * H;
  float* ap = acts[d].data_ptr<float>();
  float* sp = cells[d].data_ptr<float>();
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = step_at(d, s, T);
    at::mm_out(rec, h, w_hh_t);  // (B, 4H)
    for (int64_t b = 0; b < B; ++b) {
      const int64_t row = b * T + t;
      float* ob = op + row * DH;
      float* cb = cp + b * H;
      if (t >= lengths[b]) {
        std::fill(ob, ob + H, 0.0f);
        std::fill(ap + row * G, ap + (row + 1) * G, 0.0f);
        std::copy(cb, cb + H, sp + row * H);
        continue;
      }
      cell_forward(H, ap + row * G, rp + b * G, hp + b * H, cb, ob, sp + row * H);
    }
  }
}

void backward_direction(int64_t d, const Shape& n, const int64_t* lengths, const at::Tensor& x,
                        const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& out,
                        const at::Tensor& acts, const at::Tensor& cells, const at::Tensor& dout,
                        at::Tensor& dx, at::Tensor& dw_ih, at::Tensor& dw_hh, at::Tensor& db) {
  const int64_t B = n.batch, T = n.steps, H = n.hidden, G = 4 * H, DH = n.directions * H;
  at::Tensor dgates = at::empty({B, T, G}, x.options());
  at::Tensor dh = at::zeros({B, H}, x.options());
  at::Tensor dc = at::zeros({B, H}, x.options());
  std::vector<float> zeros(H, 0.0f);  // the cell before a direction's first step
  const float* ap = acts[d].data_ptr<float>();
  const float* sp = cells[d].data_ptr<float>();
  const float* gp = dout.data_ptr<float>() + d * H;
  float* dp = dgates.data_ptr<float>();
  float* dhp = dh.data_ptr<float>();
  float* dcp = dc.data_ptr<float>();
  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = step_at(d, s, T);
    const int64_t before = d == 0 ? t - 1 : t + 1;  // the step before t in this direction
    for (int64_t b = 0; b < B; ++b) {
      const int64_t row = b * T + t;
      if (t >= lengths[b]) {
        std::fill(dp + row * G, dp + (row + 1) * G, 0.0f);
        continue;
      }
      const bool first = before < 0 || before >= lengths[b];
      const float* cprev = first ? zeros.data() : sp + (b * T + before) * H;
      cell_backward(H, ap + row * G, sp + row * H, cprev, gp + row * DH, dhp + b * H,
                    dcp + b * H, dp + row * G);
    }
    // dL/dh of the step before: dgates_t (B, 4H) W_hh. Rows at padding get zeros, which is
    // what they carry: nothing flows back into padding, and a backward-direction row that has
    // not started yet is never read again.
    at::mm_out(dh, dgates.select(1, t), w_hh);
  }
  // The hidden state each step started from: outputs shifted by one step (zeros at padding).
  at::Tensor mine = out.narrow(2, d * H, H);  // (B, T, H)
  at::Tensor prev = at::zeros({B, T, H}, x.options());
  if (T > 1) {
    if (d == 0) {
      prev.narrow(1, 1, T - 1).copy_(mine.narrow(1, 0, T - 1));
    } else {
      prev.narrow(1, 0, T - 1).copy_(mine.narrow(1, 1, T - 1));
    }
  }
  at::Tensor flat = dgates.view({B * T, G});
  at::mm_out(dw_ih, flat.t(), x.reshape({B * T, n.input}));
  at::mm_out(dw_hh, flat.t(), prev.view({B * T, H}));
  at::sum_out(db, flat, {0});
  at::mm_out(dx, flat, w_ih);  // (B*T, I)
}

void check_inputs(const at::Tensor& x, const at::Tensor& lengths, at::TensorList w_ih,
                  at::TensorList w_hh) {
  TORCH_CHECK(x.dim() == 3 && x.scalar_type() == at::kFloat, "x must be a float (B, T, I) tensor");
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == x.size(0), "lengths must be (B,)");
  TORCH_CHECK(!w_ih.empty() && w_ih.size() <= 2 && w_hh.size() == w_ih.size(),
              "one or two directions' weights expected");
}

std::vector<at::Tensor> lstm_layer_forward(const at::Tensor& x_in, const at::Tensor& lengths_in,
                                           at::TensorList w_ih, at::TensorList w_hh,
                                           at::TensorList bias) {
  check_inputs(x_in, lengths_in, w_ih, w_hh);
  at::Tensor x = x_in.contiguous();
  at::Tensor lengths = lengths_in.to(at::kLong).contiguous();
  const Shape n{x.size(0), x.size(1), x.size(2), w_hh[0].size(1),
                static_cast<int64_t>(w_ih.size())};
  const int64_t B = n.batch, T = n.steps, H = n.hidden, D = n.directions;
  at::Tensor out = at::empty({B, T, D * H}, x.options());
  at::Tensor acts = at::empty({D, B, T, 4 * H}, x.options());
  at::Tensor cells = at::empty({D, B, T, H}, x.options());
  at::parallel_for(0, D, 1, [&](int64_t begin, int64_t end) {
    at::NoGradGuard no_grad;  // grad mode is per thread and this may run on a worker
    for (int64_t d = begin; d < end; ++d) {
      forward_direction(d, n, lengths.data_ptr<int64_t>(), x, w_ih[d].contiguous(),
                        w_hh[d].contiguous(), bias[d], out, acts, cells);
    }
  });
  return {out, acts, cells};
}

std::vector<at::Tensor> lstm_layer_backward(const at::Tensor& dout_in, const at::Tensor& x_in,
                                            const at::Tensor& lengths_in, at::TensorList w_ih,
                                            at::TensorList w_hh, const at::Tensor& out,
                                            const at::Tensor& acts, const at::Tensor& cells) {
  check_inputs(x_in, lengths_in, w_ih, w_hh);
  at::Tensor x = x_in.contiguous();
  at::Tensor dout = dout_in.contiguous();
  at::Tensor lengths = lengths_in.to(at::kLong).contiguous();
  const Shape n{x.size(0), x.size(1), x.size(2), w_hh[0].size(1),
                static_cast<int64_t>(w_ih.size())};
  const int64_t B = n.batch, T = n.steps, I = n.input, H = n.hidden, D = n.directions;
  at::Tensor dw_ih = at::empty({D, 4 * H, I}, x.options());
  at::Tensor dw_hh = at::empty({D, 4 * H, H}, x.options());
  at::Tensor db = at::empty({D, 4 * H}, x.options());
  at::Tensor dx = at::empty({D, B * T, I}, x.options());
  at::parallel_for(0, D, 1, [&](int64_t begin, int64_t end) {
    at::NoGradGuard no_grad;
    for (int64_t d = begin; d < end; ++d) {
      at::Tensor dx_d = dx[d], dw_ih_d = dw_ih[d], dw_hh_d = dw_hh[d], db_d = db[d];
      backward_direction(d, n, lengths.data_ptr<int64_t>(), x, w_ih[d].contiguous(),
                         w_hh[d].contiguous(), out, acts, cells, dout, dx_d, dw_ih_d, dw_hh_d,
                         db_d);
    }
  });
  at::Tensor dx_sum = D == 1 ? dx[0] : dx[0].add_(dx[1]);
  return {dx_sum.view({B, T, I}), dw_ih, dw_hh, db};
}

}  // namespace

TORCH_LIBRARY(nlpseq, m) {
  m.def("lstm_layer_forward(Tensor x, Tensor lengths, Tensor[] w_ih, Tensor[] w_hh, "
        "Tensor[] bias) -> Tensor[]");
  m.def("lstm_layer_backward(Tensor dout, Tensor x, Tensor lengths, Tensor[] w_ih, "
        "Tensor[] w_hh, Tensor out, Tensor acts, Tensor cells) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(nlpseq, CPU, m) {
  m.impl("lstm_layer_forward", lstm_layer_forward);
  m.impl("lstm_layer_backward", lstm_layer_backward);
}
