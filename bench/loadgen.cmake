# build/loadgen: HTTPS load generator over libcurl (see bench/loadgen.c).
find_package(CURL REQUIRED)
add_executable(loadgen ${CMAKE_CURRENT_SOURCE_DIR}/loadgen.c)
set_target_properties(loadgen PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR})
target_link_libraries(loadgen PRIVATE dsi_core CURL::libcurl m)
