# Tokenizer tests: golden ids/decodes/chat renderings vs HF, streaming, hostile files.
dsi_test(test_tok SOURCES tests/test_tok.c LIBS dsi_tok dsi_core Threads::Threads TIMEOUT 600)
dsi_test(test_tok_tools SOURCES tests/test_tok_tools.c LIBS dsi_tok dsi_core)
dsi_test(test_tok_hostile SOURCES tests/test_tok_hostile.c LIBS dsi_tok dsi_core)
dsi_fuzz(fuzz_tok SOURCES tests/fuzz/fuzz_tok.c LIBS dsi_tok dsi_core)
dsi_test(test_tok_cli SOURCES tests/test_tok_cli.c)
