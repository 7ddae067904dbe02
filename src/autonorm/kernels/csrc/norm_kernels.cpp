// Single-pass CPU kernels for DyT, the AutoNorm blend and gate summary, and AFN's batch statistics (float32).
//
// Built on first use by autonorm/norms/native.py (torch.utils.cpp_extension, g++ -O3 with the
// machine's vector ISA) and registered as torch.ops.autonorm_native.*. Every kernel computes the
// same function as the readable eager formulas in autonorm/norms/{dyt,autonorm,afn}.py and the
// torch-op versions in autonorm/norms/fused.py (tests compare all of them); what changes is the
// number of sweeps over the activations: one per forward and one per backward, with every
// per-element quantity (sigmoid, LayerNorm's x_hat) recomputed from x in registers instead of
// being stored and re-read.
//
// Notation (see fused.py): DyT(x) = w tanh(alpha x) + b = (2w) s + (b - w), s = sigmoid(2 alpha x)
// (Zhu et al., 2025, "Transformers without Normalization"); the AutoNorm blend is
// y = a LN(x) + (1 - a) DyT(x) with a per-sample weight a.
//
// Layout: x is contiguous (rows, C); the blend's x is (B, N, C). Parallelism: at::parallel_for
// over rows (DyT, AFN) or samples (blend), one chunk per thread, chunks of at least
// 32768 elements (aten's own threshold for element-wise kernels, so a small
// tensor does not wake more threads than aten would); per-channel reductions go into
// per-thread partial buffers (double) that are summed at the end, so results do not depend on
// timing (they do depend on the thread count, at float rounding level, as aten's reductions do).
//
// Threads: at::parallel_for is a header template, so its `omp parallel` runs in the OpenMP
// runtime this library was linked against. Where that is a different runtime from torch's
// (a torch build that bundles its own libgomp under another name), torch.set_num_threads does
// not reach it; parallel_rows() copies torch's thread count into it before every parallel
// region, and the partial buffers are sized for the larger of the two counts.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <omp.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

namespace {

// exp(x) for float: range reduction x = n ln2 + r, |r| <= ln2 / 2, and a degree-6 polynomial for
// exp(r) (the classic Cephes single-precision coefficients); written branch-free so that g++
// vectorises the loops that call it. Relative error about 2e-7. NaN propagates (through r).
inline float exp_f(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float sigmoid_f(float z) { return 1.0f / (1.0f + exp_f(-z)); }

void check_float_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "autonorm_native: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat, "autonorm_native: ", name, " must be float32, got ", t.scalar_type());
}

// aten's at::internal::GRAIN_SIZE (ATen/TensorIterator.h): elements per chunk of its element-wise kernels
constexpr int64_t kGrainElements = 32768;
int64_t row_grain(int64_t C) { return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(C, 1)); }

// The most threads a parallel region of this library can have.
int64_t max_team() { return std::max<int64_t>(at::get_num_threads(), omp_get_max_threads()); }

// at::parallel_for with torch's thread count in this library's OpenMP runtime (see the top).
template <typename F>
void parallel_rows(int64_t n, int64_t grain, const F& f) {
  const int torch_threads = at::get_num_threads();
  if (omp_get_max_threads() != torch_threads && !omp_in_parallel()) omp_set_num_threads(torch_threads);
  at::parallel_for(0, n, grain, f);
}

// Per-thread partial sums of `width` doubles, summed by reduce().
struct Partials {
  int64_t width;
  std::vector<double> buf;
  explicit Partials(int64_t w) : width(w), buf(static_cast<size_t>(w) * max_team(), 0.0) {}
  double* of_this_thread() { return buf.data() + static_cast<size_t>(at::get_thread_num()) * width; }
  std::vector<double> reduce() const {
    std::vector<double> out(width, 0.0);
    for (size_t t = 0; t < buf.size() / width; ++t)
      for (int64_t i = 0; i < width; ++i) out[i] += buf[t * width + i];
    return out;
  }
};

at::Tensor to_tensor(const std::vector<double>& v, int64_t begin, int64_t len) {
  auto t = at::empty({len}, at::kFloat);
  float* p = t.data_ptr<float>();
  for (int64_t i = 0; i < len; ++i) p[i] = static_cast<float>(v[begin + i]);
  return t;
}

// DyT's affine in the form every kernel uses: DyT(x) = (2w) s + (b - w), s = sigmoid(2 alpha x).
// The contiguous tensors are held while their pointers are read.
struct DytAffine {
  std::vector<float> w2, sh;  // 2 w and b - w (sh is zero without a bias)
  float ta;                   // 2 alpha
  DytAffine(const at::Tensor& alpha, const at::Tensor& weight, const at::Tensor& bias = at::Tensor()) {
    const at::Tensor w = weight.contiguous();
    const at::Tensor b = bias.defined() ? bias.contiguous() : at::zeros_like(w);
    const int64_t C = w.numel();
    const float* wp = w.data_ptr<float>();
    const float* bp = b.data_ptr<float>();
    w2.resize(C);
    sh.resize(C);
    for (int64_t c = 0; c < C; ++c) { w2[c] = 2.0f * wp[c]; sh[c] = bp[c] - wp[c]; }
    ta = 2.0f * alpha.contiguous().data_ptr<float>()[0];
  }
};

// Both branches' parameters of an AutoNorm point: LayerNorm's affine (contiguous, held) and DyT's.
// Not copyable: the pointers point into its own members.
struct BranchParams {
  at::Tensor lw_t, lb_t;
  DytAffine dyt;
  const float *lw, *lb, *w2, *sh;  // LN weight and bias; DyT's 2 w and b - w
  float ta;                        // 2 alpha
  BranchParams(const at::Tensor& ln_weight, const at::Tensor& ln_bias, const at::Tensor& alpha,
               const at::Tensor& dyt_weight, const at::Tensor& dyt_bias)
      : lw_t(ln_weight.contiguous()),
        lb_t(ln_bias.contiguous()),
        dyt(alpha, dyt_weight, dyt_bias),
        lw(lw_t.data_ptr<float>()),
        lb(lb_t.data_ptr<float>()),
        w2(dyt.w2.data()),
        sh(dyt.sh.data()),
        ta(dyt.ta) {}
  BranchParams(const BranchParams&) = delete;
  BranchParams& operator=(const BranchParams&) = delete;
};

// LayerNorm statistics of one row (two passes over it, in L1): mean and 1 / sqrt(biased var + eps).
inline void row_stats(const float* xr, int64_t C, float eps, float& mu, float& rs) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < C; ++c) sum += xr[c];
  mu = sum / C;
  float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
  for (int64_t c = 0; c < C; ++c) { const float d = xr[c] - mu; sq += d * d; }
  rs = 1.0f / std::sqrt(sq / C + eps);
}

// ------------------------------------------------------------------------------------------ DyT
at::Tensor dyt_forward(const at::Tensor& x_in, const at::Tensor& alpha, const at::Tensor& weight, const at::Tensor& bias) {
  check_float_cpu(x_in, "x");
  const at::Tensor x = x_in.contiguous();
  const int64_t C = weight.numel();
  TORCH_CHECK(x.numel() % C == 0, "autonorm_native.dyt_forward: last dimension must be ", C);
  const int64_t M = x.numel() / C;
  at::Tensor y = at::empty_like(x);
  const DytAffine d(alpha, weight, bias);
  const float ta = d.ta;
  const float *w2p = d.w2.data(), *shp = d.sh.data();
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  parallel_rows(M, row_grain(C), [=](int64_t r0, int64_t r1) {
    // local copies: g++ turns loads through captured pointers inside `omp simd` into gathers
    const float* w2l = w2p;
    const float* shl = shp;
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xp + r * C;
      float* yr = yp + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yr[c] = w2l[c] * sigmoid_f(ta * xr[c]) + shl[c];
    }
  });
  return y;
}

// Returns dx, dalpha (1,), dweight (C,), dbias (C,).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dyt_backward(
    const at::Tensor& g_in, const at::Tensor& x_in, const at::Tensor& alpha, const at::Tensor& weight) {
  check_float_cpu(g_in, "grad");
  const at::Tensor g = g_in.contiguous();
  const at::Tensor x = x_in.contiguous();
  const int64_t C = weight.numel();
  const int64_t M = x.numel() / C;
  at::Tensor dx = at::empty_like(x);
  const DytAffine d(alpha, weight);
  const float ta = d.ta;
  const float* xp = x.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  float* dxp = dx.data_ptr<float>();
  const float* w2p = d.w2.data();
  // partial layout: [dw (C) | db (C) | dalpha (1)]
  Partials part(2 * C + 1);
  parallel_rows(M, row_grain(C), [=, &part](int64_t r0, int64_t r1) {
    double* acc = part.of_this_thread();
    const float* w2l = w2p;  // local copy (see dyt_forward)
    std::vector<float> dw_f(C, 0.0f), db_f(C, 0.0f);
    float* dwp = dw_f.data();
    float* dbp = db_f.data();
    double dal = 0.0;
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xp + r * C;
      const float* gr = gp + r * C;
      float* dxr = dxp + r * C;
      float dal_row = 0.0f;
#pragma omp simd reduction(+ : dal_row)
      for (int64_t c = 0; c < C; ++c) {
        const float s = sigmoid_f(ta * xr[c]);
        const float gv = gr[c];
        const float u = gv * w2l[c] * s * (1.0f - s);  // dL/dz at z = 2 alpha x
        dxr[c] = u * ta;
        dal_row += u * xr[c];
        dwp[c] += gv * (2.0f * s - 1.0f);
        dbp[c] += gv;
      }
      dal += dal_row;
      if (((r - r0) & 255) == 255) {  // flush float partials every 256 rows
        for (int64_t c = 0; c < C; ++c) { acc[c] += dwp[c]; acc[C + c] += dbp[c]; dwp[c] = 0.0f; dbp[c] = 0.0f; }
      }
    }
    for (int64_t c = 0; c < C; ++c) { acc[c] += dwp[c]; acc[C + c] += dbp[c]; }
    acc[2 * C] += 2.0 * dal;
  });
  const std::vector<double> tot = part.reduce();
  return {dx, to_tensor(tot, 2 * C, 1), to_tensor(tot, 0, C), to_tensor(tot, C, C)};
}

// ------------------------------------------------------------------------------ AutoNorm blend
// y = a LN(x) + (1 - a) DyT(x); writes mean and rstd (B * N) when given (training).
std::tuple<at::Tensor, at::Tensor, at::Tensor> blend_forward(
    const at::Tensor& x_in, const at::Tensor& a_in, const at::Tensor& ln_weight, const at::Tensor& ln_bias, double eps,
    const at::Tensor& alpha, const at::Tensor& dyt_weight, const at::Tensor& dyt_bias, bool save_stats) {
  check_float_cpu(x_in, "x");
  TORCH_CHECK(x_in.dim() == 3, "autonorm_native.blend_forward: x must be (B, N, C)");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor a = a_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2);
  at::Tensor y = at::empty_like(x);
  at::Tensor mean = save_stats ? at::empty({B * N}, at::kFloat) : at::Tensor();
  at::Tensor rstd = save_stats ? at::empty({B * N}, at::kFloat) : at::Tensor();
  const BranchParams bp(ln_weight, ln_bias, alpha, dyt_weight, dyt_bias);
  const float ta = bp.ta;
  const float *lw = bp.lw, *lb = bp.lb, *w2p = bp.w2, *shp = bp.sh;
  const float* ap = a.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  float* mp = save_stats ? mean.data_ptr<float>() : nullptr;
  float* rp = save_stats ? rstd.data_ptr<float>() : nullptr;
  const float epsf = static_cast<float>(eps);
  parallel_rows(B, std::max<int64_t>(1, row_grain(C) / std::max<int64_t>(N, 1)), [=](int64_t b0, int64_t b1) {
    std::vector<float> A(C), Bc(C), P(C);
    for (int64_t bi = b0; bi < b1; ++bi) {
      const float av = ap[bi], k = 1.0f - av;
      for (int64_t c = 0; c < C; ++c) { A[c] = av * lw[c]; Bc[c] = av * lb[c] + k * shp[c]; P[c] = k * w2p[c]; }
      for (int64_t n = 0; n < N; ++n) {
        const int64_t r = bi * N + n;
        const float* xr = xp + r * C;
        float* yr = yp + r * C;
        float mu, rs;
        row_stats(xr, C, epsf, mu, rs);
        if (mp) { mp[r] = mu; rp[r] = rs; }
        const float* Ap = A.data();
        const float* Bp = Bc.data();
        const float* Pp = P.data();
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) yr[c] = (xr[c] - mu) * rs * Ap[c] + Bp[c] + Pp[c] * sigmoid_f(ta * xr[c]);
      }
    }
  });
  return {y, mean, rstd};
}

// Hard per-sample choice (a deployed Gumbel gate): y_b = LN(x_b) where use_ln[b] else DyT(x_b);
// each sample runs only its own branch, in one sweep, with no gather or scatter.
at::Tensor select_forward(const at::Tensor& x_in, const at::Tensor& use_ln_in, const at::Tensor& ln_weight,
                          const at::Tensor& ln_bias, double eps, const at::Tensor& alpha, const at::Tensor& dyt_weight,
                          const at::Tensor& dyt_bias) {
  check_float_cpu(x_in, "x");
  TORCH_CHECK(x_in.dim() == 3, "autonorm_native.select_forward: x must be (B, N, C)");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor use_ln = use_ln_in.to(at::kBool).contiguous();
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2);
  TORCH_CHECK(use_ln.numel() == B, "autonorm_native.select_forward: one choice per sample");
  at::Tensor y = at::empty_like(x);
  const BranchParams bp(ln_weight, ln_bias, alpha, dyt_weight, dyt_bias);
  const float ta = bp.ta;
  const float *lw = bp.lw, *lb = bp.lb, *w2p = bp.w2, *shp = bp.sh;
  const bool* up = use_ln.data_ptr<bool>();
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const float epsf = static_cast<float>(eps);
  parallel_rows(B, std::max<int64_t>(1, row_grain(C) / std::max<int64_t>(N, 1)), [=](int64_t b0, int64_t b1) {
    const float* lwl = lw;  // local copies (see dyt_forward)
    const float* lbl = lb;
    const float* w2l = w2p;
    const float* shl = shp;
    for (int64_t bi = b0; bi < b1; ++bi) {
      for (int64_t n = 0; n < N; ++n) {
        const int64_t r = bi * N + n;
        const float* xr = xp + r * C;
        float* yr = yp + r * C;
        if (up[bi]) {
          float mu, rs;
          row_stats(xr, C, epsf, mu, rs);
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) yr[c] = (xr[c] - mu) * rs * lwl[c] + lbl[c];
        } else {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) yr[c] = w2l[c] * sigmoid_f(ta * xr[c]) + shl[c];
        }
      }
    }
  });
  return y;
}

// Returns dx, da (B,), d ln_weight, d ln_bias, dalpha (1,), d dyt_weight, d dyt_bias.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> blend_backward(
    const at::Tensor& g_in, const at::Tensor& x_in, const at::Tensor& mean, const at::Tensor& rstd,
    const at::Tensor& a_in, const at::Tensor& ln_weight, const at::Tensor& ln_bias, const at::Tensor& alpha,
    const at::Tensor& dyt_weight, const at::Tensor& dyt_bias) {
  check_float_cpu(g_in, "grad");
  const at::Tensor g = g_in.contiguous();
  const at::Tensor x = x_in.contiguous();
  const at::Tensor a = a_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2);
  at::Tensor dx = at::empty_like(x);
  at::Tensor da = at::empty({B}, at::kFloat);
  const BranchParams bp(ln_weight, ln_bias, alpha, dyt_weight, dyt_bias);
  const float ta = bp.ta;
  const float *lw = bp.lw, *lb = bp.lb, *w2p = bp.w2, *shp = bp.sh;
  const float* ap = a.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  const float* mp = mean.data_ptr<float>();
  const float* rp = rstd.data_ptr<float>();
  float* dxp = dx.data_ptr<float>();
  float* dap = da.data_ptr<float>();
  const float invC = 1.0f / static_cast<float>(C);
  // partial layout: [dlw | dlb | ddw | ddb] (4C) + dalpha (1)
  Partials part(4 * C + 1);
  parallel_rows(B, std::max<int64_t>(1, row_grain(C) / std::max<int64_t>(N, 1)), [=, &part](int64_t b0, int64_t b1) {
    double* acc = part.of_this_thread();
    // per-sample float accumulators, flushed into acc after each sample
    std::vector<float> f_lw(C), f_lb(C), f_gs(C), GL(C);
    const float* lwl = lw;  // local copies (see dyt_forward)
    const float* lbl = lb;
    const float* w2l = w2p;
    const float* shl = shp;
    double dal = 0.0;
    for (int64_t bi = b0; bi < b1; ++bi) {
      const float av = ap[bi], k = 1.0f - av;
      std::fill(f_lw.begin(), f_lw.end(), 0.0f);
      std::fill(f_lb.begin(), f_lb.end(), 0.0f);
      std::fill(f_gs.begin(), f_gs.end(), 0.0f);
      for (int64_t c = 0; c < C; ++c) GL[c] = av * lwl[c];
      float* flw = f_lw.data();
      float* flb = f_lb.data();
      float* fgs = f_gs.data();
      const float* glp = GL.data();
      float da_s = 0.0f, dal_s = 0.0f;
      for (int64_t n = 0; n < N; ++n) {
        const int64_t r = bi * N + n;
        const float* xr = xp + r * C;
        const float* gr = gp + r * C;
        float* dxr = dxp + r * C;
        const float mu = mp[r], rs = rp[r];
        float s1 = 0.0f, s2 = 0.0f, dar = 0.0f, dalr = 0.0f;
#pragma omp simd reduction(+ : s1, s2, dar, dalr)
        for (int64_t c = 0; c < C; ++c) {
          const float xv = xr[c], gv = gr[c];
          const float xh = (xv - mu) * rs;
          const float dxh = gv * glp[c];  // a g lw
          s1 += dxh;
          s2 += dxh * xh;
          flw[c] += gv * xh;  // times a later
          flb[c] += gv;
          const float s = sigmoid_f(ta * xv);
          fgs[c] += gv * s;
          // da: <g, LN(x)> - <g, DyT(x)>
          dar += gv * ((xh * lwl[c] + lbl[c]) - (w2l[c] * s + shl[c]));
          const float u = gv * k * w2l[c] * s * (1.0f - s);
          dalr += u * xv;
          dxr[c] = u * ta;
        }
        const float m1 = s1 * invC, m2 = s2 * invC;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float xh = (xr[c] - mu) * rs;
          dxr[c] += rs * (gr[c] * glp[c] - m1 - xh * m2);
        }
        da_s += dar;
        dal_s += dalr;
      }
      dap[bi] = da_s;
      dal += dal_s;
      for (int64_t c = 0; c < C; ++c) {
        acc[c] += static_cast<double>(av) * flw[c];
        acc[C + c] += static_cast<double>(av) * flb[c];
        acc[2 * C + c] += static_cast<double>(k) * (2.0f * fgs[c] - flb[c]);  // sum k g (2s - 1)
        acc[3 * C + c] += static_cast<double>(k) * flb[c];
      }
    }
    acc[4 * C] += 2.0 * dal;
  });
  const std::vector<double> tot = part.reduce();
  return {dx, da, to_tensor(tot, 0, C), to_tensor(tot, C, C), to_tensor(tot, 4 * C, 1), to_tensor(tot, 2 * C, C),
          to_tensor(tot, 3 * C, C)};
}

// Mean over tokens of x (B, N, C) -> (B, C): the AutoNorm gate's per-sample summary.
at::Tensor token_mean(const at::Tensor& x_in) {
  check_float_cpu(x_in, "x");
  TORCH_CHECK(x_in.dim() == 3, "autonorm_native.token_mean: x must be (B, N, C)");
  const at::Tensor x = x_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2);
  at::Tensor h = at::empty({B, C}, at::kFloat);
  const float* xp = x.data_ptr<float>();
  float* hp = h.data_ptr<float>();
  const float invN = 1.0f / static_cast<float>(std::max<int64_t>(N, 1));
  parallel_rows(B, std::max<int64_t>(1, row_grain(C) / std::max<int64_t>(N, 1)), [=](int64_t b0, int64_t b1) {
    for (int64_t bi = b0; bi < b1; ++bi) {
      float* hr = hp + bi * C;
      for (int64_t c = 0; c < C; ++c) hr[c] = 0.0f;
      for (int64_t n = 0; n < N; ++n) {
        const float* xr = xp + (bi * N + n) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) hr[c] += xr[c];
      }
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) hr[c] *= invN;
    }
  });
  return h;
}

// The first two moments over tokens of x (B, N, C) -> (m, q), both (B, C): m = mean_n x,
// q = mean_n x^2 (the AutoNorm gate's "mean_scale" summary), from one read of x.
std::tuple<at::Tensor, at::Tensor> token_moments(const at::Tensor& x_in) {
  check_float_cpu(x_in, "x");
  TORCH_CHECK(x_in.dim() == 3, "autonorm_native.token_moments: x must be (B, N, C)");
  const at::Tensor x = x_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2);
  at::Tensor m = at::empty({B, C}, at::kFloat);
  at::Tensor q = at::empty({B, C}, at::kFloat);
  const float* xp = x.data_ptr<float>();
  float* mp = m.data_ptr<float>();
  float* qp = q.data_ptr<float>();
  const float invN = 1.0f / static_cast<float>(std::max<int64_t>(N, 1));
  parallel_rows(B, std::max<int64_t>(1, row_grain(C) / std::max<int64_t>(N, 1)), [=](int64_t b0, int64_t b1) {
    for (int64_t bi = b0; bi < b1; ++bi) {
      float* mr = mp + bi * C;
      float* qr = qp + bi * C;
      for (int64_t c = 0; c < C; ++c) { mr[c] = 0.0f; qr[c] = 0.0f; }
      for (int64_t n = 0; n < N; ++n) {
        const float* xr = xp + (bi * N + n) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) { const float v = xr[c]; mr[c] += v; qr[c] += v * v; }
      }
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) { mr[c] *= invN; qr[c] *= invN; }
    }
  });
  return {m, q};
}

// Gradient of token_moments: dx = dm / N + (2 / N) dq * x, one pass over x.
at::Tensor token_moments_backward(const at::Tensor& x_in, const at::Tensor& dm_in, const at::Tensor& dq_in) {
  check_float_cpu(x_in, "x");
  check_float_cpu(dm_in, "dm");
  check_float_cpu(dq_in, "dq");
  TORCH_CHECK(x_in.dim() == 3, "autonorm_native.token_moments_backward: x must be (B, N, C)");
  const at::Tensor x = x_in.contiguous(), dm = dm_in.contiguous(), dq = dq_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2);
  TORCH_CHECK(dm.numel() == B * C && dq.numel() == B * C, "autonorm_native.token_moments_backward: dm, dq must be (B, C)");
  at::Tensor dx = at::empty_like(x);
  const float* xp = x.data_ptr<float>();
  const float* dmp = dm.data_ptr<float>();
  const float* dqp = dq.data_ptr<float>();
  float* dxp = dx.data_ptr<float>();
  const float invN = 1.0f / static_cast<float>(std::max<int64_t>(N, 1));
  parallel_rows(B, std::max<int64_t>(1, row_grain(C) / std::max<int64_t>(N, 1)), [=](int64_t b0, int64_t b1) {
    std::vector<float> k0(C), k1(C);
    for (int64_t bi = b0; bi < b1; ++bi) {
      for (int64_t c = 0; c < C; ++c) { k0[c] = dmp[bi * C + c] * invN; k1[c] = 2.0f * dqp[bi * C + c] * invN; }
      const float* k0p = k0.data();
      const float* k1p = k1.data();
      for (int64_t n = 0; n < N; ++n) {
        const float* xr = xp + (bi * N + n) * C;
        float* dr = dxp + (bi * N + n) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) dr[c] = k0p[c] + k1p[c] * xr[c];
      }
    }
  });
  return dx;
}

// --------------------------------------------------------------------------------------- AFN
// Per-channel mean and biased variance of x (rows, C) over rows, accumulated in double.
std::tuple<at::Tensor, at::Tensor> channel_moments(const at::Tensor& x_in) {
  check_float_cpu(x_in, "x");
  const at::Tensor x = x_in.contiguous();
  const int64_t C = x.size(-1);
  const int64_t M = x.numel() / C;
  TORCH_CHECK(M > 0, "autonorm_native.channel_moments: empty input");
  const float* xp = x.data_ptr<float>();
  Partials part(2 * C);
  parallel_rows(M, row_grain(C), [=, &part](int64_t r0, int64_t r1) {
    double* acc = part.of_this_thread();
    // shift by the chunk's first row for accuracy (sum of (x - x0), (x - x0)^2), flushed every 256 rows
    std::vector<float> s(C, 0.0f), q(C, 0.0f), x0(xp + r0 * C, xp + r0 * C + C);
    std::vector<double> ds(C, 0.0), dq(C, 0.0);
    float* sp = s.data();
    float* qp = q.data();
    const float* x0p = x0.data();
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xp + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) { const float d = xr[c] - x0p[c]; sp[c] += d; qp[c] += d * d; }
      if (((r - r0) & 255) == 255 || r == r1 - 1) {
        for (int64_t c = 0; c < C; ++c) { ds[c] += sp[c]; dq[c] += qp[c]; sp[c] = 0.0f; qp[c] = 0.0f; }
      }
    }
    // convert shifted sums to raw sums about zero: sum x = S + n x0, sum x^2 = Q + 2 x0 S + n x0^2
    const double n = static_cast<double>(r1 - r0);
    for (int64_t c = 0; c < C; ++c) {
      const double x0d = x0p[c];
      acc[c] += ds[c] + n * x0d;
      acc[C + c] += dq[c] + 2.0 * x0d * ds[c] + n * x0d * x0d;
    }
  });
  const std::vector<double> tot = part.reduce();
  at::Tensor mean = at::empty({C}, at::kFloat), var = at::empty({C}, at::kFloat);
  float* mp = mean.data_ptr<float>();
  float* vp = var.data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) {
    const double mu = tot[c] / static_cast<double>(M);
    mp[c] = static_cast<float>(mu);
    vp[c] = static_cast<float>(std::max(0.0, tot[C + c] / static_cast<double>(M) - mu * mu));
  }
  return {mean, var};
}

// Backward of y = x * scale + shift together with the statistics' path:
//   dscale = sum_rows g x,  dshift = sum_rows g  (returned), and, given the gradients dmean/dvar
//   of the per-channel statistics, dx = g scale + k0 + k1 x with k1 = 2 dvar / M,
//   k0 = dmean / M - k1 mean. Two entry points because dmean/dvar depend on dscale/dshift.
std::tuple<at::Tensor, at::Tensor> affine_param_grads(const at::Tensor& g_in, const at::Tensor& x_in) {
  check_float_cpu(g_in, "grad");
  const at::Tensor g = g_in.contiguous();
  const at::Tensor x = x_in.contiguous();
  const int64_t C = x.size(-1);
  const int64_t M = x.numel() / C;
  const float* xp = x.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  Partials part(2 * C);
  parallel_rows(M, row_grain(C), [=, &part](int64_t r0, int64_t r1) {
    double* acc = part.of_this_thread();
    std::vector<float> s(C, 0.0f), q(C, 0.0f);
    float* sp = s.data();
    float* qp = q.data();
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xp + r * C;
      const float* gr = gp + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) { sp[c] += gr[c] * xr[c]; qp[c] += gr[c]; }
      if (((r - r0) & 255) == 255 || r == r1 - 1) {
        for (int64_t c = 0; c < C; ++c) { acc[c] += sp[c]; acc[C + c] += qp[c]; sp[c] = 0.0f; qp[c] = 0.0f; }
      }
    }
  });
  const std::vector<double> tot = part.reduce();
  return {to_tensor(tot, 0, C), to_tensor(tot, C, C)};
}

// y = x * scale + shift for x (rows, C) (AFN's output; one sweep).
at::Tensor affine_forward(const at::Tensor& x_in, const at::Tensor& scale, const at::Tensor& shift) {
  check_float_cpu(x_in, "x");
  const at::Tensor x = x_in.contiguous();
  const int64_t C = x.size(-1);
  const int64_t M = x.numel() / C;
  at::Tensor y = at::empty_like(x);
  const at::Tensor sc = scale.contiguous(), sh = shift.contiguous();
  const float* xp = x.data_ptr<float>();
  const float* scp = sc.data_ptr<float>();
  const float* shp = sh.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  parallel_rows(M, row_grain(C), [=](int64_t r0, int64_t r1) {
    const float* scl = scp;  // local copies (see dyt_forward)
    const float* shl = shp;
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xp + r * C;
      float* yr = yp + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yr[c] = xr[c] * scl[c] + shl[c];
    }
  });
  return y;
}

at::Tensor affine_input_grad(const at::Tensor& g_in, const at::Tensor& x_in, const at::Tensor& scale,
                             const at::Tensor& k0, const at::Tensor& k1) {
  const at::Tensor g = g_in.contiguous();
  const at::Tensor x = x_in.contiguous();
  const int64_t C = x.size(-1);
  const int64_t M = x.numel() / C;
  at::Tensor dx = at::empty_like(x);
  const at::Tensor sc = scale.contiguous(), a0 = k0.contiguous(), a1 = k1.contiguous();
  const float *xp = x.data_ptr<float>(), *gp = g.data_ptr<float>();
  const float *scp = sc.data_ptr<float>(), *k0p = a0.data_ptr<float>(), *k1p = a1.data_ptr<float>();
  float* dxp = dx.data_ptr<float>();
  parallel_rows(M, row_grain(C), [=](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xp + r * C;
      const float* gr = gp + r * C;
      float* dxr = dxp + r * C;
      const float* scl = scp;  // local copies (see dyt_forward)
      const float* k0l = k0p;
      const float* k1l = k1p;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) dxr[c] = gr[c] * scl[c] + k0l[c] + k1l[c] * xr[c];
    }
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY(autonorm_native, m) {
  m.def("dyt_forward(Tensor x, Tensor alpha, Tensor weight, Tensor bias) -> Tensor");
  m.def("dyt_backward(Tensor grad, Tensor x, Tensor alpha, Tensor weight) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "blend_forward(Tensor x, Tensor a, Tensor ln_weight, Tensor ln_bias, float eps, Tensor alpha, "
      "Tensor dyt_weight, Tensor dyt_bias, bool save_stats) -> (Tensor, Tensor, Tensor)");
  m.def(
      "blend_backward(Tensor grad, Tensor x, Tensor mean, Tensor rstd, Tensor a, Tensor ln_weight, "
      "Tensor ln_bias, Tensor alpha, Tensor dyt_weight, Tensor dyt_bias) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "select_forward(Tensor x, Tensor use_ln, Tensor ln_weight, Tensor ln_bias, float eps, Tensor alpha, "
      "Tensor dyt_weight, Tensor dyt_bias) -> Tensor");
  m.def("token_mean(Tensor x) -> Tensor");
  m.def("token_moments(Tensor x) -> (Tensor, Tensor)");
  m.def("token_moments_backward(Tensor x, Tensor dm, Tensor dq) -> Tensor");
  m.def("channel_moments(Tensor x) -> (Tensor, Tensor)");
  m.def("affine_forward(Tensor x, Tensor scale, Tensor shift) -> Tensor");
  m.def("affine_param_grads(Tensor grad, Tensor x) -> (Tensor, Tensor)");
  m.def("affine_input_grad(Tensor grad, Tensor x, Tensor scale, Tensor k0, Tensor k1) -> Tensor");
}

TORCH_LIBRARY_IMPL(autonorm_native, CPU, m) {
  m.impl("dyt_forward", &dyt_forward);
  m.impl("dyt_backward", &dyt_backward);
  m.impl("blend_forward", &blend_forward);
  m.impl("blend_backward", &blend_backward);
  m.impl("select_forward", &select_forward);
  m.impl("token_mean", &token_mean);
  m.impl("token_moments", &token_moments);
  m.impl("token_moments_backward", &token_moments_backward);
  m.impl("channel_moments", &channel_moments);
  m.impl("affine_forward", &affine_forward);
  m.impl("affine_param_grads", &affine_param_grads);
  m.impl("affine_input_grad", &affine_input_grad);
}
