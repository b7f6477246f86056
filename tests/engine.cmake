# Engine tests: the KV block manager, and the scheduler against a mock backend.
dsi_test(test_kvcache SOURCES tests/test_kvcache.c LIBS dsi_engine)
# test_engine_sched: validation, tokens against the reference, chunked prefill,
# preemption; test_engine_life: queue limits, timeouts, cancel, drain, destroy,
# backend failure. Both share the mock in tests/test_engine_util.h (and
# test_engine_batch below its event collector).
dsi_test(test_engine_sched SOURCES tests/test_engine_sched.c LIBS dsi_engine Threads::Threads)
dsi_test(test_engine_life SOURCES tests/test_engine_life.c LIBS dsi_engine Threads::Threads)
# The prefix cache through the scheduler: hits, namespaces, counters, and exact
# block counts under preemption and cancel (same mock).
dsi_test(test_engine_prefix SOURCES tests/test_engine_prefix.c LIBS dsi_engine Threads::Threads)
# Teacher-forced scoring requests (perplexity's path) against the same mock.
dsi_test(test_engine_score SOURCES tests/test_engine_score.c LIBS dsi_engine Threads::Threads m)
# The forward_sample path (sampling inside the backend) against a mock backend.
dsi_test(test_engine_gpu_sample SOURCES tests/test_engine_gpu_sample.c LIBS dsi_engine Threads::Threads m)
# Batch invariance on the CPU backend with the tiny fixture models. Labelled
# slow: 34 s of CPU under ASan, 77-131 s wall on the shared 2-core dev machine;
# it still runs in the Release ctest stage.
dsi_test(test_engine_batch SOURCES tests/test_engine_batch.c LIBS dsi_engine dsi_backend dsi_model Threads::Threads
         LABELS slow)
# Constrained decoding through the engine: the demo model writes schema-valid JSON.
# Labelled slow: 6 s in Release, minutes under ASan on the shared 2-core machine.
dsi_test(test_engine_grammar SOURCES tests/test_engine_grammar.c
         LIBS dsi_engine dsi_backend dsi_model dsi_grammar dsi_tok PkgConfig::CJSON Threads::Threads LABELS slow)
# The block manager with prefix caching against the model in tests/kv_model.h.
dsi_fuzz(fuzz_kvcache SOURCES tests/fuzz/fuzz_kvcache.c LIBS dsi_engine)
# 500 random schemas (tests/test_schema_gen.h) through the engine with the demo
# model: every output parses and validates. Slow under ASan; seconds in Release.
dsi_test(test_engine_schemas SOURCES tests/test_engine_schemas.c
         LIBS dsi_engine dsi_backend dsi_model dsi_grammar dsi_tok PkgConfig::CJSON Threads::Threads LABELS slow)
