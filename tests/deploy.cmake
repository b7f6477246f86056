# Deployment artefacts of deploy/ (issue 24): the CI stage scripts on the CPU
# backend, and the lint of the Dockerfile, Kubernetes manifests and scripts.
function(dsi__deploy_sh_test name)
  add_test(NAME ${name} COMMAND bash ${CMAKE_SOURCE_DIR}/tests/${name}.sh WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(${name} PROPERTIES TIMEOUT 600 SKIP_RETURN_CODE 77 LABELS deploy
    ENVIRONMENT "DSI_BIN=$<TARGET_FILE:dsinfer>;LOADGEN=$<TARGET_FILE:loadgen>")
endfunction()
dsi__deploy_sh_test(test_deploy_ci)
dsi__deploy_sh_test(test_deploy_lint)
