# Tests of running dsinfer as a service: config table, sd_notify, systemd unit,
# install layout, doctor.
dsi_test(test_config SOURCES tests/test_config.c LIBS dsi_core)
dsi_test(test_sdnotify SOURCES tests/test_sdnotify.c LIBS dsi_core)
dsi_fuzz(fuzz_config SOURCES tests/fuzz/fuzz_config.c LIBS dsi_core)

# Shell tests, run from the source root like dsi_test ones; exit 77 = skipped.
function(dsi__service_sh_test name)
  add_test(NAME ${name} COMMAND sh ${CMAKE_SOURCE_DIR}/tests/${name}.sh
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(${name} PROPERTIES TIMEOUT 300 SKIP_RETURN_CODE 77
    ENVIRONMENT "DSI_BIN=$<TARGET_FILE:dsinfer>;DSI_BUILD=${CMAKE_BINARY_DIR}")
endfunction()
dsi__service_sh_test(test_systemd_unit)
dsi__service_sh_test(test_install)
dsi__service_sh_test(test_doctor)
