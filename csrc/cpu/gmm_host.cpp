// Host-side preparation shared by the CPU and CUDA GMM kernels (common/gmm_host.h).
#include "common/gmm_host.h"

namespace lgm {

CovType parse_covariance_type(std::string_view covariance_type) {
  if (covariance_type == "full") return CovType::kFull;
  if (covariance_type == "tied") return CovType::kTied;
  if (covariance_type == "diag") return CovType::kDiag;
  if (covariance_type == "spherical") return CovType::kSpherical;
  TORCH_CHECK_VALUE(false, "covariance_type must be one of 'full', 'tied', 'diag', 'spherical', got '",
                    covariance_type, "'");
  return CovType::kFull;  // unreachable
}

std::vector<int64_t> gmm_param_shape(CovType cov, int64_t k, int64_t d) {
  switch (cov) {
    case CovType::kFull: return {k, d, d};
    case CovType::kTied: return {d, d};
    case CovType::kDiag: return {k, d};
    case CovType::kSpherical: return {k};
  }
  return {};
}

CovType gmm_check_inputs(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& sample_weight,
                         const at::Tensor& log_weights, const at::Tensor& means, const at::Tensor& prec_chol,
                         std::string_view covariance_type) {
  const CovType cov = parse_covariance_type(covariance_type);
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
                   ": x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(1) >= 1, op, ": x must be [N, D] with D >= 1, got ", x.sizes());
  TORCH_CHECK_VALUE(log_weights.dim() == 1 && log_weights.size(0) >= 1, op,
                    ": log_weights must be [K] with K >= 1, got ", log_weights.sizes());
  const int64_t n = x.size(0), d = x.size(1), k = log_weights.size(0);
  TORCH_CHECK_VALUE(means.dim() == 2 && means.size(0) == k && means.size(1) == d, op, ": means must be [K, D] = [",
                    k, ", ", d, "], got ", means.sizes());
  const std::vector<int64_t> expected = gmm_param_shape(cov, k, d);
  TORCH_CHECK_VALUE(prec_chol.sizes() == at::IntArrayRef(expected), op, ": prec_chol must be ", at::IntArrayRef(expected),
                    " for covariance_type='", covariance_type, "', got ", prec_chol.sizes());
  const std::pair<const char*, const at::Tensor*> params[] = {
      {"log_weights", &log_weights}, {"means", &means}, {"prec_chol", &prec_chol}};
  for (const auto& [name, t] : params) {
    TORCH_CHECK_TYPE(t->scalar_type() == x.scalar_type(), op, ": ", name, " must have the dtype of x (",
                     x.scalar_type(), "), got ", t->scalar_type());
    TORCH_CHECK_VALUE(t->device() == x.device(), op, ": ", name, " must be on the device of x (", x.device(),
                      "), got ", t->device());
  }
  if (sample_weight.has_value()) {
    const at::Tensor& w = *sample_weight;
    TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == n, op, ": sample_weight must be [N] = [", n, "], got ", w.sizes());
    TORCH_CHECK_TYPE(w.scalar_type() == x.scalar_type(), op, ": sample_weight must have the dtype of x (",
                     x.scalar_type(), "), got ", w.scalar_type());
    TORCH_CHECK_VALUE(w.device() == x.device(), op, ": sample_weight must be on the device of x (", x.device(),
                      "), got ", w.device());
  }
  return cov;
}

namespace {

// log det P_k = sum_d log (P_k)_dd as float64 [K].
at::Tensor log_det_prec_chol(const at::Tensor& prec_chol, CovType cov, int64_t n_components, int64_t n_features) {
  const at::Tensor p = prec_chol.to(at::kDouble);
  switch (cov) {
    case CovType::kFull: return at::diagonal(p, 0, -2, -1).log().sum(-1);
    case CovType::kTied: return at::diagonal(p).log().sum().expand({n_components}).contiguous();
    case CovType::kDiag: return p.log().sum(-1);
    case CovType::kSpherical: return p.log() * static_cast<double>(n_features);
  }
  return {};
}

// diag and spherical on the CPU: the tables below by host loops, the same float64 arithmetic but
// for the order of the log-determinant's sum (its ~15 ATen calls were 13 us of a 24 us op at N = 16).
template <typename T>
void cpu_tables(GmmTables& t, const at::Tensor& log_weights, const at::Tensor& means, const at::Tensor& prec_chol) {
  const int64_t K = t.K, D = t.D, ld = t.ld;
  const bool diag = t.cov == CovType::kDiag;
  const at::Tensor lw = log_weights.contiguous(), mu = means.contiguous(), pc = prec_chol.contiguous();
  const T* w = lw.data_ptr<T>();
  const T* m = mu.data_ptr<T>();
  const T* p = pc.data_ptr<T>();
  t.log_const = at::empty({K}, means.options().dtype(at::kDouble));
  t.p = at::empty({K, ld}, means.options());
  t.nu = at::empty({K, ld}, means.options());
  double* lc = t.log_const.data_ptr<double>();
  T* tp = t.p.data_ptr<T>();
  T* tn = t.nu.data_ptr<T>();
  for (int64_t k = 0; k < K; ++k) {
    double log_det = diag ? 0.0 : std::log(static_cast<double>(p[k])) * static_cast<double>(D);
    for (int64_t d = 0; d < ld; ++d) {
      const T pkd = d >= D ? T(0) : (diag ? p[k * D + d] : p[k]);
      if (diag && d < D) log_det += std::log(static_cast<double>(pkd));
      tp[k * ld + d] = pkd;
      tn[k * ld + d] = d < D ? m[k * D + d] * pkd : T(0);
    }
    lc[k] = (static_cast<double>(w[k]) - 0.5 * static_cast<double>(D) * kLog2Pi) + log_det;
  }
}

}  // namespace

GmmTables gmm_tables(CovType cov, const at::Tensor& log_weights, const at::Tensor& means, const at::Tensor& prec_chol,
                     int64_t ld) {
  GmmTables t{cov, means.size(0), means.size(1), ld, {}, {}, {}, {}};
  const int64_t K = t.K, D = t.D;
  TORCH_INTERNAL_ASSERT(ld >= D, "gmm_tables: ld < D");
  if (means.device().is_cpu() && (cov == CovType::kDiag || cov == CovType::kSpherical)) {
    AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "gmm_tables",
                               [&] { cpu_tables<scalar_t>(t, log_weights, means, prec_chol); });
    return t;
  }
  // log_const_k (common/gmm.h gaussian_log_const), evaluated in the same order in float64.
  t.log_const = (log_weights.to(at::kDouble) - 0.5 * static_cast<double>(D) * kLog2Pi) +
                log_det_prec_chol(prec_chol, cov, K, D);
  t.log_const = t.log_const.contiguous();
  at::Tensor p, nu;
  switch (cov) {
    case CovType::kDiag: p = prec_chol; nu = means * p; break;
    case CovType::kSpherical: p = prec_chol.unsqueeze(1).expand({K, D}); nu = means * p; break;
    case CovType::kTied:
      t.prec = prec_chol.contiguous();
      nu = at::mm(means.to(at::kDouble), t.prec.to(at::kDouble)).to(means.scalar_type());
      break;
    case CovType::kFull:
      t.prec = prec_chol.contiguous();
      nu = at::bmm(means.to(at::kDouble).unsqueeze(1), t.prec.to(at::kDouble)).squeeze(1).to(means.scalar_type());
      break;
  }
  t.nu = at::zeros({K, ld}, means.options());
  t.nu.narrow(1, 0, D).copy_(nu);
  if (p.defined()) {
    t.p = at::zeros({K, ld}, means.options());
    t.p.narrow(1, 0, D).copy_(p);
  }
  return t;
}

}  // namespace lgm
