# Tests of running dsinfer as a service: config table, sd_notify, systemd unit,
# install layout, doctor.
dsi_test(test_config SOURCES tests/test_config.c LIBS dsi_core)
dsi_test(test_sdnotify SOURCES tests/test_sdnotify.c LIBS dsi_core)
dsi_fuzz(fuzz_config SOURCES tests/fuzz/fuzz_config.c LIBS dsi_core)
