# Helpers shared by every module's CMakeLists.txt.

# dsi_module(NAME SOURCES... [LIBS ...]): static library dsi_NAME, built with
# dsi_build's settings (top-level CMakeLists.txt) and passing them on to whatever
# links it.
function(dsi_module name)
  cmake_parse_arguments(M "" "" "SOURCES;LIBS" ${ARGN})
  add_library(dsi_${name} STATIC ${M_SOURCES})
  target_link_libraries(dsi_${name} PUBLIC dsi_build ${M_LIBS})
endfunction()

# dsi_test(NAME SOURCES... [LIBS ...] [LABELS ...] [TIMEOUT s]): test binary
# tests/NAME, registered with ctest as NAME, run from the source root so that
# tests find tests/golden and models/ by relative path.
function(dsi_test name)
  cmake_parse_arguments(T "" "TIMEOUT" "SOURCES;LIBS;LABELS" ${ARGN})
  list(TRANSFORM T_SOURCES PREPEND ${CMAKE_SOURCE_DIR}/)
  add_executable(${name} ${T_SOURCES})
  target_include_directories(${name} PRIVATE ${CMAKE_SOURCE_DIR}/tests)
  target_link_libraries(${name} PRIVATE dsi_build ${T_LIBS})
  add_test(NAME ${name} COMMAND ${name} WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  set_tests_properties(${name} PROPERTIES TIMEOUT ${T_TIMEOUT} SKIP_RETURN_CODE 77
    ENVIRONMENT "DSI_BIN=$<TARGET_FILE:dsinfer>;DSI_BUILD=${CMAKE_BINARY_DIR}")
  if(T_LABELS)
    set_tests_properties(${name} PROPERTIES LABELS "${T_LABELS}")
  endif()
endfunction()

# dsi_fuzz(NAME SOURCES... LIBS ...): libFuzzer target, built only with DSI_FUZZ.
function(dsi_fuzz name)
  if(NOT DSI_FUZZ)
    return()
  endif()
  cmake_parse_arguments(F "" "" "SOURCES;LIBS" ${ARGN})
  list(TRANSFORM F_SOURCES PREPEND ${CMAKE_SOURCE_DIR}/)
  add_executable(${name} ${F_SOURCES})
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR})
  target_compile_options(${name} PRIVATE -fsanitize=fuzzer)
  # LLVMFuzzerTestOneInput is libFuzzer's entry point, declared by no header of ours;
  # a source's options come after dsi_build's -Wmissing-prototypes, so this one wins.
  set_source_files_properties(${F_SOURCES} PROPERTIES COMPILE_OPTIONS -Wno-missing-prototypes)
  target_link_options(${name} PRIVATE -fsanitize=fuzzer)
  target_link_libraries(${name} PRIVATE dsi_build ${F_LIBS})
endfunction()
