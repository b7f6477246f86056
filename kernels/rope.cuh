/*
 * rope.cuh: the rotate-half RoPE arithmetic shared by the kernels that apply it
 * (elementwise.cu: rope, rope_kv_store; attention.cu: the decode kernel that
 * rotates the new token itself). One definition, so every path gives the same
 * bits: the same sincosf of the same angle, and a rotation rounded without FMA
 * contraction.
 */
#ifndef DSI_KERNELS_ROPE_CUH
#define DSI_KERNELS_ROPE_CUH

/* One rotation of the pair (a, b), rounded the same way wherever it runs. */
static __device__ __forceinline__ void rotate(float *a, float *b, float cs, float sn) {
    float x = *a, y = *b;
    *a = __fsub_rn(__fmul_rn(x, cs), __fmul_rn(y, sn));
    *b = __fadd_rn(__fmul_rn(y, cs), __fmul_rn(x, sn));
}

/* cos/sin of position p for the hd/2 frequencies, once per token in shared
 * memory: every head of the token rotates by the same angles, so sincosf runs
 * hd/2 times instead of once per (head, pair). */
#define ROPE_TAB 128
static __device__ __forceinline__ void rope_table(float *cs, float *sn, float p, const float *inv_freq,
                                                  int half) {
    if (half <= ROPE_TAB)
        for (int i = threadIdx.x; i < half; i += blockDim.x)
            sincosf(p * inv_freq[i], &sn[i], &cs[i]);
    __syncthreads();
}
static __device__ __forceinline__ void rope_angle(const float *cs_s, const float *sn_s, float p,
                                                  const float *inv_freq, int half, int i, float *cs,
                                                  float *sn) {
    if (half <= ROPE_TAB) {
        *cs = cs_s[i];
        *sn = sn_s[i];
    } else {
        sincosf(p * inv_freq[i], sn, cs);
    }
}

#endif
