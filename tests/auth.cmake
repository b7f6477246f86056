# Tests of src/auth (access control) and `dsinfer keys`.
dsi_test(test_auth SOURCES tests/test_auth.c LIBS dsi_auth)
dsi_test(test_auth_files SOURCES tests/test_auth_files.c LIBS dsi_auth)
add_test(NAME test_keys_cli COMMAND bash ${CMAKE_SOURCE_DIR}/tests/test_keys_cli.sh
         WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(test_keys_cli PROPERTIES TIMEOUT 120 SKIP_RETURN_CODE 77
  ENVIRONMENT "DSI_BIN=$<TARGET_FILE:dsinfer>")
dsi_fuzz(fuzz_keys SOURCES tests/fuzz/fuzz_keys.c LIBS dsi_auth)
dsi_fuzz(fuzz_authz SOURCES tests/fuzz/fuzz_authz.c LIBS dsi_auth)
# End-to-end access control over TLS 1.3 against a real `dsinfer serve` on the CPU
# backend with tests/golden/models/tiny-chat: roles x routes x key states, mTLS,
# a rate-limit burst, reload under load. Skips (77) without curl/openssl/model.
add_test(NAME auth_matrix COMMAND bash ${CMAKE_SOURCE_DIR}/tests/integration/auth_matrix.sh
         WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(auth_matrix PROPERTIES TIMEOUT 600 SKIP_RETURN_CODE 77
  ENVIRONMENT "DSI_BIN=$<TARGET_FILE:dsinfer>")
