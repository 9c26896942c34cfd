// Schemas of every op in the lightning_genmodels namespace. Kernels are registered beside
// their sources: cpu/*.cpp with TORCH_LIBRARY_IMPL(lightning_genmodels, CPU, m), cuda/*.cu
// with TORCH_LIBRARY_IMPL(lightning_genmodels, CUDA, m).
#include <torch/library.h>

TORCH_LIBRARY(lightning_genmodels, m) {
  // Standard normals from a counter-based Philox4x32-10 stream.
  // seed_offset: int64 [2] = (seed, offset) on the output device; out[i] = stream[offset + i].
  m.def("philox_normal(Tensor seed_offset, SymInt[] size) -> Tensor");
  // One fused EM pass over x [N, D]: (nk [K], sx [K, D], sxx, loglik []) in float64.
  // sxx: full [K, D, D], tied [D, D], diag [K, D], spherical [K].
  m.def(
      "gmm_em_stats(Tensor x, Tensor? sample_weight, Tensor log_weights, Tensor means, "
      "Tensor prec_chol, str covariance_type) -> (Tensor, Tensor, Tensor, Tensor)");
  // Joint log-probabilities log w_k + log N(x_n | k): [N, K], dtype of x.
  m.def(
      "gmm_log_prob(Tensor x, Tensor log_weights, Tensor means, Tensor prec_chol, "
      "str covariance_type) -> Tensor");
  // The M-step of a diag or spherical mixture (gmm/em.py m_step, then precision_cholesky), CPU:
  // (weights [K], means [K, D], covariances, prec_chol, empty [K] bool), float64.
  m.def(
      "gmm_m_step(Tensor nk, Tensor sx, Tensor sxx, str covariance_type, float reg_covar, float eps, "
      "Tensor? prev_means, Tensor? prev_covariances) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The instruction set of the CPU GMM kernels for a request ("auto", "avx512", "avx2", "generic";
  // "" = the LGM_GMM_CPU_ISA environment variable): raises when this CPU cannot run it.
  m.def("gmm_cpu_isa(str isa) -> str");
  // CPU only, for tests: the tiles whose distances and responsibilities took one fused pass
  // (cpu/gmm_simd_fused.h) since the library loaded, on every thread.
  m.def("_gmm_cpu_fused_tiles() -> int");
  // CPU only, for tests and benchmarks: gmm_log_prob through the E-step's pruned distances
  // (cpu/gmm_prune.cpp), -inf where a pair was dropped; the same as gmm_log_prob where pruning does
  // not apply.
  m.def(
      "_gmm_pruned_log_prob(Tensor x, Tensor log_weights, Tensor means, Tensor prec_chol, "
      "str covariance_type) -> Tensor");
  // x [N, D] c^T for a few rows c [C, D] (k-means++ candidates), float64 [N, C]; CPU.
  m.def("rows_dot(Tensor x, Tensor c) -> Tensor");
  // The greedy k-means++ step (gmm/kmeans.py): squared distances of x [N, D] to c [C, D] from
  // c_sq [C] and x_sq [N] (float64), and the potentials sum_n min(closest_n, dist_nc) [C]; CPU.
  m.def("seeding_distances(Tensor x, Tensor c, Tensor c_sq, Tensor x_sq, Tensor closest) -> (Tensor, Tensor)");
  // ||x_n||^2 of x [N, D], float64 [N] from float64 squares; CPU.
  m.def("sq_norms(Tensor x) -> Tensor");
  // One fused DDPM/DDIM sampler step (diffusion/samplers.py): x [N, ...] and model_output float32,
  // timestep int64 [N] rows of the coefficient table coef [T, 6], noise from the Philox stream at
  // seed_offset = (seed, offset); clip_range 0 = no clipping. Returns x_{t'} [N, ...].
  m.def(
      "diffusion_step(Tensor x, Tensor model_output, Tensor timestep, Tensor coef, Tensor seed_offset, "
      "float clip_range) -> Tensor");
  // The UNet's sampling forward (diffusion/unet.py: no autograd, one timestep for the batch) in one
  // call: weights as UNet.sampling_weights() lists them (None for an identity skip), the blocks'
  // folded first-convolution biases in run order, config = [levels, num_res_blocks, groups, heads].
  m.def(
      "unet_sample_forward(Tensor x, Tensor?[] weights, Tensor[] folded_biases, int[] config, float eps) "
      "-> Tensor");
}
