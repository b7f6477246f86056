# CUDA microbenchmarks and the decode/prefill benchmark (owner: CUDA backend).
# Built into the build root: build/bench_cuda_gemv, build/bench_cuda_decode,
# build/bench_cuda_nodes.
if(DSI_HAVE_CUDA)
  foreach(b bench_cuda_gemv bench_cuda_decode bench_cuda_nodes)
    if(EXISTS ${CMAKE_SOURCE_DIR}/bench/${b}.c)
      add_executable(${b} ${CMAKE_SOURCE_DIR}/bench/${b}.c)
      set_target_properties(${b} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR})
      target_link_libraries(${b} PRIVATE dsi_backend dsi_backend_cuda dsi_model dsi_core m)
    endif()
  endforeach()
  # the library baselines of issue 19 (cuBLASLt int8, cuBLAS bf16) next to the
  # W8A8 matmul built on them (kernels/w8a8.cu)
  add_executable(bench_cublas_int8 ${CMAKE_SOURCE_DIR}/bench/bench_cublas_int8.c)
  set_target_properties(bench_cublas_int8 PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR})
  target_link_libraries(bench_cublas_int8 PRIVATE dsi_build dsi_backend_cuda dsi_core CUDA::cudart CUDA::cublas
                        CUDA::cublasLt)
endif()
