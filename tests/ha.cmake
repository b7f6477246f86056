# High availability (issue 24): two dsinfer + keepalived in network namespaces,
# crash failover and drain hand-over through the VIP. Needs root, ip netns,
# keepalived; skips with the reason otherwise (and on an overloaded machine).
add_test(NAME test_ha COMMAND bash ${CMAKE_SOURCE_DIR}/tests/test_ha.sh WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(test_ha PROPERTIES TIMEOUT 120 SKIP_RETURN_CODE 77 LABELS ha RUN_SERIAL TRUE
  ENVIRONMENT "DSI_BIN=$<TARGET_FILE:dsinfer>;LOADGEN=$<TARGET_FILE:loadgen>")
