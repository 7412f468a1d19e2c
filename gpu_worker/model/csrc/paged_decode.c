/* Decode attention over the paged KV cache, on CPU: one query token per sequence, every key and value read once.
 *
 * Built by gpu_worker/model/native_decode.py with -DPAGED_BF16 (bfloat16 cache) or without (float32), and called
 * through ctypes with the tensors' data pointers. Layouts, all contiguous:
 *   q, out        [batch, kv_heads, group, dim]   the query heads that share a kv head are its `group` rows
 *   k/v_cache     [kv_heads, num_blocks, block_size, dim]
 *   block_tables  [batch, max_blocks] int64; context_lens [batch] int64 (keys of each sequence, the new one included)
 * Each (sequence, kv head) is one task of the OpenMP loop (the process's libgomp, the one torch loaded): scores for
 * the whole context in float32, an exact softmax, then the weighted sum of the values, all accumulated in float32.
 * Threads take runs of consecutive tasks and fetch the next task's blocks into L2 while they compute the current one:
 * the blocks of a sequence lie anywhere in the cache, and waiting for them was most of a task's time.
 */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

#include "bf16_math.h"

#ifdef PAGED_BF16
typedef uint16_t elem_t;
static inline float load(elem_t x) { return bf16_to_float(x); }
static inline elem_t store(float f) { return float_to_bf16(f); }
#define PAGED_DECODE paged_decode_bf16
#else
typedef float elem_t;
static inline float load(elem_t x) { return x; }
static inline elem_t store(float f) { return f; }
#define PAGED_DECODE paged_decode_f32
#endif

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

#if defined(__AVX512F__)
/* The same task with AVX-512 for head sizes that are a multiple of 16 (up to 256): the loops above leave one
 * horizontal sum per score inside a loop the compiler keeps scalar around it (40-60 ns per key row at batch 64,
 * one thread). Here each query head's `dim / 16` vectors stay in registers while its keys stream past, and each
 * value row is read into `dim / 16` register accumulators; a head's keys and values are re-read per query head of its
 * group, from cache. */
static inline __m512 load16(const elem_t *p) {
#ifdef PAGED_BF16
    return bf16x16_to_float(p);
#else
    return _mm512_loadu_ps(p);
#endif
}

static inline void prefetch_rows(const elem_t *start, int64_t bytes) {
    for (int64_t offset = 0; offset < bytes; offset += 64) _mm_prefetch((const char *)start + offset, _MM_HINT_T0);
}

#if defined(PAGED_BF16) && defined(__AVX512BF16__)
#define DPBF16_KEYS 1
/* Lane j of the result of level L is the sum of two lanes of a pair of vectors (A: 0-15, B: 16-31), so that four
 * levels turn 16 vectors of per-lane partial sums, one per key row, into one vector of 16 row sums (row r in lane r):
 * 15 adds and 30 permutes where 16 horizontal reductions take about 130 instructions. */
static const int32_t SUM_ROWS_INDEX[4][2][16] = {
    {{0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23}, {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31}},
    {{0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27}, {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31}},
    {{0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29}, {2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31}},
    {{0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30}, {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31}},
};

static inline __m512 sum_rows16(__m512 s[16]) {
    for (int level = 0, n = 16; n > 1; level++, n /= 2) {
        const __m512i lo = _mm512_loadu_si512(SUM_ROWS_INDEX[level][0]), hi = _mm512_loadu_si512(SUM_ROWS_INDEX[level][1]);
        for (int v = 0; v < n / 2; v++)
            s[v] = _mm512_add_ps(_mm512_permutex2var_ps(s[2 * v], lo, s[2 * v + 1]),
                                 _mm512_permutex2var_ps(s[2 * v], hi, s[2 * v + 1]));
    }
    return s[0];
}

/* Scaled scores of `rows` consecutive key rows (at most 16) against a query head held as `pairs` vectors of 32 bf16:
 * vdpbf16ps multiplies the bf16 values as stored, exactly, and adds them in float32. Returns the running max. */
static inline __m512 score_rows_dpbf16(const __m512bh *qb, int pairs, const uint16_t *keys, int64_t rows,
                                       int64_t dim, float scale, float *scores, __m512 max) {
    __m512 s[16];
    for (int64_t r = 0; r < 16; r++) {
        s[r] = _mm512_setzero_ps();
        if (r < rows)
            for (int i = 0; i < pairs; i++)
                s[r] = _mm512_dpbf16_ps(s[r], qb[i], (__m512bh)_mm512_loadu_si512(keys + r * dim + 32 * i));
    }
    const __mmask16 valid = (__mmask16)((1u << rows) - 1u);
    const __m512 scaled = _mm512_mul_ps(sum_rows16(s), _mm512_set1_ps(scale));
    _mm512_mask_storeu_ps(scores, valid, scaled);
    return _mm512_mask_max_ps(max, valid, max, scaled);
}
#endif

static inline __attribute__((always_inline)) void one_task_avx512(const elem_t *q, const elem_t *k_head,
                     const elem_t *v_head, const int64_t *table, int64_t len, elem_t *out, int64_t group,
                     const int nv, int64_t block_size, float scale, float *scores) {
    const int64_t dim = 16 * nv, block_stride = block_size * dim;
    for (int64_t g = 0; g < group; g++) {
        __m512 qv[16], acc[16];
        for (int i = 0; i < nv; i++) qv[i] = _mm512_mul_ps(load16(q + g * dim + 16 * i), _mm512_set1_ps(scale));
        float *sg = scores;
        float max = -INFINITY, sum = 0.0f;
        __m512 vmax = _mm512_set1_ps(-INFINITY);
#ifdef DPBF16_KEYS
        __m512bh qb[8];
        for (int i = 0; i < nv / 2; i++) qb[i] = (__m512bh)_mm512_loadu_si512(q + g * dim + 32 * i);
#endif
        for (int64_t start = 0; start < len; start += block_size) {
            const elem_t *block = k_head + table[start / block_size] * block_stride;
            const int64_t rows = len - start < block_size ? len - start : block_size;
            if (g == 0) { /* blocks sit anywhere in the cache: fetch key blocks two ahead, and this value block */
                if (start == 0) prefetch_rows(block, rows * dim * (int64_t)sizeof(elem_t));
                for (int64_t ahead = 1; ahead <= 2; ahead++)
                    if (start + ahead * block_size < len)
                        prefetch_rows(k_head + table[start / block_size + ahead] * block_stride,
                                      block_stride * (int64_t)sizeof(elem_t));
                prefetch_rows(v_head + table[start / block_size] * block_stride, rows * dim * (int64_t)sizeof(elem_t));
            }
#ifdef DPBF16_KEYS
            if (nv % 2 == 0) {
                for (int64_t r = 0; r < rows; r += 16)
                    vmax = score_rows_dpbf16(qb, nv / 2, block + r * dim, rows - r < 16 ? rows - r : 16, dim, scale,
                                             sg + start + r, vmax);
                continue;
            }
#endif
            for (int64_t r = 0; r < rows; r++) {
                const elem_t *key = block + r * dim;
                __m512 s = _mm512_mul_ps(qv[0], load16(key));
                for (int i = 1; i < nv; i++) s = _mm512_fmadd_ps(qv[i], load16(key + 16 * i), s);
                const float score = _mm512_reduce_add_ps(s);
                sg[start + r] = score;
                max = score > max ? score : max;
            }
        }
        const float vector_max = _mm512_reduce_max_ps(vmax);
        max = max > vector_max ? max : vector_max;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < len; j++) {
            sg[j] = exp_nonpositive(sg[j] - max);
            sum += sg[j];
        }
        for (int i = 0; i < nv; i++) acc[i] = _mm512_setzero_ps();
        for (int64_t start = 0; start < len; start += block_size) {
            const elem_t *block = v_head + table[start / block_size] * block_stride;
            const int64_t rows = len - start < block_size ? len - start : block_size;
            for (int64_t r = 0; r < rows; r++) {
                const elem_t *value = block + r * dim;
                const __m512 p = _mm512_set1_ps(sg[start + r]);
                for (int i = 0; i < nv; i++) acc[i] = _mm512_fmadd_ps(p, load16(value + 16 * i), acc[i]);
            }
        }
        float row[256];
        const __m512 inv = _mm512_set1_ps(1.0f / sum);
        for (int i = 0; i < nv; i++) _mm512_storeu_ps(row + 16 * i, _mm512_mul_ps(acc[i], inv));
        for (int64_t d = 0; d < dim; d++) out[g * dim + d] = store(row[d]);
    }
}
#endif

#if defined(__AVX512F__)
/* Into L2, every key and value block of one task: issued a task ahead, they arrive while the current one computes. */
static void prefetch_task(const elem_t *k_cache, const elem_t *v_cache, const int64_t *block_tables,
                          const int64_t *context_lens, int64_t task, int64_t kv_heads, int64_t head_stride,
                          int64_t block_size, int64_t dim, int64_t max_blocks) {
    const int64_t b = task / kv_heads, h = task % kv_heads, len = context_lens[b];
    const int64_t *table = block_tables + b * max_blocks;
    for (int64_t start = 0; start < len; start += block_size) {
        const int64_t rows = len - start < block_size ? len - start : block_size;
        const int64_t offset = h * head_stride + table[start / block_size] * block_size * dim;
        for (int64_t byte = 0; byte < rows * dim * (int64_t)sizeof(elem_t); byte += 64) {
            _mm_prefetch((const char *)(k_cache + offset) + byte, _MM_HINT_T1);
            _mm_prefetch((const char *)(v_cache + offset) + byte, _MM_HINT_T1);
        }
    }
}
#endif

/* Returns 0, or -1 when a task could not get its scratch memory (the caller then raises). */
int PAGED_DECODE(const elem_t *q, const elem_t *k_cache, const elem_t *v_cache, const int64_t *block_tables,
                 const int64_t *context_lens, elem_t *out, int64_t batch, int64_t kv_heads, int64_t group,
                 int64_t dim, int64_t num_blocks, int64_t block_size, int64_t max_blocks, float scale) {
    const int64_t head_stride = num_blocks * block_size * dim, tasks = batch * kv_heads;
    /* consecutive tasks per grab, so that a thread knows its next task and can fetch it early; one per grab where
     * there are too few tasks to keep every thread busy otherwise */
    const int64_t per_grab = tasks >= 32 * (int64_t)omp_get_max_threads() ? 8 : 1;
    int failed = 0;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t first = 0; first < tasks; first += per_grab) {
        const int64_t end = first + per_grab < tasks ? first + per_grab : tasks;
        for (int64_t task = first; task < end; task++) {
            const int64_t b = task / kv_heads, h = task % kv_heads, len = context_lens[b];
#if defined(__AVX512F__)
            if (task + 1 < end)
                prefetch_task(k_cache, v_cache, block_tables, context_lens, task + 1, kv_heads, head_stride,
                              block_size, dim, max_blocks);
#endif
            float *buf = malloc(sizeof(float) * (size_t)(group * (2 * dim + len)));
            if (buf == NULL) {
                failed = 1;
                continue;
            }
            const elem_t *q_rows = q + task * group * dim, *k_head = k_cache + h * head_stride;
            const elem_t *v_head = v_cache + h * head_stride;
            const int64_t *table = block_tables + b * max_blocks;
            elem_t *out_rows = out + task * group * dim;
#if defined(__AVX512F__)
            if (dim == 64)
                one_task_avx512(q_rows, k_head, v_head, table, len, out_rows, group, 4, block_size, scale, buf);
            else if (dim == 128)
                one_task_avx512(q_rows, k_head, v_head, table, len, out_rows, group, 8, block_size, scale, buf);
            else if (dim % 16 == 0 && dim <= 256)
                one_task_avx512(q_rows, k_head, v_head, table, len, out_rows, group, (int)(dim / 16), block_size,
                                scale, buf);
            else
#endif
            /* the usual head sizes as constants, so that the loops over dim unroll into whole vectors */
            if (dim == 64)
                one_task(q_rows, k_head, v_head, table, len, out_rows, group, 64, block_size, scale, buf);
            else if (dim == 128)
                one_task(q_rows, k_head, v_head, table, len, out_rows, group, 128, block_size, scale, buf);
            else
                one_task(q_rows, k_head, v_head, table, len, out_rows, group, dim, block_size, scale, buf);
            free(buf);
        }
    }
    return failed ? -1 : 0;
}
