# Engine tests: the KV block manager, and the scheduler against a mock backend.
dsi_test(test_kvcache SOURCES tests/test_kvcache.c LIBS dsi_engine)
dsi_test(test_engine SOURCES tests/test_engine.c LIBS dsi_engine Threads::Threads)
