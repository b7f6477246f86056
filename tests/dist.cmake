# Tensor parallel (owner: src/dist). The codec/split tests need no MPI runtime;
# the end-to-end test runs `mpirun -np 2 $DSI_BIN` and skips (77) without mpirun.
dsi_test(test_dist_proto SOURCES tests/test_dist_proto.c LIBS dsi_dist dsi_core)
dsi_test(test_dist_mpi SOURCES tests/test_dist_mpi.c LIBS PkgConfig::CJSON m LABELS mpi TIMEOUT 900)
add_dependencies(test_dist_mpi dsinfer)
