/* convext_direct.h: direct convolution of one zero-padded NHWC sample, with no
 * im2col matrix in between, for layers whose filters fill whole pairs of vectors.
 *
 * The forward pass keeps a tile of the output in registers: R output pixels by
 * two vectors of filters. For every tap and input channel it loads the two
 * vectors of weights once and multiplies them by the R input values, each
 * broadcast to a vector. The weight gradient keeps a tile of R input channels by
 * two vectors of filters of one tap, and streams the output gradient of every
 * output pixel through it. Both read the sample where it lies: the receptive fields
 * are never gathered, nor the products packed, as im2col and the BLAS do. For
 * 14x14x32 to 64 filters, batch 64, two threads, forward and backward took 6.6 to
 * 6.9 ms this way and 9.0 to 9.7 ms with im2col and OpenBLAS, side by side.
 *
 * The input gradient is the same forward pass run on the zero-padded output
 * gradient, with the weights flipped in space and their channel axes swapped.
 *
 * Taps that fall on the padding are skipped. For 14x14 images, a 3x3 kernel and a
 * pixel of padding around, they are 9% of the products; the forward pass of the
 * layer above went from 2.3 to 2.0 ms without them. The forward pass takes the
 * inner pixels, whose receptive fields lie wholly on the data, in tiles along the
 * row, the outer columns in tiles down the column, and the corners one by one.
 *
 * Tiles are as large as the registers allow: 14 pixels (28 sums) or 12 channels
 * (24 sums) with AVX-512's 32 registers, 6 with 16; what is left over goes in one
 * tile of its own size.
 */
#ifndef CONVEXT_DIRECT_H
#define CONVEXT_DIRECT_H

#include <string.h>

#include "convext_lanes.h"

#if CONVEXT_VECTOR_BYTES == 64
#define CONVEXT_DIRECT_PIXELS 14
#define CONVEXT_DIRECT_CHANNELS 12
#else
#define CONVEXT_DIRECT_PIXELS 6
#define CONVEXT_DIRECT_CHANNELS 6
#endif

/* out[r, 0:2 lanes] = start + sum over taps and channels of x * w, for R output
 * pixels r. x: the first input value of pixel 0's receptive field, pixel r's at
 * x + r * pixel_step, the field's taps_h rows row_step apart, each a contiguous
 * span of values; w: the weights of the first of them at the tile's first filter,
 * the next value's f further, the next row's w_row_step; out: output pixel 0 at
 * the tile's first filter, pixel r out_step * r further.
 */
#define CONVEXT_FORWARD_TILE(NAME, T, VEC, R)                                         \
static inline void NAME(const T *x, Py_ssize_t pixel_step, Py_ssize_t row_step,       \
                        Py_ssize_t span, Py_ssize_t taps_h, const T *w,               \
                        Py_ssize_t w_row_step, Py_ssize_t f, const T *start, T *out,  \
                        Py_ssize_t out_step)                                          \
{                                                                                     \
    const Py_ssize_t lanes = sizeof(VEC) / sizeof(T);                                 \
    VEC acc[R][2], w0, w1;                                                            \
    Py_ssize_t r, ky, s;                                                              \
    for (r = 0; r < R; r++) {                                                         \
        memcpy(&acc[r][0], start, sizeof(VEC));                                       \
        memcpy(&acc[r][1], start + lanes, sizeof(VEC));                               \
    }                                                                                 \
    for (ky = 0; ky < taps_h; ky++) {                                                 \
        const T *x_row = x + ky * row_step;                                           \
        const T *w_row = w + ky * w_row_step;                                         \
        for (s = 0; s < span; s++) {                                                  \
            memcpy(&w0, w_row + s * f, sizeof(VEC));                                  \
            memcpy(&w1, w_row + s * f + lanes, sizeof(VEC));                          \
            _Pragma("GCC unroll 16")                                                  \
            for (r = 0; r < R; r++) {                                                 \
                T value = x_row[r * pixel_step + s];                                  \
                acc[r][0] += value * w0;                                              \
                acc[r][1] += value * w1;                                              \
            }                                                                         \
        }                                                                             \
    }                                                                                 \
    for (r = 0; r < R; r++) {                                                         \
        memcpy(out + r * out_step, &acc[r][0], sizeof(VEC));                          \
        memcpy(out + r * out_step + lanes, &acc[r][1], sizeof(VEC));                  \
    }                                                                                 \
}

/* dw[r, 0:2 lanes] += sum over rows x cols output pixels of x * dout, for R input
 * channels r of one tap. x: that tap's input value of the first output pixel at the
 * tile's first channel, the pixel (oy, ox) further's at x + oy * row_step + ox *
 * pixel_step; dout: the first pixel's at the tile's first filter, the next pixel
 * f further and the next row dout_row_step; dw: the tile's first channel and
 * filter, the next channel f further.
 */
#define CONVEXT_WEIGHT_TILE(NAME, T, VEC, R)                                          \
static inline void NAME(const T *x, Py_ssize_t pixel_step, Py_ssize_t row_step,       \
                        const T *dout, Py_ssize_t dout_row_step, Py_ssize_t f,        \
                        Py_ssize_t rows, Py_ssize_t cols, T *dw)                      \
{                                                                                     \
    const Py_ssize_t lanes = sizeof(VEC) / sizeof(T);                                 \
    VEC acc[R][2], d0, d1;                                                            \
    Py_ssize_t r, oy, ox;                                                             \
    for (r = 0; r < R; r++) {                                                         \
        memcpy(&acc[r][0], dw + r * f, sizeof(VEC));                                  \
        memcpy(&acc[r][1], dw + r * f + lanes, sizeof(VEC));                          \
    }                                                                                 \
    for (oy = 0; oy < rows; oy++) {                                                   \
        const T *x_row = x + oy * row_step;                                           \
        const T *dout_row = dout + oy * dout_row_step;                                \
        for (ox = 0; ox < cols; ox++) {                                               \
            memcpy(&d0, dout_row + ox * f, sizeof(VEC));                              \
            memcpy(&d1, dout_row + ox * f + lanes, sizeof(VEC));                      \
            _Pragma("GCC unroll 16")                                                  \
            for (r = 0; r < R; r++) {                                                 \
                T value = x_row[ox * pixel_step + r];                                 \
                acc[r][0] += value * d0;                                              \
                acc[r][1] += value * d1;                                              \
            }                                                                         \
        }                                                                             \
    }                                                                                 \
    for (r = 0; r < R; r++) {                                                         \
        memcpy(dw + r * f, &acc[r][0], sizeof(VEC));                                  \
        memcpy(dw + r * f + lanes, &acc[r][1], sizeof(VEC));                          \
    }                                                                                 \
}

/* Runs TILE over count items, in tiles of MAX and one of the rest; TILE(R, i)
 * does items i .. i + R - 1. */
#define CONVEXT_IN_TILES(count, MAX, TILE)                                            \
    do {                                                                              \
        Py_ssize_t i_ = 0;                                                            \
        for (; i_ + (MAX) <= (count); i_ += (MAX))                                    \
            TILE(MAX, i_);                                                            \
        switch ((count) - i_) {                                                       \
        case 13: TILE(13, i_); break;                                                 \
        case 12: TILE(12, i_); break;                                                 \
        case 11: TILE(11, i_); break;                                                 \
        case 10: TILE(10, i_); break;                                                 \
        case 9: TILE(9, i_); break;                                                   \
        case 8: TILE(8, i_); break;                                                   \
        case 7: TILE(7, i_); break;                                                   \
        case 6: TILE(6, i_); break;                                                   \
        case 5: TILE(5, i_); break;                                                   \
        case 4: TILE(4, i_); break;                                                   \
        case 3: TILE(3, i_); break;                                                   \
        case 2: TILE(2, i_); break;                                                   \
        case 1: TILE(1, i_); break;                                                   \
        default: break;                                                               \
        }                                                                             \
    } while (0)

/* The first i >= 0 with i * stride >= start, at most limit; stride > 0. */
static inline Py_ssize_t convext_first_at_least(Py_ssize_t start, Py_ssize_t stride,
                                                Py_ssize_t limit)
{
    Py_ssize_t i = start > 0 ? (start + stride - 1) / stride : 0;
    return i < limit ? i : limit;
}

#define CONVEXT_DIRECT(SUFFIX, T, VEC)                                                \
CONVEXT_FORWARD_TILE(convext_forward_tile_##SUFFIX##_14, T, VEC, 14)                  \
CONVEXT_FORWARD_TILE(convext_forward_tile_##SUFFIX##_13, T, VEC, 13)                  \
CONVEXT_FORWARD_TILE(convext_forward_tile_##SUFFIX##_12, T, VEC, 12)                  \
CONVEXT_FORWARD_TILE(convext_forward_tile_##SUFFIX##_11, T, VEC, 11)                  \
CONVEXT_FORWARD_TILE(convext_forward_tile_##SUFFIX##_10, T, VEC, 10)                  \
CONVEXT_FORWARD_TILE(convext_forward_tile_##SUFFIX##_9, T, VEC, 9)                    \
CONVEXT_FORWARD_TILE(convext_forward_tile_##SUFFIX##_8, T, VEC, 8)                    \
CONVEXT_FORWARD_TILE(convext_forward_tile_##SUFFIX##_7, T, VEC, 7)                    \
CONVEXT_FORWARD_TILE(convext_forward_tile_##SUFFIX##_6, T, VEC, 6)                    \
CONVEXT_FORWARD_TILE(convext_forward_tile_##SUFFIX##_5, T, VEC, 5)                    \
CONVEXT_FORWARD_TILE(convext_forward_tile_##SUFFIX##_4, T, VEC, 4)                    \
CONVEXT_FORWARD_TILE(convext_forward_tile_##SUFFIX##_3, T, VEC, 3)                    \
CONVEXT_FORWARD_TILE(convext_forward_tile_##SUFFIX##_2, T, VEC, 2)                    \
CONVEXT_FORWARD_TILE(convext_forward_tile_##SUFFIX##_1, T, VEC, 1)                    \
CONVEXT_WEIGHT_TILE(convext_weight_tile_##SUFFIX##_14, T, VEC, 14)                    \
CONVEXT_WEIGHT_TILE(convext_weight_tile_##SUFFIX##_13, T, VEC, 13)                    \
CONVEXT_WEIGHT_TILE(convext_weight_tile_##SUFFIX##_12, T, VEC, 12)                    \
CONVEXT_WEIGHT_TILE(convext_weight_tile_##SUFFIX##_11, T, VEC, 11)                    \
CONVEXT_WEIGHT_TILE(convext_weight_tile_##SUFFIX##_10, T, VEC, 10)                    \
CONVEXT_WEIGHT_TILE(convext_weight_tile_##SUFFIX##_9, T, VEC, 9)                      \
CONVEXT_WEIGHT_TILE(convext_weight_tile_##SUFFIX##_8, T, VEC, 8)                      \
CONVEXT_WEIGHT_TILE(convext_weight_tile_##SUFFIX##_7, T, VEC, 7)                      \
CONVEXT_WEIGHT_TILE(convext_weight_tile_##SUFFIX##_6, T, VEC, 6)                      \
CONVEXT_WEIGHT_TILE(convext_weight_tile_##SUFFIX##_5, T, VEC, 5)                      \
CONVEXT_WEIGHT_TILE(convext_weight_tile_##SUFFIX##_4, T, VEC, 4)                      \
CONVEXT_WEIGHT_TILE(convext_weight_tile_##SUFFIX##_3, T, VEC, 3)                      \
CONVEXT_WEIGHT_TILE(convext_weight_tile_##SUFFIX##_2, T, VEC, 2)                      \
CONVEXT_WEIGHT_TILE(convext_weight_tile_##SUFFIX##_1, T, VEC, 1)                      \
                                                                                      \
/* out (OH, OW, f) = start + the convolution of x (HP, WP, c_in), zero-padded      \
 * already, with w (KH, KW, c_in, f); start is (f,), the bias or zeros. Only rows  \
 * data_top .. data_top + data_h - 1 and columns data_left .. data_left + data_w   \
 * - 1 of x may hold other values than zeros; the taps that fall elsewhere are     \
 * skipped. Output rows [oy_lo, oy_hi) see data through every kernel row, columns \
 * [ox_lo, ox_hi) through every kernel column: those inner columns go in tiles     \
 * along each row, the outer columns of the inner rows in tiles down the column,   \
 * and the corners one by one. f must be a multiple of 2 vectors. */              \
static inline void convext_direct_forward_##SUFFIX(                                   \
    const T *x, Py_ssize_t padded_w, Py_ssize_t c_in, const T *w, Py_ssize_t f,       \
    const T *start, T *out, Py_ssize_t out_h, Py_ssize_t out_w, Py_ssize_t kernel_h,  \
    Py_ssize_t kernel_w, Py_ssize_t stride_h, Py_ssize_t stride_w,                    \
    Py_ssize_t data_top, Py_ssize_t data_h, Py_ssize_t data_left, Py_ssize_t data_w)  \
{                                                                                     \
    const Py_ssize_t pair = 2 * (Py_ssize_t)(sizeof(VEC) / sizeof(T));                \
    const Py_ssize_t row_step = padded_w * c_in, w_row_step = kernel_w * c_in * f;    \
    const Py_ssize_t along_row = stride_w * c_in, down_col = stride_h * row_step;     \
    const Py_ssize_t oy_lo = convext_first_at_least(data_top, stride_h, out_h);       \
    Py_ssize_t oy_hi = convext_first_at_least(data_top + data_h - kernel_h + 1,       \
                                              stride_h, out_h);                       \
    const Py_ssize_t ox_lo = convext_first_at_least(data_left, stride_w, out_w);      \
    Py_ssize_t ox_hi = convext_first_at_least(data_left + data_w - kernel_w + 1,      \
                                              stride_w, out_w);                       \
    Py_ssize_t oy, ox, f0, ky0, ky1, kx0, kx1;                                        \
    oy_hi = oy_hi > oy_lo ? oy_hi : oy_lo;                                            \
    ox_hi = ox_hi > ox_lo ? ox_hi : ox_lo;                                            \
    for (f0 = 0; f0 < f; f0 += pair) {                                                \
        for (oy = 0; oy < out_h; oy++) {                                              \
            CONVEXT_TAP_RANGE(ky0, ky1, data_top, data_h, oy * stride_h, kernel_h);   \
            kx0 = 0;                                                                  \
            kx1 = kernel_w;                                                           \
            CONVEXT_IN_TILES(ox_hi - ox_lo, CONVEXT_DIRECT_PIXELS,                    \
                             CONVEXT_ALONG_ROW_##SUFFIX);                             \
            if (oy >= oy_lo && oy < oy_hi)                                            \
                continue;                                                             \
            CONVEXT_OUTER_COLUMNS(ox, ox_lo, ox_hi, out_w) {                          \
                CONVEXT_TAP_RANGE(kx0, kx1, data_left, data_w, ox * stride_w,         \
                                  kernel_w);                                          \
                CONVEXT_FORWARD_PIXELS(SUFFIX, 1, oy, ox, along_row, f);              \
            }                                                                         \
        }                                                                             \
        ky0 = 0;                                                                      \
        ky1 = kernel_h;                                                               \
        CONVEXT_OUTER_COLUMNS(ox, ox_lo, ox_hi, out_w) {                              \
            CONVEXT_TAP_RANGE(kx0, kx1, data_left, data_w, ox * stride_w, kernel_w);  \
            CONVEXT_IN_TILES(oy_hi - oy_lo, CONVEXT_DIRECT_PIXELS,                    \
                             CONVEXT_DOWN_COLUMN_##SUFFIX);                           \
        }                                                                             \
    }                                                                                 \
}                                                                                     \
                                                                                      \
/* dw (KH, KW, c_in, f) += the weight gradient of convext_direct_forward_*, for    \
 * the padded input x (HP, WP, c_in) and the output gradient dout (OH, OW, f).     \
 * Only x's rows data_top .. data_top + data_h - 1 and columns data_left ..         \
 * data_left + data_w - 1 may hold other values than zeros: the output pixels      \
 * whose tap falls outside them add nothing and are skipped. With fewer input      \
 * channels than a tile holds, a tile runs along the kernel_w * c_in values of a   \
 * kernel row instead, which lie side by side in x and in dw, over every output    \
 * column: for one channel and 3x3 filters, three passes over dout, not nine. The  \
 * columns whose taps fall on the padding are not skipped then. */                \
static inline void convext_direct_weight_grad_##SUFFIX(                               \
    const T *x, Py_ssize_t padded_w, Py_ssize_t c_in, const T *dout, Py_ssize_t f,    \
    T *dw, Py_ssize_t out_h, Py_ssize_t out_w, Py_ssize_t kernel_h,                   \
    Py_ssize_t kernel_w, Py_ssize_t stride_h, Py_ssize_t stride_w,                    \
    Py_ssize_t data_top, Py_ssize_t data_h, Py_ssize_t data_left, Py_ssize_t data_w)  \
{                                                                                     \
    const Py_ssize_t pair = 2 * (Py_ssize_t)(sizeof(VEC) / sizeof(T));                \
    const Py_ssize_t pixel_step = stride_w * c_in;                                    \
    const Py_ssize_t row_step = stride_h * padded_w * c_in;                           \
    const Py_ssize_t dout_row_step = out_w * f;                                       \
    const int by_row = c_in < CONVEXT_DIRECT_CHANNELS;                                \
    const Py_ssize_t tile_span = by_row ? kernel_w * c_in : c_in;                     \
    const Py_ssize_t tile_columns = by_row ? 1 : kernel_w;                            \
    Py_ssize_t ky, kx, f0, oy0, oy1, ox0, ox1;                                        \
    for (ky = 0; ky < kernel_h; ky++) {                                               \
        /* output rows [oy0, oy1) see a row of data through kernel row ky */          \
        oy0 = convext_first_at_least(data_top - ky, stride_h, out_h);                 \
        oy1 = convext_first_at_least(data_top + data_h - ky, stride_h, out_h);        \
        for (kx = 0; kx < tile_columns; kx++) {                                       \
            ox0 = by_row ? 0 : convext_first_at_least(data_left - kx, stride_w, out_w); \
            ox1 = by_row ? out_w                                                      \
                         : convext_first_at_least(data_left + data_w - kx, stride_w,  \
                                                  out_w);                             \
            if (oy1 <= oy0 || ox1 <= ox0)                                             \
                continue;                                                             \
            const T *x_tap = x + ((oy0 * stride_h + ky) * padded_w                    \
                                  + ox0 * stride_w + kx) * c_in;                      \
            const T *dout_tap = dout + (oy0 * out_w + ox0) * f;                       \
            T *dw_tap = dw + (ky * kernel_w + kx) * c_in * f;                         \
            for (f0 = 0; f0 < f; f0 += pair) {                                        \
                CONVEXT_IN_TILES(tile_span, CONVEXT_DIRECT_CHANNELS,                  \
                                 CONVEXT_WEIGHT_CALL_##SUFFIX);                       \
            }                                                                         \
        }                                                                             \
    }                                                                                 \
}

/* Kernel taps [first, last) of a window starting at padded position at, which
 * fall on the data [data_start, data_start + data_size); first <= last. */
#define CONVEXT_TAP_RANGE(first, last, data_start, data_size, at, kernel)             \
    do {                                                                              \
        first = (data_start) - (at) > 0 ? (data_start) - (at) : 0;                    \
        last = (data_start) + (data_size) - (at);                                     \
        last = last < (kernel) ? last : (kernel);                                     \
        last = last > first ? last : first;                                           \
    } while (0)

/* Loops ox over [0, out_w) less the inner columns [ox_lo, ox_hi). */
#define CONVEXT_OUTER_COLUMNS(ox, ox_lo, ox_hi, out_w)                                \
    for (ox = (ox_lo) > 0 ? 0 : (ox_hi); ox < (out_w);                                \
         ox = ox + 1 == (ox_lo) ? (ox_hi) : ox + 1)

/* A forward tile of R output pixels from (oy, ox), the next pixel_step further in
 * the input and out_step in the output, over kernel rows [ky0, ky1) and columns
 * [kx0, kx1). */
#define CONVEXT_FORWARD_PIXELS(SUFFIX, R, oy, ox, pixel_step, out_step)               \
    convext_forward_tile_##SUFFIX##_##R(                                              \
        x + (((oy) * stride_h + ky0) * padded_w + (ox) * stride_w + kx0) * c_in,      \
        pixel_step, row_step, (kx1 - kx0) * c_in, ky1 - ky0,                          \
        w + (ky0 * kernel_w + kx0) * c_in * f + f0, w_row_step, f, start + f0,        \
        out + ((oy) * out_w + (ox)) * f + f0, out_step)
#define CONVEXT_ALONG_ROW(SUFFIX, R, i)                                               \
    CONVEXT_FORWARD_PIXELS(SUFFIX, R, oy, ox_lo + (i), along_row, f)
#define CONVEXT_DOWN_COLUMN(SUFFIX, R, i)                                             \
    CONVEXT_FORWARD_PIXELS(SUFFIX, R, oy_lo + (i), ox, down_col, out_w * f)
#define CONVEXT_WEIGHT_CALL(SUFFIX, R, i)                                             \
    convext_weight_tile_##SUFFIX##_##R(x_tap + (i), pixel_step, row_step,             \
                                       dout_tap + f0, dout_row_step, f, oy1 - oy0,    \
                                       ox1 - ox0, dw_tap + (i) * f + f0)
#define CONVEXT_ALONG_ROW_f(R, i) CONVEXT_ALONG_ROW(f, R, i)
#define CONVEXT_ALONG_ROW_d(R, i) CONVEXT_ALONG_ROW(d, R, i)
#define CONVEXT_DOWN_COLUMN_f(R, i) CONVEXT_DOWN_COLUMN(f, R, i)
#define CONVEXT_DOWN_COLUMN_d(R, i) CONVEXT_DOWN_COLUMN(d, R, i)
#define CONVEXT_WEIGHT_CALL_f(R, i) CONVEXT_WEIGHT_CALL(f, R, i)
#define CONVEXT_WEIGHT_CALL_d(R, i) CONVEXT_WEIGHT_CALL(d, R, i)

CONVEXT_DIRECT(f, float, convext_vec_f)
CONVEXT_DIRECT(d, double, convext_vec_d)

/* Filters a tile covers: f must be a multiple of this for the direct kernels. */
static inline Py_ssize_t convext_direct_lanes_f(void)
{
    return 2 * (Py_ssize_t)(sizeof(convext_vec_f) / sizeof(float));
}
static inline Py_ssize_t convext_direct_lanes_d(void)
{
    return 2 * (Py_ssize_t)(sizeof(convext_vec_d) / sizeof(double));
}

#endif /* CONVEXT_DIRECT_H */
