# CPU reference backend and sampler tests (owner: src/backend/cpu).
dsi_test(test_cpu_ops SOURCES tests/test_cpu_ops.c LIBS dsi_backend_cpu dsi_model dsi_core m)
# The sampler is compiled in directly so its tests do not depend on the rest of the engine.
dsi_test(test_sampler SOURCES tests/test_sampler.c src/engine/sampler.c LIBS dsi_core m)
