/* A decoder layer's small bfloat16 operations, each one pass over its rows instead of one torch op per step of the
 * formula: RMSNorm, SiLU(gate) x up, and the rotary embedding of q and k. Built by gpu_worker/model/native_ops.py,
 * called through ctypes with the tensors' data pointers. Each keeps the roundings to bfloat16 of the torch formula it
 * replaces (llama.py, rope.py), so that results match it up to float32 summation order. Rows are split over the
 * process's OpenMP threads (the libgomp torch loaded) when there are enough of them to pay for it.
 */
#include <math.h>
#include <stdint.h>

#include "bf16_math.h"

#define PARALLEL_FROM 65536 /* elements; below, one thread is faster than waking the others */

typedef uint16_t bf16;

static inline float load(bf16 x) { return bf16_to_float(x); }
static inline bf16 store(float f) { return float_to_bf16(f); }
static inline float round_bf16(float f) { return load(store(f)); }

/* out[r] = weight * bf16(x[r] * rsqrt(mean(x[r]^2) + eps)); x and out [rows, size], contiguous. */
void rms_norm_bf16(const bf16 *x, const bf16 *weight, bf16 *out, int64_t rows, int64_t size, float eps) {
#pragma omp parallel for if (rows * size >= PARALLEL_FROM)
    for (int64_t r = 0; r < rows; r++) {
        const bf16 *xr = x + r * size;
        bf16 *yr = out + r * size;
        float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
        for (int64_t i = 0; i < size; i++) squares += load(xr[i]) * load(xr[i]);
        const float inv = 1.0f / sqrtf(squares / (float)size + eps);
#pragma omp simd
        for (int64_t i = 0; i < size; i++) yr[i] = store(load(weight[i]) * round_bf16(load(xr[i]) * inv));
    }
}

static inline float silu_rounded(float g) {
    const float e = exp_nonpositive(-fabsf(g)); /* e^-|g|: the sigmoid of either sign without overflow */
    return round_bf16(g * ((g >= 0.0f ? 1.0f : e) / (1.0f + e)));
}

#if defined(__AVX512F__)
/* GCC leaves the portable loop below scalar ("complicated access pattern"), 11 ns an element; this is the same
 * arithmetic, 16 lanes at a time. */
static inline __m512 load16(const bf16 *p) { return bf16x16_to_float(p); }

static inline __m512i rounded_bits(__m512 f) { /* round to nearest even, NaN kept: store() on 16 lanes, as int32 */
    const __m512i u = _mm512_castps_si512(f);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                  _mm512_set1_epi32(0x7f800000));
    return _mm512_mask_or_epi32(rounded, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
}

static inline __m512 round16(__m512 f) { return _mm512_castsi512_ps(_mm512_slli_epi32(rounded_bits(f), 16)); }

static inline __m512 exp16_nonpositive(__m512 x) {
    const __m512 t = _mm512_mul_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(1.44269504f));
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC), f = _mm512_sub_ps(t, n);
    __m512 p = _mm512_set1_ps(1.535336188e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    const __m512i scale = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(scale));
}

static int64_t silu_mul_vector(const bf16 *gate, const bf16 *up, bf16 *out, int64_t size) {
    int64_t i = 0;
    for (; i + 16 <= size; i += 16) {
        const __m512 g = load16(gate + i), one = _mm512_set1_ps(1.0f);
        const __m512 e = exp16_nonpositive(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(g)));
        const __m512 numerator = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(g, _mm512_setzero_ps(), _CMP_GE_OQ), e, one);
        const __m512 silu = round16(_mm512_mul_ps(g, _mm512_div_ps(numerator, _mm512_add_ps(one, e))));
        const __m512i bits = rounded_bits(_mm512_mul_ps(silu, load16(up + i)));
        _mm256_storeu_si256((__m256i *)(out + i), _mm512_cvtepi32_epi16(bits));
    }
    return i;
}
#endif

/* out[r] = bf16(silu(gate)) * up, where gate_up[r] is [gate | up], each `size` wide; out [rows, size]. */
void silu_mul_bf16(const bf16 *gate_up, bf16 *out, int64_t rows, int64_t size) {
#pragma omp parallel for if (rows * size >= PARALLEL_FROM)
    for (int64_t r = 0; r < rows; r++) {
        const bf16 *gate = gate_up + r * 2 * size, *up = gate + size;
        bf16 *yr = out + r * size;
        int64_t i = 0;
#if defined(__AVX512F__)
        i = silu_mul_vector(gate, up, yr, size);
#endif
        for (; i < size; i++) yr[i] = store(silu_rounded(load(gate[i])) * load(up[i]));
    }
}

/* The rotary embedding of `heads` heads of `2 * half` values per row, read at a row stride (q and k are the first
 * columns of the fused QKV output): out [rows, heads, 2 * half] contiguous; cos and sin [rows, half]. */
void rope_bf16(const bf16 *x, int64_t row_stride, const bf16 *cos, const bf16 *sin, bf16 *out, int64_t rows,
               int64_t heads, int64_t half) {
#pragma omp parallel for if (rows * heads * half >= PARALLEL_FROM / 2)
    for (int64_t r = 0; r < rows; r++) {
        const bf16 *c = cos + r * half, *s = sin + r * half;
        for (int64_t h = 0; h < heads; h++) {
            const bf16 *x1 = x + r * row_stride + h * 2 * half, *x2 = x1 + half;
            bf16 *y1 = out + (r * heads + h) * 2 * half, *y2 = y1 + half;
#pragma omp simd
            for (int64_t i = 0; i < half; i++) {
                const float a = load(x1[i]), b = load(x2[i]), ci = load(c[i]), si = load(s[i]);
                y1[i] = store(round_bf16(a * ci) - round_bf16(b * si));
                y2[i] = store(round_bf16(b * ci) + round_bf16(a * si));
            }
        }
    }
}
