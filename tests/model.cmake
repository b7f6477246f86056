# Model store tests: safetensors, HF config, manifest, crypto, CLI; fuzz targets.
set(DSI_TM_UTIL tests/test_model_util.c)
dsi_test(test_crypto SOURCES tests/test_crypto.c LIBS dsi_core)
dsi_test(test_model_st SOURCES tests/test_model_st.c ${DSI_TM_UTIL} LIBS dsi_model dsi_core)
dsi_test(test_model_config SOURCES tests/test_model_config.c LIBS dsi_model dsi_core)
# dsi_model_config_check: the one config check of every backend, split included.
dsi_test(test_config_check SOURCES tests/test_config_check.c LIBS dsi_model dsi_core)
dsi_test(test_model_manifest SOURCES tests/test_model_manifest.c ${DSI_TM_UTIL} LIBS dsi_model dsi_core)
# 2 GiB sparse file, one flipped byte: hashing 2 GiB takes seconds, so "slow"
# (the ASan run skips it with -LE slow).
dsi_test(test_model_big SOURCES tests/test_model_big.c ${DSI_TM_UTIL} LIBS dsi_model dsi_core
         LABELS slow TIMEOUT 600)
# Drives the dsinfer binary ($DSI_BIN) and coreutils sha256sum.
dsi_test(test_model_cli SOURCES tests/test_model_cli.c ${DSI_TM_UTIL} LIBS dsi_core PkgConfig::CJSON)
dsi_fuzz(fuzz_safetensors SOURCES tests/fuzz/fuzz_safetensors.c LIBS dsi_model dsi_core)
dsi_fuzz(fuzz_hfconfig SOURCES tests/fuzz/fuzz_hfconfig.c LIBS dsi_model dsi_core)
# Deferred weight hashing (the CUDA loader's single pass): the model API on the CPU.
dsi_test(test_model_defer SOURCES tests/test_model_defer.c ${DSI_TM_UTIL}
         LIBS dsi_backend dsi_backend_cpu dsi_model dsi_core)
# Weights encrypted at rest: format, tamper cases, key files, encrypted model open.
dsi_test(test_model_wenc SOURCES tests/test_model_wenc.c ${DSI_TM_UTIL} LIBS dsi_tok dsi_model dsi_core)
dsi_fuzz(fuzz_wenc SOURCES tests/fuzz/fuzz_wenc.c LIBS dsi_model dsi_core)
add_test(NAME test_wenc_cli COMMAND bash ${CMAKE_SOURCE_DIR}/tests/test_wenc_cli.sh WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(test_wenc_cli PROPERTIES TIMEOUT 120 SKIP_RETURN_CODE 77
  ENVIRONMENT "DSI_BIN=$<TARGET_FILE:dsinfer>")
# The GPU memory plan of a load and its out-of-memory message (issue 26 item 2).
dsi_test(test_memplan SOURCES tests/test_memplan.c LIBS dsi_model dsi_core)
