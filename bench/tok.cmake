# build/tok_bench: tokenizer encode throughput on a 10 MB mixed text (see bench/tok_bench.c).
add_executable(tok_bench ${CMAKE_CURRENT_SOURCE_DIR}/tok_bench.c)
set_target_properties(tok_bench PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR})
target_link_libraries(tok_bench PRIVATE dsi_tok dsi_core)
# build/grammar_bench: vocabulary mask cost at 152k tokens (see bench/grammar_bench.c).
add_executable(grammar_bench ${CMAKE_CURRENT_SOURCE_DIR}/grammar_bench.c)
set_target_properties(grammar_bench PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR})
target_link_libraries(grammar_bench PRIVATE dsi_grammar dsi_tok dsi_core)
