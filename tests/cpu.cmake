# CPU reference backend and sampler tests (owner: src/backend/cpu).
dsi_test(test_cpu_ops SOURCES tests/test_cpu_ops.c LIBS dsi_backend_cpu dsi_model dsi_core m)
# W8A8 (int8 x int8, int32 sums): the ops and the backend under int8_mode w8a8.
dsi_test(test_cpu_w8a8 SOURCES tests/test_cpu_w8a8.c LIBS dsi_backend dsi_backend_cpu dsi_model dsi_core m)
# The sampler is compiled in directly so its tests do not depend on the rest of the engine.
dsi_test(test_sampler SOURCES tests/test_sampler.c src/engine/sampler.c LIBS dsi_core m)
# The backend against HF transformers on tests/golden/models (needs dsi_model_open).
dsi_test(test_cpu_model SOURCES tests/test_cpu_model.c LIBS dsi_backend dsi_model dsi_core PkgConfig::CJSON m)
# `dsinfer logits|generate|quant-report` end to end ($DSI_BIN).
dsi_test(test_cpu_cli SOURCES tests/test_cpu_cli.c LIBS PkgConfig::CJSON m)
add_dependencies(test_cpu_cli dsinfer)
# Spinning OpenMP workers crawl on an oversubscribed CI machine; sleeping ones don't.
set_property(TEST test_cpu_model test_cpu_cli APPEND PROPERTY ENVIRONMENT OMP_WAIT_POLICY=passive)
# DeepSeek MLA / MoE router / FP8 block ops against written-out formulations.
dsi_test(test_cpu_deepseek SOURCES tests/test_cpu_deepseek.c LIBS dsi_backend_cpu dsi_model dsi_core m)
# The 8-bit KV cache (kv_dtype int8) on the demo models: capacity and greedy ids.
dsi_test(test_cpu_kv8 SOURCES tests/test_cpu_kv8.c LIBS dsi_backend dsi_model dsi_core m)
set_property(TEST test_cpu_kv8 APPEND PROPERTY ENVIRONMENT OMP_WAIT_POLICY=passive)
