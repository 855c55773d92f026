/* convext_batchnorm.h: the passes of batch normalisation over the rows of an
 * (M, C) matrix, row-major, one channel per column.
 *
 * The per-column arrays (mean, scales, shifts, sums) are restrict-qualified: they
 * never overlap the matrices. Written as Cython loops over memoryviews, any of
 * which may alias any other, gcc left these loops scalar: the forward pass of a
 * 64x28x28x32 float32 batch took 1.2 ms instead of a few tenths. The matrices may
 * overlap each other (y may be x itself); the compiler checks that at run time.
 * Sums are kept in double precision.
 */
#ifndef CONVEXT_BATCHNORM_H
#define CONVEXT_BATCHNORM_H

#if defined(_MSC_VER)
#define CONVEXT_RESTRICT __restrict
#else
#define CONVEXT_RESTRICT restrict
#endif

#define CONVEXT_BATCHNORM_PASSES(SUFFIX, T)                                           \
/* shift = the first row; sums and squares of (x - shift) over the other rows,     \
 * which stay accurate where E[x^2] - E[x]^2 would cancel. rows >= 1. */             \
static inline void convext_shifted_sums_##SUFFIX(                                     \
    const T *CONVEXT_RESTRICT x, Py_ssize_t rows, Py_ssize_t cols,                    \
    double *CONVEXT_RESTRICT shift, double *CONVEXT_RESTRICT sums,                    \
    double *CONVEXT_RESTRICT squares)                                                 \
{                                                                                     \
    Py_ssize_t i, j;                                                                  \
    for (j = 0; j < cols; j++) {                                                      \
        shift[j] = x[j];                                                              \
        sums[j] = 0.0;                                                                \
        squares[j] = 0.0;                                                             \
    }                                                                                 \
    for (i = 1; i < rows; i++)                                                        \
        for (j = 0; j < cols; j++) {                                                  \
            double deviation = (double)x[i * cols + j] - shift[j];                    \
            sums[j] += deviation;                                                     \
            squares[j] += deviation * deviation;                                      \
        }                                                                             \
}                                                                                     \
                                                                                      \
/* y = (x - mean) * scale + shift per column. */                                      \
static inline void convext_normalize_##SUFFIX(                                        \
    const T *x, Py_ssize_t rows, Py_ssize_t cols, const T *CONVEXT_RESTRICT mean,     \
    const T *CONVEXT_RESTRICT scale, const T *CONVEXT_RESTRICT shift, T *y)           \
{                                                                                     \
    Py_ssize_t i, j;                                                                  \
    for (i = 0; i < rows; i++) {                                                      \
        const T *x_row = x + i * cols;                                                \
        T *y_row = y + i * cols;                                                      \
        for (j = 0; j < cols; j++)                                                    \
            y_row[j] = (x_row[j] - mean[j]) * scale[j] + shift[j];                    \
    }                                                                                 \
}                                                                                     \
                                                                                      \
/* sum_dy = sum of dy, sum_dy_centred = sum of dy * (x - mean), per column. */        \
static inline void convext_gradient_sums_##SUFFIX(                                    \
    const T *CONVEXT_RESTRICT dy, const T *CONVEXT_RESTRICT x, Py_ssize_t rows,       \
    Py_ssize_t cols, const T *CONVEXT_RESTRICT mean, double *CONVEXT_RESTRICT sum_dy, \
    double *CONVEXT_RESTRICT sum_dy_centred)                                          \
{                                                                                     \
    Py_ssize_t i, j;                                                                  \
    for (j = 0; j < cols; j++) {                                                      \
        sum_dy[j] = 0.0;                                                              \
        sum_dy_centred[j] = 0.0;                                                      \
    }                                                                                 \
    for (i = 0; i < rows; i++)                                                        \
        for (j = 0; j < cols; j++) {                                                  \
            double grad = dy[i * cols + j];                                           \
            sum_dy[j] += grad;                                                        \
            sum_dy_centred[j] += grad * ((double)x[i * cols + j] - mean[j]);          \
        }                                                                             \
}                                                                                     \
                                                                                      \
/* dx = dy * dy_scale + (x - mean) * x_scale + offset per column. */                 \
static inline void convext_input_gradient_##SUFFIX(                                   \
    const T *dy, const T *x, Py_ssize_t rows, Py_ssize_t cols,                        \
    const T *CONVEXT_RESTRICT mean, const T *CONVEXT_RESTRICT dy_scale,               \
    const T *CONVEXT_RESTRICT x_scale, const T *CONVEXT_RESTRICT offset, T *dx)       \
{                                                                                     \
    Py_ssize_t i, j;                                                                  \
    for (i = 0; i < rows; i++) {                                                      \
        const T *dy_row = dy + i * cols;                                              \
        const T *x_row = x + i * cols;                                                \
        T *dx_row = dx + i * cols;                                                    \
        for (j = 0; j < cols; j++)                                                    \
            dx_row[j] = dy_row[j] * dy_scale[j] + (x_row[j] - mean[j]) * x_scale[j]   \
                        + offset[j];                                                  \
    }                                                                                 \
}

CONVEXT_BATCHNORM_PASSES(f, float)
CONVEXT_BATCHNORM_PASSES(d, double)

#endif /* CONVEXT_BATCHNORM_H */
