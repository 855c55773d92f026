/* convext_lanes.h: loops over the columns of row-major matrices, written with
 * GCC's vector extensions (GCC and Clang), for two jobs of a convolution's
 * backward pass that the compiler did not vectorise well from plain loops:
 *
 * - the weight gradient of a convolution with few taps (KH * KW * C of 9 for a
 *   3x3 kernel on grey-scale images, 27 on RGB). The BLAS packs its operands for
 *   products that reuse each of them many times; with 9 taps there is little to
 *   reuse. These loops keep a tile of the result in registers, up to 4 rows by 2
 *   vectors of one register each, and stream the long side through it once; the result
 *   is added to, never overwritten.
 * - the column sums of the output gradient (the bias gradient), in double.
 *
 * Other compilers, and the columns and rows left over from whole tiles, take
 * scalar loops, which add the same terms in the same order.
 */
#ifndef CONVEXT_LANES_H
#define CONVEXT_LANES_H

#include <string.h>

/* A vector is one register wide: 64 bytes with AVX-512, 32 with AVX, 16 else.
 * Wider vectors than the registers multiply the registers a tile needs: with 64-byte
 * vectors on an AVX2 processor, a tile of 4 rows by 2 vectors took 16 of its 16
 * registers for the sums alone, and the weight gradient of 28x28x1 images to 32
 * filters, batch 64, spilled to memory and took 6.9 ms instead of 0.6.
 */
#if defined(__AVX512F__)
#define CONVEXT_VECTOR_BYTES 64
#elif defined(__AVX__)
#define CONVEXT_VECTOR_BYTES 32
#else
#define CONVEXT_VECTOR_BYTES 16
#endif

#if defined(__GNUC__) || defined(__clang__)
#define CONVEXT_VECTORS 1
typedef float convext_vec_f __attribute__((vector_size(CONVEXT_VECTOR_BYTES)));
typedef double convext_vec_d __attribute__((vector_size(CONVEXT_VECTOR_BYTES)));
#else
#define CONVEXT_VECTORS 0
typedef float convext_vec_f;
typedef double convext_vec_d;
#endif

/* One tile of c, R rows by 2 vectors at column j0, added to over the long side.
 * Row r of the tile is row r0 + r of c; step l of the long side adds
 * A(r, l) times the two vectors at B(l), where A and B are expressions of the
 * caller's loop variables.
 */
#define CONVEXT_TILE(T, VEC, LANES, R, r0, j0, n_long, A, B)                          \
    do {                                                                              \
        VEC acc[R][2], b0, b1;                                                        \
        Py_ssize_t r, l;                                                              \
        for (r = 0; r < R; r++) {                                                     \
            memcpy(&acc[r][0], c + ((r0) + r) * ldc + (j0), sizeof(VEC));             \
            memcpy(&acc[r][1], c + ((r0) + r) * ldc + (j0) + LANES,                   \
                   sizeof(VEC));                                                      \
        }                                                                             \
        for (l = 0; l < (n_long); l++) {                                              \
            memcpy(&b0, B, sizeof(VEC));                                              \
            memcpy(&b1, B + LANES, sizeof(VEC));                                      \
            for (r = 0; r < R; r++) {                                                 \
                T a_rl = A;                                                           \
                acc[r][0] += a_rl * b0;                                               \
                acc[r][1] += a_rl * b1;                                               \
            }                                                                         \
        }                                                                             \
        for (r = 0; r < R; r++) {                                                     \
            memcpy(c + ((r0) + r) * ldc + (j0), &acc[r][0], sizeof(VEC));             \
            memcpy(c + ((r0) + r) * ldc + (j0) + LANES, &acc[r][1],                   \
                   sizeof(VEC));                                                      \
        }                                                                             \
    } while (0)

/* sums[j] += sum over i of values[i * ld + j], in double precision: the bias
 * gradient of a convolution. Four vectors of double sums at a time (each row read
 * once per pass), then one, then column by column; a float operand is loaded half
 * a register at a time and widened to a register of doubles.
 */
#define CONVEXT_DOUBLE_LANES (CONVEXT_VECTOR_BYTES / 8)
#if CONVEXT_VECTORS
typedef float convext_half_f __attribute__((vector_size(CONVEXT_VECTOR_BYTES / 2)));
#define CONVEXT_ADD_WIDENED(LOADED, sum, src)                                         \
    do {                                                                              \
        LOADED loaded;                                                                \
        memcpy(&loaded, src, sizeof(LOADED));                                         \
        sum += __builtin_convertvector(loaded, convext_vec_d);                        \
    } while (0)
#define CONVEXT_COLUMN_SUMS_VECTORS(T, LOADED)                                        \
    const Py_ssize_t lanes = CONVEXT_DOUBLE_LANES;                                    \
    for (; j0 + 4 * lanes <= cols; j0 += 4 * lanes) {                                 \
        convext_vec_d s0, s1, s2, s3;                                                 \
        memcpy(&s0, sums + j0, sizeof(s0));                                           \
        memcpy(&s1, sums + j0 + lanes, sizeof(s1));                                   \
        memcpy(&s2, sums + j0 + 2 * lanes, sizeof(s2));                               \
        memcpy(&s3, sums + j0 + 3 * lanes, sizeof(s3));                               \
        for (i = 0; i < rows; i++) {                                                  \
            const T *row = values + i * ld + j0;                                      \
            CONVEXT_ADD_WIDENED(LOADED, s0, row);                                     \
            CONVEXT_ADD_WIDENED(LOADED, s1, row + lanes);                             \
            CONVEXT_ADD_WIDENED(LOADED, s2, row + 2 * lanes);                         \
            CONVEXT_ADD_WIDENED(LOADED, s3, row + 3 * lanes);                         \
        }                                                                             \
        memcpy(sums + j0, &s0, sizeof(s0));                                           \
        memcpy(sums + j0 + lanes, &s1, sizeof(s1));                                   \
        memcpy(sums + j0 + 2 * lanes, &s2, sizeof(s2));                               \
        memcpy(sums + j0 + 3 * lanes, &s3, sizeof(s3));                               \
    }                                                                                 \
    for (; j0 + lanes <= cols; j0 += lanes) {                                         \
        convext_vec_d s0;                                                             \
        memcpy(&s0, sums + j0, sizeof(s0));                                           \
        for (i = 0; i < rows; i++)                                                    \
            CONVEXT_ADD_WIDENED(LOADED, s0, values + i * ld + j0);                    \
        memcpy(sums + j0, &s0, sizeof(s0));                                           \
    }
#else
typedef float convext_half_f;
#define CONVEXT_COLUMN_SUMS_VECTORS(T, LOADED)
#endif

#define CONVEXT_COLUMN_SUMS(NAME, T, LOADED)                                          \
static inline void NAME(const T *values, Py_ssize_t rows, Py_ssize_t cols,            \
                        Py_ssize_t ld, double *sums)                                  \
{                                                                                     \
    Py_ssize_t i, j, j0 = 0;                                                          \
    CONVEXT_COLUMN_SUMS_VECTORS(T, LOADED)                                            \
    for (j = j0; j < cols; j++) {                                                     \
        double total = sums[j];                                                       \
        for (i = 0; i < rows; i++)                                                    \
            total += values[i * ld + j];                                              \
        sums[j] = total;                                                              \
    }                                                                                 \
}

CONVEXT_COLUMN_SUMS(convext_add_column_sums_f, float, convext_half_f)
CONVEXT_COLUMN_SUMS(convext_add_column_sums_d, double, convext_vec_d)

/* c[k, j] += sum over p of a[p, k] * b[p, j]: a^T @ b, with the long side p
 * a: (n_long, rows), lda;  b: (n_long, cols), ldb;  c: (rows, cols), ldc.
 * The long side goes in chunks of CONVEXT_CHUNK steps, whose share of a and b
 * stays in the first-level cache while every tile of c passes over it; each sum
 * still adds its terms in the order of p. Tiles of 4 rows (8 independent sums,
 * enough to keep the multiply-add units busy), then single rows; the columns
 * right of the last whole pair of vectors are done one by one. When col_sums is
 * not NULL, the column sums of b are added to it as well, in double, chunk by
 * chunk while the chunk is in cache: the bias gradient beside the weight
 * gradient, for one read of b instead of two.
 */
#define CONVEXT_CHUNK 128

#define CONVEXT_SHORT_GEMM_TN(NAME, T, VEC, SUMS)                                     \
static inline void NAME(Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t n_long,          \
                        const T *a, Py_ssize_t lda, const T *b, Py_ssize_t ldb,       \
                        T *c, Py_ssize_t ldc, double *col_sums)                       \
{                                                                                     \
    const Py_ssize_t lanes = CONVEXT_VECTOR_BYTES / sizeof(T);                        \
    Py_ssize_t k, j, p, p0, steps, j0;                                                \
    const T *a_chunk;                                                                 \
    const T *b_chunk;                                                                 \
    for (p0 = 0; p0 < n_long; p0 += CONVEXT_CHUNK) {                                  \
        steps = n_long - p0 < CONVEXT_CHUNK ? n_long - p0 : CONVEXT_CHUNK;            \
        a_chunk = a + p0 * lda;                                                       \
        b_chunk = b + p0 * ldb;                                                       \
        j0 = 0;                                                                       \
        if (CONVEXT_VECTORS) {                                                        \
            for (; j0 + 2 * lanes <= cols; j0 += 2 * lanes) {                         \
                for (k = 0; k + 4 <= rows; k += 4)                                    \
                    CONVEXT_TILE(T, VEC, lanes, 4, k, j0, steps,                      \
                                 a_chunk[l * lda + k + r], b_chunk + l * ldb + j0);   \
                for (; k < rows; k++)                                                 \
                    CONVEXT_TILE(T, VEC, lanes, 1, k, j0, steps,                      \
                                 a_chunk[l * lda + k + r], b_chunk + l * ldb + j0);   \
            }                                                                         \
        }                                                                             \
        for (k = 0; k < rows; k++)                                                    \
            for (j = j0; j < cols; j++)                                               \
                for (p = 0; p < steps; p++)                                           \
                    c[k * ldc + j] += a_chunk[p * lda + k] * b_chunk[p * ldb + j];    \
        if (col_sums != NULL)                                                         \
            SUMS(b_chunk, steps, cols, ldb, col_sums);                                \
    }                                                                                 \
}

CONVEXT_SHORT_GEMM_TN(convext_short_gemm_tn_f, float, convext_vec_f,
                      convext_add_column_sums_f)
CONVEXT_SHORT_GEMM_TN(convext_short_gemm_tn_d, double, convext_vec_d,
                      convext_add_column_sums_d)

#endif /* CONVEXT_LANES_H */
