dsi_test(test_core SOURCES tests/test_core.c LIBS dsi_core)
