# Expert-parallel exchange planning (owner: src/ep): a simulated world of ranks, no MPI.
dsi_test(test_ep_plan SOURCES tests/test_ep_plan.c LIBS dsi_ep dsi_core)
