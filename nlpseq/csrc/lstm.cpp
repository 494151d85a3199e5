// One (bi)directional LSTM layer over padded batches on CPU, each direction on its own core.
//
// Why: at the sizes nlpseq trains (batch 64, hidden 128, ~10 steps) torch's oneDNN LSTM runs
// both directions one after the other and barely gains from a second thread. Here the two
// directions' whole work -- each step's one product of [x_t h] with [W_ih W_hh], and in the
// backward pass the weight gradients -- runs as two independent single-threaded tasks, and
// each step's gate arithmetic is one fused, vectorised loop. The products call torch's BLAS
// directly (see `gemm`).
//
// Padding: a row is active at step t when t < length. An inactive row keeps its state (the
// forward direction has finished; the backward one has not started, so it still holds its
// initial state and begins exactly at the row's last real token) and outputs zeros.
//
// Initial states h0, c0 (B, D*H) are optional (zeros without them) and get no gradient: they
// serve a stateful language model's carried, detached state. The final cell states come back
// beside the final hidden states, also without a gradient.
//
// Layouts: x (B, T, I); out (B, T, D*H) with direction d in columns d*H..(d+1)*H; final
// (B, D*H) each direction's last state (the forward one at each row's last real token, the
// backward one at the first). Saved for the backward pass: `xh` (D, B, T, I+H) each step's
// input next to the state it started from, `acts` (D, B, T, 4H) i, f, g, o after their
// nonlinearities, `cells` (D, B, T, H) the cell state after each step and `w` (D, 4H, I+H)
// each direction's [W_ih W_hh]. Gate order i, f, g, o as in torch.nn.LSTM.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include <dlfcn.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

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

#if defined(__AVX512F__)
// The same functions on 16 floats at once. Written out because the compiler, keeping IEEE
// division, emits a slow divide per call and a compare-and-blend per clamp: here 1/x is a
// reciprocal estimate refined by one Newton step (float precision: the activation test holds
// them to 2e-7) and 2^k is applied with scalef. Measured: the layer 3% faster.
using Vec = __m512;

inline Vec splat(float x) { return _mm512_set1_ps(x); }

inline Vec exp_vec(Vec x) {
  // max/min return their second operand when one is NaN: a NaN goes through
  x = _mm512_min_ps(splat(87.0f), _mm512_max_ps(splat(-87.0f), x));
  const Vec k = _mm512_roundscale_ps(_mm512_mul_ps(x, splat(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  Vec r = _mm512_fnmadd_ps(k, splat(0.693359375f), x);
  r = _mm512_fmadd_ps(k, splat(2.12194440e-4f), r);
  Vec p = splat(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, splat(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, splat(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, splat(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, splat(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, splat(0.5f));
  p = _mm512_fmadd_ps(p, r, splat(1.0f));
  p = _mm512_fmadd_ps(p, r, splat(1.0f));
  return _mm512_scalef_ps(p, k);
}

inline Vec reciprocal_vec(Vec d) {
  const Vec y = _mm512_rcp14_ps(d);
  return _mm512_mul_ps(y, _mm512_fnmadd_ps(d, y, splat(2.0f)));
}

inline Vec sigmoid_vec(Vec x) {
  return reciprocal_vec(_mm512_add_ps(splat(1.0f), exp_vec(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

inline Vec tanh_vec(Vec x) {
  return _mm512_fnmadd_ps(splat(2.0f), reciprocal_vec(_mm512_add_ps(exp_vec(_mm512_add_ps(x, x)),
                                                                    splat(1.0f))), splat(1.0f));
}

// Lanes j..j+15 of a row of H, the last ones masked when H is not a multiple of 16.
inline __mmask16 lanes(int64_t j, int64_t H) {
  return H - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (H - j)) - 1);
}

inline Vec load(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }

inline void store(float* p, __mmask16 m, Vec v) { _mm512_mask_storeu_ps(p, m, v); }
#endif

// One row, one step. rb holds the gate pre-activations without bias ([x h] W^T); writes
// the activations i, f, g, o (ab), updates the state (hb, cb), writes the output (ob) and
// saves the new cell (sb).
void cell_forward(int64_t H, const float* __restrict rb, const float* __restrict bias,
                  float* __restrict ab, float* __restrict hb, float* __restrict cb,
                  float* __restrict ob, float* __restrict sb) {
#if defined(__AVX512F__)
  for (int64_t j = 0; j < H; j += 16) {
    const __mmask16 m = lanes(j, H);
    const Vec i = sigmoid_vec(_mm512_add_ps(load(rb + j, m), load(bias + j, m)));
    const Vec f = sigmoid_vec(_mm512_add_ps(load(rb + H + j, m), load(bias + H + j, m)));
    const Vec g = tanh_vec(_mm512_add_ps(load(rb + 2 * H + j, m), load(bias + 2 * H + j, m)));
    const Vec o = sigmoid_vec(_mm512_add_ps(load(rb + 3 * H + j, m), load(bias + 3 * H + j, m)));
    const Vec c = _mm512_fmadd_ps(f, load(cb + j, m), _mm512_mul_ps(i, g));
    const Vec h = _mm512_mul_ps(o, tanh_vec(c));
    store(ab + j, m, i);
    store(ab + H + j, m, f);
    store(ab + 2 * H + j, m, g);
    store(ab + 3 * H + j, m, o);
    store(sb + j, m, c);
    store(cb + j, m, c);
    store(hb + j, m, h);
    store(ob + j, m, h);
  }
#else
  for (int64_t j = 0; j < H; ++j) {
    const float i = sigmoid_approx(rb[j] + bias[j]);
    const float f = sigmoid_approx(rb[H + j] + bias[H + j]);
    const float g = tanh_approx(rb[2 * H + j] + bias[2 * H + j]);
    const float o = sigmoid_approx(rb[3 * H + j] + bias[3 * H + j]);
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
#endif
}

// One row, one step backwards. dL/dh is the carried dhb plus this step's output gradient gb;
// dcb carries dL/dc and is updated to the previous step's. Writes the gradient
// of the gate pre-activations (db) and adds it to the bias gradient (dbias). cprev: the cell
// state before this step.
void cell_backward(int64_t H, const float* __restrict ab, const float* __restrict sb,
                   const float* __restrict cprev, const float* __restrict gb,
                   const float* __restrict dhb, float* __restrict dcb, float* __restrict db,
                   float* __restrict dbias) {
#if defined(__AVX512F__)
  const Vec one = splat(1.0f);
  for (int64_t j = 0; j < H; j += 16) {
    const __mmask16 m = lanes(j, H);
    const Vec i = load(ab + j, m), f = load(ab + H + j, m), g = load(ab + 2 * H + j, m);
    const Vec o = load(ab + 3 * H + j, m);
    const Vec tc = tanh_vec(load(sb + j, m));
    const Vec dh = _mm512_add_ps(load(dhb + j, m), load(gb + j, m));
    const Vec dc = _mm512_fmadd_ps(_mm512_mul_ps(dh, o), _mm512_fnmadd_ps(tc, tc, one),
                                   load(dcb + j, m));
    const Vec di = _mm512_mul_ps(_mm512_mul_ps(dc, g), _mm512_mul_ps(i, _mm512_sub_ps(one, i)));
    const Vec df = _mm512_mul_ps(_mm512_mul_ps(dc, load(cprev + j, m)),
                                 _mm512_mul_ps(f, _mm512_sub_ps(one, f)));
    const Vec dg = _mm512_mul_ps(_mm512_mul_ps(dc, i), _mm512_fnmadd_ps(g, g, one));
    const Vec d_o = _mm512_mul_ps(_mm512_mul_ps(dh, tc), _mm512_mul_ps(o, _mm512_sub_ps(one, o)));
    store(db + j, m, di);
    store(db + H + j, m, df);
    store(db + 2 * H + j, m, dg);
    store(db + 3 * H + j, m, d_o);
    store(dcb + j, m, _mm512_mul_ps(dc, f));
  }
#else
  for (int64_t j = 0; j < H; ++j) {
    const float i = ab[j], f = ab[H + j], g = ab[2 * H + j], o = ab[3 * H + j];
    const float tc = tanh_approx(sb[j]);
    const float dh = dhb[j] + gb[j];
    const float dc = dcb[j] + dh * o * (1.0f - tc * tc);
    const float di = dc * g * i * (1.0f - i);
    const float df = dc * cprev[j] * f * (1.0f - f);
    const float dg = dc * i * (1.0f - g * g);
    const float d_o = dh * tc * o * (1.0f - o);
    db[j] = di;
    db[H + j] = df;
    db[2 * H + j] = dg;
    db[3 * H + j] = d_o;
    dcb[j] = dc * f;
  }
#endif
  for (int64_t j = 0; j < 4 * H; ++j) dbias[j] += db[j];
}

// The BLAS torch itself calls, looked up in libtorch_cpu at run time: a layer makes 2T + 2
// products of a few dozen microseconds each, and at::mm_out (with the views it needs) adds
// several microseconds of dispatch to each; `sgemm_` takes raw pointers and row strides.
// Null where this torch build exports none, or with NLPSEQ_TORCH_BLAS=0 (which tests use):
// then at::mm does the products.
void* torch_symbol(const char* name) {
  static void* const torch_cpu = [] {
    const char* use = std::getenv("NLPSEQ_TORCH_BLAS");
    return use && std::string(use) == "0" ? nullptr
                                          : dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
  }();
  return torch_cpu ? dlsym(torch_cpu, name) : nullptr;
}

using Sgemm = void (*)(const char*, const char*, const int*, const int*, const int*,
                       const float*, const float*, const int*, const float*, const int*,
                       const float*, float*, const int*);

// Row-major C (m x n, row stride ldc) = op(A) op(B), with op(A) m x k and op(B) k x n, op
// transposing where asked; lda, ldb: the row strides of A and B as stored.
void gemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, const float* a,
          int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc) {
  static const auto sgemm = reinterpret_cast<Sgemm>(torch_symbol("sgemm_"));
  if (sgemm) {
    // Column-major BLAS reads each row-major matrix as its transpose: C^T = op(B)^T op(A)^T.
    const char ta = transpose_a ? 'T' : 'N', tb = transpose_b ? 'T' : 'N';
    const int rows = static_cast<int>(n), cols = static_cast<int>(m), depth = static_cast<int>(k);
    const int la = static_cast<int>(lda), lb = static_cast<int>(ldb), lc = static_cast<int>(ldc);
    const float one = 1.0f, zero = 0.0f;
    sgemm(&tb, &ta, &rows, &cols, &depth, &one, b, &lb, a, &la, &zero, c, &lc);
    return;
  }
  auto view = [](const float* p, bool transpose, int64_t rows, int64_t cols, int64_t ld) {
    const at::Tensor stored = at::from_blob(
        const_cast<float*>(p), transpose ? at::IntArrayRef{cols, rows} : at::IntArrayRef{rows, cols},
        {ld, 1}, at::TensorOptions().dtype(at::kFloat));
    return transpose ? stored.t() : stored;
  };
  // float32 whatever the caller's autocast (which runs this kernel with bfloat16 products)
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  const at::Tensor product =
      at::mm(view(a, transpose_a, m, k, lda), view(b, transpose_b, k, n, ldb));
  const float* src = product.data_ptr<float>();
  for (int64_t row = 0; row < m; ++row) std::copy(src + row * n, src + (row + 1) * n, c + row * ldc);
}

// bfloat16 products (`bf16`: the layer runs under bfloat16 autocast): each product's operands
// are rounded to bfloat16 and multiplied by oneDNN (at::mm on bfloat16 tensors, float32
// accumulation, the result rounded to bfloat16 as autocast's products are), which CPUs with
// AVX512-BF16 or AMX run at 2-3x the float32 rate; states, gates and gradients stay float32
// between products. (MKL's cblas_gemm_bf16bf16f32 keeps a float32 result but repacks the
// weights on every call and ran these small products no faster than float32.)
inline uint16_t to_bf16(float v) {  // round to nearest even; inf and NaN stay what they are
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// rows x cols floats (row stride ld) -> contiguous bfloat16.
void round_rows(const float* src, int64_t rows, int64_t cols, int64_t ld, uint16_t* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = src + r * ld;
    uint16_t* out = dst + r * cols;
    for (int64_t c = 0; c < cols; ++c) out[c] = to_bf16(row[c]);
  }
}

// `gemm` on bfloat16 operands (rows of lda / ldb elements), float32 result.
void gemm16(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k,
            const uint16_t* a, int64_t lda, const uint16_t* b, int64_t ldb, float* c,
            int64_t ldc) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  auto view = [](const uint16_t* p, bool transpose, int64_t rows, int64_t cols, int64_t ld) {
    const at::Tensor stored = at::from_blob(
        const_cast<uint16_t*>(p), transpose ? at::IntArrayRef{cols, rows} : at::IntArrayRef{rows, cols},
        {ld, 1}, at::TensorOptions().dtype(at::kBFloat16));
    return transpose ? stored.t() : stored;
  };
  const at::Tensor product =
      at::mm(view(a, transpose_a, m, k, lda), view(b, transpose_b, k, n, ldb)).contiguous();
  const uint16_t* src = reinterpret_cast<const uint16_t*>(product.data_ptr());
  for (int64_t row = 0; row < m; ++row) {
    float* out = c + row * ldc;
    for (int64_t col = 0; col < n; ++col) {
      const uint32_t u = static_cast<uint32_t>(src[row * n + col]) << 16;
      std::memcpy(out + col, &u, sizeof u);
    }
  }
}

// Inside a parallel region, MKL's thread count for the calling thread's products is 1 while
// this lives. Each direction runs on a worker of torch's pool; with the count left at the
// pool's size MKL picks the kernels of its threaded path (which pack both operands on every
// call) even though nested calls run on one thread, and at 1 its small-matrix kernels, which
// made the layer 3% faster here. Outside one (a single direction) MKL may use every thread.
class OneBlasThread {
 public:
  OneBlasThread() {
    if (at::in_parallel_region() && set_local()) {
      previous_ = set_local()(1);
      set_ = true;
    }
  }
  ~OneBlasThread() {
    if (set_) set_local()(previous_);  // 0: back to MKL's global count
  }

 private:
  using SetLocal = int (*)(int);
  static SetLocal set_local() {
    static const auto found = reinterpret_cast<SetLocal>(torch_symbol("MKL_Set_Num_Threads_Local"));
    return found;
  }
  int previous_ = 0;
  bool set_ = false;
};

struct Shape {
  int64_t batch, steps, input, hidden, directions;
};

// A single direction would keep one core busy (MKL's own threads do not pay off on products
// this small), so its batch is cut into one block of rows per thread, each block a task with
// its own weight gradients, summed after. Blocks of fewer than 8 rows would waste the cores'
// vector width on thin products; two directions are already two tasks.
int64_t row_blocks(int64_t D, int64_t B) {
  if (D != 1) return 1;
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), B / 8));
}

// Task k of D * P: direction d over the rows [first, first + rows).
struct Task {
  int64_t d, first, rows;
};

inline Task task_at(int64_t k, int64_t D, int64_t P, int64_t B) {
  const int64_t p = k / D, first = p * B / P;
  return {k % D, first, (p + 1) * B / P - first};
}

// Step t of direction d at position s of its own order (right to left for d = 1).
inline int64_t step_at(int64_t d, int64_t s, int64_t T) { return d == 0 ? s : T - 1 - s; }

// The first and one past the last row active at step t (t < length). In a batch sorted by
// length, as nlpseq's are, every row between them is active too.
std::pair<int64_t, int64_t> active_rows(const int64_t* lengths, int64_t B, int64_t t) {
  int64_t lo = 0, hi = B;
  while (lo < hi && t >= lengths[lo]) ++lo;
  while (hi > lo && t >= lengths[hi - 1]) --hi;
  return {lo, hi};
}

// Each step is one product [x_t h] (B, I+H) times [W_ih W_hh]^T: one well-shaped matrix
// product instead of a tall input projection plus a thin recurrent one, and its operand
// `xh` (the input and the state each step started from) is kept, so the backward pass gets
// the weight gradient in one product too.
// h0, c0: (B, D*H) initial states, or null for zeros.
// save: keep xh, acts and cells for the backward pass; without it (inference) each step
// works in buffers of one step, and xh, acts and cells are left unwritten.
void forward_direction(int64_t d, const Shape& n, const int64_t* lengths, const at::Tensor& x,
                       const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& b_ih,
                       const at::Tensor& b_hh, const float* h0, const float* c0, bool bf16,
                       bool save, at::Tensor& out, at::Tensor& final, at::Tensor& final_c,
                       at::Tensor& w, at::Tensor& xh, at::Tensor& acts, at::Tensor& cells) {
  const int64_t B = n.batch, T = n.steps, I = n.input, H = n.hidden, G = 4 * H;
  const int64_t DH = n.directions * H, K = I + H;
  // Plain copies: each tensor op costs microseconds of dispatch, and these are small.
  const float* wip = w_ih.data_ptr<float>();
  const float* whp = w_hh.data_ptr<float>();
  float* wp = w.data_ptr<float>();  // w = [W_ih W_hh] (4H, I+H), kept for the backward pass
  for (int64_t g = 0; g < G; ++g) {
    std::copy(wip + g * I, wip + (g + 1) * I, wp + g * K);
    std::copy(whp + g * H, whp + (g + 1) * H, wp + g * K + I);
  }
  std::vector<float> bias(G);
  const float* bip = b_ih.data_ptr<float>();
  const float* bhp = b_hh.data_ptr<float>();
  for (int64_t g = 0; g < G; ++g) bias[g] = bip[g] + bhp[g];
  const float* xsrc = x.data_ptr<float>();
  // Step t's rows [x_t h] start at xstep + t * tstride, one every rstride floats.
  std::vector<float> step_xh(save ? 0 : B * K), step_acts(save ? 0 : G), step_cell(save ? 0 : H);
  float* xstep = save ? xh.data_ptr<float>() : step_xh.data();
  const int64_t tstride = save ? K : 0, rstride = save ? T * K : K;
  if (save) {
    for (int64_t row = 0; row < B * T; ++row) {
      std::copy(xsrc + row * I, xsrc + (row + 1) * I, xstep + row * K);
    }
  }
  std::vector<float> c(B * H, 0.0f);
  if (c0) {
    for (int64_t b = 0; b < B; ++b) {
      std::copy(c0 + b * DH + d * H, c0 + b * DH + d * H + H, c.data() + b * H);
    }
  }
  std::vector<float> rec(B * G);
  std::vector<uint16_t> w16(bf16 ? G * K : 0), xh16(bf16 ? B * K : 0);  // bfloat16 operands
  if (bf16) round_rows(wp, G, K, K, w16.data());
  const float* rp = rec.data();
  const float* bp = bias.data();
  float* hp = final.data_ptr<float>() + d * H;  // the state; ends as each row's final state
  float* cp = c.data();
  float* op = out.data_ptr<float>() + d * H;
  float* ap = save ? acts.data_ptr<float>() : nullptr;
  float* sp = save ? cells.data_ptr<float>() : nullptr;
  for (int64_t b = 0; b < B; ++b) {
    if (h0) {
      std::copy(h0 + b * DH + d * H, h0 + b * DH + d * H + H, hp + b * DH);
    } else {
      std::fill(hp + b * DH, hp + b * DH + H, 0.0f);
    }
  }
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = step_at(d, s, T);
    float* xt = xstep + t * tstride;
    for (int64_t b = 0; b < B; ++b) {
      if (!save) std::copy(xsrc + (b * T + t) * I, xsrc + (b * T + t + 1) * I, xt + b * rstride);
      std::copy(hp + b * DH, hp + b * DH + H, xt + b * rstride + I);
    }
    // The product covers rows lo..hi-1, the first and last active ones: in a batch sorted
    // by length (as nlpseq's batches are) the rows that have finished, or in the backward
    // direction not yet started, lie at one end and cost nothing.
    const auto [lo, hi] = active_rows(lengths, B, t);
    const int64_t m = hi - lo;  // product (m, 4H) into rows lo..hi-1 of rec
    if (m > 0 && bf16) {
      round_rows(xt + lo * rstride, m, K, rstride, xh16.data());
      gemm16(false, true, m, G, K, xh16.data(), K, w16.data(), K, rec.data() + lo * G, G);
    } else if (m > 0) {
      gemm(false, true, m, G, K, xt + lo * rstride, rstride, wp, K, rec.data() + lo * G, G);
    }
    for (int64_t b = 0; b < B; ++b) {
      const int64_t row = b * T + t;
      float* ob = op + row * DH;
      float* cb = cp + b * H;
      float* ab = save ? ap + row * G : step_acts.data();
      float* sb = save ? sp + row * H : step_cell.data();
      if (t >= lengths[b]) {
        std::fill(ob, ob + H, 0.0f);
        std::fill(ab, ab + G, 0.0f);
        std::copy(cb, cb + H, sb);
        continue;
      }
      cell_forward(H, rp + b * G, bp, ab, hp + b * DH, cb, ob, sb);
    }
  }
  float* fcp = final_c.data_ptr<float>() + d * H;
  for (int64_t b = 0; b < B; ++b) std::copy(cp + b * H, cp + (b + 1) * H, fcp + b * DH);
}

// c0: the (B, D*H) initial cell states of the forward pass, or null for zeros.
void backward_direction(int64_t d, const Shape& n, const int64_t* lengths,
                        const at::Tensor& w, const at::Tensor& xh,
                        const at::Tensor& acts, const at::Tensor& cells, const float* gp,
                        const float* gfinal, const float* c0, bool bf16, at::Tensor& dx,
                        at::Tensor& dw_ih,
                        at::Tensor& dw_hh, at::Tensor& dbias) {
  const int64_t B = n.batch, T = n.steps, I = n.input, H = n.hidden, G = 4 * H;
  const int64_t DH = n.directions * H, K = I + H;
  at::Tensor dgates = at::empty({B, T, G}, xh.options());
  std::vector<float> dhs(B * H);  // one step's gradient of the state it started from
  // dL/dh carried backwards starts as the final state's gradient (the state after a row's
  // last step in this direction, which is where the backward pass begins for that row).
  std::vector<float> dh(B * H, 0.0f), dc(B * H, 0.0f);
  // The cell before a direction's first step; also the output gradient when there is none.
  std::vector<float> zeros(H, 0.0f);
  const float* ap = acts.data_ptr<float>();
  const float* sp = cells.data_ptr<float>();
  const float* dhsp = dhs.data();
  const float* wp = w.data_ptr<float>();
  const float* xp = xh.data_ptr<float>();
  float* dp = dgates.data_ptr<float>();
  float* dhp = dh.data();
  float* dcp = dc.data();
  float* dxp = dx.data_ptr<float>();
  float* dbp = dbias.data_ptr<float>();
  std::fill(dbp, dbp + G, 0.0f);
  std::vector<uint16_t> w16(bf16 ? G * K : 0), step16(bf16 ? B * G : 0);
  if (bf16) round_rows(wp, G, K, K, w16.data());
  if (gfinal) {
    for (int64_t b = 0; b < B; ++b) std::copy(gfinal + b * DH, gfinal + b * DH + H, dhp + b * H);
  }
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
      const float* start = c0 ? c0 + b * DH + d * H : zeros.data();
      const float* cprev = first ? start : sp + (b * T + before) * H;
      cell_backward(H, ap + row * G, sp + row * H, cprev, gp ? gp + row * DH : zeros.data(),
                    dhp + b * H, dcp + b * H, dp + row * G, dbp);
    }
    // rows lo..hi-1 as in the forward pass: the others' products would be discarded
    const auto [lo, hi] = active_rows(lengths, B, t);
    const int64_t m = hi - lo;  // product (m, H) into rows lo..hi-1 of dhs
    const float* dgt = dp + (lo * T + t) * G;
    if (m > 0 && bf16) {
      round_rows(dgt, m, G, T * G, step16.data());
      gemm16(false, false, m, H, G, step16.data(), G, w16.data() + I, K, dhs.data() + lo * H, H);
    } else if (m > 0) {
      gemm(false, false, m, H, G, dgt, T * G, wp + I, K, dhs.data() + lo * H, H);
    }
    // A row at padding keeps what it carries: a forward-direction row that has not reached
    // its end yet holds its final state's gradient.
    for (int64_t b = 0; b < B; ++b) {
      if (t < lengths[b]) std::copy(dhsp + b * H, dhsp + (b + 1) * H, dhp + b * H);
    }
  }
  // dx = dgates W_ih over all steps (zero at padding, where dgates is)
  std::vector<uint16_t> dp16(bf16 ? B * T * G : 0), xh16(bf16 ? B * T * K : 0);
  if (bf16) {
    round_rows(dp, B * T, G, G, dp16.data());
    round_rows(xp, B * T, K, K, xh16.data());
    gemm16(false, false, B * T, I, G, dp16.data(), G, w16.data(), K, dxp, I);
  } else {
    gemm(false, false, B * T, I, G, dp, G, wp, K, dxp, I);
  }
  // [dW_ih dW_hh]^T = [x h]^T dgates (I+H, 4H): this orientation of the product runs faster
  // here than dgates^T [x h] or one product per gradient; the transpose is written straight
  // into the two gradients.
  std::vector<float> dw_t(K * G);
  if (bf16) {
    gemm16(true, false, K, G, B * T, xh16.data(), K, dp16.data(), G, dw_t.data(), G);
  } else {
    gemm(true, false, K, G, B * T, xp, K, dp, G, dw_t.data(), G);
  }
  const float* src = dw_t.data();
  float* dip = dw_ih.data_ptr<float>();
  float* dwhp = dw_hh.data_ptr<float>();
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t k = 0; k < I; ++k) dip[g * I + k] = src[k * G + g];
    for (int64_t k = 0; k < H; ++k) dwhp[g * H + k] = src[(I + k) * G + g];
  }
}

void check_inputs(const at::Tensor& x, const at::Tensor& lengths, at::TensorList w_ih,
                  at::TensorList w_hh) {
  TORCH_CHECK(x.dim() == 3 && x.scalar_type() == at::kFloat, "x must be a float (B, T, I) tensor");
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == x.size(0), "lengths must be (B,)");
  TORCH_CHECK(!w_ih.empty() && w_ih.size() <= 2 && w_hh.size() == w_ih.size(),
              "one or two directions' weights expected");
}

// Optional (B, D*H) float tensor's data, checked; null when absent.
const float* state_data(const std::optional<at::Tensor>& state, at::Tensor& keep, int64_t B,
                        int64_t DH) {
  if (!state || !state->defined()) return nullptr;
  TORCH_CHECK(state->scalar_type() == at::kFloat && state->dim() == 2 && state->size(0) == B &&
              state->size(1) == DH, "initial states must be float (B, D*H) tensors");
  keep = state->contiguous();
  return keep.data_ptr<float>();
}

std::vector<at::Tensor> lstm_layer_forward(const at::Tensor& x_in, const at::Tensor& lengths_in,
                                           at::TensorList w_ih, at::TensorList w_hh,
                                           at::TensorList b_ih, at::TensorList b_hh,
                                           const std::optional<at::Tensor>& h0_in,
                                           const std::optional<at::Tensor>& c0_in, bool bf16,
                                           bool save) {
  check_inputs(x_in, lengths_in, w_ih, w_hh);
  at::Tensor x = x_in.contiguous();
  at::Tensor lengths = lengths_in.to(at::kLong).contiguous();
  const Shape n{x.size(0), x.size(1), x.size(2), w_hh[0].size(1),
                static_cast<int64_t>(w_ih.size())};
  const int64_t B = n.batch, T = n.steps, I = n.input, H = n.hidden, D = n.directions;
  at::Tensor out = at::empty({B, T, D * H}, x.options());
  at::Tensor final = at::empty({B, D * H}, x.options());
  at::Tensor final_c = at::empty({B, D * H}, x.options());
  at::Tensor h0_keep, c0_keep;
  const float* h0 = state_data(h0_in, h0_keep, B, D * H);
  const float* c0 = state_data(c0_in, c0_keep, B, D * H);
  const int64_t P = row_blocks(D, B);
  at::Tensor w = at::empty({D * P, 4 * H, I + H}, x.options());  // each task writes its own
  // what the backward pass reads: (D, B, 0, .) when nothing is saved
  const int64_t saved_steps = save ? T : 0;
  at::Tensor xh = at::empty({D, B, saved_steps, I + H}, x.options());
  at::Tensor acts = at::empty({D, B, saved_steps, 4 * H}, x.options());
  at::Tensor cells = at::empty({D, B, saved_steps, H}, x.options());
  at::parallel_for(0, D * P, 1, [&](int64_t begin, int64_t end) {
    at::NoGradGuard no_grad;  // grad mode is per thread and this may run on a worker
    OneBlasThread one_blas_thread;
    for (int64_t k = begin; k < end; ++k) {
      const auto [d, b0, bs] = task_at(k, D, P, B);
      const Shape part{bs, T, I, H, D};
      at::Tensor out_k = out.narrow(0, b0, bs), final_k = final.narrow(0, b0, bs);
      at::Tensor final_c_k = final_c.narrow(0, b0, bs), w_k = w[k];
      at::Tensor xh_k = xh[d].narrow(0, b0, bs), acts_k = acts[d].narrow(0, b0, bs);
      at::Tensor cells_k = cells[d].narrow(0, b0, bs);
      forward_direction(d, part, lengths.data_ptr<int64_t>() + b0, x.narrow(0, b0, bs),
                        w_ih[d].contiguous(), w_hh[d].contiguous(), b_ih[d].contiguous(),
                        b_hh[d].contiguous(), h0 ? h0 + b0 * D * H : nullptr,
                        c0 ? c0 + b0 * D * H : nullptr, bf16, save, out_k, final_k, final_c_k, w_k,
                        xh_k, acts_k, cells_k);
    }
  });
  if (P > 1) w = w.narrow(0, 0, D);
  return {out, final, final_c, w, xh, acts, cells};
}

// dout and dfinal may be undefined (that output was not used).
std::vector<at::Tensor> lstm_layer_backward(const std::optional<at::Tensor>& dout_in,
                                            const std::optional<at::Tensor>& dfinal_in,
                                            const at::Tensor& lengths_in, const at::Tensor& w,
                                            const at::Tensor& xh, const at::Tensor& acts,
                                            const at::Tensor& cells,
                                            const std::optional<at::Tensor>& c0_in,
                                            bool bf16) {
  TORCH_CHECK(w.dim() == 3 && xh.dim() == 4 && xh.size(0) == w.size(0) &&
              xh.size(3) == w.size(2), "w must be (D, 4H, I+H) and xh (D, B, T, I+H)");
  const int64_t H = w.size(1) / 4;
  const Shape n{xh.size(1), xh.size(2), xh.size(3) - H, H, xh.size(0)};
  const int64_t B = n.batch, T = n.steps, I = n.input, D = n.directions;
  at::Tensor lengths = lengths_in.to(at::kLong).contiguous();
  at::Tensor dout, dfinal;
  if (dout_in && dout_in->defined()) dout = dout_in->contiguous();
  if (dfinal_in && dfinal_in->defined()) dfinal = dfinal_in->contiguous();
  at::Tensor c0_keep;
  const float* c0 = state_data(c0_in, c0_keep, B, D * H);
  const int64_t P = row_blocks(D, B);
  at::Tensor dw_ih = at::empty({D * P, 4 * H, I}, xh.options());  // per task, summed below
  at::Tensor dw_hh = at::empty({D * P, 4 * H, H}, xh.options());
  at::Tensor db = at::empty({D * P, 4 * H}, xh.options());
  at::Tensor dx = at::empty({D, B, T, I}, xh.options());
  at::parallel_for(0, D * P, 1, [&](int64_t begin, int64_t end) {
    at::NoGradGuard no_grad;
    OneBlasThread one_blas_thread;
    for (int64_t k = begin; k < end; ++k) {
      const auto [d, b0, bs] = task_at(k, D, P, B);
      const Shape part{bs, T, I, H, D};
      at::Tensor dx_k = dx[d].narrow(0, b0, bs), dw_ih_k = dw_ih[k], dw_hh_k = dw_hh[k];
      at::Tensor db_k = db[k];
      const float* gp = dout.defined() ? dout.data_ptr<float>() + b0 * T * D * H + d * H : nullptr;
      const float* gf = dfinal.defined() ? dfinal.data_ptr<float>() + b0 * D * H + d * H
                                         : nullptr;
      backward_direction(d, part, lengths.data_ptr<int64_t>() + b0, w[d],
                         xh[d].narrow(0, b0, bs), acts[d].narrow(0, b0, bs),
                         cells[d].narrow(0, b0, bs), gp, gf, c0 ? c0 + b0 * D * H : nullptr,
                         bf16, dx_k, dw_ih_k, dw_hh_k, db_k);
    }
  });
  if (P > 1) {
    dw_ih = dw_ih.sum(0, true);
    dw_hh = dw_hh.sum(0, true);
    db = db.sum(0, true);
  }
  at::Tensor dx_sum = D == 1 ? dx[0] : dx[0].add_(dx[1]);
  return {dx_sum, dw_ih, dw_hh, db};
}

// --- one step for a few rows (decoding) ----------------------------------------------------
//
// Sampling a character LM one character at a time multiplies one row by every weight: the
// step is bound by reading the weights, not by arithmetic, and torch.lstm_cell spends more on
// dispatch and on its two separate products than on the reading. Here each step reads
// [W_ih W_hh] once, packed by the caller (float32, or bfloat16 at half the bytes), and the
// threads split the hidden units, each computing its units' four gates and cells.

// Dot product of two float32 vectors of length k.
float dot32(const float* __restrict a, const float* __restrict b, int64_t k) {
#if defined(__AVX512F__)
  Vec acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
  }
  for (; i < k; i += 16) {
    const __mmask16 m = lanes(i, k);
    acc0 = _mm512_fmadd_ps(load(a + i, m), load(b + i, m), acc0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
#else
  float sum = 0.0f;
  for (int64_t i = 0; i < k; ++i) sum += a[i] * b[i];
  return sum;
#endif
}

inline float from_bf16(uint16_t v) {
  const uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Dot product of two bfloat16 vectors of length k, accumulated in float32.
float dot16(const uint16_t* __restrict a, const uint16_t* __restrict b, int64_t k) {
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < k; i += 32) {
    const __mmask32 m = k - i >= 32 ? __mmask32(0xFFFFFFFFu) : __mmask32((1u << (k - i)) - 1);
    const __m512i x = _mm512_maskz_loadu_epi16(m, a + i), y = _mm512_maskz_loadu_epi16(m, b + i);
    acc = _mm512_dpbf16_ps(acc, reinterpret_cast<const __m512bh&>(x),
                           reinterpret_cast<const __m512bh&>(y));
  }
  return _mm512_reduce_add_ps(acc);
#else
  float sum = 0.0f;
  for (int64_t i = 0; i < k; ++i) sum += from_bf16(a[i]) * from_bf16(b[i]);
  return sum;
#endif
}

// x (B, I), h and c (B, H) float32; w (4H, I+H) float32 or bfloat16 ([W_ih W_hh], gate order
// i, f, g, o); bias (4H) float32 (b_ih + b_hh). Returns the new h and c, each (B, H).
std::vector<at::Tensor> lstm_step(const at::Tensor& x_in, const at::Tensor& h_in,
                                  const at::Tensor& c_in, const at::Tensor& w_in,
                                  const at::Tensor& bias_in) {
  TORCH_CHECK(x_in.dim() == 2 && h_in.dim() == 2 && c_in.sizes() == h_in.sizes(),
              "lstm_step: x (B, I), h and c (B, H)");
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && h_in.scalar_type() == at::kFloat &&
                  c_in.scalar_type() == at::kFloat && bias_in.scalar_type() == at::kFloat,
              "lstm_step: x, h, c and bias must be float32");
  TORCH_CHECK(w_in.scalar_type() == at::kFloat || w_in.scalar_type() == at::kBFloat16,
              "lstm_step: w must be float32 or bfloat16");
  const at::Tensor x = x_in.contiguous(), h = h_in.contiguous(), c = c_in.contiguous();
  const at::Tensor w = w_in.contiguous(), bias = bias_in.contiguous();
  const int64_t B = x.size(0), I = x.size(1), H = h.size(1), K = I + H;
  TORCH_CHECK(h.size(0) == B && w.size(0) == 4 * H && w.size(1) == K && bias.numel() == 4 * H,
              "lstm_step: w must be (4H, I+H) and bias (4H)");
  const bool bf16 = w.scalar_type() == at::kBFloat16;
  std::vector<float> xh(B * K);
  for (int64_t b = 0; b < B; ++b) {
    std::copy(x.data_ptr<float>() + b * I, x.data_ptr<float>() + (b + 1) * I, xh.data() + b * K);
    std::copy(h.data_ptr<float>() + b * H, h.data_ptr<float>() + (b + 1) * H,
              xh.data() + b * K + I);
  }
  std::vector<uint16_t> xh16(bf16 ? B * K : 0);
  if (bf16) round_rows(xh.data(), B, K, K, xh16.data());
  at::Tensor h_out = at::empty({B, H}, h.options()), c_out = c.clone();
  const float* wp = bf16 ? nullptr : w.data_ptr<float>();
  const uint16_t* wp16 = bf16 ? reinterpret_cast<const uint16_t*>(w.data_ptr()) : nullptr;
  const float* bp = bias.data_ptr<float>();
  // 64 units a task at least: fewer would spend more on waking a thread than on the work
  at::parallel_for(0, H, 64, [&](int64_t j0, int64_t j1) {
    const int64_t n = j1 - j0;
    std::vector<float> gates(4 * n), zeros(4 * n, 0.0f), acts(4 * n), cell(n), out(n);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t q = 0; q < 4; ++q) {
        for (int64_t j = j0; j < j1; ++j) {
          const int64_t row = q * H + j;
          const float sum = bf16 ? dot16(wp16 + row * K, xh16.data() + b * K, K)
                                 : dot32(wp + row * K, xh.data() + b * K, K);
          gates[q * n + j - j0] = sum + bp[row];
        }
      }
      cell_forward(n, gates.data(), zeros.data(), acts.data(), h_out.data_ptr<float>() + b * H + j0,
                   c_out.data_ptr<float>() + b * H + j0, out.data(), cell.data());
    }
  });
  return {h_out, c_out};
}

}  // namespace

TORCH_LIBRARY(nlpseq, m) {
  m.def("lstm_layer_forward(Tensor x, Tensor lengths, Tensor[] w_ih, Tensor[] w_hh, "
        "Tensor[] b_ih, Tensor[] b_hh, Tensor? h0=None, Tensor? c0=None, bool bf16=False, "
        "bool save=True) -> Tensor[]");
  m.def("lstm_layer_backward(Tensor? dout, Tensor? dfinal, Tensor lengths, Tensor w, "
        "Tensor xh, Tensor acts, Tensor cells, Tensor? c0=None, bool bf16=False) -> Tensor[]");
  m.def("lstm_step(Tensor x, Tensor h, Tensor c, Tensor w, Tensor bias) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(nlpseq, CPU, m) {
  m.impl("lstm_layer_forward", lstm_layer_forward);
  m.impl("lstm_layer_backward", lstm_layer_backward);
  m.impl("lstm_step", lstm_step);
}
