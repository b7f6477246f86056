# Deployment artefacts of deploy/ (issue 24): the CI stage scripts on the CPU
# backend, and the lint of the Dockerfile, Kubernetes manifests and scripts.
function(dsi__deploy_sh_test name)
  add_test(NAME ${name} COMMAND bash ${CMAKE_SOURCE_DIR}/tests/${name}.sh WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(${name} PROPERTIES TIMEOUT 600 SKIP_RETURN_CODE 77 LABELS deploy
    ENVIRONMENT "DSI_BIN=$<TARGET_FILE:dsinfer>;LOADGEN=$<TARGET_FILE:loadgen>")
endfunction()
dsi__deploy_sh_test(test_deploy_ci)
dsi__deploy_sh_test(test_deploy_lint)
# The container images built and run for real: non-root, read-only root, no
# capabilities, model mounted read-only, /health/ready, docker stop drains.
# docker_smoke: the CPU image (deploy/docker/Dockerfile.cpu). docker_smoke_cuda:
# the image of Debian's CUDA 11.8 packages (deploy/docker/Dockerfile.cuda),
# run without a GPU: libraries resolve, doctor and serve say why CUDA is
# unavailable, the CPU fallback serves. Skip with the reason where no docker
# daemon or no base image is reachable. Minutes long (they compile dsinfer in
# the build stage; the CUDA one installs a 1.7 GB toolkit first): slow.
add_test(NAME docker_smoke COMMAND bash ${CMAKE_SOURCE_DIR}/deploy/docker/smoke.sh cpu
  WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(docker_smoke PROPERTIES TIMEOUT 1800 SKIP_RETURN_CODE 77 LABELS "deploy;docker;slow")
add_test(NAME docker_smoke_cuda COMMAND bash ${CMAKE_SOURCE_DIR}/deploy/docker/smoke.sh cuda
  WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(docker_smoke_cuda PROPERTIES TIMEOUT 3600 SKIP_RETURN_CODE 77 LABELS "deploy;docker;slow")
