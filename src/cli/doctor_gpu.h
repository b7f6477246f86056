/*
 * doctor_gpu.h: GPU facts for `dsinfer doctor --json` that the CUDA runtime
 * does not give (doctor_gpu.c, NVML loaded at run time).
 */
#ifndef DSINFER_DOCTOR_GPU_H
#define DSINFER_DOCTOR_GPU_H

/* Core temperature of NVML device `index` in degrees C; 0, or -1 when NVML
 * (libnvidia-ml.so.1) or the device is not there. NVML numbers devices in PCI
 * order, as CUDA does with CUDA_DEVICE_ORDER=PCI_BUS_ID. */
int dsi__doctor_gpu_temperature(int index, int *temp_c);

#endif
