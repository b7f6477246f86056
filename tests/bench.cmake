# Benchmark tools smoke (owner: bench/): dsinfer bench, build/loadgen against a real
# daemon, bench/sweep.sh and the locustfile. Seconds long; checks that each tool
# completes with sane numbers, never how fast (tests/test_bench_smoke.sh).
add_test(NAME bench_smoke COMMAND bash ${CMAKE_SOURCE_DIR}/tests/test_bench_smoke.sh
  WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(bench_smoke PROPERTIES TIMEOUT 300 SKIP_RETURN_CODE 77
  ENVIRONMENT "DSI_BIN=$<TARGET_FILE:dsinfer>;LOADGEN=$<TARGET_FILE:loadgen>")
# loadgen's error accounting: an unsent request is resent, a sent one cut is lost.
add_test(NAME loadgen_errors COMMAND bash ${CMAKE_SOURCE_DIR}/tests/test_loadgen_errors.sh
         WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(loadgen_errors PROPERTIES TIMEOUT 120 SKIP_RETURN_CODE 77
  ENVIRONMENT "DSI_BIN=$<TARGET_FILE:dsinfer>;LOADGEN=$<TARGET_FILE:loadgen>")
