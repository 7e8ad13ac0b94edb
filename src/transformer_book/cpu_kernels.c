/* The matrix-vector product of a decoding step (chapter 8), written to read
 * memory at its speed, and a whole decoding step built on it.
 *
 * At batch 1 a step multiplies one vector by every weight matrix: each weight
 * is used once, for one multiply-add, so the product is a read of the matrix
 * and little else, and PyTorch's general kernels for this shape spend much of
 * their time around the read. Compiled with -O3 -march=native -funroll-loops
 * -fopenmp: `omp simd` vectorises the inner sum (16 floats per AVX-512
 * instruction), the unrolled loop keeps several loads in flight.
 */
#include <math.h>
#include <omp.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>

/* Row w (contiguous, read once from memory) times x (reused, in the L1 cache).
 * One running sum: each multiply-add waits for the one before it, and that
 * is fast enough, because the loads of w set the pace. Two or four
 * independent sums, which a product bound by arithmetic would want, read
 * further from the bandwidth bound on the book's machine (measured side by
 * side with this kernel). */
static inline float dot(const float *w, const float *x, long n)
{
    float acc = 0.0f;
    #pragma omp simd reduction(+:acc)
    for (long i = 0; i < n; i++)
        acc += w[i] * x[i];
    return acc;
}

/* Y = X W^T + b. W is stored (out, in), row-major (nn.Linear's layout), so
 * output o is the dot product of one contiguous row with x: the threads split
 * the rows, each streaming its runs front to back. The split is `guided`: a
 * thread takes a long run of rows first and ever shorter ones as the matrix
 * runs out, so a thread the memory serves faster for a while reads more of
 * it and neither waits long for the other at the end (with equal halves,
 * `static`, the faster one would: on the book's 2-core machine the guided
 * split reads 2 to 8 points closer to the bandwidth bound). Measured slower
 * still, side by side: `dynamic` (16 rows at a time, taken in turns), the
 * threads starting at the two ends and meeting in the middle, and
 * prefetching the next row. A further row of
 * X reuses the row of W from the L1 cache, so W is read once whatever the
 * number of rows; but the arithmetic grows with the rows, and from about four
 * rows on a blocked matrix product (oneDNN's) is faster: the book uses this
 * for one row.
 */
void gemv_f32(const float *W, const float *X, const float *b, float *Y,
              long n_rows, long n_out, long n_in, int n_threads)
{
    #pragma omp parallel for schedule(guided, 16) num_threads(n_threads)
    for (long o = 0; o < n_out; o++) {
        const float *w = W + o * n_in;      /* row o of W: read once */
        for (long m = 0; m < n_rows; m++) {
            const float *x = X + m * n_in;  /* row m of X */
            Y[m * n_out + o] = dot(w, x, n_in) + (b ? b[o] : 0.0f);
        }
    }
}

/* ---- One token through the whole decoder in one call ----------------------
 *
 * With every product at memory speed, what is left of a step is the hundred
 * small operations around the products (layer norms, attention over the
 * cache, residual additions), each a few microseconds of Python and dispatch,
 * and the waking of idle threads at the start of each product. Below, a step
 * of a GPT-2 style decoder (batch 1, float32) is one parallel region: the
 * small operations are a few loops over vectors of n_embd floats, and the
 * threads go from one product to the next through a barrier.
 *
 * One core alone may not draw all of the memory's bandwidth (chapter 8
 * measures one core against two), and then every moment a core spends not
 * reading weights is lost: waiting at a barrier, in a layer norm, in
 * attention. So each thread starts every product on a share of the rows
 * known in advance (it knows what it reads next), and a thread that reaches
 * a barrier first spends the wait asking the memory for the start of its
 * next share (a prefetch into its L2 cache): the read goes on while it
 * waits. A thread that runs out of rows takes the back half of what another
 * has left (the memory may serve one core faster for a while), so the
 * threads reach the barrier nearly together. The small operations need no
 * barrier of their own: every thread computes the layer norm for itself,
 * GELU over the rows it computed, the largest of its share of the logits.
 */

enum { AHEAD = 256 << 10 };  /* the most a waiting thread fetches: a quarter of a 1 MB L2 cache */
enum { CHUNK = 16 };         /* rows a thread takes at a time */

/* The rows [first, end) of a product that one thread has yet to compute, as
 * one 64-bit word (first in the high half), so that the owner taking rows
 * from the front and another thread taking the back half change it with
 * one compare-and-swap each; alone on its cache line, so that the owner's
 * taking stays in its own L1 cache. */
typedef struct { _Alignas(64) uint64_t rows; } rows_t;

/* What the threads of one call share: their barrier (`arrived` counts the
 * threads at it, `round` how many times it has opened) and the rows each
 * has left of the product under way. */
typedef struct { long arrived, round; rows_t *left; } team_t;

static uint64_t pack(long first, long end) { return (uint64_t)first << 32 | (uint64_t)end; }

/* Thread t's share of n rows: [*lo, *hi). */
static void share_of(long t, long n, long *lo, long *hi)
{
    const long n_threads = omp_get_num_threads();
    *lo = n * t / n_threads;
    *hi = n * (t + 1) / n_threads;
}

/* This thread's share. */
static void share(long n, long *lo, long *hi) { share_of(omp_get_thread_num(), n, lo, hi); }

/* Take the next rows of r from the front, at most CHUNK: [*lo, *hi); 0 if
 * there are none. */
static int take_front(rows_t *r, long *lo, long *hi)
{
    uint64_t old = __atomic_load_n(&r->rows, __ATOMIC_ACQUIRE), new;
    do {
        *lo = (long)(old >> 32), *hi = (long)(old & 0xffffffff);
        if (*lo >= *hi)
            return 0;
        *hi = *lo + CHUNK < *hi ? *lo + CHUNK : *hi;
        new = pack(*hi, (long)(old & 0xffffffff));
    } while (!__atomic_compare_exchange_n(&r->rows, &old, new, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
    return 1;
}

/* Take the back half of r: [*lo, *hi); 0 if fewer than 2 CHUNK rows are
 * left (its owner finishes them sooner than another thread could start). */
static int take_back_half(rows_t *r, long *lo, long *hi)
{
    uint64_t old = __atomic_load_n(&r->rows, __ATOMIC_ACQUIRE), new;
    do {
        const long first = (long)(old >> 32);
        *hi = (long)(old & 0xffffffff);
        if (*hi - first < 2 * CHUNK)
            return 0;
        *lo = *hi - (*hi - first) / 2;
        new = pack(first, *lo);
    } while (!__atomic_compare_exchange_n(&r->rows, &old, new, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
    return 1;
}

/* Wait until every thread of the team is here, then give each thread its
 * share of the next product's n_out rows; meanwhile, fetch the first bytes
 * of the share this thread reads next (up to AHEAD). A thread that waits
 * long gives its core away (another process may need it). */
static void wait_fetching(team_t *team, long n_out, const float *next, long bytes)
{
    const long round = __atomic_load_n(&team->round, __ATOMIC_ACQUIRE);
    const long n_threads = omp_get_num_threads();
    if (__atomic_add_fetch(&team->arrived, 1, __ATOMIC_ACQ_REL) == n_threads) {
        for (long t = 0, lo, hi; t < n_threads; t++) {  /* the last one in deals the rows ... */
            share_of(t, n_out, &lo, &hi);
            __atomic_store_n(&team->left[t].rows, pack(lo, hi), __ATOMIC_RELAXED);
        }
        __atomic_store_n(&team->arrived, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&team->round, round + 1, __ATOMIC_RELEASE);  /* ... and opens the barrier */
        return;
    }
    const char *p = (const char *)next, *end = p + (bytes < AHEAD ? bytes : AHEAD);
    for (long spin = 0; __atomic_load_n(&team->round, __ATOMIC_ACQUIRE) == round; spin++) {
        if (p < end) {
            __builtin_prefetch(p, 0, 2);  /* read, into L2 */
            p += 64;                      /* a cache line */
        } else if (spin > (1L << 14)) {
            sched_yield();
        }
    }
}

/* wait_fetching before the product of W (n_out, n_in). */
static void wait_fetching_share(team_t *team, const float *W, long n_out, long n_in)
{
    long lo, hi;
    share(n_out, &lo, &hi);
    wait_fetching(team, n_out, W + lo * n_in, (hi - lo) * n_in * (long)sizeof(float));
}

/* y = (x - mean) / sqrt(var + eps) * w + b, over n features (b may be NULL). */
static void layer_norm(const float *x, const float *w, const float *b, float *y, long n, float eps)
{
    float mean = 0.0f, var = 0.0f;
    #pragma omp simd reduction(+:mean)
    for (long i = 0; i < n; i++)
        mean += x[i];
    mean /= n;
    #pragma omp simd reduction(+:var)
    for (long i = 0; i < n; i++)
        var += (x[i] - mean) * (x[i] - mean);
    const float r = 1.0f / sqrtf(var / n + eps);  /* biased variance, as nn.LayerNorm */
    for (long i = 0; i < n; i++)
        y[i] = (x[i] - mean) * r * w[i] + (b ? b[i] : 0.0f);
}

enum { STORE, ADD_TO, GELU };  /* what a product does with its outputs */

/* y = GPT-2's GELU of y (tanh approximation), n floats. libm's tanhf is one
 * call per float, which the stream of a product cannot hide; written with
 * exp as 2^k e^r, the loop is vectorised (16 floats an instruction with
 * AVX-512):
 * tanh(z) = sign(z) (1 - e) / (1 + e) with e = exp(-2|z|), |z| capped at 20
 * (tanh is 1 to float precision long before), k = round(-2|z| / ln 2) and
 * e^r, |r| <= ln(2) / 2, by its Taylor series to r^6 (error below 2e-7). */
static void gelu(float *y, long n)
{
    #pragma omp simd
    for (long i = 0; i < n; i++) {
        const float u = y[i], z = 0.7978845608028654f * (u + 0.044715f * u * u * u);
        const float a = -2.0f * (fabsf(z) < 20.0f ? fabsf(z) : 20.0f);
        const float k = rintf(a * 1.4426950408889634f);           /* a / ln 2 */
        const float r = a - k * 0.6931471805599453f;
        const float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
        const int bits = ((int)k + 127) << 23;                     /* 2^k as a float's bits */
        float two_k;
        memcpy(&two_k, &bits, sizeof two_k);
        const float e = two_k * p, t = copysignf((1.0f - e) / (1.0f + e), z);
        y[i] = 0.5f * u * (1.0f + t);
    }
}

/* y = W x + b (ADD_TO adds to y: a residual connection; GELU then applies
 * GPT-2's GELU), the rows dealt out at the barrier before it: a thread
 * computes its own CHUNK rows at a time, front to back; then it takes the
 * back half of another's rest, which becomes its own (and can be halved
 * again), until nobody has 2 CHUNK rows left. No barrier at the end: the
 * caller waits, fetching what comes next. */
static void product(team_t *team, const float *W, const float *x, const float *b, float *y, long n_in,
                    int mode)
{
    const long me = omp_get_thread_num(), n_threads = omp_get_num_threads();
    rows_t *mine = &team->left[me];
    long lo, hi, k = 1;  /* when its own are done, it takes from thread (me + k) % n_threads */
    for (;;) {
        if (take_front(mine, &lo, &hi)) {
            for (long o = lo; o < hi; o++) {
                const float u = dot(W + o * n_in, x, n_in) + (b ? b[o] : 0.0f);
                y[o] = mode == ADD_TO ? y[o] + u : u;
            }
            if (mode == GELU)
                gelu(y + lo, hi - lo);
        } else if (k < n_threads && take_back_half(&team->left[(me + k) % n_threads], &lo, &hi)) {
            __atomic_store_n(&mine->rows, pack(lo, hi), __ATOMIC_RELEASE);
        } else if (++k >= n_threads) {
            return;
        }
    }
}

/* One query head q (D floats) over the n cached keys K and values V (n, D)
 * and the new token's key k and value v (D each, not yet in the cache):
 * out = softmax(q [K; k]^T / sqrt(D)) [V; v]. s holds n + 1 scores. */
static void attend(const float *q, const float *K, const float *V, const float *k, const float *v,
                   float *s, float *out, long n, long D)
{
    const float scale = 1.0f / sqrtf((float)D);
    float top = -INFINITY, total = 0.0f;
    for (long j = 0; j <= n; j++) {
        s[j] = dot(q, j < n ? K + j * D : k, D) * scale;
        top = s[j] > top ? s[j] : top;
    }
    for (long j = 0; j <= n; j++) {
        s[j] = expf(s[j] - top);  /* the largest score becomes 1: no overflow */
        total += s[j];
    }
    for (long i = 0; i < D; i++)
        out[i] = 0.0f;
    for (long j = 0; j <= n; j++) {
        const float a = s[j] / total, *vj = j < n ? V + j * D : v;
        #pragma omp simd
        for (long i = 0; i < D; i++)
            out[i] += a * vj[i];
    }
}

/* x = wte[token] + wpe[pos]: this thread's share of x's C features (the
 * barrier after it is the caller's). */
static void embed(float *const *ptr, const long *dim, long pos, int64_t token)
{
    const long C = dim[0], n_layer = dim[7];
    const float *wte = ptr[7 + 14 * n_layer] + token * C, *wpe = ptr[8 + 14 * n_layer] + pos * C;
    long lo, hi;
    share(C, &lo, &hi);
    for (long i = lo; i < hi; i++)
        ptr[0][i] = wte[i] + wpe[i];
}

/* The start of a token, in every thread: x = wte[token] + wpe[pos] if a
 * token is given (otherwise x holds the embedding already), then the barrier
 * before block 0's W_qkv. */
static void begin_token(float *const *ptr, const long *dim, long pos, const int64_t *token, team_t *team)
{
    if (token)
        embed(ptr, dim, pos, *token);
    wait_fetching_share(team, ptr[6 + 2], dim[0] + 2 * dim[2] * dim[3], dim[0]);
}

/* One token through the decoder, called by every thread of a parallel region
 * right after a barrier, with x (ptr[0]) complete: every block, the final
 * norm and the LM head's logits (the caller waits for them all). ptr and dim
 * as decode_token_f32 takes them; pos is the token's position. */
static void token_pass(float *const *ptr, const long *dim, long pos, float eps, team_t *team)
{
    float *x = ptr[0], *scratch = ptr[1], *logits = ptr[2];
    const long C = dim[0], H = dim[1], H_kv = dim[2], D = dim[3], F = dim[4], T = dim[6];
    const long n_layer = dim[7], V = dim[8], n_qkv = C + 2 * H_kv * D;
    float *qkv = scratch, *att = qkv + n_qkv, *h = att + C, *s = h + F;
    float xn[C];  /* this thread's own layer-norm output: no barrier to share it */
    long lo, hi;
    for (long l = 0; l < n_layer; l++) {
        float *const *w = ptr + 6 + 14 * l;
        float *keys = w[4], *values = w[5];
        /* x = x + attn(ln_1(x)) */
        layer_norm(x, w[0], w[1], xn, C, eps);
        product(team, w[2], xn, w[3], qkv, C, STORE);  /* q | k | v */
        wait_fetching_share(team, w[6], C, C);
        share(H_kv, &lo, &hi);
        for (long g = lo; g < hi; g++) {  /* the new key and value join the cache at pos */
            memcpy(keys + (g * T + pos) * D, qkv + C + g * D, D * sizeof(float));
            memcpy(values + (g * T + pos) * D, qkv + C + (H_kv + g) * D, D * sizeof(float));
        }
        share(H, &lo, &hi);
        for (long hd = lo; hd < hi; hd++) {  /* positions 0 .. pos - 1 from the cache, pos from qkv */
            const long g = hd / (H / H_kv);  /* grouped-query: heads share a key/value head */
            attend(qkv + hd * D, keys + g * T * D, values + g * T * D, qkv + C + g * D,
                   qkv + C + (H_kv + g) * D, s + hd * T, att + hd * D, pos, D);
        }
        wait_fetching_share(team, w[6], C, C);
        product(team, w[6], att, w[7], x, C, ADD_TO);
        wait_fetching_share(team, w[10], F, C);
        /* x = x + mlp(ln_2(x)) */
        layer_norm(x, w[8], w[9], xn, C, eps);
        product(team, w[10], xn, w[11], h, C, GELU);
        wait_fetching_share(team, w[12], C, F);
        product(team, w[12], h, w[13], x, F, ADD_TO);
        if (l + 1 < n_layer)
            wait_fetching_share(team, w[14 + 2], n_qkv, C);  /* the next block's W_qkv */
        else
            wait_fetching_share(team, ptr[5], V, C);          /* the LM head */
    }
    /* logits = ln_f(x) @ wte^T */
    layer_norm(x, ptr[3], ptr[4], xn, C, eps);
    product(team, ptr[5], xn, NULL, logits, C, STORE);
}

/* ptr: x (C: the token's embedding in, overwritten by the residual stream),
 *      scratch (2C + 2 H_kv D + F + H T floats), logits (V out), ln_f weight,
 *      ln_f bias, the LM head (V, C); then 14 per layer: ln_1 weight, bias,
 *      W_qkv (C + 2 H_kv D, C), b_qkv, the layer's key and value buffers
 *      (H_kv, T, D) of the cache, W_o (C, C), b_o, ln_2 weight, bias,
 *      W_fc (F, C), b_fc, W_proj (C, F), b_proj. Biases may be NULL. Then
 *      three more: the token's id (one int64), the token and the position
 *      embedding tables (rows of C); if the id is given, x is made here as
 *      the token's row plus the position's (no PyTorch call between steps),
 *      otherwise x comes in holding it.
 * dim: C, H, H_kv, D, F, pos (the token's position: keys 0 .. pos are read),
 *      T (the cache's max_len), n_layer, V. */
void decode_token_f32(float *const *ptr, const long *dim, float eps, int n_threads)
{
    const int64_t *token = (const int64_t *)ptr[6 + 14 * dim[7]];
    rows_t left[n_threads > 0 ? n_threads : 1];
    team_t team = {0, 0, left};
    #pragma omp parallel num_threads(n_threads)
    {
        begin_token(ptr, dim, dim[5], token, &team);
        token_pass(ptr, dim, dim[5], eps, &team);
    }  /* the region's end: every logit is written */
}

/* Greedy decoding, n tokens in one call: feed the token ptr points to at
 * position dim[5], take the largest logit as the next token (the first one
 * on a tie, as torch.argmax), feed that at the next position, and so on; the
 * i-th token chosen goes to out[i], its logits stay in ptr[2] until the next
 * step overwrites them. Between tokens there is no Python and no waking of
 * threads: the loop runs inside one parallel region. Each thread finds the
 * largest of its own share of the logits, and every thread then reads all
 * the shares' results and makes the same choice. Returns the number of
 * tokens chosen: n, or i if the logits of step i had a NaN or no finite
 * maximum (there is no next token; the caller reports it). The token and
 * embedding pointers (the three slots after the layers) must be given. */
long decode_greedy_f32(float *const *ptr, const long *dim, float eps, int n_threads, long n, int64_t *out)
{
    const float *logits = ptr[2];
    const long C = dim[0], V = dim[8], n_qkv = C + 2 * dim[2] * dim[3];
    struct { float top; long first; int bad; } best[n_threads > 0 ? n_threads : 1];  /* a thread's share */
    long chosen = n;
    rows_t left[n_threads > 0 ? n_threads : 1];
    team_t team = {0, 0, left};
    #pragma omp parallel num_threads(n_threads)
    {
        const int me = omp_get_thread_num(), n_team = omp_get_num_threads();
        int64_t token = *(const int64_t *)ptr[6 + 14 * dim[7]];
        for (long i = 0; i < n; i++) {
            begin_token(ptr, dim, dim[5] + i, &token, &team);
            token_pass(ptr, dim, dim[5] + i, eps, &team);
            wait_fetching_share(&team, ptr[6 + 2], n_qkv, C);  /* every logit written */
            long lo, hi, first = V;
            share(V, &lo, &hi);
            float top = -INFINITY;
            int bad = 0;
            #pragma omp simd reduction(max:top) reduction(|:bad)
            for (long o = lo; o < hi; o++) {
                top = logits[o] > top ? logits[o] : top;  /* a NaN never wins here ... */
                bad |= logits[o] != logits[o];            /* ... it is flagged instead */
            }
            #pragma omp simd reduction(min:first)
            for (long o = lo; o < hi; o++)
                first = logits[o] == top && o < first ? o : first;
            best[me].top = top, best[me].first = first, best[me].bad = bad;
            wait_fetching_share(&team, ptr[6 + 2], n_qkv, C);  /* the first block's W_qkv */
            for (int t = 0; t < n_team; t++) {      /* the same choice in every thread */
                bad |= best[t].bad;
                if (best[t].top > top || (best[t].top == top && best[t].first < first))
                    top = best[t].top, first = best[t].first;
            }
            if (bad || !isfinite(top)) {
                if (me == 0)
                    chosen = i;                     /* tokens chosen before this step */
                break;
            }
            if (me == 0)
                out[i] = first;
            token = first;
        }
    }
    return chosen;
}
