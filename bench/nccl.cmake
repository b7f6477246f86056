# NCCL all-reduce latency benchmark (issue 12): the cost of the two small
# all-reduces per layer that a CUDA tensor-parallel decode step adds. Needs CUDA,
# MPI and NCCL (found once by src/backend/cuda/CMakeLists.txt; no Debian package),
# so the target only exists where all three are and CI (no CUDA) is unaffected.
if(DSI_HAVE_CUDA AND MPI_C_FOUND AND DSI_NCCL_INCLUDE_DIR AND DSI_NCCL_LIBRARY)
  add_executable(bench_nccl_allreduce ${CMAKE_SOURCE_DIR}/bench/bench_nccl_allreduce.c)
  set_target_properties(bench_nccl_allreduce PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR})
  target_include_directories(bench_nccl_allreduce PRIVATE ${DSI_NCCL_INCLUDE_DIR})
  target_link_libraries(bench_nccl_allreduce PRIVATE dsi_build ${DSI_NCCL_LIBRARY} CUDA::cudart MPI::MPI_C)
elseif(DSI_HAVE_CUDA AND MPI_C_FOUND)
  message(STATUS "dsinfer: NCCL not found, bench_nccl_allreduce not built")
endif()
