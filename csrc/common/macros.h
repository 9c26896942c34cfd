#pragma once
// HOST_DEVICE marks math shared by the CPU and CUDA kernels.
#if defined(__CUDACC__)
#define LGM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LGM_HOST_DEVICE inline
#endif
