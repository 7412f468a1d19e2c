/* Decode attention over the paged KV cache, on CPU: one query token per sequence, every key and value read once.
 *
 * Built by gpu_worker/model/native_decode.py with -DPAGED_BF16 (bfloat16 cache) or without (float32), and called
 * through ctypes with the tensors' data pointers. Layouts, all contiguous:
 *   q, out        [batch, kv_heads, group, dim]   the query heads that share a kv head are its `group` rows
 *   k/v_cache     [kv_heads, num_blocks, block_size, dim]
 *   block_tables  [batch, max_blocks] int64; context_lens [batch] int64 (keys of each sequence, the new one included)
 * Each (sequence, kv head) is one task of the OpenMP loop (the process's libgomp, the one torch loaded): scores for
 * the whole context in float32, an exact softmax, then the weighted sum of the values, all accumulated in float32.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#ifdef PAGED_BF16
typedef uint16_t elem_t;
static inline float load(elem_t x) {
    union { uint32_t u; float f; } v;
    v.u = (uint32_t)x << 16;
    return v.f;
}
static inline elem_t store(float f) {
    union { float f; uint32_t u; } v;
    v.f = f;
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (elem_t)((v.u >> 16) | 0x40u); /* NaN stays NaN */
    return (elem_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);                /* round to nearest even */
}
#define PAGED_DECODE paged_decode_bf16
#else
typedef float elem_t;
static inline float load(elem_t x) { return x; }
static inline elem_t store(float f) { return f; }
#define PAGED_DECODE paged_decode_f32
#endif

/* e^x for x <= 0 as 2^n * 2^f, with a degree-6 polynomial for 2^f on [0, 1): relative error about 2e-7, and
 * unlike expf it vectorises without -ffast-math. */
static inline float exp_nonpositive(float x) {
    float t = (x < -87.0f ? -87.0f : x) * 1.44269504f;
    float n = floorf(t), f = t - n;
    float p = 1.535336188e-4f;
    p = p * f + 1.339887440e-3f;
    p = p * f + 9.618437357e-3f;
    p = p * f + 5.550332471e-2f;
    p = p * f + 2.402264791e-1f;
    p = p * f + 6.931472028e-1f;
    p = p * f + 1.0f;
    union { int32_t i; float f; } scale;
    scale.i = ((int32_t)n + 127) << 23;
    return p * scale.f;
}

static inline __attribute__((always_inline)) void one_task(const elem_t *q, const elem_t *k_head, const elem_t *v_head, const int64_t *table, int64_t len,
                     elem_t *out, int64_t group, int64_t dim, int64_t block_size, float scale, float *buf) {
    float *qf = buf, *acc = buf + group * dim, *scores = acc + group * dim; /* [group, dim] x2, [group, len] */
    const int64_t block_stride = block_size * dim;
    for (int64_t i = 0; i < group * dim; i++) {
        qf[i] = load(q[i]) * scale;
        acc[i] = 0.0f;
    }
    for (int64_t start = 0; start < len; start += block_size) {
        const elem_t *block = k_head + table[start / block_size] * block_stride;
        const int64_t rows = len - start < block_size ? len - start : block_size;
        for (int64_t r = 0; r < rows; r++) {
            const elem_t *key = block + r * dim;
            for (int64_t g = 0; g < group; g++) {
                const float *qg = qf + g * dim;
                float s = 0.0f;
#pragma omp simd reduction(+ : s)
                for (int64_t d = 0; d < dim; d++) s += qg[d] * load(key[d]);
                scores[g * len + start + r] = s;
            }
        }
    }
    for (int64_t g = 0; g < group; g++) {
        float *sg = scores + g * len, max = sg[0], sum = 0.0f;
        for (int64_t j = 1; j < len; j++) max = sg[j] > max ? sg[j] : max;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < len; j++) {
            sg[j] = exp_nonpositive(sg[j] - max);
            sum += sg[j];
        }
        const float inv = 1.0f / sum;
        for (int64_t j = 0; j < len; j++) sg[j] *= inv;
    }
    for (int64_t start = 0; start < len; start += block_size) {
        const elem_t *block = v_head + table[start / block_size] * block_stride;
        const int64_t rows = len - start < block_size ? len - start : block_size;
        for (int64_t r = 0; r < rows; r++) {
            const elem_t *value = block + r * dim;
            for (int64_t g = 0; g < group; g++) {
                const float p = scores[g * len + start + r];
                float *ag = acc + g * dim;
#pragma omp simd
                for (int64_t d = 0; d < dim; d++) ag[d] += p * load(value[d]);
            }
        }
    }
    for (int64_t i = 0; i < group * dim; i++) out[i] = store(acc[i]);
}

/* Returns 0, or -1 when a task could not get its scratch memory (the caller then raises). */
int PAGED_DECODE(const elem_t *q, const elem_t *k_cache, const elem_t *v_cache, const int64_t *block_tables,
                 const int64_t *context_lens, elem_t *out, int64_t batch, int64_t kv_heads, int64_t group,
                 int64_t dim, int64_t num_blocks, int64_t block_size, int64_t max_blocks, float scale) {
    const int64_t head_stride = num_blocks * block_size * dim;
    int failed = 0;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t task = 0; task < batch * kv_heads; task++) {
        const int64_t b = task / kv_heads, h = task % kv_heads, len = context_lens[b];
        float *buf = malloc(sizeof(float) * (size_t)(group * (2 * dim + len)));
        if (buf == NULL) {
            failed = 1;
            continue;
        }
        const elem_t *q_rows = q + task * group * dim, *k_head = k_cache + h * head_stride;
        const elem_t *v_head = v_cache + h * head_stride;
        const int64_t *table = block_tables + b * max_blocks;
        elem_t *out_rows = out + task * group * dim;
        /* the usual head sizes as constants, so that the loops over dim unroll into whole vectors */
        if (dim == 64)
            one_task(q_rows, k_head, v_head, table, len, out_rows, group, 64, block_size, scale, buf);
        else if (dim == 128)
            one_task(q_rows, k_head, v_head, table, len, out_rows, group, 128, block_size, scale, buf);
        else
            one_task(q_rows, k_head, v_head, table, len, out_rows, group, dim, block_size, scale, buf);
        free(buf);
    }
    return failed ? -1 : 0;
}
