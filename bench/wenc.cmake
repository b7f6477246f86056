# build/bench_wenc: AES-256-GCM weights-at-rest throughput (see bench/bench_wenc.c).
add_executable(bench_wenc ${CMAKE_CURRENT_SOURCE_DIR}/bench_wenc.c)
set_target_properties(bench_wenc PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR})
target_link_libraries(bench_wenc PRIVATE dsi_model dsi_core)
