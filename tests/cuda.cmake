# CUDA backend tests (owner: CUDA backend). Label "cuda": they run on the GPU
# machine and report skipped (exit 77) where no GPU or driver is present.
if(DSI_HAVE_CUDA)
  # host only: the matmul plan against the per-call choice it replaced (no GPU needed)
  dsi_test(test_cuda_plan SOURCES tests/test_cuda_plan.c LIBS dsi_backend_cuda dsi_core m)
  dsi_test(test_cuda_kernels SOURCES tests/test_cuda_kernels.c
           LIBS dsi_backend_cuda dsi_backend_cpu dsi_model dsi_core m LABELS cuda)
  dsi_test(test_cuda_matmul SOURCES tests/test_cuda_matmul.c
           LIBS dsi_backend_cuda dsi_backend_cpu dsi_model dsi_core m LABELS cuda)
  dsi_test(test_cuda_w8a8 SOURCES tests/test_cuda_w8a8.c
           LIBS dsi_backend_cuda dsi_backend_cpu dsi_core m LABELS cuda)
  dsi_test(test_cuda_fused SOURCES tests/test_cuda_fused.c
           LIBS dsi_backend_cuda dsi_backend_cpu dsi_model dsi_core m LABELS cuda)
  dsi_test(test_cuda_tp_kernels SOURCES tests/test_cuda_tp_kernels.c
           LIBS dsi_backend_cuda dsi_core m LABELS cuda)
  # DeepSeek-V2/V3: the MLA / MoE kernels against their CPU twins, the fixtures
  # against the CPU backend, the V3-layout demo model's perplexity
  dsi_test(test_cuda_deepseek SOURCES tests/test_cuda_deepseek.c
           LIBS dsi_backend_cuda dsi_backend_cpu dsi_model dsi_core m LABELS cuda)
  dsi_test(test_cuda_deepseek_model SOURCES tests/test_cuda_deepseek_model.c
           LIBS dsi_backend dsi_backend_cuda dsi_backend_cpu dsi_model dsi_core m LABELS cuda)
  add_test(NAME cuda_demo_v3 COMMAND bash ${CMAKE_SOURCE_DIR}/tests/test_cuda_demo_v3.sh
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(cuda_demo_v3 PROPERTIES TIMEOUT 900 LABELS "cuda;slow" SKIP_RETURN_CODE 77
    ENVIRONMENT "DSI_BIN=$<TARGET_FILE:dsinfer>;OMP_WAIT_POLICY=passive")
  # Injected faults (issue 26 item 2): an allocation failing at load, a launch
  # failing with out of memory (the step fails, the backend recovers) or sticky
  # (the backend is dead), through the engine. Needs test hooks (else skipped).
  dsi_test(test_cuda_fault SOURCES tests/test_cuda_fault.c
           LIBS dsi_engine dsi_backend dsi_backend_cuda dsi_model dsi_core Threads::Threads m LABELS cuda)
  if(EXISTS ${CMAKE_SOURCE_DIR}/tests/test_cuda_backend.c)
    dsi_test(test_cuda_backend SOURCES tests/test_cuda_backend.c tests/test_model_util.c
             LIBS dsi_backend dsi_backend_cuda dsi_backend_cpu dsi_model dsi_core m LABELS cuda)
  endif()
endif()
