/* C kernels for x86 CPUs with AVX2 and FMA, compiled on first use by rnn2gpt.models.native:
 *
 * - rnn2gpt_int8_gemv: the int8 weight-only matrix product of Int8Linear (models/avx2_int8.py);
 * - rnn2gpt_gpt_step: a decoding forward of a GPT over a few new tokens per row
 *   (models/native_step.py), described here.
 *
 * The step is the arithmetic of rnn2gpt.models.decode_plan.planned_forward (a decode step, or a
 * speculative check of a few drafted tokens) in evaluation mode (dropout is the identity),
 * written as one C call: on a small model the ~100 PyTorch operations of a step cost more in
 * dispatch than in arithmetic (the default 6L/192 GPT reads 10.6 MB of weights and does 5.3
 * MFLOP a token).
 *
 *   x = wte[token] + positions[position]
 *   per layer: x += c_proj(attention(c_attn(ln_1(x))));  x += mlp_proj(gelu(c_fc(ln_2(x))))
 *   logits = head(ln_f(x))
 *
 * Weights are float32, (out, in) as nn.Linear stores them, either as rows or transposed (the
 * column-major layout of use_inference_layout), or int8 rows with per-output scales (--quantize
 * int8: widened to float32 in registers, activations never quantized); any bias or LayerNorm
 * weight may be NULL (bias=False, no affine). Keys and values are the KV cache's buffers,
 * (B, H, capacity, D) per layer: the t-th new token of row b is written at slot slots[b] + t and
 * attends to the row's slots up to its own (those marked in valid (B, capacity), when given:
 * left padding). Rows never mix, and a row's arithmetic does not depend on the other rows or the
 * thread count.
 *
 * Threads: a step's weights come from beyond the core's own caches (10.6 MB against 0.5-2 MB of
 * L2), and one core cannot keep enough reads in flight to use the memory bandwidth: measured on
 * an AMD EPYC, the 24 products of the default GPT took 325-450 us on one core and 168-175 us split
 * over two. So the products, the attention heads and the GELU are split over ``threads`` parts:
 * the caller's thread and workers of a small pool. Within a step the workers spin for the next
 * part; between steps they sleep, and the first part of a step wakes them. (Spinning between
 * steps too made the PyTorch work between them, a drafter's LSTM step for instance, 2x slower:
 * its OpenMP threads shared a core with a spinning worker.)
 *
 * Compiled with -O3 -mavx2 -mfma -pthread.
 */
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

/* An (out, in) weight as a layer holds it. kind: ROWS, float32 (out, in) contiguous as nn.Linear
 * and nn.Embedding keep it; TRANSPOSED, the float32 (in, out) buffer that use_inference_layout
 * gives fp32 linear layers; INT8, int8 (out, in) rows with a float32 scale per output (Int8Linear:
 * w[o][i] = q[o][i] * scale[o]). */
enum { ROWS = 0, TRANSPOSED = 1, INT8 = 2 };

typedef struct {
    const void *data;
    int64_t kind;
    const float *scale; /* INT8 only */
} Matrix;

typedef struct {
    const float *ln1_w, *ln1_b;
    Matrix attn;
    const float *attn_b;
    Matrix proj;
    const float *proj_b;
    const float *ln2_w, *ln2_b;
    Matrix fc;
    const float *fc_b;
    Matrix mlp_proj;
    const float *mlp_proj_b;
} GptLayer;

typedef struct {
    int64_t n_layer, width, n_head, inner, vocab, gelu_tanh;
    double eps;
    Matrix wte;       /* (vocab, width) */
    Matrix positions; /* (block_size, width): learned or fixed */
    const float *lnf_w, *lnf_b;
    Matrix head; /* (vocab, width) */
    const float *head_b;
    const GptLayer *layers; /* n_layer of them */
} GptWeights;

/* ------------------------------------------------------------------ the worker pool */

#define MAX_THREADS 64
#define SPIN_NANOSECONDS 1000000 /* within a step, a worker spins at most this long, then sleeps */

typedef void (*Task)(const void *context, int64_t part, int64_t parts);

static struct {
    pthread_mutex_t busy; /* one step at a time uses the workers; others run on one thread */
    pthread_mutex_t lock; /* guards the sleep of workers and their creation */
    pthread_cond_t wake;
    int64_t started;                /* workers running: parts 1..started */
    int64_t first_seen[MAX_THREADS]; /* the generation each worker was started at */
    _Atomic int64_t generation;     /* bumped once per parallel run */
    _Atomic int64_t pending;        /* parts of the current run not finished by workers */
    _Atomic int64_t sleepers;
    _Atomic int parked; /* no step is running: workers sleep rather than spin */
    Task task;
    const void *context;
    int64_t parts;
} pool = {
    .busy = PTHREAD_MUTEX_INITIALIZER,
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER,
};

static int64_t nanoseconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Wait until the generation moves past seen: spin first, then sleep. */
static int64_t next_generation(int64_t seen) {
    int64_t deadline = 0;
    for (int64_t spins = 1;; spins++) {
        int64_t now = atomic_load_explicit(&pool.generation, memory_order_acquire);
        if (now != seen) return now;
        if (atomic_load_explicit(&pool.parked, memory_order_relaxed)) break;
        _mm_pause();
        if ((spins & 1023) == 0) {
            if (deadline == 0)
                deadline = nanoseconds() + SPIN_NANOSECONDS;
            else if (nanoseconds() > deadline)
                break;
        }
    }
    pthread_mutex_lock(&pool.lock);
    atomic_fetch_add(&pool.sleepers, 1); /* seq_cst: the runner sees it, or we see its bump */
    int64_t now;
    while ((now = atomic_load(&pool.generation)) == seen) pthread_cond_wait(&pool.wake, &pool.lock);
    atomic_fetch_sub(&pool.sleepers, 1);
    pthread_mutex_unlock(&pool.lock);
    return now;
}

static void *worker(void *argument) {
    const int64_t part = (int64_t)(intptr_t)argument;
    int64_t seen = pool.first_seen[part];
    for (;;) {
        seen = next_generation(seen);
        Task task = pool.task;
        const void *context = pool.context;
        int64_t parts = pool.parts;
        /* A run without a part for this worker may end, and the next begin, while it reads the
         * fields: then they may mix two runs, so it takes the newer run from the start. (A run
         * with a part for it cannot end without it.) */
        atomic_thread_fence(memory_order_seq_cst);
        if (atomic_load(&pool.generation) != seen) continue;
        if (part < parts) {
            task(context, part, parts);
            atomic_fetch_sub_explicit(&pool.pending, 1, memory_order_release);
        }
    }
    return NULL;
}

static void forget_workers_after_fork(void) {
    /* A forked child has the parent's memory but none of its threads. */
    pthread_mutex_init(&pool.busy, NULL);
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pool.started = 0;
    atomic_store(&pool.sleepers, 0);
}

/* Start workers until parts 1..wanted-1 have one; returns how many parts can run. */
static int64_t ensure_workers(int64_t wanted) {
    static int fork_handler = 0;
    if (!fork_handler) {
        pthread_atfork(NULL, NULL, forget_workers_after_fork);
        fork_handler = 1;
    }
    pthread_mutex_lock(&pool.lock);
    while (pool.started + 1 < wanted) {
        int64_t part = pool.started + 1;
        pool.first_seen[part] = atomic_load(&pool.generation);
        pthread_t thread;
        pthread_attr_t attributes;
        pthread_attr_init(&attributes);
        pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
        int failed = pthread_create(&thread, &attributes, worker, (void *)(intptr_t)part);
        pthread_attr_destroy(&attributes);
        if (failed) break;
        pool.started = part;
    }
    int64_t available = pool.started + 1;
    pthread_mutex_unlock(&pool.lock);
    return available < wanted ? available : wanted;
}

/* task(context, p, parts) for p = 0..parts-1, part 0 on the calling thread. */
static void run_parts(Task task, const void *context, int64_t parts) {
    if (parts <= 1) {
        task(context, 0, 1);
        return;
    }
    pool.task = task;
    pool.context = context;
    pool.parts = parts;
    atomic_store_explicit(&pool.pending, parts - 1, memory_order_relaxed);
    atomic_fetch_add(&pool.generation, 1); /* seq_cst: publishes the fields above */
    if (atomic_load(&pool.sleepers) > 0) {
        pthread_mutex_lock(&pool.lock);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.lock);
    }
    task(context, 0, parts);
    /* The workers' parts are as long as this one, so a short spin; past it the cores are shared
     * with other work, and yielding lets a descheduled worker run. */
    for (int64_t spins = 1; atomic_load_explicit(&pool.pending, memory_order_acquire) > 0; spins++)
        if (spins % 4096 == 0)
            sched_yield();
        else
            _mm_pause();
}

/* Units [begin, end) of part ``part`` when ``units`` are shared by ``parts`` evenly. */
static void share(int64_t units, int64_t part, int64_t parts, int64_t *begin, int64_t *end) {
    *begin = units * part / parts;
    *end = units * (part + 1) / parts;
}

/* ------------------------------------------------------------------ arithmetic */

static inline float sum_lanes(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float dot(const float *a, const float *b, int64_t n) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    }
    for (; i + 8 <= n; i += 8)
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    float s = sum_lanes(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static inline void store(float *y, float value, int add) { *y = add ? *y + value : value; }

/* Eight weights at p as float32 lanes: float32 ones as they are, int8 ones widened. */
static inline __m256 load8_float(const float *p) { return _mm256_loadu_ps(p); }

static inline __m256 load8_int8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/* Outputs [begin, end) of y (rows, n) = (x (rows, k) . w (n, k)^T) * scale + b on the row layout
 * (scale: one per output, or NULL for 1); with add, y += that instead (the residual). Four
 * outputs at a time, for two rows of x at a time: each load of x serves four weight rows and each
 * weight load two rows of x, the weight rows stay in L1 while every row of x passes over them,
 * and the eight accumulators hide the FMA latency. Every output is summed in the same order
 * whatever the number of rows, so a row's numbers do not depend on the others. Written once for float32
 * weights (linear_rows) and for int8 ones widened in registers (linear_int8: a quarter of the
 * bytes read, float32 arithmetic). */
#define DEFINE_LINEAR_BY_ROWS(NAME, WEIGHT, LOAD8)                                                 \
    static void NAME(const float *x, int64_t rows, int64_t k, const WEIGHT *w, const float *scale, \
                     const float *b, int64_t n, float *y, int add, int64_t begin, int64_t end) {   \
        int64_t o = begin;                                                                          \
        for (; o + 4 <= end; o += 4) {                                                              \
            const WEIGHT *wr[4] = {w + o * k, w + (o + 1) * k, w + (o + 2) * k, w + (o + 3) * k};   \
            int64_t r = 0;                                                                          \
            for (; r + 2 <= rows; r += 2) { /* two rows of x: each weight load serves both */      \
                const float *x0 = x + r * k, *x1 = x0 + k;                                          \
                __m256 a[2][4];                                                                     \
                for (int j = 0; j < 4; j++) a[0][j] = a[1][j] = _mm256_setzero_ps();               \
                int64_t i = 0;                                                                      \
                for (; i + 8 <= k; i += 8) {                                                        \
                    const __m256 xv0 = _mm256_loadu_ps(x0 + i), xv1 = _mm256_loadu_ps(x1 + i);     \
                    for (int j = 0; j < 4; j++) {                                                   \
                        const __m256 wv = LOAD8(wr[j] + i);                                         \
                        a[0][j] = _mm256_fmadd_ps(wv, xv0, a[0][j]);                                \
                        a[1][j] = _mm256_fmadd_ps(wv, xv1, a[1][j]);                                \
                    }                                                                               \
                }                                                                                   \
                for (int h = 0; h < 2; h++)                                                         \
                    for (int j = 0; j < 4; j++) {                                                   \
                        const float *xr = h ? x1 : x0;                                              \
                        float s = sum_lanes(a[h][j]);                                               \
                        for (int64_t t = i; t < k; t++) s += xr[t] * wr[j][t];                      \
                        store(y + (r + h) * n + o + j,                                              \
                              s * (scale ? scale[o + j] : 1.0f) + (b ? b[o + j] : 0.0f), add);      \
                    }                                                                               \
            }                                                                                       \
            for (; r < rows; r++) { /* the last row */                                              \
                const float *xr = x + r * k;                                                        \
                __m256 a[4];                                                                        \
                for (int j = 0; j < 4; j++) a[j] = _mm256_setzero_ps();                             \
                int64_t i = 0;                                                                      \
                for (; i + 8 <= k; i += 8) {                                                        \
                    const __m256 xv = _mm256_loadu_ps(xr + i);                                      \
                    for (int j = 0; j < 4; j++) a[j] = _mm256_fmadd_ps(LOAD8(wr[j] + i), xv, a[j]); \
                }                                                                                   \
                for (int j = 0; j < 4; j++) {                                                       \
                    float s = sum_lanes(a[j]);                                                      \
                    for (int64_t t = i; t < k; t++) s += xr[t] * wr[j][t]; /* k % 8 */             \
                    store(y + r * n + o + j,                                                        \
                          s * (scale ? scale[o + j] : 1.0f) + (b ? b[o + j] : 0.0f), add);          \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
        for (; o < end; o++) { /* the last 1-3 outputs */                                           \
            const WEIGHT *wo = w + o * k;                                                           \
            for (int64_t r = 0; r < rows; r++) {                                                    \
                const float *xr = x + r * k;                                                        \
                __m256 a = _mm256_setzero_ps();                                                     \
                int64_t i = 0;                                                                      \
                for (; i + 8 <= k; i += 8) a = _mm256_fmadd_ps(LOAD8(wo + i), _mm256_loadu_ps(xr + i), a); \
                float s = sum_lanes(a);                                                             \
                for (; i < k; i++) s += xr[i] * wo[i];                                              \
                store(y + r * n + o, s * (scale ? scale[o] : 1.0f) + (b ? b[o] : 0.0f), add);       \
            }                                                                                       \
        }                                                                                           \
    }

DEFINE_LINEAR_BY_ROWS(linear_rows, float, load8_float)
DEFINE_LINEAR_BY_ROWS(linear_int8, int8_t, load8_int8)

static inline void finish(float *y, __m256 acc, const float *b, int add) {
    if (b) acc = _mm256_add_ps(acc, _mm256_loadu_ps(b));
    _mm256_storeu_ps(y, add ? _mm256_add_ps(_mm256_loadu_ps(y), acc) : acc);
}

/* The same on the transposed (k, n) buffer: each x[i] scales a row of n weights, so the outputs
 * sit in vector accumulators and no lane sums are needed. One row of x: 64 outputs at a time. */
static void transposed_one_row(const float *x, int64_t k, const float *wt, const float *b,
                               int64_t n, float *y, int add, int64_t begin, int64_t end) {
    int64_t o = begin;
    for (; o + 64 <= end; o += 64) {
        __m256 a[8];
        for (int j = 0; j < 8; j++) a[j] = _mm256_setzero_ps();
        for (int64_t i = 0; i < k; i++) {
            const __m256 xv = _mm256_set1_ps(x[i]);
            const float *row = wt + i * n + o;
            for (int j = 0; j < 8; j++) a[j] = _mm256_fmadd_ps(_mm256_loadu_ps(row + 8 * j), xv, a[j]);
        }
        for (int j = 0; j < 8; j++) finish(y + o + 8 * j, a[j], b ? b + o + 8 * j : NULL, add);
    }
    for (; o + 8 <= end; o += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (int64_t i = 0; i < k; i++)
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(wt + i * n + o), _mm256_set1_ps(x[i]), acc);
        finish(y + o, acc, b ? b + o : NULL, add);
    }
    for (; o < end; o++) { /* the last 1-7 outputs */
        float s = 0.0f;
        for (int64_t i = 0; i < k; i++) s += x[i] * wt[i * n + o];
        store(y + o, s + (b ? b[o] : 0.0f), add);
    }
}

/* Four rows of x over each 16 outputs' weights, read once for the four. Every output is summed
 * in the same order as transposed_one_row's, so a row's numbers do not depend on its group. */
static void transposed_four_rows(const float *x, int64_t k, const float *wt, const float *b,
                                 int64_t n, float *y, int add, int64_t begin, int64_t end) {
    int64_t o = begin;
    for (; o + 16 <= end; o += 16) {
        __m256 a[4][2];
        for (int r = 0; r < 4; r++) a[r][0] = a[r][1] = _mm256_setzero_ps();
        for (int64_t i = 0; i < k; i++) {
            const __m256 w0 = _mm256_loadu_ps(wt + i * n + o), w1 = _mm256_loadu_ps(wt + i * n + o + 8);
            for (int r = 0; r < 4; r++) {
                const __m256 xv = _mm256_set1_ps(x[r * k + i]);
                a[r][0] = _mm256_fmadd_ps(w0, xv, a[r][0]);
                a[r][1] = _mm256_fmadd_ps(w1, xv, a[r][1]);
            }
        }
        for (int r = 0; r < 4; r++)
            for (int j = 0; j < 2; j++) finish(y + r * n + o + 8 * j, a[r][j], b ? b + o + 8 * j : NULL, add);
    }
    for (int r = 0; r < 4; r++) /* the last 1-15 outputs */
        if (o < end) transposed_one_row(x + r * k, k, wt, b, n, y + r * n, add, o, end);
}

static void linear_transposed(const float *x, int64_t rows, int64_t k, const float *wt,
                              const float *b, int64_t n, float *y, int add, int64_t begin,
                              int64_t end) {
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) transposed_four_rows(x + r * k, k, wt, b, n, y + r * n, add, begin, end);
    for (; r < rows; r++) transposed_one_row(x + r * k, k, wt, b, n, y + r * n, add, begin, end);
}

/* GELU of x[begin, end) of each of rows rows of width n, in place: 1 = erf (exact), 2 = tanh. */
static void gelu(float *x, int64_t rows, int64_t n, int64_t begin, int64_t end, int form) {
    const float c = 0.7978845608028654f; /* sqrt(2 / pi) */
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = begin; i < end; i++) {
            float v = x[r * n + i];
            x[r * n + i] = form == 2 ? 0.5f * v * (1.0f + tanhf(c * (v + 0.044715f * v * v * v)))
                                     : 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
        }
}

typedef struct {
    const float *x;
    int64_t rows, k;
    Matrix w;
    const float *b;
    int64_t n;
    float *y;
    int add;
    int gelu; /* 0: none, 1: erf, 2: tanh, applied to the outputs */
} LinearTask;

/* The outputs go to parts in whole blocks: 64 on the transposed layout, 4 on rows. */
static int64_t output_block(Matrix w) { return w.kind == TRANSPOSED ? 64 : 4; }

static void linear_part(const void *context, int64_t part, int64_t parts) {
    const LinearTask *t = context;
    int64_t unit = output_block(t->w), blocks = (t->n + unit - 1) / unit, begin, end;
    share(blocks, part, parts, &begin, &end);
    begin *= unit;
    end = end * unit < t->n ? end * unit : t->n;
    if (begin >= end) return;
    if (t->w.kind == TRANSPOSED)
        linear_transposed(t->x, t->rows, t->k, t->w.data, t->b, t->n, t->y, t->add, begin, end);
    else if (t->w.kind == INT8)
        linear_int8(t->x, t->rows, t->k, t->w.data, t->w.scale, t->b, t->n, t->y, t->add, begin, end);
    else
        linear_rows(t->x, t->rows, t->k, t->w.data, NULL, t->b, t->n, t->y, t->add, begin, end);
    if (t->gelu) gelu(t->y, t->rows, t->n, begin, end, t->gelu);
}

/* y (rows, n) = x (rows, k) . w^T + b for an (n, k) weight in either layout; add: y += that;
 * then the GELU of the outputs if asked. */
static void linear(const float *x, int64_t rows, int64_t k, Matrix w, const float *b, int64_t n,
                   float *y, int add, int gelu_form, int64_t threads) {
    LinearTask task = {x, rows, k, w, b, n, y, add, gelu_form};
    int64_t blocks = (n + output_block(w) - 1) / output_block(w);
    run_parts(linear_part, &task, threads < blocks ? threads : blocks);
}

/* Row ``index`` of an (n, width) float32 matrix into out (width). */
static void gather_row(Matrix m, int64_t n, int64_t width, int64_t index, float *out) {
    const float *data = m.data;
    for (int64_t i = 0; i < width; i++)
        out[i] = m.kind == TRANSPOSED ? data[i * n + index] : data[index * width + i];
}

/* y (rows, n) = LayerNorm(x) with the biased variance, as torch.layer_norm. */
static void layer_norm(const float *x, int64_t rows, int64_t n, const float *w, const float *b,
                       double eps, float *y) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        double mean = 0.0, var = 0.0;
        for (int64_t i = 0; i < n; i++) mean += xr[i];
        mean /= (double)n;
        for (int64_t i = 0; i < n; i++) {
            double d = xr[i] - mean;
            var += d * d;
        }
        var /= (double)n;
        float rstd = (float)(1.0 / sqrt(var + eps)), m = (float)mean;
        for (int64_t i = 0; i < n; i++) {
            float v = (xr[i] - m) * rstd;
            yr[i] = (w ? v * w[i] : v) + (b ? b[i] : 0.0f);
        }
    }
}

/* One row, one head: q (D) over keys/values (capacity, D) at slots 0..last (valid ones, and the
 * query's own) -> out (D). scores: scratch of capacity floats. */
static void attend(const float *q, const float *keys, const float *values, const uint8_t *valid,
                   int64_t last, int64_t dim, float *scores, float *out) {
    const float scale = 1.0f / sqrtf((float)dim);
    float best = -INFINITY;
    for (int64_t s = 0; s <= last; s++) {
        if (valid && !valid[s] && s != last) continue; /* a query always sees itself */
        scores[s] = dot(q, keys + s * dim, dim) * scale;
        if (scores[s] > best) best = scores[s];
    }
    float total = 0.0f;
    for (int64_t d = 0; d < dim; d++) out[d] = 0.0f;
    for (int64_t s = 0; s <= last; s++) {
        if (valid && !valid[s] && s != last) continue;
        float p = expf(scores[s] - best);
        total += p;
        const float *vs = values + s * dim;
        __m256 pv = _mm256_set1_ps(p);
        int64_t d = 0;
        for (; d + 8 <= dim; d += 8)
            _mm256_storeu_ps(out + d, _mm256_fmadd_ps(pv, _mm256_loadu_ps(vs + d), _mm256_loadu_ps(out + d)));
        for (; d < dim; d++) out[d] += p * vs[d];
    }
    const float inv = 1.0f / total;
    for (int64_t d = 0; d < dim; d++) out[d] *= inv;
}

typedef struct {
    const float *qkv;     /* (B * T, 3C) */
    float *keys, *values; /* this layer's (B, H, capacity, D) */
    const uint8_t *valid;
    const int64_t *slots; /* (B): the slot of each row's first new token */
    int64_t batch, steps, heads, dim, capacity;
    float *scores; /* capacity floats per part */
    float *out;    /* (B * T, C) */
} AttentionTask;

/* (row, head) pairs [begin, end) of this part: store the new keys and values of the row's T
 * tokens, then attend from each (token t at slot slots[r] + t sees slots up to its own). */
static void attention_part(const void *context, int64_t part, int64_t parts) {
    const AttentionTask *t = context;
    const int64_t C = t->heads * t->dim, D = t->dim, T = t->steps;
    int64_t begin, end;
    share(t->batch * t->heads, part, parts, &begin, &end);
    for (int64_t pair = begin; pair < end; pair++) {
        int64_t r = pair / t->heads, head = pair % t->heads;
        size_t base = (size_t)(pair * t->capacity) * (size_t)D;
        float *kc = t->keys + base, *vc = t->values + base;
        for (int64_t step = 0; step < T; step++) {
            const float *k = t->qkv + (r * T + step) * 3 * C + C + head * D, *v = k + C;
            int64_t slot = t->slots[r] + step;
            for (int64_t d = 0; d < D; d++) {
                kc[slot * D + d] = k[d];
                vc[slot * D + d] = v[d];
            }
        }
        for (int64_t step = 0; step < T; step++) {
            int64_t row = r * T + step;
            attend(t->qkv + row * 3 * C + head * D, kc, vc, t->valid ? t->valid + r * t->capacity : NULL,
                   t->slots[r] + step, D, t->scores + part * t->capacity, t->out + row * C + head * D);
        }
    }
}

/* T new tokens per row: tokens and positions (B * T), row-major; slots (B): the slot of each
 * row's first new token (the others follow it); valid (B, capacity) or NULL; keys[l] and
 * values[l] (B, H, capacity, D); block_size: the rows of the position table; logits (B * T,
 * vocab); threads: how many parts to split the work into (1: the calling thread only).
 * Returns 0, or -1 if out of memory. */
int rnn2gpt_gpt_step(const GptWeights *m, int64_t batch, int64_t steps, const int64_t *tokens,
                     const int64_t *positions, const int64_t *slots, const uint8_t *valid,
                     float *const *keys, float *const *values, int64_t capacity,
                     int64_t block_size, float *logits, int64_t threads) {
    const int64_t C = m->width, H = m->n_head, D = C / H, F = m->inner, N = batch * steps;
    threads = threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : threads;
    int own_pool = threads > 1 && pthread_mutex_trylock(&pool.busy) == 0;
    if (own_pool) {
        threads = ensure_workers(threads);
        atomic_store(&pool.parked, 0); /* the workers spin between this step's parts */
    } else {
        threads = 1; /* another thread's step holds the workers */
    }
    float *buffer = malloc(sizeof(float) * (size_t)(N * (C * 6 + F) + threads * capacity));
    if (!buffer) {
        if (own_pool) {
            atomic_store(&pool.parked, 1);
            pthread_mutex_unlock(&pool.busy);
        }
        return -1;
    }
    float *x = buffer, *h = x + N * C, *qkv = h + N * C, *att = qkv + N * 3 * C;
    float *hidden = att + N * C, *scores = hidden + N * F;
    const int form = m->gelu_tanh ? 2 : 1;

    for (int64_t row = 0; row < N; row++) {
        gather_row(m->wte, m->vocab, C, tokens[row], x + row * C);
        gather_row(m->positions, block_size, C, positions[row], h + row * C);
        for (int64_t i = 0; i < C; i++) x[row * C + i] += h[row * C + i];
    }
    for (int64_t l = 0; l < m->n_layer; l++) {
        const GptLayer *L = m->layers + l;
        layer_norm(x, N, C, L->ln1_w, L->ln1_b, m->eps, h);
        linear(h, N, C, L->attn, L->attn_b, 3 * C, qkv, 0, 0, threads);
        AttentionTask attention = {qkv,   keys[l], values[l], valid,    slots, batch,
                                   steps, H,       D,         capacity, scores, att};
        run_parts(attention_part, &attention, threads < batch * H ? threads : batch * H);
        linear(att, N, C, L->proj, L->proj_b, C, x, 1, 0, threads);
        layer_norm(x, N, C, L->ln2_w, L->ln2_b, m->eps, h);
        linear(h, N, C, L->fc, L->fc_b, F, hidden, 0, form, threads);
        linear(hidden, N, F, L->mlp_proj, L->mlp_proj_b, C, x, 1, 0, threads);
    }
    layer_norm(x, N, C, m->lnf_w, m->lnf_b, m->eps, h);
    linear(h, N, C, m->head, m->head_b, m->vocab, logits, 0, 0, threads);
    free(buffer);
    if (own_pool) {
        atomic_store(&pool.parked, 1); /* between steps the cores are PyTorch's: sleep */
        pthread_mutex_unlock(&pool.busy);
    }
    return 0;
}

/* y (rows, n) = x (rows, k) . (q (n, k) * scale (n))^T + bias (n), outputs [begin, end) only;
 * bias may be NULL. x, scale, bias and y float32, q int8 (Int8Linear's buffers); one thread. */
void rnn2gpt_int8_gemv(const float *x, const int8_t *q, const float *scale, const float *bias,
                       float *y, int64_t rows, int64_t k, int64_t n, int64_t begin, int64_t end) {
    linear_int8(x, rows, k, q, scale, bias, n, y, 0, begin, end);
}
