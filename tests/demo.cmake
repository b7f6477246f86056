# The bundled demo model: perplexity against HF transformers and the INT8 guard.
add_test(NAME demo_perplexity COMMAND bash ${CMAKE_SOURCE_DIR}/tests/test_demo_perplexity.sh
         WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(demo_perplexity PROPERTIES TIMEOUT 900 LABELS slow
  ENVIRONMENT "DSI_BIN=$<TARGET_FILE:dsinfer>")
# The DeepSeek-V3-layout demo model (MLA + MoE): perplexity against HF, INT8 guard, greedy ids.
add_test(NAME demo_v3 COMMAND bash ${CMAKE_SOURCE_DIR}/tests/test_demo_v3.sh
         WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(demo_v3 PROPERTIES TIMEOUT 900 LABELS slow
  ENVIRONMENT "DSI_BIN=$<TARGET_FILE:dsinfer>;OMP_WAIT_POLICY=passive")
