/* The two loops of a decoding step that read memory (chapter 8), written to read it at its speed.
 *
 * At batch 1 a step multiplies one vector by every weight matrix (gemv_f32) and lets one query
 * per head read the cached keys and values (decode_attention_f32). Every byte is used once, for
 * one multiply-add: the loops are reads of memory and little else, and PyTorch's general kernels
 * for these shapes spend more time around the read than in it. Compiled with -O3 -march=native
 * -funroll-loops -fopenmp; `omp simd` vectorises the inner sums (16 floats per AVX-512 step).
 */
#include <math.h>

/* Y = X W^T + b. W is stored (out, in), row-major (nn.Linear's layout), so output o is the dot
 * product of one contiguous row with x: the threads split the rows, each streaming its share
 * front to back. A few rows of X (a small batch, or the k + 1 tokens a speculative verification
 * pass scores, chapter 10) reuse each row of W while it sits in the L1 cache: W crosses the
 * memory bus once whatever the number of rows. */
void gemv_f32(const float *W, const float *X, const float *b, float *Y,
              long n_rows, long n_out, long n_in, int n_threads)
{
    #pragma omp parallel for schedule(static) num_threads(n_threads)
    for (long o = 0; o < n_out; o++) {
        const float *w = W + o * n_in;              /* row o of W: read from memory once */
        for (long m = 0; m < n_rows; m++) {
            const float *x = X + m * n_in;          /* row m of X */
            float acc = 0.0f;
            #pragma omp simd reduction(+:acc)
            for (long i = 0; i < n_in; i++)
                acc += w[i] * x[i];
            Y[m * n_out + o] = b ? acc + b[o] : acc;
        }
    }
}

/* One new query per head attends over the n cached positions: O = softmax(q K^T * scale) V.
 * Q and O are (B, H, D) contiguous; K and V are (B, H_kv, n, D) views into the cache, rows of D
 * contiguous, with strides (in floats) between sequences and between heads. Query head h reads
 * key/value head h / (H / H_kv) (grouped-query attention). One (sequence, head) per task; the
 * scores live in a buffer on the stack (n <= the cache's max_len). */
void decode_attention_f32(const float *Q, const float *K, const float *V, float *O,
                          long B, long H, long H_kv, long n, long D,
                          long kv_stride_b, long kv_stride_h, float scale, int n_threads)
{
    long group = H / H_kv;
    #pragma omp parallel for collapse(2) schedule(static) num_threads(n_threads)
    for (long b = 0; b < B; b++) {
        for (long h = 0; h < H; h++) {
            const float *q = Q + (b * H + h) * D;
            long kv = b * kv_stride_b + (h / group) * kv_stride_h;
            const float *k = K + kv, *v = V + kv;
            float *o = O + (b * H + h) * D;
            float s[n], top = -INFINITY, total = 0.0f;
            for (long t = 0; t < n; t++) {          /* scores, and their maximum */
                float dot = 0.0f;
                #pragma omp simd reduction(+:dot)
                for (long d = 0; d < D; d++)
                    dot += q[d] * k[t * D + d];
                s[t] = dot * scale;
                top = s[t] > top ? s[t] : top;
            }
            for (long t = 0; t < n; t++) {          /* softmax numerators, shifted by the max */
                s[t] = expf(s[t] - top);
                total += s[t];
            }
            for (long d = 0; d < D; d++)
                o[d] = 0.0f;
            for (long t = 0; t < n; t++) {          /* the weighted sum of the values */
                float p = s[t] / total;
                #pragma omp simd
                for (long d = 0; d < D; d++)
                    o[d] += p * v[t * D + d];
            }
        }
    }
}
