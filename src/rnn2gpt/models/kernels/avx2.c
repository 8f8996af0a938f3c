/* C kernels for x86 CPUs with AVX2 and FMA, compiled on first use by rnn2gpt.models.native:
 *
 * - rnn2gpt_int8_gemv: the int8 weight-only matrix product of Int8Linear (models/avx2_int8.py);
 * - rnn2gpt_gpt_step: a decoding forward of a GPT over a few new tokens per row
 *   (models/native_step.py), described here;
 * - rnn2gpt_gelu, rnn2gpt_causal_attention(_backward): the exact GELU and a GPT's causal
 *   attention, forward and backward, for training (models/native_ops.py; see "training kernels");
 * - rnn2gpt_layer_norm(_backward): LayerNorm, for the blocks below;
 * - rnn2gpt_block_forward, rnn2gpt_block_backward: a GPT block for training, on the BLAS sgemm
 *   PyTorch calls or products of ours, and rnn2gpt_blocks_forward/_backward, every block in one
 *   call (models/native_blocks.py; see "a GPT's blocks for training");
 * - rnn2gpt_lm_forward, rnn2gpt_lm_backward: a GPT's training forward from tokens to each token's
 *   loss, the blocks and the ends around them (models/native_model.py; "a GPT's ends");
 * - rnn2gpt_squared_norm, rnn2gpt_adamw: AdamW's step with gradient clipping
 *   (training/native_adamw.py).
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
 * Compiled with -O3 -mavx2 -mfma -pthread -fopenmp (OpenMP for the training kernels only: they
 * run on PyTorch's own OpenMP threads).
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

/* How many parts a kernel splits ``units`` of work into: one per thread, at most one per unit,
 * at least one. */
static int64_t parts_for(int64_t units, int64_t threads) {
    const int64_t parts = units < threads ? units : threads;
    return parts < 1 ? 1 : parts;
}

/* Units [begin, end) of part ``part`` when ``units`` are shared by ``parts`` evenly. */
static void share(int64_t units, int64_t part, int64_t parts, int64_t *begin, int64_t *end) {
    *begin = units * part / parts;
    *end = units * (part + 1) / parts;
}

/* Take the workers for one call of a kernel: returns how many parts it may split into, and sets
 * *owned when it holds the pool (then release_pool must follow). Another thread's call holding
 * the workers leaves this one on its own thread. */
static int64_t take_pool(int64_t threads, int *owned) {
    threads = threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : threads;
    *owned = threads > 1 && pthread_mutex_trylock(&pool.busy) == 0;
    if (!*owned) return 1;
    threads = ensure_workers(threads);
    atomic_store(&pool.parked, 0); /* the workers spin between this call's parts */
    return threads;
}

static void release_pool(int owned) {
    if (!owned) return;
    atomic_store(&pool.parked, 1); /* between calls the cores are PyTorch's: sleep */
    pthread_mutex_unlock(&pool.busy);
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
    int own_pool;
    threads = take_pool(threads, &own_pool);
    float *buffer = malloc(sizeof(float) * (size_t)(N * (C * 6 + F) + threads * capacity));
    if (!buffer) {
        release_pool(own_pool);
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
    release_pool(own_pool);
    return 0;
}

/* y (rows, n) = x (rows, k) . (q (n, k) * scale (n))^T + bias (n), outputs [begin, end) only;
 * bias may be NULL. x, scale, bias and y float32, q int8 (Int8Linear's buffers); one thread. */
void rnn2gpt_int8_gemv(const float *x, const int8_t *q, const float *scale, const float *bias,
                       float *y, int64_t rows, int64_t k, int64_t n, int64_t begin, int64_t end) {
    linear_int8(x, rows, k, q, scale, bias, n, y, 0, begin, end);
}

/* ------------------------------------------------------------------ training kernels
 *
 * The exact GELU and a GPT's causal attention, forward and backward, for training and for any
 * forward over a fresh sequence (models/native_ops.py wraps them as autograd functions). On the
 * nanoGPT-size GPT PyTorch's own kernels for these took 11 of a 50 ms step on an AMD EPYC: the
 * GELU by oneDNN, the attention by the flash kernel, which needs q, k and v copied out of the
 * packed projection and its output copied back. Here the attention reads q, k and v where the
 * projection wrote them, (B, T, 3C), and writes its output where the next projection reads it,
 * (B, T, C). Every element is computed in the same order for any thread count. */

/* e^x for x <= 0, lane by lane (relative error about 1e-7; e^x < 1.8e-35 gives that bound's
 * value, far below what a float32 sum of ones can see). n = round(x / ln 2), r = x - n ln 2 in
 * two parts (|r| <= ln 2 / 2), e^r by its Taylor series to r^7 / 7!, then times 2^n. */
static inline __m256 exp_nonpositive(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-80.0f)); /* 2^n stays a normal float: no slow denormals */
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

/* The standard normal CDF of x, Phi(x) = (1 + erf(x / sqrt 2)) / 2, and the density term
 * exp(-x^2 / 2) (the caller scales it by 1 / sqrt(2 pi)). erf(a) for a >= 0 is
 * 1 - t (a1 + a2 t + ... + a5 t^4) exp(-a^2), t = 1 / (1 + p a) (Abramowitz and Stegun 7.1.26,
 * absolute error under 1.5e-7); below zero, Phi(x) = 1 - Phi(-x) is taken from the small tail
 * directly rather than as 1 minus a number near 1. */
static inline __m256 normal_cdf(__m256 x, __m256 *density) {
    const __m256 sign_bit = _mm256_set1_ps(-0.0f);
    __m256 a = _mm256_andnot_ps(sign_bit, _mm256_mul_ps(x, _mm256_set1_ps(0.70710678118654752f)));
    __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f),
                             _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), a, _mm256_set1_ps(1.0f)));
    __m256 poly = _mm256_set1_ps(1.061405429f);
    poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(-1.453152027f));
    poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(1.421413741f));
    poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(-0.284496736f));
    poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(0.254829592f));
    __m256 e = exp_nonpositive(_mm256_mul_ps(_mm256_mul_ps(a, a), _mm256_set1_ps(-1.0f)));
    *density = e;
    __m256 tail = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), _mm256_mul_ps(poly, t)), e);
    __m256 upper = _mm256_sub_ps(_mm256_set1_ps(1.0f), tail);
    return _mm256_blendv_ps(upper, tail, x); /* x's sign bit picks the lower tail */
}

typedef struct {
    const float *x;
    float *y, *slope; /* slope: NULL where no backward will follow */
    int64_t n;
} GeluTask;

/* Elements [begin, end) of this part in whole vectors; the last part takes the tail through
 * scratch vectors. y = x Phi(x) and GELU'(x) = Phi(x) + x phi(x), which shares Phi and the
 * exponential with y: written here, the backward is one multiplication by dy instead of a second
 * pass over the erf. */
static void gelu_part(const void *context, int64_t part, int64_t parts) {
    const GeluTask *g = context;
    const __m256 inv_sqrt_2pi = _mm256_set1_ps(0.39894228040143268f);
    int64_t vectors = g->n / 8, begin, end;
    share(vectors, part, parts, &begin, &end);
    int64_t stop = part == parts - 1 ? g->n : end * 8;
    for (int64_t i = begin * 8; i < stop; i += 8) {
        float xs[8] = {0}, ys[8], slopes[8];
        int64_t count = stop - i < 8 ? stop - i : 8;
        const float *xp = g->x + i;
        if (count < 8) {
            for (int64_t j = 0; j < count; j++) xs[j] = xp[j];
            xp = xs;
        }
        __m256 x = _mm256_loadu_ps(xp), density;
        __m256 cdf = normal_cdf(x, &density);
        __m256 y = _mm256_mul_ps(x, cdf);
        __m256 slope = _mm256_fmadd_ps(_mm256_mul_ps(x, density), inv_sqrt_2pi, cdf);
        if (count == 8) {
            _mm256_storeu_ps(g->y + i, y);
            if (g->slope) _mm256_storeu_ps(g->slope + i, slope);
            continue;
        }
        _mm256_storeu_ps(ys, y);
        _mm256_storeu_ps(slopes, slope);
        for (int64_t j = 0; j < count; j++) {
            g->y[i + j] = ys[j];
            if (g->slope) g->slope[i + j] = slopes[j];
        }
    }
}

/* y (n) = GELU(x) (the exact, erf form) and, unless slope is NULL, slope (n) = GELU'(x); split
 * over ``threads`` OpenMP threads as the attention is. */
void rnn2gpt_gelu(const float *x, float *y, float *slope, int64_t n, int64_t threads) {
    GeluTask task = {x, y, slope, n};
    /* Parts of at least 16k elements: a smaller one costs more to hand over than to compute. */
    const int64_t parts = parts_for(n / 16384, threads);
#pragma omp parallel for num_threads(parts) schedule(static, 1)
    for (int64_t part = 0; part < parts; part++) gelu_part(&task, part, parts);
}

/* out[r][j] = sum_d x[r][d] m[d][j] for rows r < rows (at most 4; row r of x at x + r x_stride,
 * of out at out + r out_stride) and j < count, m (dim, stride) row-major: rows of x times a matrix
 * kept transposed. Each load of m serves the four rows, eight outputs a vector; the lanes of the
 * last vector past count are computed too (out's rows must hold count rounded up to 8). */
static void rows_times_columns(const float *x, int64_t x_stride, int64_t rows, const float *m,
                               int64_t dim, int64_t stride, int64_t count, float *out,
                               int64_t out_stride) {
    const float *x1 = x + (rows > 1 ? x_stride : 0), *x2 = x + (rows > 2 ? 2 * x_stride : 0);
    const float *x3 = x + (rows > 3 ? 3 * x_stride : 0);
    int64_t j = 0;
    /* Sixteen outputs of each row at a time: eight independent FMA chains hide the FMA's
     * latency (four would wait on it), and each broadcast of x serves two vectors of m. */
    for (; j + 16 <= count; j += 16) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        for (int64_t d = 0; d < dim; d++) {
            __m256 ma = _mm256_loadu_ps(m + d * stride + j), mb = _mm256_loadu_ps(m + d * stride + j + 8);
            __m256 x0d = _mm256_set1_ps(x[d]), x1d = _mm256_set1_ps(x1[d]);
            __m256 x2d = _mm256_set1_ps(x2[d]), x3d = _mm256_set1_ps(x3[d]);
            a0 = _mm256_fmadd_ps(x0d, ma, a0);
            b0 = _mm256_fmadd_ps(x0d, mb, b0);
            a1 = _mm256_fmadd_ps(x1d, ma, a1);
            b1 = _mm256_fmadd_ps(x1d, mb, b1);
            a2 = _mm256_fmadd_ps(x2d, ma, a2);
            b2 = _mm256_fmadd_ps(x2d, mb, b2);
            a3 = _mm256_fmadd_ps(x3d, ma, a3);
            b3 = _mm256_fmadd_ps(x3d, mb, b3);
        }
        __m256 sums[4][2] = {{a0, b0}, {a1, b1}, {a2, b2}, {a3, b3}};
        for (int64_t r = 0; r < rows; r++) {
            _mm256_storeu_ps(out + r * out_stride + j, sums[r][0]);
            _mm256_storeu_ps(out + r * out_stride + j + 8, sums[r][1]);
        }
    }
    for (; j < count; j += 8) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t d = 0; d < dim; d++) {
            __m256 md = _mm256_loadu_ps(m + d * stride + j);
            a0 = _mm256_fmadd_ps(_mm256_set1_ps(x[d]), md, a0);
            a1 = _mm256_fmadd_ps(_mm256_set1_ps(x1[d]), md, a1);
            a2 = _mm256_fmadd_ps(_mm256_set1_ps(x2[d]), md, a2);
            a3 = _mm256_fmadd_ps(_mm256_set1_ps(x3[d]), md, a3);
        }
        __m256 sums[4] = {a0, a1, a2, a3};
        for (int64_t r = 0; r < rows; r++) _mm256_storeu_ps(out + r * out_stride + j, sums[r]);
    }
}

/* Up to four weighted sums of the same rows at once: out_r (dim) = factor_r sum_{j < count}
 * w_r[j] v_j for r < rows, where w_r = w + r w_stride, out_r = out + r out_stride, v_j = v + j
 * v_stride, and factor_r = factors[r] (factors NULL: 1). Each load of v serves the four rows (a
 * row at a time loads every v_j once per row): sixteen features of four rows, eight FMA chains,
 * per pass over j. Rows past ``rows`` repeat row 0 and are not stored. */
static void weighted_rows_four(const float *w, int64_t w_stride, int64_t rows, int64_t count,
                               const float *v, int64_t v_stride, int64_t dim, float *out,
                               int64_t out_stride, const float *factors) {
    const float *w0 = w, *w1 = w + (rows > 1 ? w_stride : 0), *w2 = w + (rows > 2 ? 2 * w_stride : 0);
    const float *w3 = w + (rows > 3 ? 3 * w_stride : 0);
    float scale[4] = {1.0f, 1.0f, 1.0f, 1.0f};
    for (int64_t r = 0; factors && r < rows; r++) scale[r] = factors[r];
    int64_t d = 0;
    for (; d + 16 <= dim; d += 16) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        const float *vj = v + d;
        for (int64_t j = 0; j < count; j++, vj += v_stride) {
            const __m256 va = _mm256_loadu_ps(vj), vb = _mm256_loadu_ps(vj + 8);
            __m256 x = _mm256_broadcast_ss(w0 + j);
            a0 = _mm256_fmadd_ps(x, va, a0), b0 = _mm256_fmadd_ps(x, vb, b0);
            x = _mm256_broadcast_ss(w1 + j);
            a1 = _mm256_fmadd_ps(x, va, a1), b1 = _mm256_fmadd_ps(x, vb, b1);
            x = _mm256_broadcast_ss(w2 + j);
            a2 = _mm256_fmadd_ps(x, va, a2), b2 = _mm256_fmadd_ps(x, vb, b2);
            x = _mm256_broadcast_ss(w3 + j);
            a3 = _mm256_fmadd_ps(x, va, a3), b3 = _mm256_fmadd_ps(x, vb, b3);
        }
        const __m256 sums[4][2] = {{a0, b0}, {a1, b1}, {a2, b2}, {a3, b3}};
        for (int64_t r = 0; r < rows; r++) {
            const __m256 f = _mm256_set1_ps(scale[r]);
            _mm256_storeu_ps(out + r * out_stride + d, _mm256_mul_ps(sums[r][0], f));
            _mm256_storeu_ps(out + r * out_stride + d + 8, _mm256_mul_ps(sums[r][1], f));
        }
    }
    for (; d + 8 <= dim; d += 8) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t j = 0; j < count; j++) {
            const __m256 vd = _mm256_loadu_ps(v + j * v_stride + d);
            a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(w0 + j), vd, a0);
            a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(w1 + j), vd, a1);
            a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(w2 + j), vd, a2);
            a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(w3 + j), vd, a3);
        }
        const __m256 sums[4] = {a0, a1, a2, a3};
        for (int64_t r = 0; r < rows; r++)
            _mm256_storeu_ps(out + r * out_stride + d, _mm256_mul_ps(sums[r], _mm256_set1_ps(scale[r])));
    }
    for (; d < dim; d++)
        for (int64_t r = 0; r < rows; r++) {
            float a = 0.0f;
            for (int64_t j = 0; j < count; j++) a += w[r * w_stride + j] * v[j * v_stride + d];
            out[r * out_stride + d] = a * scale[r];
        }
}

/* out0 (dim) = sum_{i < count} w[i][0] v_i and out1 (dim) = sum_i w[i][1] v_i, w[i] = w + i
 * w_stride, v_i = v + i v_stride: two weighted sums of the same rows (two columns of a matrix of
 * weights), each row load serving both. */
static void weighted_rows_two(const float *w, int64_t w_stride, int64_t count, const float *v,
                              int64_t v_stride, int64_t dim, float *out0, float *out1) {
    int64_t d = 0;
    for (; d + 32 <= dim; d += 32) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        for (int64_t i = 0; i < count; i++) {
            const float *vi = v + i * v_stride + d;
            __m256 v0 = _mm256_loadu_ps(vi), v1 = _mm256_loadu_ps(vi + 8);
            __m256 v2 = _mm256_loadu_ps(vi + 16), v3 = _mm256_loadu_ps(vi + 24);
            __m256 wa = _mm256_set1_ps(w[i * w_stride]), wb = _mm256_set1_ps(w[i * w_stride + 1]);
            a0 = _mm256_fmadd_ps(wa, v0, a0);
            a1 = _mm256_fmadd_ps(wa, v1, a1);
            a2 = _mm256_fmadd_ps(wa, v2, a2);
            a3 = _mm256_fmadd_ps(wa, v3, a3);
            b0 = _mm256_fmadd_ps(wb, v0, b0);
            b1 = _mm256_fmadd_ps(wb, v1, b1);
            b2 = _mm256_fmadd_ps(wb, v2, b2);
            b3 = _mm256_fmadd_ps(wb, v3, b3);
        }
        _mm256_storeu_ps(out0 + d, a0);
        _mm256_storeu_ps(out0 + d + 8, a1);
        _mm256_storeu_ps(out0 + d + 16, a2);
        _mm256_storeu_ps(out0 + d + 24, a3);
        _mm256_storeu_ps(out1 + d, b0);
        _mm256_storeu_ps(out1 + d + 8, b1);
        _mm256_storeu_ps(out1 + d + 16, b2);
        _mm256_storeu_ps(out1 + d + 24, b3);
    }
    for (; d + 8 <= dim; d += 8) {
        __m256 a0 = _mm256_setzero_ps(), b0 = a0;
        for (int64_t i = 0; i < count; i++) {
            __m256 vi = _mm256_loadu_ps(v + i * v_stride + d);
            a0 = _mm256_fmadd_ps(_mm256_set1_ps(w[i * w_stride]), vi, a0);
            b0 = _mm256_fmadd_ps(_mm256_set1_ps(w[i * w_stride + 1]), vi, b0);
        }
        _mm256_storeu_ps(out0 + d, a0);
        _mm256_storeu_ps(out1 + d, b0);
    }
    for (; d < dim; d++) {
        float a = 0.0f, b = 0.0f;
        for (int64_t i = 0; i < count; i++) {
            a += w[i * w_stride] * v[i * v_stride + d];
            b += w[i * w_stride + 1] * v[i * v_stride + d];
        }
        out0[d] = a;
        out1[d] = b;
    }
}

/* y (n) *= factor. */
static void scale_row(float *y, int64_t n, float factor) {
    const __m256 f = _mm256_set1_ps(factor);
    int64_t d = 0;
    for (; d + 8 <= n; d += 8) _mm256_storeu_ps(y + d, _mm256_mul_ps(_mm256_loadu_ps(y + d), f));
    for (; d < n; d++) y[d] *= factor;
}

/* out (8 x 8, rows out_stride apart) = the transpose of in (8 x 8, rows in_stride apart). */
static void transpose_8x8(const float *in, int64_t in_stride, float *out, int64_t out_stride) {
    __m256 r[8], u[8], v[8];
    for (int k = 0; k < 8; k++) r[k] = _mm256_loadu_ps(in + k * in_stride);
    for (int k = 0; k < 8; k += 2) {
        u[k] = _mm256_unpacklo_ps(r[k], r[k + 1]);
        u[k + 1] = _mm256_unpackhi_ps(r[k], r[k + 1]);
    }
    for (int k = 0; k < 8; k += 4) {
        v[k] = _mm256_shuffle_ps(u[k], u[k + 2], 0x44);
        v[k + 1] = _mm256_shuffle_ps(u[k], u[k + 2], 0xEE);
        v[k + 2] = _mm256_shuffle_ps(u[k + 1], u[k + 3], 0x44);
        v[k + 3] = _mm256_shuffle_ps(u[k + 1], u[k + 3], 0xEE);
    }
    for (int k = 0; k < 4; k++) {
        _mm256_storeu_ps(out + k * out_stride, _mm256_permute2f128_ps(v[k], v[k + 4], 0x20));
        _mm256_storeu_ps(out + (k + 4) * out_stride, _mm256_permute2f128_ps(v[k], v[k + 4], 0x31));
    }
}

/* The (T, D) slice of one head of a (B * T, width) matrix, transposed into out (D, stride). */
static void transpose_head(const float *src, int64_t width, int64_t T, int64_t D, int64_t stride,
                           float *out) {
    int64_t t0 = 0, d0 = 0;
    /* Whole 8 x 8 blocks in registers (a scalar copy writes each element to another row of out). */
    for (; t0 + 8 <= T; t0 += 8)
        for (d0 = 0; d0 + 8 <= D; d0 += 8) transpose_8x8(src + t0 * width + d0, width, out + d0 * stride + t0, stride);
    for (int64_t t = 0; t < T; t++) /* what the blocks left: the last T % 8 rows, D % 8 columns */
        for (int64_t d = t < t0 ? D - D % 8 : 0; d < D; d++) out[d * stride + t] = src[t * width + d];
    for (int64_t d = 0; d < D; d++)
        for (int64_t t = T; t < stride; t++) out[d * stride + t] = 0.0f;
}

typedef struct {
    const float *qkv; /* (B, T, 3C): q | k | v, head h at columns h D .. h D + D - 1 of each */
    float *y;         /* (B, T, C) */
    float *stats;     /* (B, H, T, 2): each query's largest scaled score and 1 / its softmax sum */
    const float *dy;  /* backward: (B, T, C) */
    float *dqkv;      /* backward: (B, T, 3C) */
    int64_t batch, steps, heads, dim;
} CausalTask;

static int64_t padded8(int64_t n) { return (n + 7) / 8 * 8; }

/* Scratch floats a (row, head) pair needs: two (D, stride) transposed heads and two (T, stride)
 * matrices. */
static int64_t causal_scratch(int64_t T, int64_t D) {
    return (2 * D + 2 * T) * padded8(T);
}

/* Row i of softmax(scores) in place, from its raw scores q_i . k_j (j <= i), in one pass:
 * e_j = exp(scale q_i . k_j - largest), lanes past i zeroed up to the next multiple of 8.
 * With stats NULL, the largest scaled score and 1 / sum_j e_j are computed, stored in found
 * (2), and the row is left unnormalized: the caller scales what it makes of the row instead
 * (one multiplication per output rather than a pass over the row). Given stats, they are used
 * as they are and the row is normalized: the backward recomputes the forward's e_j to the bit.
 * The largest is scale times the largest raw score (the same float: rounding keeps order),
 * found with whole vectors. */
static void causal_probabilities(float *row, int64_t i, float scale, const float *stats,
                                 float *found) {
    const int64_t vectors = (i + 8) / 8, last = vectors - 1;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 seen = _mm256_castsi256_ps( /* the last vector's lanes j <= i */
        _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(i + 1 - 8 * last)), lane));
    float best;
    if (stats) {
        best = stats[0];
    } else {
        __m256 most = _mm256_set1_ps(-INFINITY);
        for (int64_t v = 0; v < last; v++) most = _mm256_max_ps(most, _mm256_loadu_ps(row + 8 * v));
        most = _mm256_max_ps(most, _mm256_blendv_ps(_mm256_set1_ps(-INFINITY),
                                                      _mm256_loadu_ps(row + 8 * last), seen));
        __m128 half = _mm_max_ps(_mm256_castps256_ps128(most), _mm256_extractf128_ps(most, 1));
        half = _mm_max_ps(half, _mm_movehl_ps(half, half));
        half = _mm_max_ss(half, _mm_movehdup_ps(half));
        best = _mm_cvtss_f32(half) * scale;
    }
    const __m256 scale8 = _mm256_set1_ps(scale), shift = _mm256_set1_ps(best);
    const __m256 inverse8 = _mm256_set1_ps(stats ? stats[1] : 1.0f);
    __m256 total8 = _mm256_setzero_ps();
    for (int64_t v = 0; v < vectors; v++) {
        __m256 scaled = _mm256_mul_ps(_mm256_loadu_ps(row + 8 * v), scale8);
        __m256 e = exp_nonpositive(_mm256_min_ps(_mm256_sub_ps(scaled, shift), _mm256_setzero_ps()));
        if (v == last) e = _mm256_and_ps(e, seen);
        if (stats) {
            _mm256_storeu_ps(row + 8 * v, _mm256_mul_ps(e, inverse8));
        } else {
            total8 = _mm256_add_ps(total8, e);
            _mm256_storeu_ps(row + 8 * v, e);
        }
    }
    if (found) {
        found[0] = best;
        found[1] = 1.0f / sum_lanes(total8);
    }
}

/* scores (T, stride): row i holds q_i . k_j for j <= i (and more up to its next multiple of 8),
 * four queries at a time; keys_t: the head's keys transposed (D, stride). */
static void causal_scores(const float *q, int64_t W, const float *k, int64_t T, int64_t D,
                          float *keys_t, float *scores) {
    const int64_t stride = padded8(T);
    transpose_head(k, W, T, D, stride, keys_t);
    for (int64_t i = 0; i < T; i += 4) {
        int64_t rows = T - i < 4 ? T - i : 4;
        rows_times_columns(q + i * W, W, rows, keys_t, D, stride, i + rows, scores + i * stride, stride);
    }
}

/* Forward of one (row, head) pair: s(i, j) = q_i . k_j / sqrt(D) for j <= i, p = softmax over
 * j, y_i = sum_j p(i, j) v_j; each query's largest score and 1 / sum go to stats. */
static void causal_forward_pair(const CausalTask *c, int64_t pair, float *scratch) {
    const int64_t T = c->steps, D = c->dim, C = c->heads * D, W = 3 * C, stride = padded8(T);
    const float scale = 1.0f / sqrtf((float)D);
    const int64_t b = pair / c->heads, h = pair % c->heads;
    const float *q = c->qkv + b * T * W + h * D, *k = q + C, *v = q + 2 * C;
    float *keys_t = scratch, *probs = keys_t + 2 * D * stride;
    causal_scores(q, W, k, T, D, keys_t, probs);
    /* Four queries at a time (the first a multiple of 4, so the lanes of row i past i that the
     * block reads, up to its last query, are zeros causal_probabilities wrote). */
    for (int64_t i0 = 0; i0 < T; i0 += 4) {
        const int64_t rows = T - i0 < 4 ? T - i0 : 4;
        float *found = c->stats + (pair * T + i0) * 2, inverse[4];
        for (int64_t r = 0; r < rows; r++) {
            causal_probabilities(probs + (i0 + r) * stride, i0 + r, scale, NULL, found + 2 * r);
            inverse[r] = found[2 * r + 1];
        }
        weighted_rows_four(probs + i0 * stride, stride, rows, i0 + rows, v, W, D,
                           c->y + (b * T + i0) * C + h * D, C, inverse);
    }
}

/* Backward of one (row, head) pair, recomputing p from q, k and the saved stats (cheaper than
 * keeping p: it would be written and read back from memory):
 * dv_j = sum_i p(i, j) dy_i; dp(i, j) = dy_i . v_j; ds(i, j) = p(i, j) (dp(i, j) - sum_j' p dp);
 * dq_i = sum_j ds(i, j) k_j / sqrt(D); dk_j = sum_i ds(i, j) q_i / sqrt(D). */
static void causal_backward_pair(const CausalTask *c, int64_t pair, float *scratch) {
    const int64_t T = c->steps, D = c->dim, C = c->heads * D, W = 3 * C, stride = padded8(T);
    const float scale = 1.0f / sqrtf((float)D);
    const int64_t b = pair / c->heads, h = pair % c->heads;
    const float *q = c->qkv + b * T * W + h * D, *k = q + C, *v = q + 2 * C;
    float *dq = c->dqkv + b * T * W + h * D, *dk = dq + C, *dv = dq + 2 * C;
    const float *dy = c->dy + b * T * C + h * D;
    float *keys_t = scratch, *values_t = keys_t + D * stride, *probs = values_t + D * stride;
    float *ds = probs + T * stride;
    causal_scores(q, W, k, T, D, keys_t, probs);
    transpose_head(v, W, T, D, stride, values_t);
    for (int64_t i = 0; i < T; i += 4) { /* dp, four rows at a time */
        int64_t rows = T - i < 4 ? T - i : 4;
        rows_times_columns(dy + i * C, C, rows, values_t, D, stride, i + rows, ds + i * stride, stride);
    }
    const __m256 scale8 = _mm256_set1_ps(scale);
    for (int64_t i = 0; i < T; i++) {
        float *p = probs + i * stride, *row = ds + i * stride;
        causal_probabilities(p, i, scale, c->stats + (pair * T + i) * 2, NULL);
        /* Whole vectors up to i: p is zero past i there, and dp finite (rows_times_columns
         * computed those lanes), so they add nothing to the sum and stay zero in ds. */
        const int64_t vectors = (i + 8) / 8;
        __m256 sum = _mm256_setzero_ps();
        for (int64_t v = 0; v < vectors; v++)
            sum = _mm256_fmadd_ps(_mm256_loadu_ps(p + 8 * v), _mm256_loadu_ps(row + 8 * v), sum);
        const __m256 weighted = _mm256_set1_ps(sum_lanes(sum));
        for (int64_t v = 0; v < vectors; v++) {
            __m256 dp = _mm256_sub_ps(_mm256_loadu_ps(row + 8 * v), weighted);
            _mm256_storeu_ps(row + 8 * v, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(p + 8 * v), dp), scale8));
        }
        for (int64_t j = 8 * vectors; j < stride; j++) p[j] = row[j] = 0.0f; /* keys i never saw */
        if (i % 4 == 3 || i == T - 1) { /* dq of the block of four queries that ends here */
            const int64_t i0 = i - i % 4;
            weighted_rows_four(ds + i0 * stride, stride, i + 1 - i0, i + 1, k, W, D, dq + i0 * W, W, NULL);
        }
    }
    /* Columns, two keys at a time: the queries i >= j saw key j (key j + 1's weight at i = j is
     * zero). dv_j = sum_i p(i, j) dy_i, dk_j = sum_i ds(i, j) q_i. */
    int64_t j = 0;
    /* dv first, then dk: each loop's operands (p and dy; ds and q) fit in L1 together. */
    for (j = 0; j + 2 <= T; j += 2)
        weighted_rows_two(probs + j * stride + j, stride, T - j, dy + j * C, C, D, dv + j * W,
                          dv + (j + 1) * W);
    for (j = 0; j + 2 <= T; j += 2)
        weighted_rows_two(ds + j * stride + j, stride, T - j, q + j * W, W, D, dk + j * W,
                          dk + (j + 1) * W);
    if (j < T) { /* the last key of an odd T: only the last query saw it */
        weighted_rows_four(probs + j * stride + j, stride, 1, 1, dy + j * C, C, D, dv + j * W, W, NULL);
        weighted_rows_four(ds + j * stride + j, stride, 1, 1, q + j * W, W, D, dk + j * W, W, NULL);
    }
}

/* The pairs [begin, end) of a part. */
static void causal_part(const CausalTask *c, int64_t part, int64_t parts, int backward,
                        float *scratch) {
    int64_t begin, end;
    share(c->batch * c->heads, part, parts, &begin, &end);
    for (int64_t pair = begin; pair < end; pair++)
        if (backward)
            causal_backward_pair(c, pair, scratch);
        else
            causal_forward_pair(c, pair, scratch);
}

/* The pairs of (B x H) split over ``threads`` OpenMP threads: PyTorch's own team, whose threads
 * are still spinning from the last matrix product (a pool of our own would fight them for the
 * cores). */
static int causal_run(const CausalTask *task, int backward, int64_t threads) {
    const int64_t pairs = task->batch * task->heads;
    int64_t parts = threads < pairs ? threads : pairs, size = causal_scratch(task->steps, task->dim);
    parts = parts < 1 ? 1 : parts;
    float *scratch = malloc(sizeof(float) * (size_t)(parts * size));
    if (!scratch) return -1;
#pragma omp parallel for num_threads(parts) schedule(static, 1)
    for (int64_t part = 0; part < parts; part++)
        causal_part(task, part, parts, backward, scratch + part * size);
    free(scratch);
    return 0;
}

/* Causal self-attention of a fresh sequence: qkv (B, T, 3C) -> y (B, T, C), with what the
 * backward needs to recompute the probabilities in stats (B, H, T, 2). Returns 0, or -1 if out
 * of memory. */
int rnn2gpt_causal_attention(const float *qkv, float *y, float *stats, int64_t batch,
                             int64_t steps, int64_t heads, int64_t dim, int64_t threads) {
    CausalTask task = {qkv, y, stats, NULL, NULL, batch, steps, heads, dim};
    return causal_run(&task, 0, threads);
}

/* Its backward: dy (B, T, C) -> dqkv (B, T, 3C), every element written. */
int rnn2gpt_causal_attention_backward(const float *qkv, const float *stats, const float *dy,
                                      float *dqkv, int64_t batch, int64_t steps, int64_t heads,
                                      int64_t dim, int64_t threads) {
    CausalTask task = {qkv, NULL, (float *)stats, dy, dqkv, batch, steps, heads, dim};
    return causal_run(&task, 1, threads);
}

/* ------------------------------------------------------------------ AdamW with clipping
 *
 * The optimizer's step over every parameter tensor in two C calls (training/native_adamw.py):
 * the gradients' squared norm, for clipping, and AdamW's update with the clipping factor folded
 * in. PyTorch's clip_grad_norm_ and fused AdamW took 1.1 and 1.2 ms of a 52 ms nanoGPT-size step
 * on an AMD EPYC: a norm, a stack and a multiplication per tensor, then the update. Both split
 * the tensors' elements in blocks of BLOCK over ``threads`` OpenMP threads; the norm adds the
 * blocks' sums in one fixed order, so it has the same bits for any thread count. */

#define BLOCK 16384

typedef struct {
    const int64_t *sizes;
    int64_t count, blocks;
    int64_t *first_block; /* (count + 1): tensor i's blocks are [first_block[i], first_block[i + 1]) */
} Blocks;

/* Fill b->first_block (allocated here; the caller frees it). Returns -1 if out of memory. */
static int blocks_of(const int64_t *sizes, int64_t count, Blocks *b) {
    b->sizes = sizes;
    b->count = count;
    b->first_block = malloc(sizeof(int64_t) * (size_t)(count + 1));
    if (!b->first_block) return -1;
    b->first_block[0] = 0;
    for (int64_t i = 0; i < count; i++) b->first_block[i + 1] = b->first_block[i] + (sizes[i] + BLOCK - 1) / BLOCK;
    b->blocks = b->first_block[count];
    return 0;
}

/* The tensor holding block ``block`` and the block's elements [*begin, *end) in it. */
static int64_t block_place(const Blocks *b, int64_t block, int64_t *begin, int64_t *end) {
    int64_t low = 0, high = b->count - 1; /* the last tensor whose first block is <= block */
    while (low < high) {
        int64_t middle = (low + high + 1) / 2;
        if (b->first_block[middle] <= block) low = middle; else high = middle - 1;
    }
    *begin = (block - b->first_block[low]) * BLOCK;
    *end = *begin + BLOCK < b->sizes[low] ? *begin + BLOCK : b->sizes[low];
    return low;
}

/* task(context, tensor, block, begin, end) for every block of b: its tensor and its elements
 * [begin, end) there; the blocks shared over up to ``threads`` OpenMP threads. */
typedef void (*BlockTask)(const void *context, int64_t tensor, int64_t block, int64_t begin, int64_t end);

static void for_each_block(const Blocks *b, int64_t threads, BlockTask task, const void *context) {
    int64_t parts = threads < b->blocks ? threads : b->blocks;
    parts = parts < 1 ? 1 : parts;
#pragma omp parallel for num_threads(parts) schedule(static, 1)
    for (int64_t part = 0; part < parts; part++) {
        int64_t first, last;
        share(b->blocks, part, parts, &first, &last);
        for (int64_t block = first; block < last; block++) {
            int64_t begin, end, tensor = block_place(b, block, &begin, &end);
            task(context, tensor, block, begin, end);
        }
    }
}

typedef struct {
    const float *const *tensors;
    double *sums; /* one per block */
} NormTask;

static void norm_block(const void *context, int64_t tensor, int64_t block, int64_t begin, int64_t end) {
    const NormTask *t = context;
    const float *x = t->tensors[tensor];
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t j = begin;
    for (; j + 32 <= end; j += 32) {
        __m256 x0 = _mm256_loadu_ps(x + j), x1 = _mm256_loadu_ps(x + j + 8);
        __m256 x2 = _mm256_loadu_ps(x + j + 16), x3 = _mm256_loadu_ps(x + j + 24);
        a0 = _mm256_fmadd_ps(x0, x0, a0);
        a1 = _mm256_fmadd_ps(x1, x1, a1);
        a2 = _mm256_fmadd_ps(x2, x2, a2);
        a3 = _mm256_fmadd_ps(x3, x3, a3);
    }
    double sum = sum_lanes(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; j < end; j++) sum += (double)x[j] * x[j];
    t->sums[block] = sum;
}

/* sum over i < count and j < sizes[i] of tensors[i][j]^2, or -1 if out of memory. */
double rnn2gpt_squared_norm(const float *const *tensors, const int64_t *sizes, int64_t count,
                            int64_t threads) {
    Blocks b;
    if (blocks_of(sizes, count, &b) != 0) return -1.0;
    double *sums = malloc(sizeof(double) * (size_t)(b.blocks + 1));
    if (!sums) {
        free(b.first_block);
        return -1.0;
    }
    NormTask task = {tensors, sums};
    for_each_block(&b, threads, norm_block, &task);
    double total = 0.0;
    for (int64_t block = 0; block < b.blocks; block++) total += sums[block];
    free(sums);
    free(b.first_block);
    return total;
}

typedef struct {
    float *const *params, *const *exp_avgs, *const *exp_avg_sqs;
    const float *const *grads;
    const float *step_sizes, *root_corrections; /* per tensor */
    float decay, scale, keep1, beta2, keep2, eps;
} AdamTask;

static void adamw_block(const void *context, int64_t i, int64_t block, int64_t begin, int64_t end) {
    const AdamTask *t = context;
    (void)block;
    float *p = t->params[i], *m = t->exp_avgs[i], *v = t->exp_avg_sqs[i];
    const float *g = t->grads[i];
    const __m256 decay8 = _mm256_set1_ps(t->decay), scale8 = _mm256_set1_ps(t->scale);
    const __m256 keep1_8 = _mm256_set1_ps(t->keep1), b2_8 = _mm256_set1_ps(t->beta2);
    const __m256 keep2_8 = _mm256_set1_ps(t->keep2), eps8 = _mm256_set1_ps(t->eps);
    const __m256 step8 = _mm256_set1_ps(t->step_sizes[i]), root8 = _mm256_set1_ps(t->root_corrections[i]);
    int64_t j = begin;
    for (; j + 8 <= end; j += 8) {
        __m256 gj = _mm256_mul_ps(_mm256_loadu_ps(g + j), scale8);
        __m256 pj = _mm256_mul_ps(_mm256_loadu_ps(p + j), decay8);
        __m256 mj = _mm256_loadu_ps(m + j);
        mj = _mm256_fmadd_ps(keep1_8, _mm256_sub_ps(gj, mj), mj);
        __m256 vj = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(v + j), b2_8),
                                  _mm256_mul_ps(keep2_8, _mm256_mul_ps(gj, gj)));
        __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vj), root8), eps8);
        pj = _mm256_sub_ps(pj, _mm256_mul_ps(step8, _mm256_div_ps(mj, denom)));
        _mm256_storeu_ps(m + j, mj);
        _mm256_storeu_ps(v + j, vj);
        _mm256_storeu_ps(p + j, pj);
    }
    for (; j < end; j++) {
        float gj = g[j] * t->scale, pj = p[j] * t->decay, mj = m[j];
        mj = fmaf(t->keep1, gj - mj, mj);
        float vj = v[j] * t->beta2 + t->keep2 * (gj * gj);
        float denom = sqrtf(vj) / t->root_corrections[i] + t->eps;
        p[j] = pj - t->step_sizes[i] * (mj / denom);
        m[j] = mj;
        v[j] = vj;
    }
}

/* One AdamW step (decoupled weight decay, PyTorch's AdamW and its fused kernel's arithmetic) of
 * ``count`` float32 tensors of sizes[i] elements, the gradients taken times grad_scale (the
 * clipping factor; 1 for none). steps[i] points at tensor i's step count (a float), incremented
 * here first. Per element, with g = grad * grad_scale:
 *   p *= 1 - lr wd;  m += (1 - beta1) (g - m);  v = beta2 v + (1 - beta2) g^2;
 *   p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps).
 * Returns 0, or -1 if out of memory. */
int rnn2gpt_adamw(float *const *params, const float *const *grads, float *const *exp_avgs,
                  float *const *exp_avg_sqs, float *const *steps, const int64_t *sizes,
                  int64_t count, double lr, double beta1, double beta2, double eps,
                  double weight_decay, double grad_scale, int64_t threads) {
    Blocks b;
    if (blocks_of(sizes, count, &b) != 0) return -1;
    float *step_sizes = malloc(sizeof(float) * (size_t)(2 * count + 1)), *root_corrections = step_sizes + count;
    if (!step_sizes) {
        free(b.first_block);
        return -1;
    }
    for (int64_t i = 0; i < count; i++) {
        double t = (double)(steps[i][0] += 1.0f);
        step_sizes[i] = (float)(lr / (1.0 - pow(beta1, t)));
        root_corrections[i] = (float)sqrt(1.0 - pow(beta2, t));
    }
    AdamTask task = {
        params, exp_avgs, exp_avg_sqs, grads, step_sizes, root_corrections,
        (float)(1.0 - lr * weight_decay), (float)grad_scale, (float)(1.0 - beta1), (float)beta2,
        (float)(1.0 - beta2), (float)eps,
    };
    for_each_block(&b, threads, adamw_block, &task);
    free(step_sizes);
    free(b.first_block);
    return 0;
}

/* ------------------------------------------------------------------ LayerNorm
 *
 * A GPT block's two LayerNorms, forward and backward, for the blocks function
 * (models/native_blocks.py). ATen's kernels took 2 ms of a 52 ms nanoGPT-size step on an AMD
 * EPYC, 16 calls of 768 x 128: about 50 us each where the arithmetic is a few. The backward adds
 * the residual stream's gradient in the same pass. Rows are split over ``threads`` OpenMP
 * threads; the weight and bias gradients are summed over chunks of NORM_ROWS rows, then over the
 * chunks in order, so every result has the same bits for any thread count. */

#define NORM_ROWS 32

/* sum of x[0..n) */
static inline float row_sum(const float *x, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(x + j));
        a1 = _mm256_add_ps(a1, _mm256_loadu_ps(x + j + 8));
    }
    float s = sum_lanes(_mm256_add_ps(a0, a1));
    for (; j < n; j++) s += x[j];
    return s;
}

/* y (rows, width) = (x - mean) * rstd * weight + bias per row (weight or bias may be NULL),
 * with each row's mean and rstd = 1 / sqrt(variance + eps) written to mean (rows) and rstd
 * (rows). Two passes over each row: the mean, then the variance around it. */
void rnn2gpt_layer_norm(const float *x, const float *weight, const float *bias, float *y,
                        float *mean, float *rstd, int64_t rows, int64_t width, double eps,
                        int64_t threads) {
    const int64_t parts = parts_for(rows / NORM_ROWS, threads);
#pragma omp parallel for num_threads(parts) schedule(static, 1)
    for (int64_t part = 0; part < parts; part++) {
        int64_t begin, end;
        share(rows, part, parts, &begin, &end);
        for (int64_t r = begin; r < end; r++) {
            const float *xr = x + r * width;
            float *yr = y + r * width;
            const float mu = row_sum(xr, width) / (float)width;
            const __m256 mu8 = _mm256_set1_ps(mu);
            __m256 v0 = _mm256_setzero_ps(), v1 = v0;
            int64_t j = 0;
            for (; j + 16 <= width; j += 16) {
                __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(xr + j), mu8);
                __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(xr + j + 8), mu8);
                v0 = _mm256_fmadd_ps(d0, d0, v0);
                v1 = _mm256_fmadd_ps(d1, d1, v1);
            }
            float var = sum_lanes(_mm256_add_ps(v0, v1));
            for (; j < width; j++) var += (xr[j] - mu) * (xr[j] - mu);
            var /= (float)width;
            const float inv = 1.0f / sqrtf(var + (float)eps);
            mean[r] = mu;
            rstd[r] = inv;
            const __m256 inv8 = _mm256_set1_ps(inv);
            for (j = 0; j + 8 <= width; j += 8) {
                __m256 h = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(xr + j), mu8), inv8);
                if (weight) h = _mm256_mul_ps(h, _mm256_loadu_ps(weight + j));
                if (bias) h = _mm256_add_ps(h, _mm256_loadu_ps(bias + j));
                _mm256_storeu_ps(yr + j, h);
            }
            for (; j < width; j++) {
                float h = (xr[j] - mu) * inv;
                if (weight) h *= weight[j];
                if (bias) h += bias[j];
                yr[j] = h;
            }
        }
    }
}

/* The backward of rnn2gpt_layer_norm, plus the gradient that reaches x around the norm:
 *   xhat = (x - mean) rstd,  g = dy * weight (dy without weight),
 *   dx = rstd (g - mean_j(g) - xhat mean_j(g xhat)) + residual (residual may be NULL);
 *   d_weight = sum over rows of dy xhat, d_bias = sum over rows of dy (either may be NULL).
 * Returns 0, or -1 if out of memory. */
int rnn2gpt_layer_norm_backward(const float *dy, const float *x, const float *mean,
                                const float *rstd, const float *weight, const float *residual,
                                float *dx, float *d_weight, float *d_bias, int64_t rows,
                                int64_t width, int64_t threads) {
    const int64_t chunks = (rows + NORM_ROWS - 1) / NORM_ROWS;
    const int64_t parts = parts_for(chunks, threads);
    /* Per chunk: its rows' sums of dy xhat and of dy (width each); per part: a row of xhat and g. */
    const int64_t padded = padded8(width);
    float *scratch = malloc(sizeof(float) * (size_t)(2 * chunks * padded + 2 * parts * padded));
    if (!scratch) return -1;
    float *chunk_dw = scratch, *chunk_db = chunk_dw + chunks * padded, *rows_scratch = chunk_db + chunks * padded;
#pragma omp parallel for num_threads(parts) schedule(static, 1)
    for (int64_t part = 0; part < parts; part++) {
        int64_t first, last;
        share(chunks, part, parts, &first, &last);
        float *xhat = rows_scratch + part * 2 * padded, *g = xhat + padded;
        for (int64_t chunk = first; chunk < last; chunk++) {
            float *cdw = chunk_dw + chunk * padded, *cdb = chunk_db + chunk * padded;
            for (int64_t j = 0; j < width; j++) cdw[j] = cdb[j] = 0.0f;
            int64_t end = (chunk + 1) * NORM_ROWS < rows ? (chunk + 1) * NORM_ROWS : rows;
            for (int64_t r = chunk * NORM_ROWS; r < end; r++) {
                const float *xr = x + r * width, *dyr = dy + r * width;
                const __m256 mu8 = _mm256_set1_ps(mean[r]), inv8 = _mm256_set1_ps(rstd[r]);
                __m256 sg = _mm256_setzero_ps(), sgx = sg;
                int64_t j = 0;
                for (; j + 8 <= width; j += 8) {
                    __m256 h = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(xr + j), mu8), inv8);
                    __m256 d = _mm256_loadu_ps(dyr + j);
                    __m256 gj = weight ? _mm256_mul_ps(d, _mm256_loadu_ps(weight + j)) : d;
                    _mm256_storeu_ps(xhat + j, h);
                    _mm256_storeu_ps(g + j, gj);
                    sg = _mm256_add_ps(sg, gj);
                    sgx = _mm256_fmadd_ps(gj, h, sgx);
                    _mm256_storeu_ps(cdw + j, _mm256_fmadd_ps(d, h, _mm256_loadu_ps(cdw + j)));
                    _mm256_storeu_ps(cdb + j, _mm256_add_ps(d, _mm256_loadu_ps(cdb + j)));
                }
                float sum_g = sum_lanes(sg), sum_gx = sum_lanes(sgx);
                for (; j < width; j++) {
                    float h = (xr[j] - mean[r]) * rstd[r], d = dyr[j], gj = weight ? d * weight[j] : d;
                    xhat[j] = h;
                    g[j] = gj;
                    sum_g += gj;
                    sum_gx += gj * h;
                    cdw[j] += d * h;
                    cdb[j] += d;
                }
                const float mg = sum_g / (float)width, mgx = sum_gx / (float)width;
                const __m256 mg8 = _mm256_set1_ps(mg), mgx8 = _mm256_set1_ps(mgx);
                float *dxr = dx + r * width;
                const float *res = residual ? residual + r * width : NULL;
                for (j = 0; j + 8 <= width; j += 8) {
                    __m256 t = _mm256_sub_ps(_mm256_loadu_ps(g + j), mg8);
                    t = _mm256_fnmadd_ps(_mm256_loadu_ps(xhat + j), mgx8, t);
                    t = _mm256_mul_ps(t, inv8);
                    if (res) t = _mm256_add_ps(t, _mm256_loadu_ps(res + j));
                    _mm256_storeu_ps(dxr + j, t);
                }
                for (; j < width; j++) {
                    float t = (g[j] - mg - xhat[j] * mgx) * rstd[r];
                    dxr[j] = res ? t + res[j] : t;
                }
            }
        }
    }
    if (d_weight || d_bias) {
        for (int64_t j = 0; j < width; j++) {
            float sw = 0.0f, sb = 0.0f;
            for (int64_t chunk = 0; chunk < chunks; chunk++) {
                sw += chunk_dw[chunk * padded + j];
                sb += chunk_db[chunk * padded + j];
            }
            if (d_weight) d_weight[j] = sw;
            if (d_bias) d_bias[j] = sb;
        }
    }
    free(scratch);
    return 0;
}

/* ------------------------------------------------------------------ matrix products for training
 *
 * Row-major c (m, n) = op(a) (m, k) op(b) (k, n) + beta c, beta 0 or 1: the products of the
 * blocks below. Two implementations, of which rnn2gpt_use_products picks one:
 *
 * - ours: 6 x 16 tiles of c in twelve AVX2 registers, each the sum over k of a column of op(a)
 *   (six broadcasts) times a row of op(b) (two vectors). op(b) is copied into 16-column panels
 *   (k-major, so a tile reads 64 contiguous bytes per k) of PRODUCT_KC rows, each just before
 *   its tiles read it; a row-major op(a) is read in place, a transposed one copied into 6-row
 *   panels (read in place, it took a cache line per k for 24 useful bytes).
 * - the BLAS sgemm that torch.mm calls (MKL's in PyTorch's x86 builds), when rnn2gpt_set_sgemm
 *   gave one.
 *
 * Measured on an AMD EPYC (Zen 3, AVX2, 2 threads), the twelve product shapes of a nanoGPT-size
 * layer, with distinct operands for each of four layers, alternating (medians of 25 rounds):
 * ours 1.07-1.27x MKL's on the forward's shapes (c = x w^T), 1.05-1.25x on the input
 * gradients' (c = d_y w), 1.02-1.06x on the weight gradients' (c = d_y^T x): 131-160 GFLOP/s,
 * where one core's FMA units peak at about 95. Which is faster depends on the machine, so the
 * caller times both (a shape's calls inside a step scatter too much to choose by; whole passes
 * do not). */

#define PRODUCT_MR 6
#define PRODUCT_NR 16
#define PRODUCT_KC 256 /* op(b) rows per panel block: a 16-column panel is 16 KB, half of L1 */

typedef void (*Sgemm)(const char *transa, const char *transb, const int *m, const int *n,
                      const int *k, const float *alpha, const float *a, const int *lda,
                      const float *b, const int *ldb, const float *beta, float *c, const int *ldc);
static Sgemm blas_sgemm;

/* The BLAS sgemm (the Fortran interface, 32-bit integers) the products may call; NULL: none,
 * ours always run. */
void rnn2gpt_set_sgemm(void *function) { blas_sgemm = (Sgemm)function; }

/* c (6 x 16, rows ldc apart) = (add ? c : 0) + sum over k < kc of a_i[k ks] b[k][0..15], where
 * a_i = a + off[i] is row i of the tile's op(a) and b a packed 16-column panel. */
static inline void product_tile(int64_t kc, const float *restrict a, const int64_t *off,
                                int64_t ks, const float *restrict b, float *restrict c,
                                int64_t ldc, int add) {
    const int64_t o1 = off[1] - off[0], o2 = off[2] - off[0], o3 = off[3] - off[0],
                  o4 = off[4] - off[0], o5 = off[5] - off[0];
    a += off[0];
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
           c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    for (int64_t k = 0; k < kc; k++, a += ks, b += PRODUCT_NR) {
        const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
        __m256 x = _mm256_broadcast_ss(a);
        c00 = _mm256_fmadd_ps(x, b0, c00), c01 = _mm256_fmadd_ps(x, b1, c01);
        x = _mm256_broadcast_ss(a + o1);
        c10 = _mm256_fmadd_ps(x, b0, c10), c11 = _mm256_fmadd_ps(x, b1, c11);
        x = _mm256_broadcast_ss(a + o2);
        c20 = _mm256_fmadd_ps(x, b0, c20), c21 = _mm256_fmadd_ps(x, b1, c21);
        x = _mm256_broadcast_ss(a + o3);
        c30 = _mm256_fmadd_ps(x, b0, c30), c31 = _mm256_fmadd_ps(x, b1, c31);
        x = _mm256_broadcast_ss(a + o4);
        c40 = _mm256_fmadd_ps(x, b0, c40), c41 = _mm256_fmadd_ps(x, b1, c41);
        x = _mm256_broadcast_ss(a + o5);
        c50 = _mm256_fmadd_ps(x, b0, c50), c51 = _mm256_fmadd_ps(x, b1, c51);
    }
    const __m256 rows[6][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
    for (int i = 0; i < 6; i++)
        for (int h = 0; h < 2; h++) {
            float *y = c + i * ldc + 8 * h;
            _mm256_storeu_ps(y, add ? _mm256_add_ps(rows[i][h], _mm256_loadu_ps(y)) : rows[i][h]);
        }
}

/* The 16-column panel of op(b) from column j0, rows [p0, p0 + kc): out[k * 16 + j], zero past
 * column n. tb 'N': b (k, n) row-major; 'T': b (n, k). */
static void pack_panel(char tb, const float *b, int64_t ldb, int64_t p0, int64_t kc, int64_t j0,
                       int64_t n, float *out) {
    const int64_t cols = n - j0 < PRODUCT_NR ? n - j0 : PRODUCT_NR;
    if (tb == 'N' && cols == PRODUCT_NR) {
        for (int64_t k = 0; k < kc; k++) {
            const float *row = b + (p0 + k) * ldb + j0;
            _mm256_store_ps(out + k * PRODUCT_NR, _mm256_loadu_ps(row));
            _mm256_store_ps(out + k * PRODUCT_NR + 8, _mm256_loadu_ps(row + 8));
        }
    } else if (tb == 'T' && cols == PRODUCT_NR && kc % 8 == 0) {
        for (int64_t k = 0; k < kc; k += 8)
            for (int64_t h = 0; h < PRODUCT_NR; h += 8)
                transpose_8x8(b + (j0 + h) * ldb + p0 + k, ldb, out + k * PRODUCT_NR + h, PRODUCT_NR);
    } else {
        for (int64_t k = 0; k < kc; k++)
            for (int64_t j = 0; j < PRODUCT_NR; j++)
                out[k * PRODUCT_NR + j] = j >= cols    ? 0.0f
                                          : tb == 'N' ? b[(p0 + k) * ldb + j0 + j]
                                                      : b[(j0 + j) * ldb + p0 + k];
    }
}

/* The 6-row panels of a transposed op(a) (a is (k, m)) for tiles [t0, t1), rows [p0, p0 + kc):
 * out[(t - t0) 6 kc + k 6 + i], zero past row m. */
static void pack_rows(const float *a, int64_t lda, int64_t m, int64_t t0, int64_t t1, int64_t p0,
                      int64_t kc, float *out) {
    for (int64_t t = t0; t < t1; t++) {
        const int64_t i0 = t * PRODUCT_MR, rows = m - i0 < PRODUCT_MR ? m - i0 : PRODUCT_MR;
        float *o = out + (t - t0) * PRODUCT_MR * kc;
        int64_t k = 0;
        if (i0 + 8 <= m) /* 8 floats at a time: each store's last two the next one overwrites */
            for (; k + 1 < kc; k++, o += PRODUCT_MR)
                _mm256_storeu_ps(o, _mm256_loadu_ps(a + (p0 + k) * lda + i0));
        for (; k < kc; k++, o += PRODUCT_MR) {
            const float *column = a + (p0 + k) * lda + i0;
            for (int64_t i = 0; i < PRODUCT_MR; i++) o[i] = i < rows ? column[i] : 0.0f;
        }
    }
}

/* A 64-byte-aligned buffer of at least ``floats``, kept per thread and grown when needed (the
 * threads are PyTorch's OpenMP team and the caller's, which live as long as the process); NULL
 * if out of memory. */
static float *thread_buffer(int which, int64_t floats) {
    static __thread float *buffers[3];
    static __thread int64_t sizes[3];
    if (floats > sizes[which]) {
        free(buffers[which]);
        const int64_t rounded = (floats + 15) / 16 * 16;
        buffers[which] = aligned_alloc(64, (size_t)rounded * sizeof(float));
        sizes[which] = buffers[which] ? rounded : 0;
    }
    return buffers[which];
}

/* One thread's tiles [t0, t1) x panels [q0, q1) of c for op(b)'s rows [p0, p0 + kc): each panel
 * is packed just before its tiles read it, so it is still in L1. Returns -1 if out of memory. */
static int product_part(char ta, char tb, int64_t m, int64_t n, int64_t p0, int64_t kc,
                        const float *a, int64_t lda, const float *b, int64_t ldb, int add,
                        float *c, int64_t ldc, int64_t t0, int64_t t1, int64_t q0, int64_t q1) {
    float spill[PRODUCT_MR * PRODUCT_NR] __attribute__((aligned(32)));
    float *panel = thread_buffer(0, PRODUCT_NR * kc);
    if (!panel) return -1;
    const float *source = a + p0; /* row-major op(a): row i at a + i lda, read in place */
    int64_t k_stride = 1;
    if (ta == 'T') {
        float *packed = thread_buffer(1, (t1 - t0) * PRODUCT_MR * kc);
        if (!packed) return -1;
        pack_rows(a, lda, m, t0, t1, p0, kc, packed);
        source = packed, k_stride = PRODUCT_MR;
    }
    for (int64_t q = q0; q < q1; q++) {
        const int64_t j0 = q * PRODUCT_NR, cols = n - j0 < PRODUCT_NR ? n - j0 : PRODUCT_NR;
        pack_panel(tb, b, ldb, p0, kc, j0, n, panel);
        for (int64_t t = t0; t < t1; t++) {
            const int64_t i0 = t * PRODUCT_MR, rows = m - i0 < PRODUCT_MR ? m - i0 : PRODUCT_MR;
            int64_t off[PRODUCT_MR];
            for (int64_t i = 0; i < PRODUCT_MR; i++) /* past row m: repeat the last (discarded) */
                off[i] = ta == 'T' ? (t - t0) * PRODUCT_MR * kc + i
                                   : (i0 + (i < rows ? i : rows - 1)) * lda;
            float *tile = c + i0 * ldc + j0;
            if (rows == PRODUCT_MR && cols == PRODUCT_NR) {
                product_tile(kc, source, off, k_stride, panel, tile, ldc, add);
                continue;
            }
            product_tile(kc, source, off, k_stride, panel, spill, PRODUCT_NR, 0);
            for (int64_t i = 0; i < rows; i++)
                for (int64_t j = 0; j < cols; j++)
                    tile[i * ldc + j] = (add ? tile[i * ldc + j] : 0.0f) + spill[i * PRODUCT_NR + j];
        }
    }
    return 0;
}

/* Ours (see the section's comment), split over ``threads`` OpenMP threads: by rows of tiles, or
 * by panels when c has fewer tiles down than panels across. Each thread packs the panels it
 * reads (both pack every panel when the rows are split: measured, that costs less than sharing
 * one packed copy, which is written out to L3 and read back, behind a barrier). Returns 0, or -1
 * if out of memory. */
int rnn2gpt_own_product(char ta, char tb, int64_t m, int64_t n, int64_t k, const float *a,
                        int64_t lda, const float *b, int64_t ldb, float beta, float *c,
                        int64_t ldc, int64_t threads) {
    if (m <= 0 || n <= 0) return 0;
    if (k <= 0) { /* c = beta c */
        for (int64_t i = 0; i < m && beta == 0.0f; i++)
            for (int64_t j = 0; j < n; j++) c[i * ldc + j] = 0.0f;
        return 0;
    }
    const int64_t tiles = (m + PRODUCT_MR - 1) / PRODUCT_MR;
    const int64_t panels = (n + PRODUCT_NR - 1) / PRODUCT_NR;
    const int split_rows = tiles >= panels;
    const int64_t parts = parts_for(split_rows ? tiles : panels, threads);
    _Atomic int failed = 0;
#pragma omp parallel for num_threads(parts) schedule(static, 1)
    for (int64_t part = 0; part < parts; part++) {
        int64_t u0, u1;
        share(split_rows ? tiles : panels, part, parts, &u0, &u1);
        for (int64_t p0 = 0; p0 < k && !failed; p0 += PRODUCT_KC)
            if (product_part(ta, tb, m, n, p0, k - p0 < PRODUCT_KC ? k - p0 : PRODUCT_KC, a, lda,
                             b, ldb, p0 > 0 || beta != 0.0f, c, ldc, split_rows ? u0 : 0,
                             split_rows ? u1 : tiles, split_rows ? 0 : u0,
                             split_rows ? panels : u1))
                failed = 1;
    }
    return failed ? -1 : 0;
}

/* The BLAS's: row-major c = op(a) op(b) + beta c as column-major c^T = op(b)^T op(a)^T. */
static void blas_product(char ta, char tb, int64_t m, int64_t n, int64_t k, const float *a,
                         int64_t lda, const float *b, int64_t ldb, float beta, float *c,
                         int64_t ldc) {
    const int M = (int)m, N = (int)n, K = (int)k, A = (int)lda, B = (int)ldb, C = (int)ldc;
    const float one = 1.0f;
    blas_sgemm(&tb, &ta, &N, &M, &K, &one, b, &B, a, &A, &beta, c, &C);
}

/* Which products run: 1 ours (the default), 2 the BLAS's where rnn2gpt_set_sgemm gave one. The
 * blocks' caller chooses, per model shape, by timing whole passes (models/native_blocks.py). */
static _Atomic int products_used = 1;

void rnn2gpt_use_products(int which) { products_used = which; }

/* Row-major c (m, n) = op(a) op(b) + beta c (beta 0 or 1; 'T' for a matrix stored transposed;
 * rows lda, ldb, ldc floats apart), by the products chosen. Returns -1 if out of memory. */
static int product(char ta, char tb, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                   const float *b, int64_t ldb, float beta, float *c, int64_t ldc, int64_t threads) {
    if (products_used != 2 || !blas_sgemm)
        return rnn2gpt_own_product(ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc, threads);
    blas_product(ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc);
    return 0;
}

/* ------------------------------------------------------------------ a GPT's blocks for training
 *
 * The forward and backward of a GPT's blocks over a fresh sequence, a layer per call into C
 * (models/native_blocks.py wraps them as one autograd function):
 *
 *   x_mid = x + attention(ln_1(x) W_attn^T + b_attn) W_o^T + b_o
 *   out   = x_mid + GELU(ln_2(x_mid) W_fc^T + b_fc) W_mlp^T + b_mlp
 *
 * The matrix products are those of "matrix products for training" above (ours, or the BLAS
 * sgemm torch.mm calls, per shape), on PyTorch's OpenMP threads; the rest are the kernels above. Written in Python the same layer cost about 30 small PyTorch calls forward
 * and 40 backward (views, transposes, allocations, ctypes calls): about 1.5 ms of a 34 ms
 * nanoGPT-size step on an AMD EPYC. Biases and LayerNorm biases may be NULL; a weight gradient
 * that is NULL is not computed (a frozen weight). */

/* y (rows, n) = x (rows, n) (NULL: zero) + bias (n) (NULL: zero), split over threads by rows:
 * the accumulator a product with beta = 1 then adds into. */
static void rows_plus_bias(const float *x, const float *bias, float *y, int64_t rows, int64_t n,
                           int64_t threads) {
    const int64_t parts = parts_for(rows / NORM_ROWS, threads);
#pragma omp parallel for num_threads(parts) schedule(static, 1)
    for (int64_t part = 0; part < parts; part++) {
        int64_t begin, end;
        share(rows, part, parts, &begin, &end);
        for (int64_t r = begin; r < end; r++) {
            float *yr = y + r * n;
            const float *xr = x ? x + r * n : NULL;
            int64_t j = 0;
            for (; j + 8 <= n; j += 8) {
                __m256 v = xr ? _mm256_loadu_ps(xr + j) : _mm256_setzero_ps();
                if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + j));
                _mm256_storeu_ps(yr + j, v);
            }
            for (; j < n; j++) yr[j] = (xr ? xr[j] : 0.0f) + (bias ? bias[j] : 0.0f);
        }
    }
}

/* y (rows, out) = residual (rows, out; NULL: none) + x (rows, in) w^T + bias, w (out, in).
 * Returns -1 if out of memory. */
static int linear_forward(const float *x, int64_t rows, int64_t in, const float *w,
                          const float *bias, int64_t out, const float *residual, float *y,
                          int64_t threads) {
    if (residual || bias) rows_plus_bias(residual, bias, y, rows, out, threads);
    return product('N', 'T', rows, out, in, x, in, w, in, residual || bias ? 1.0f : 0.0f, y, out,
                   threads);
}

/* d_bias (n) = the sum of d_y's rows (rows, n), row by row for every column (the same bits for
 * any thread count); the columns are split over threads in whole vectors. */
static void column_sums(const float *d_y, int64_t rows, int64_t n, float *d_bias, int64_t threads) {
    const int64_t vectors = (n + 7) / 8;
    const int64_t parts = parts_for(vectors, threads);
#pragma omp parallel for num_threads(parts) schedule(static, 1)
    for (int64_t part = 0; part < parts; part++) {
        int64_t begin, end;
        share(vectors, part, parts, &begin, &end);
        for (int64_t j = begin * 8; j < end * 8 && j < n; j++) d_bias[j] = 0.0f;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t j = begin * 8; j < end * 8 && j < n; j++) d_bias[j] += d_y[r * n + j];
    }
}

/* The weight's (out, in) and bias's (out) gradients of y = x w^T + b where wanted (non-NULL):
 * d_y (rows, out), x (rows, in). Returns -1 if out of memory. */
static int linear_param_grads(const float *d_y, const float *x, int64_t rows, int64_t in,
                              int64_t out, float *d_w, float *d_b, int64_t threads) {
    if (d_b) column_sums(d_y, rows, out, d_b, threads);
    return d_w ? product('T', 'N', out, in, rows, d_y, out, x, in, 0.0f, d_w, in, threads) : 0;
}

/* y (n) *= factor (n), split over threads: the gradient through the GELU, dy times its slope. */
static void multiply(float *y, const float *factor, int64_t n, int64_t threads) {
    const int64_t parts = parts_for(n / 16384, threads);
#pragma omp parallel for num_threads(parts) schedule(static, 1)
    for (int64_t part = 0; part < parts; part++) {
        int64_t begin, end;
        share(n / 8, part, parts, &begin, &end);
        if (part == parts - 1) end = n; else end *= 8;
        int64_t i = begin * 8;
        for (; i + 8 <= end; i += 8)
            _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(y + i), _mm256_loadu_ps(factor + i)));
        for (; i < end; i++) y[i] *= factor[i];
    }
}

/* One block's parameters, in the order of native_blocks.LayerWeights (biases may be NULL). */
typedef struct {
    const float *ln_1_weight, *ln_1_bias, *c_attn_weight, *c_attn_bias, *attn_proj_weight,
        *attn_proj_bias, *ln_2_weight, *ln_2_bias, *c_fc_weight, *c_fc_bias, *mlp_proj_weight,
        *mlp_proj_bias;
} BlockWeights;

/* Their gradients, written where non-NULL. */
typedef struct {
    float *ln_1_weight, *ln_1_bias, *c_attn_weight, *c_attn_bias, *attn_proj_weight,
        *attn_proj_bias, *ln_2_weight, *ln_2_bias, *c_fc_weight, *c_fc_bias, *mlp_proj_weight,
        *mlp_proj_bias;
} BlockGrads;

/* What one block's forward writes and its backward reads (N = B T rows, C width, F inner
 * width, H heads), in the order of native_blocks.SAVED. */
typedef struct {
    float *x;                              /* (N, C) the block's input */
    float *ln_1, *ln_1_mean, *ln_1_rstd;   /* (N, C), (N), (N) */
    float *qkv;                            /* (N, 3C) */
    float *stats;                          /* (B, H, T, 2) the attention's softmax statistics */
    float *y;                              /* (N, C) the attention's output */
    float *x_mid;                          /* (N, C) after the attention's residual */
    float *ln_2, *ln_2_mean, *ln_2_rstd;   /* (N, C), (N), (N) */
    float *hidden;                         /* (N, F) GELU(c_fc(ln_2)) */
    float *slope;                          /* (N, F) GELU'(c_fc(ln_2)) */
} BlockSaved;

typedef struct {
    int64_t batch, steps, width, inner, heads, threads;
    double eps;
} BlockShape;

/* One block's forward: s->x (N, C) -> out (N, C), filling the rest of s. Returns 0, or -1 if out
 * of memory. */
int rnn2gpt_block_forward(const BlockWeights *w, const BlockSaved *s, float *out,
                          const BlockShape *shape) {
    const int64_t N = shape->batch * shape->steps, C = shape->width, F = shape->inner;
    const int64_t threads = shape->threads;
    rnn2gpt_layer_norm(s->x, w->ln_1_weight, w->ln_1_bias, s->ln_1, s->ln_1_mean, s->ln_1_rstd,
                       N, C, shape->eps, threads);
    if (linear_forward(s->ln_1, N, C, w->c_attn_weight, w->c_attn_bias, 3 * C, NULL, s->qkv,
                       threads))
        return -1;
    CausalTask task = {s->qkv, s->y, s->stats, NULL, NULL, shape->batch, shape->steps,
                       shape->heads, C / shape->heads};
    if (causal_run(&task, 0, threads) != 0 ||
        linear_forward(s->y, N, C, w->attn_proj_weight, w->attn_proj_bias, C, s->x, s->x_mid,
                       threads))
        return -1;
    rnn2gpt_layer_norm(s->x_mid, w->ln_2_weight, w->ln_2_bias, s->ln_2, s->ln_2_mean,
                       s->ln_2_rstd, N, C, shape->eps, threads);
    if (linear_forward(s->ln_2, N, C, w->c_fc_weight, w->c_fc_bias, F, NULL, s->hidden, threads))
        return -1;
    rnn2gpt_gelu(s->hidden, s->hidden, s->slope, N * F, threads); /* in place: read, then written */
    return linear_forward(s->hidden, N, F, w->mlp_proj_weight, w->mlp_proj_bias, C, s->x_mid, out,
                          threads);
}

/* One block's backward: d_out (N, C), the gradient at its output -> d_x (N, C) at its input, and
 * the parameters' gradients wanted in g. scratch: N (F + 6C) floats. Returns 0, or -1 if out of
 * memory. */
int rnn2gpt_block_backward(const BlockWeights *w, const BlockSaved *s, const BlockGrads *g,
                           const float *d_out, float *d_x, float *scratch,
                           const BlockShape *shape) {
    const int64_t N = shape->batch * shape->steps, C = shape->width, F = shape->inner;
    const int64_t threads = shape->threads;
    float *d_pre = scratch, *d_norm = d_pre + N * F, *d_mid = d_norm + N * C;
    float *d_y = d_mid + N * C, *d_qkv = d_y + N * C; /* d_qkv: 3C wide */
    /* MLP: out = x_mid + GELU(ln_2 W_fc^T + b_fc) W_mlp^T + b_mlp */
    if (linear_param_grads(d_out, s->hidden, N, F, C, g->mlp_proj_weight, g->mlp_proj_bias,
                           threads) ||
        product('N', 'N', N, F, C, d_out, C, w->mlp_proj_weight, F, 0.0f, d_pre, F, threads))
        return -1;
    multiply(d_pre, s->slope, N * F, threads);
    if (linear_param_grads(d_pre, s->ln_2, N, C, F, g->c_fc_weight, g->c_fc_bias, threads) ||
        product('N', 'N', N, C, F, d_pre, F, w->c_fc_weight, C, 0.0f, d_norm, C, threads) ||
        rnn2gpt_layer_norm_backward(d_norm, s->x_mid, s->ln_2_mean, s->ln_2_rstd, w->ln_2_weight,
                                    d_out, d_mid, g->ln_2_weight, g->ln_2_bias, N, C, threads))
        return -1;
    /* Attention: x_mid = x + attention(ln_1 W_attn^T + b_attn) W_o^T + b_o */
    if (linear_param_grads(d_mid, s->y, N, C, C, g->attn_proj_weight, g->attn_proj_bias,
                           threads) ||
        product('N', 'N', N, C, C, d_mid, C, w->attn_proj_weight, C, 0.0f, d_y, C, threads))
        return -1;
    CausalTask task = {s->qkv, NULL, s->stats, d_y, d_qkv, shape->batch, shape->steps,
                       shape->heads, C / shape->heads};
    if (causal_run(&task, 1, threads) != 0 ||
        linear_param_grads(d_qkv, s->ln_1, N, C, 3 * C, g->c_attn_weight, g->c_attn_bias,
                           threads) ||
        product('N', 'N', N, C, 3 * C, d_qkv, 3 * C, w->c_attn_weight, C, 0.0f, d_norm, C,
                threads))
        return -1;
    return rnn2gpt_layer_norm_backward(d_norm, s->x, s->ln_1_mean, s->ln_1_rstd, w->ln_1_weight,
                                       d_mid, d_x, g->ln_1_weight, g->ln_1_bias, N, C, threads);
}

/* Every block's forward in turn, in one call (a Python loop between the calls cost 86 us a
 * layer of a nanoGPT-size step, its objects cold in the cache after each block): w and s hold
 * ``layers`` of each; block i reads s[i].x and writes the next block's s[i + 1].x, the last one
 * out. Returns 0, or -1 if out of memory. */
int rnn2gpt_blocks_forward(const BlockWeights *w, const BlockSaved *s, float *out, int64_t layers,
                           const BlockShape *shape) {
    for (int64_t i = 0; i < layers; i++)
        if (rnn2gpt_block_forward(w + i, s + i, i + 1 < layers ? s[i + 1].x : out, shape))
            return -1;
    return 0;
}

/* Every block's backward, the last first, in one call: d_out (N, C) at the last block's output
 * -> d_x (N, C) at the first one's input, and each block's gradients g[i]. The gradients between
 * blocks alternate in ``between`` (2 N C floats); scratch as for rnn2gpt_block_backward. Returns
 * 0, or -1 if out of memory. */
int rnn2gpt_blocks_backward(const BlockWeights *w, const BlockSaved *s, const BlockGrads *g,
                            const float *d_out, float *d_x, float *between, float *scratch,
                            int64_t layers, const BlockShape *shape) {
    const int64_t size = shape->batch * shape->steps * shape->width;
    const float *d = d_out;
    for (int64_t i = layers - 1; i >= 0; i--) {
        float *target = i == 0 ? d_x : between + ((layers - 1 - i) % 2) * size;
        if (rnn2gpt_block_backward(w + i, s + i, g + i, d, target, scratch, shape)) return -1;
        d = target;
    }
    return 0;
}

/* ------------------------------------------------------------------ a GPT's ends for training
 *
 * What comes before and after the blocks in a training forward that ends in the loss
 * (models/native_model.py wraps them with the blocks as one autograd function):
 *
 *   x   = wte[tokens] + positions[t]                        (N, C), N = B T rows
 *   nll = -log softmax(ln_f(x_out) head^T + head_b)[target] (N)
 *
 * In PyTorch these were about 25 operations forward and backward (an index_select, an add, a
 * LayerNorm, a matrix product of an awkward width (the vocabulary: 65 characters), log_softmax,
 * nll_loss, their backwards, an embedding's dense backward and a sum over the batch), each a
 * dispatch and an allocation: 2.7 ms of a 41 ms nanoGPT-size step on an AMD EPYC, with their
 * autograd nodes. Every sum here runs in a fixed order, so the results have the same bits for
 * any thread count. */

/* x (N, C) = wte[tokens[r]] + positions[r % steps] (positions NULL: none). Returns 0, or -2 if a
 * token is outside [0, vocab) (nothing is written then). */
static int embed(const int64_t *tokens, const float *wte, const float *positions, float *x,
                 int64_t batch, int64_t steps, int64_t width, int64_t vocab, int64_t threads) {
    const int64_t rows = batch * steps;
    for (int64_t r = 0; r < rows; r++)
        if (tokens[r] < 0 || tokens[r] >= vocab) return -2;
    const int64_t parts = parts_for(rows / NORM_ROWS, threads);
#pragma omp parallel for num_threads(parts) schedule(static, 1)
    for (int64_t part = 0; part < parts; part++) {
        int64_t begin, end;
        share(rows, part, parts, &begin, &end);
        for (int64_t r = begin; r < end; r++) {
            const float *e = wte + tokens[r] * width;
            const float *p = positions ? positions + (r % steps) * width : NULL;
            float *xr = x + r * width;
            int64_t j = 0;
            for (; j + 8 <= width; j += 8) {
                __m256 v = _mm256_loadu_ps(e + j);
                if (p) v = _mm256_add_ps(v, _mm256_loadu_ps(p + j));
                _mm256_storeu_ps(xr + j, v);
            }
            for (; j < width; j++) xr[j] = e[j] + (p ? p[j] : 0.0f);
        }
    }
    return 0;
}

/* The embeddings' gradients from d_x (N, C): d_wte (vocab, C) gets the sum of the rows of each
 * token (added to what it holds when accumulate, else written, zero for unseen tokens), and
 * d_positions (steps, C) the sum of each position's rows over the batch. Either may be NULL.
 * The columns are split over threads, and each column's rows are added in order. */
static void embed_backward(const int64_t *tokens, const float *d_x, float *d_wte, int accumulate,
                           float *d_positions, int64_t batch, int64_t steps, int64_t width,
                           int64_t vocab, int64_t threads) {
    const int64_t rows = batch * steps, vectors = (width + 7) / 8;
    const int64_t parts = parts_for(vectors, threads);
#pragma omp parallel for num_threads(parts) schedule(static, 1)
    for (int64_t part = 0; part < parts; part++) {
        int64_t first, last;
        share(vectors, part, parts, &first, &last);
        const int64_t j0 = first * 8, j1 = last * 8 < width ? last * 8 : width;
        if (d_wte) {
            if (!accumulate)
                for (int64_t v = 0; v < vocab; v++)
                    for (int64_t j = j0; j < j1; j++) d_wte[v * width + j] = 0.0f;
            for (int64_t r = 0; r < rows; r++) {
                float *g = d_wte + tokens[r] * width;
                const float *d = d_x + r * width;
                for (int64_t j = j0; j < j1; j++) g[j] += d[j];
            }
        }
        if (d_positions)
            for (int64_t t = 0; t < steps; t++) {
                float *g = d_positions + t * width;
                for (int64_t j = j0; j < j1; j++) g[j] = d_x[t * width + j];
                for (int64_t b = 1; b < batch; b++)
                    for (int64_t j = j0; j < j1; j++) g[j] += d_x[(b * steps + t) * width + j];
            }
    }
}

/* The last LayerNorm and the output layer, as native_model.HeadWeights orders them (the
 * biases and the norm's weight may be NULL). */
typedef struct {
    const float *ln_weight, *ln_bias, *head_weight, *head_bias;
} HeadWeights;

/* Their gradients, written where non-NULL. */
typedef struct {
    float *ln_weight, *ln_bias, *head_weight, *head_bias;
} HeadGrads;

/* What the loss's forward keeps for its backward, in the order of native_model.HEAD_SAVED. */
typedef struct {
    float *ln, *mean, *rstd; /* (N, C), (N), (N) */
    float *probs;            /* (N, V): the softmax of each row's logits */
} HeadSaved;

typedef struct {
    int64_t rows, width, vocab, threads;
    double eps;
} HeadShape;

/* row (V) holds logits: softmax them in place and return -log p[target] (NaN if any logit is
 * NaN: the exponential below would clamp it to a tiny number, and the trainer must see it). */
static float softmax_nll(float *row, int64_t vocab, int64_t target) {
    const float chosen = row[target];
    __m256 most8 = _mm256_set1_ps(-INFINITY), nan8 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= vocab; j += 8) {
        __m256 v = _mm256_loadu_ps(row + j);
        most8 = _mm256_max_ps(most8, v);
        nan8 = _mm256_or_ps(nan8, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
    float lanes[8], most = -INFINITY;
    int unordered = _mm256_movemask_ps(nan8) != 0;
    _mm256_storeu_ps(lanes, most8);
    for (int k = 0; k < 8; k++) most = lanes[k] > most ? lanes[k] : most;
    for (; j < vocab; j++) {
        most = row[j] > most ? row[j] : most;
        unordered |= row[j] != row[j];
    }
    if (unordered) return NAN;
    const __m256 shift = _mm256_set1_ps(most);
    __m256 total8 = _mm256_setzero_ps();
    j = 0;
    for (; j + 8 <= vocab; j += 8) {
        __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(row + j), shift));
        total8 = _mm256_add_ps(total8, e);
        _mm256_storeu_ps(row + j, e);
    }
    float total = sum_lanes(total8);
    for (; j < vocab; j++) {
        row[j] = expf(row[j] - most);
        total += row[j];
    }
    const float inverse = 1.0f / total;
    scale_row(row, vocab, inverse);
    return most + logf(total) - chosen;
}

/* Rows [begin, end) of the softmax and loss. */
static void softmax_nll_rows(float *probs, const int64_t *targets, float *nll, int64_t rows,
                             int64_t vocab, int64_t threads) {
    const int64_t parts = parts_for(rows / NORM_ROWS, threads);
#pragma omp parallel for num_threads(parts) schedule(static, 1)
    for (int64_t part = 0; part < parts; part++) {
        int64_t begin, end;
        share(rows, part, parts, &begin, &end);
        for (int64_t r = begin; r < end; r++)
            nll[r] = softmax_nll(probs + r * vocab, vocab, targets[r]);
    }
}

/* The loss's forward: x (N, C), the last block's output -> nll (N), each row's cross-entropy
 * against targets (N, each in [0, vocab): rnn2gpt_lm_forward checks them first), filling s.
 * Returns 0, or -1 if out of memory. */
static int head_loss(const HeadWeights *w, const float *x, const int64_t *targets,
                     const HeadSaved *s, float *nll, const HeadShape *shape) {
    const int64_t N = shape->rows, C = shape->width, V = shape->vocab, threads = shape->threads;
    rnn2gpt_layer_norm(x, w->ln_weight, w->ln_bias, s->ln, s->mean, s->rstd, N, C, shape->eps,
                       threads);
    if (linear_forward(s->ln, N, C, w->head_weight, w->head_bias, V, NULL, s->probs, threads))
        return -1;
    softmax_nll_rows(s->probs, targets, nll, N, V, threads);
    return 0;
}

/* d_logits = d_nll[r] (p - onehot(target)), in place of p. */
static void logits_gradient(float *probs, const int64_t *targets, const float *d_nll,
                            int64_t rows, int64_t vocab, int64_t threads) {
    const int64_t parts = parts_for(rows / NORM_ROWS, threads);
#pragma omp parallel for num_threads(parts) schedule(static, 1)
    for (int64_t part = 0; part < parts; part++) {
        int64_t begin, end;
        share(rows, part, parts, &begin, &end);
        for (int64_t r = begin; r < end; r++) {
            float *row = probs + r * vocab;
            row[targets[r]] -= 1.0f;
            scale_row(row, vocab, d_nll[r]);
        }
    }
}

/* Its backward: d_nll (N) -> d_x (N, C) at the last block's output, and the gradients wanted in
 * g. s->probs is overwritten (the logits' gradient); scratch holds N C floats. Returns 0, or -1
 * if out of memory. */
static int head_loss_backward(const HeadWeights *w, const float *x, const int64_t *targets,
                              const HeadSaved *s, const float *d_nll, const HeadGrads *g,
                              float *d_x, float *scratch, const HeadShape *shape) {
    const int64_t N = shape->rows, C = shape->width, V = shape->vocab, threads = shape->threads;
    logits_gradient(s->probs, targets, d_nll, N, V, threads);
    if (g->head_bias) column_sums(s->probs, N, V, g->head_bias, threads);
    if (g->head_weight &&
        product('T', 'N', V, C, N, s->probs, V, s->ln, C, 0.0f, g->head_weight, C, threads))
        return -1;
    if (product('N', 'N', N, C, V, s->probs, V, w->head_weight, C, 0.0f, scratch, C, threads))
        return -1;
    return rnn2gpt_layer_norm_backward(scratch, x, s->mean, s->rstd, w->ln_weight, NULL, d_x,
                                       g->ln_weight, g->ln_bias, N, C, threads);
}

/* A GPT's whole training forward in one call, tokens to each token's loss: embed into x
 * (N, C), rnn2gpt_blocks_forward from x to out (N, C), head_loss from out to nll (N).
 * One call, because the Python between three calls cost 0.5 ms a nanoGPT-size step (its objects
 * cold in the caches after the blocks). Returns 0, -1 if out of memory, -2 if a token and -3 if
 * a target is outside the vocabulary (nothing is computed then). */
int rnn2gpt_lm_forward(const int64_t *tokens, const float *wte, const float *positions,
                       int64_t vocab, float *x, const BlockWeights *bw, const BlockSaved *bs,
                       int64_t layers, const BlockShape *bshape, float *out,
                       const HeadWeights *hw, const int64_t *targets, const HeadSaved *hs,
                       float *nll, const HeadShape *hshape) {
    for (int64_t r = 0; r < hshape->rows; r++)
        if (targets[r] < 0 || targets[r] >= hshape->vocab) return -3;
    if (embed(tokens, wte, positions, x, bshape->batch, bshape->steps, bshape->width, vocab,
              bshape->threads))
        return -2;
    if (rnn2gpt_blocks_forward(bw, bs, out, layers, bshape)) return -1;
    return head_loss(hw, out, targets, hs, nll, hshape);
}

/* Its backward in one call: d_nll (N) -> the head's gradients hg, each block's bg, and the
 * embeddings' (d_wte: added to when accumulate, the tied output layer's gradient being there
 * already; either may be NULL). d_out, d_x: (N, C); between: 2 N C floats; scratch: N (F + 6C)
 * floats (at least N C). Returns 0, or -1 if out of memory. */
int rnn2gpt_lm_backward(const int64_t *tokens, const float *d_nll, const HeadWeights *hw,
                        const float *out, const int64_t *targets, const HeadSaved *hs,
                        const HeadGrads *hg, const HeadShape *hshape, const BlockWeights *bw,
                        const BlockSaved *bs, const BlockGrads *bg, int64_t layers,
                        const BlockShape *bshape, float *d_out, float *d_x, float *between,
                        float *scratch, float *d_wte, int accumulate, float *d_positions,
                        int64_t vocab) {
    if (head_loss_backward(hw, out, targets, hs, d_nll, hg, d_out, scratch, hshape) ||
        rnn2gpt_blocks_backward(bw, bs, bg, d_out, d_x, between, scratch, layers, bshape))
        return -1;
    if (d_wte || d_positions)
        embed_backward(tokens, d_x, d_wte, accumulate, d_positions, bshape->batch, bshape->steps,
                       bshape->width, vocab, bshape->threads);
    return 0;
}
