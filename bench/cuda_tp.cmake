# CUDA tensor-parallel decode benchmark (issue 12): build/bench_cuda_tp, run as
# `mpirun -np N bench_cuda_tp ...` (N = 1 is the TP=1 baseline). Needs CUDA, MPI
# and NCCL; NCCL ships with the CUDA toolkit here (no Debian package), so the
# target only exists when all three are found and CI (no CUDA) is unaffected.
#
# bench/*.cmake are included in glob (alphabetical) order, so this file runs
# before nccl.cmake: it makes the same find_path/find_library calls on the same
# cache variables (DSI_NCCL_INCLUDE_DIR, DSI_NCCL_LIBRARY). Whichever runs first
# fills the cache and the other call is a no-op, so both targets use one NCCL.
if(DSI_HAVE_CUDA AND MPI_C_FOUND)
  find_path(DSI_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} ENV NCCL_HOME
            PATH_SUFFIXES include)
  find_library(DSI_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} ENV NCCL_HOME
               PATH_SUFFIXES lib lib64)
  if(DSI_NCCL_INCLUDE_DIR AND DSI_NCCL_LIBRARY)
    add_executable(bench_cuda_tp ${CMAKE_SOURCE_DIR}/bench/bench_cuda_tp.c)
    set_target_properties(bench_cuda_tp PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR})
    # dsi_backend: dsi_backend_destroy; dsi_dist: the control-message codec
    # (src/dist/tp_proto.c); NCCL for the backend's communicator.
    target_link_libraries(bench_cuda_tp PRIVATE dsi_backend dsi_backend_cuda dsi_dist dsi_model dsi_core
                                                MPI::MPI_C ${DSI_NCCL_LIBRARY} m)
  else()
    message(STATUS "dsinfer: NCCL not found, bench_cuda_tp not built")
  endif()
endif()
