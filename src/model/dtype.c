/*
 * dtype.c: safetensors dtype names and sizes, and conversion of a tensor to f32.
 *
 * Conversions are bit-exact scalar code (no tables, no globals): f16 and
 * f8_e4m3 (the "fn" variant: no infinities, S.1111.111 is NaN) handle
 * subnormals; bf16 is the top half of an f32. Reads go through memcpy because
 * tensor data inside a safetensors file is not guaranteed to be aligned.
 */
#include "dsinfer/err.h"
#include "dsinfer/model.h"

#include <math.h>
#include <string.h>

static const struct {
    const char *name;
    size_t size;
} dtypes[DSI_DT__COUNT] = {
    [DSI_DT_F32] = {"F32", 4}, [DSI_DT_F16] = {"F16", 2}, [DSI_DT_BF16] = {"BF16", 2},
    [DSI_DT_I8] = {"I8", 1},   [DSI_DT_U8] = {"U8", 1},   [DSI_DT_F8_E4M3] = {"F8_E4M3", 1},
    [DSI_DT_I32] = {"I32", 4}, [DSI_DT_I64] = {"I64", 8},
};

const char *dsi_dtype_name(enum dsi_dtype dt) {
    if ((int)dt < 0 || dt >= DSI_DT__COUNT) return NULL;
    return dtypes[dt].name;
}

size_t dsi_dtype_size(enum dsi_dtype dt) {
    if ((int)dt < 0 || dt >= DSI_DT__COUNT) return 0;
    return dtypes[dt].size;
}

static float bits_to_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float dsi_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    int exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    if (exp == 0x1f) return bits_to_f32(sign | 0x7f800000u | (mant << 13)); /* inf / nan */
    if (exp == 0) {
        float v = ldexpf((float)mant, -24); /* subnormal or zero: mant * 2^-24 */
        return sign ? -v : v;
    }
    return bits_to_f32(sign | (uint32_t)(exp - 15 + 127) << 23 | (mant << 13));
}

static float f8e4m3_to_f32(uint8_t b) {
    int exp = (b >> 3) & 0xf;
    int mant = b & 7;
    float v;
    if (exp == 0xf && mant == 7) return NAN;
    if (exp == 0)
        v = ldexpf((float)mant, -9); /* subnormal: mant/8 * 2^-6 */
    else
        v = ldexpf(1.0f + (float)mant / 8.0f, exp - 7);
    return (b & 0x80) ? -v : v;
}

int dsi_tensor_to_f32(const struct dsi_tensor *t, float *dst, char **err) {
    if (!t || !dst) return DSI_EINVAL;
    if (t->n_elems && !t->data) /* withheld: its file's SHA-256 has not matched yet (model.h) */
        return dsi_seterr(err, DSI_EINTEGRITY,
                          "tensor %s: its weight file has not passed the SHA-256 check yet (deferred hash); "
                          "refusing unverified data",
                          t->name ? t->name : "?");
    const uint8_t *p = t->data;
    size_t n = t->n_elems;
    size_t esz = dsi_dtype_size(t->dtype);
    if (esz == 0 || n > SIZE_MAX / esz || n * esz != t->size_bytes)
        return dsi_seterr(err, DSI_EFORMAT, "tensor %s: size does not match its shape",
                          t->name ? t->name : "?");
    switch (t->dtype) {
    case DSI_DT_F32:
        memcpy(dst, p, n * 4);
        break;
    case DSI_DT_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = dsi_f16_to_f32(h);
        }
        break;
    case DSI_DT_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = bits_to_f32((uint32_t)h << 16);
        }
        break;
    case DSI_DT_F8_E4M3:
        for (size_t i = 0; i < n; i++)
            dst[i] = f8e4m3_to_f32(p[i]);
        break;
    case DSI_DT_I8:
        for (size_t i = 0; i < n; i++)
            dst[i] = (float)(int8_t)p[i];
        break;
    case DSI_DT_U8:
        for (size_t i = 0; i < n; i++)
            dst[i] = (float)p[i];
        break;
    case DSI_DT_I32:
        for (size_t i = 0; i < n; i++) {
            int32_t v;
            memcpy(&v, p + 4 * i, 4);
            dst[i] = (float)v;
        }
        break;
    default:
        return dsi_seterr(err, DSI_EUNSUPPORTED, "tensor %s: dtype %s cannot be read as f32",
                          t->name ? t->name : "?", dsi_dtype_name(t->dtype) ? dsi_dtype_name(t->dtype) : "?");
    }
    return 0;
}
