# Engine tests: the KV block manager, and the scheduler against a mock backend.
dsi_test(test_kvcache SOURCES tests/test_kvcache.c LIBS dsi_engine)
dsi_test(test_engine SOURCES tests/test_engine.c LIBS dsi_engine Threads::Threads)
# The forward_sample path (sampling inside the backend) against a mock backend.
dsi_test(test_engine_gpu_sample SOURCES tests/test_engine_gpu_sample.c LIBS dsi_engine Threads::Threads m)
# Batch invariance on the CPU backend with the tiny fixture models. Labelled
# slow: 34 s of CPU under ASan, 77-131 s wall on the shared 2-core dev machine;
# it still runs in the Release ctest stage.
dsi_test(test_engine_batch SOURCES tests/test_engine_batch.c LIBS dsi_engine dsi_backend dsi_model Threads::Threads
         LABELS slow)
