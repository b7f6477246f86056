# CUDA tensor-parallel decode benchmark (issue 12): build/bench_cuda_tp, run as
# `mpirun -np N bench_cuda_tp ...` (N = 1 is the TP=1 baseline). Needs CUDA, MPI
# and NCCL; src/backend/cuda/CMakeLists.txt looks NCCL up once (it ships with
# the CUDA toolkit, not as a Debian package) and links it to dsi_backend_cuda,
# so the target only exists where all three are found and CI (no CUDA) is
# unaffected.
if(DSI_HAVE_CUDA AND MPI_C_FOUND AND DSI_NCCL_INCLUDE_DIR AND DSI_NCCL_LIBRARY)
  add_executable(bench_cuda_tp ${CMAKE_SOURCE_DIR}/bench/bench_cuda_tp.c)
  set_target_properties(bench_cuda_tp PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR})
  # dsi_backend: dsi_backend_destroy; dsi_parallel: the control-message codec
  # (src/parallel/wire.c); NCCL comes with dsi_backend_cuda.
  target_link_libraries(bench_cuda_tp PRIVATE dsi_backend dsi_backend_cuda dsi_parallel dsi_model dsi_core
                                              MPI::MPI_C m)
elseif(DSI_HAVE_CUDA AND MPI_C_FOUND)
  message(STATUS "dsinfer: NCCL not found, bench_cuda_tp not built")
endif()
