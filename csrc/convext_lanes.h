/* convext_lanes.h: loops over the columns of row-major matrices, written with
 * GCC's vector extensions (GCC and Clang), for two jobs of a convolution's
 * backward pass that the compiler did not vectorise well from plain loops:
 *
 * - the weight gradient of a convolution with few taps (KH * KW * C of 9 for a
 *   3x3 kernel on grey-scale images, 27 on RGB). The BLAS packs its operands for
 *   products that reuse each of them many times; with 9 taps there is little to
 *   reuse. These loops keep a tile of the result in registers, up to 4 rows by 2
 *   vectors of 16 columns, and stream the long side through it once; the result
 *   is added to, never overwritten.
 * - the column sums of the output gradient (the bias gradient), in double.
 *
 * Other compilers, and the columns and rows left over from whole tiles, take
 * scalar loops, which add the same terms in the same order.
 */
#ifndef CONVEXT_LANES_H
#define CONVEXT_LANES_H

#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define CONVEXT_VECTORS 1
#define CONVEXT_LANES 16
typedef float convext_vec_f __attribute__((vector_size(CONVEXT_LANES * sizeof(float))));
typedef double convext_vec_d __attribute__((vector_size(CONVEXT_LANES * sizeof(double))));
#else
#define CONVEXT_VECTORS 0
#define CONVEXT_LANES 16
typedef float convext_vec_f;
typedef double convext_vec_d;
#endif

/* One tile of c, R rows by 2 vectors at column j0, added to over the long side.
 * Row r of the tile is row r0 + r of c; step l of the long side adds
 * A(r, l) times the two vectors at B(l), where A and B are expressions of the
 * caller's loop variables.
 */
#define CONVEXT_TILE(T, VEC, R, r0, j0, n_long, A, B)                                 \
    do {                                                                              \
        VEC acc[R][2], b0, b1;                                                        \
        Py_ssize_t r, l;                                                              \
        for (r = 0; r < R; r++) {                                                     \
            memcpy(&acc[r][0], c + ((r0) + r) * ldc + (j0), sizeof(VEC));             \
            memcpy(&acc[r][1], c + ((r0) + r) * ldc + (j0) + CONVEXT_LANES,           \
                   sizeof(VEC));                                                      \
        }                                                                             \
        for (l = 0; l < (n_long); l++) {                                              \
            memcpy(&b0, B, sizeof(VEC));                                              \
            memcpy(&b1, B + CONVEXT_LANES, sizeof(VEC));                              \
            for (r = 0; r < R; r++) {                                                 \
                T a_rl = A;                                                           \
                acc[r][0] += a_rl * b0;                                               \
                acc[r][1] += a_rl * b1;                                               \
            }                                                                         \
        }                                                                             \
        for (r = 0; r < R; r++) {                                                     \
            memcpy(c + ((r0) + r) * ldc + (j0), &acc[r][0], sizeof(VEC));             \
            memcpy(c + ((r0) + r) * ldc + (j0) + CONVEXT_LANES, &acc[r][1],           \
                   sizeof(VEC));                                                      \
        }                                                                             \
    } while (0)

/* c[k, j] += sum over p of a[p, k] * b[p, j]: a^T @ b, with the long side p
 * a: (n_long, rows), lda;  b: (n_long, cols), ldb;  c: (rows, cols), ldc.
 * Tiles of 4 rows (8 independent sums, enough to keep the multiply-add units
 * busy), then single rows; the columns right of the last whole pair of vectors
 * are done one by one.
 */
#define CONVEXT_SHORT_GEMM_TN(NAME, T, VEC)                                           \
static inline void NAME(Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t n_long,         \
                        const T *a, Py_ssize_t lda, const T *b, Py_ssize_t ldb,      \
                        T *c, Py_ssize_t ldc)                                         \
{                                                                                     \
    Py_ssize_t k, j, p, j0 = 0;                                                       \
    if (CONVEXT_VECTORS) {                                                            \
        for (j0 = 0; j0 + 2 * CONVEXT_LANES <= cols; j0 += 2 * CONVEXT_LANES) {       \
            for (k = 0; k + 4 <= rows; k += 4)                                        \
                CONVEXT_TILE(T, VEC, 4, k, j0, n_long, a[l * lda + k + r],            \
                             b + l * ldb + j0);                                       \
            for (; k < rows; k++)                                                     \
                CONVEXT_TILE(T, VEC, 1, k, j0, n_long, a[l * lda + k + r],            \
                             b + l * ldb + j0);                                       \
        }                                                                             \
    }                                                                                 \
    for (k = 0; k < rows; k++)                                                        \
        for (j = j0; j < cols; j++)                                                   \
            for (p = 0; p < n_long; p++)                                              \
                c[k * ldc + j] += a[p * lda + k] * b[p * ldb + j];                    \
}

/* sums[j] = sum over i of values[i * cols + j], in double precision: the bias
 * gradient of a convolution. 32 columns at a time (4 vectors of sums, each row
 * read once per pass), then 8 at a time, then one by one.
 */
#if CONVEXT_VECTORS
typedef float convext_vec8_f __attribute__((vector_size(8 * sizeof(float))));
typedef double convext_vec8_d __attribute__((vector_size(8 * sizeof(double))));
#define CONVEXT_ADD8(T, VEC8, sum, src)                                               \
    do {                                                                              \
        VEC8 loaded;                                                                  \
        memcpy(&loaded, src, sizeof(VEC8));                                           \
        sum += __builtin_convertvector(loaded, convext_vec8_d);                       \
    } while (0)
#define CONVEXT_COLUMN_SUMS_VECTORS(T, VEC8)                                          \
    for (; j0 + 32 <= cols; j0 += 32) {                                               \
        convext_vec8_d s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};                        \
        for (i = 0; i < rows; i++) {                                                  \
            const T *row = values + i * cols + j0;                                    \
            CONVEXT_ADD8(T, VEC8, s0, row);                                           \
            CONVEXT_ADD8(T, VEC8, s1, row + 8);                                       \
            CONVEXT_ADD8(T, VEC8, s2, row + 16);                                      \
            CONVEXT_ADD8(T, VEC8, s3, row + 24);                                      \
        }                                                                             \
        memcpy(sums + j0, &s0, sizeof(s0));                                           \
        memcpy(sums + j0 + 8, &s1, sizeof(s1));                                       \
        memcpy(sums + j0 + 16, &s2, sizeof(s2));                                      \
        memcpy(sums + j0 + 24, &s3, sizeof(s3));                                      \
    }                                                                                 \
    for (; j0 + 8 <= cols; j0 += 8) {                                                 \
        convext_vec8_d s0 = {0};                                                      \
        for (i = 0; i < rows; i++)                                                    \
            CONVEXT_ADD8(T, VEC8, s0, values + i * cols + j0);                        \
        memcpy(sums + j0, &s0, sizeof(s0));                                           \
    }
#else
#define CONVEXT_COLUMN_SUMS_VECTORS(T, VEC8)
#endif

#define CONVEXT_COLUMN_SUMS(NAME, T, VEC8)                                            \
static inline void NAME(const T *values, Py_ssize_t rows, Py_ssize_t cols,            \
                        double *sums)                                                 \
{                                                                                     \
    Py_ssize_t i, j, j0 = 0;                                                          \
    CONVEXT_COLUMN_SUMS_VECTORS(T, VEC8)                                              \
    for (j = j0; j < cols; j++) {                                                     \
        double total = 0.0;                                                           \
        for (i = 0; i < rows; i++)                                                    \
            total += values[i * cols + j];                                            \
        sums[j] = total;                                                              \
    }                                                                                 \
}

CONVEXT_COLUMN_SUMS(convext_column_sums_f, float, convext_vec8_f)
CONVEXT_COLUMN_SUMS(convext_column_sums_d, double, convext_vec8_d)

CONVEXT_SHORT_GEMM_TN(convext_short_gemm_tn_f, float, convext_vec_f)
CONVEXT_SHORT_GEMM_TN(convext_short_gemm_tn_d, double, convext_vec_d)

#endif /* CONVEXT_LANES_H */
