# Grammar tests: schema compile, accept/reject, masks at the Qwen2 vocabulary, random walks.
dsi_test(test_grammar SOURCES tests/test_grammar.c LIBS dsi_grammar dsi_tok dsi_core PkgConfig::CJSON)
dsi_fuzz(fuzz_grammar SOURCES tests/fuzz/fuzz_grammar.c LIBS dsi_grammar dsi_tok dsi_core)
