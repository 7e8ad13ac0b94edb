/* The matrix-vector product of a decoding step (chapter 8), written to read
 * memory at its speed.
 *
 * At batch 1 a step multiplies one vector by every weight matrix: each weight
 * is used once, for one multiply-add, so the product is a read of the matrix
 * and little else, and PyTorch's general kernels for this shape spend much of
 * their time around the read. Compiled with -O3 -march=native -funroll-loops
 * -fopenmp: `omp simd` vectorises the inner sum (16 floats per AVX-512
 * instruction), the unrolled loop keeps several loads in flight.
 */

/* Y = X W^T + b. W is stored (out, in), row-major (nn.Linear's layout), so
 * output o is the dot product of one contiguous row with x: the threads split
 * the rows, each streaming its share front to back. A further row of X reuses
 * the row of W from the L1 cache, so W is read once whatever the number of
 * rows; but the arithmetic grows with the rows, and from about four rows on a
 * blocked matrix product (oneDNN's) is faster: the book uses this for one row.
 */
void gemv_f32(const float *W, const float *X, const float *b, float *Y,
              long n_rows, long n_out, long n_in, int n_threads)
{
    #pragma omp parallel for schedule(static) num_threads(n_threads)
    for (long o = 0; o < n_out; o++) {
        const float *w = W + o * n_in;      /* row o of W: read once */
        for (long m = 0; m < n_rows; m++) {
            const float *x = X + m * n_in;  /* row m of X */
            float acc = 0.0f;
            #pragma omp simd reduction(+:acc)
            for (long i = 0; i < n_in; i++)
                acc += w[i] * x[i];
            Y[m * n_out + o] = b ? acc + b[o] : acc;
        }
    }
}
