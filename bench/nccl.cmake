# NCCL all-reduce latency benchmark (issue 12): the cost of the two small
# all-reduces per layer that a CUDA tensor-parallel decode step adds. Needs CUDA,
# MPI and NCCL; NCCL ships with the CUDA toolkit here (no Debian package), so the
# target only exists when all three are found and CI (no CUDA) is unaffected.
if(DSI_HAVE_CUDA AND MPI_C_FOUND)
  find_path(DSI_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} ENV NCCL_HOME
            PATH_SUFFIXES include)
  find_library(DSI_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} ENV NCCL_HOME
               PATH_SUFFIXES lib lib64)
  if(DSI_NCCL_INCLUDE_DIR AND DSI_NCCL_LIBRARY)
    message(STATUS "dsinfer: NCCL ${DSI_NCCL_LIBRARY} (bench_nccl_allreduce)")
    add_executable(bench_nccl_allreduce ${CMAKE_SOURCE_DIR}/bench/bench_nccl_allreduce.c)
    set_target_properties(bench_nccl_allreduce PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR})
    target_include_directories(bench_nccl_allreduce PRIVATE ${DSI_NCCL_INCLUDE_DIR})
    target_link_libraries(bench_nccl_allreduce PRIVATE ${DSI_NCCL_LIBRARY} CUDA::cudart MPI::MPI_C)
  else()
    message(STATUS "dsinfer: NCCL not found, bench_nccl_allreduce not built")
  endif()
endif()
