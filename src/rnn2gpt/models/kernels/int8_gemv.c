/* int8 weight-only matrix-vector product for x86 CPUs with AVX2 and FMA.
 *
 *   y (rows, n) = x (rows, k) . q (n, k)^T * scale (n) + bias (n)
 *
 * x, scale, bias and y are float32; q is int8, row-major (one output per row), as
 * rnn2gpt.models.quantized.Int8Linear stores it. Each int8 weight is widened to float32 in a
 * register and multiplied there: the weights are read from memory once per row of x, at a quarter
 * of fp32's bytes, and the arithmetic is fp32's (activations are never quantized).
 *
 * Four outputs are computed together so that each load of x serves four weight rows and the four
 * accumulators hide the FMA latency. Outputs [begin, end) only: a caller may split the outputs
 * between threads. Compiled by rnn2gpt.models.avx2_int8 with -O3 -mavx2 -mfma.
 */
#include <immintrin.h>
#include <stdint.h>

static inline float sum_lanes(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Eight int8 weights at p, as eight float32 lanes. */
static inline __m256 widen8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

static inline float finish(float dot, const float *scale, const float *bias, int64_t o) {
    return dot * scale[o] + (bias ? bias[o] : 0.0f);
}

static void one_row(const float *x, const int8_t *q, const float *scale, const float *bias,
                    float *y, int64_t k, int64_t begin, int64_t end) {
    int64_t o = begin;
    for (; o + 4 <= end; o += 4) {
        const int8_t *q0 = q + o * k, *q1 = q0 + k, *q2 = q1 + k, *q3 = q2 + k;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        int64_t i = 0;
        for (; i + 8 <= k; i += 8) {
            __m256 xv = _mm256_loadu_ps(x + i);
            a0 = _mm256_fmadd_ps(widen8(q0 + i), xv, a0);
            a1 = _mm256_fmadd_ps(widen8(q1 + i), xv, a1);
            a2 = _mm256_fmadd_ps(widen8(q2 + i), xv, a2);
            a3 = _mm256_fmadd_ps(widen8(q3 + i), xv, a3);
        }
        float s0 = sum_lanes(a0), s1 = sum_lanes(a1), s2 = sum_lanes(a2), s3 = sum_lanes(a3);
        for (; i < k; i++) { /* k not a multiple of 8 */
            s0 += x[i] * q0[i];
            s1 += x[i] * q1[i];
            s2 += x[i] * q2[i];
            s3 += x[i] * q3[i];
        }
        y[o] = finish(s0, scale, bias, o);
        y[o + 1] = finish(s1, scale, bias, o + 1);
        y[o + 2] = finish(s2, scale, bias, o + 2);
        y[o + 3] = finish(s3, scale, bias, o + 3);
    }
    for (; o < end; o++) { /* the last 1-3 outputs */
        const int8_t *qo = q + o * k;
        __m256 a = _mm256_setzero_ps();
        int64_t i = 0;
        for (; i + 8 <= k; i += 8) a = _mm256_fmadd_ps(widen8(qo + i), _mm256_loadu_ps(x + i), a);
        float s = sum_lanes(a);
        for (; i < k; i++) s += x[i] * qo[i];
        y[o] = finish(s, scale, bias, o);
    }
}

/* bias may be NULL. Returns nothing; y must hold rows * n floats. */
void rnn2gpt_int8_gemv(const float *x, const int8_t *q, const float *scale, const float *bias,
                       float *y, int64_t rows, int64_t k, int64_t n, int64_t begin, int64_t end) {
    for (int64_t r = 0; r < rows; r++) one_row(x + r * k, q, scale, bias, y + r * n, k, begin, end);
}
