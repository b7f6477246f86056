/*
 * doctor_gpu.c: GPU temperature through NVML, loaded with dlopen so that
 * dsinfer runs where no NVIDIA driver is installed. Read-only queries; NVML
 * is initialized and shut down per call (doctor asks once per device).
 */
#include "doctor_gpu.h"

#include <dlfcn.h>
#include <stddef.h>

int dsi__doctor_gpu_temperature(int index, int *temp_c) {
    void *lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib || index < 0) {
        if (lib) dlclose(lib);
        return -1;
    }
    int (*init)(void), (*shutdown)(void), (*by_index)(unsigned, void **), (*temp)(void *, int, unsigned *);
    /* POSIX guarantees dlsym results convert to function pointers */
    *(void **)&init = dlsym(lib, "nvmlInit_v2");
    *(void **)&shutdown = dlsym(lib, "nvmlShutdown");
    *(void **)&by_index = dlsym(lib, "nvmlDeviceGetHandleByIndex_v2");
    *(void **)&temp = dlsym(lib, "nvmlDeviceGetTemperature");
    int rc = -1;
    if (init && shutdown && by_index && temp && init() == 0) {
        void *dev = NULL;
        unsigned t = 0;
        if (by_index((unsigned)index, &dev) == 0 && temp(dev, 0 /* NVML_TEMPERATURE_GPU */, &t) == 0) {
            *temp_c = (int)t;
            rc = 0;
        }
        shutdown();
    }
    dlclose(lib);
    return rc;
}
