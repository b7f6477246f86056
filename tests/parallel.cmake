# Tensor parallel (owner: src/parallel). The codec tests need no MPI runtime;
# the end-to-end test runs `mpirun -np 2 $DSI_BIN` and skips (77) without mpirun.
dsi_test(test_parallel_wire SOURCES tests/test_parallel_wire.c LIBS dsi_parallel dsi_core)
dsi_test(test_parallel_mpi SOURCES tests/test_parallel_mpi.c LIBS PkgConfig::CJSON m LABELS mpi TIMEOUT 900)
add_dependencies(test_parallel_mpi dsinfer)
# `mpirun -np 2 dsinfer serve`: one chat answered like a single process, SIGTERM stops every rank with 0.
add_test(NAME test_parallel_serve COMMAND bash ${CMAKE_SOURCE_DIR}/tests/test_parallel_serve.sh
         WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(test_parallel_serve PROPERTIES LABELS mpi TIMEOUT 600 SKIP_RETURN_CODE 77
                     ENVIRONMENT "DSI_BIN=$<TARGET_FILE:dsinfer>")
# A worker fed malformed control messages by a fake rank 0 (MPMD job) aborts the job.
if(MPI_C_FOUND)
  dsi_test(test_parallel_abort SOURCES tests/test_parallel_abort.c LIBS dsi_parallel MPI::MPI_C LABELS mpi TIMEOUT 600)
  add_dependencies(test_parallel_abort dsinfer)
endif()
# TP=2 on CUDA + NCCL against one process on CUDA: only where the CUDA backend is
# built; skips (77) without mpirun, 2 GPUs, or a dsinfer built with NCCL.
if(DSI_HAVE_CUDA)
  dsi_test(test_cuda_tp SOURCES tests/test_cuda_tp.c tests/test_model_util.c LIBS PkgConfig::CJSON m LABELS cuda mpi TIMEOUT 900)
  add_dependencies(test_cuda_tp dsinfer)
endif()
dsi_fuzz(fuzz_tp_msg SOURCES tests/fuzz/fuzz_tp_msg.c LIBS dsi_parallel dsi_core)
# DeepSeek MLA + MoE with expert parallel over `mpirun -np 2|3|4 $DSI_BIN` against one process.
dsi_test(test_parallel_ep SOURCES tests/test_parallel_ep.c LIBS PkgConfig::CJSON m LABELS mpi TIMEOUT 900)
add_dependencies(test_parallel_ep dsinfer)
