# CUDA backend tests (owner: CUDA backend). Label "cuda": they run on the GPU
# machine and report skipped (exit 77) where no GPU or driver is present.
if(DSI_HAVE_CUDA)
  # host only: the matmul plan against the per-call choice it replaced (no GPU needed)
  dsi_test(test_cuda_plan SOURCES tests/test_cuda_plan.c LIBS dsi_backend_cuda dsi_core m)
  dsi_test(test_cuda_kernels SOURCES tests/test_cuda_kernels.c
           LIBS dsi_backend_cuda dsi_backend_cpu dsi_model dsi_core m LABELS cuda)
  dsi_test(test_cuda_matmul SOURCES tests/test_cuda_matmul.c
           LIBS dsi_backend_cuda dsi_backend_cpu dsi_model dsi_core m LABELS cuda)
  dsi_test(test_cuda_fused SOURCES tests/test_cuda_fused.c
           LIBS dsi_backend_cuda dsi_backend_cpu dsi_model dsi_core m LABELS cuda)
  dsi_test(test_cuda_tp_kernels SOURCES tests/test_cuda_tp_kernels.c
           LIBS dsi_backend_cuda dsi_core m LABELS cuda)
  if(EXISTS ${CMAKE_SOURCE_DIR}/tests/test_cuda_backend.c)
    dsi_test(test_cuda_backend SOURCES tests/test_cuda_backend.c tests/test_model_util.c
             LIBS dsi_backend dsi_backend_cuda dsi_backend_cpu dsi_model dsi_core m LABELS cuda)
  endif()
endif()
