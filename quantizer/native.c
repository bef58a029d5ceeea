/*
 * Fused CPU kernels of the quantizer forward rules (quantizer/functional.py), one pass over
 * memory each, built and loaded by quantizer/native.py.
 *
 * Every kernel computes, element by element, exactly the IEEE single-precision operations of
 * the PyTorch code it replaces (the same subtractions, divisions and roundings, in the same
 * order; round = round half to even = rintf in the default rounding mode), so the results are
 * bit-equal to it: the build turns off floating-point contraction (no fused multiply-add) and
 * fast-math. The power-of-two rounding decides on the float's bits with a table of per-exponent
 * mantissa thresholds that native.py takes from float32 log2 and checks against torch.log2.
 *
 * Each public kernel reads x[0..n) and writes out[0..n); out may be x (in place). Work is cut
 * into spans of SPAN elements, shared by up to `threads` OpenMP threads (the runtime PyTorch
 * itself uses, when the library is built with OpenMP).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
/* one binary that picks the widest vector unit of the machine it runs on */
#define UNET_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define UNET_CLONES
#endif

#define SPAN 16384

#ifdef _OPENMP
#define PARALLEL_SPANS _Pragma("omp parallel for schedule(static) num_threads(threads) if(threads > 1)")
#else
#define PARALLEL_SPANS
#endif

/* Run `call(start, count)` over [0, n) in spans, in parallel. */
#define FOR_SPANS(n, threads, call)                                          \
    do {                                                                     \
        int64_t spans_ = ((n) + SPAN - 1) / SPAN;                            \
        if (spans_ < 2) threads = 1;                                         \
        PARALLEL_SPANS                                                       \
        for (int64_t k_ = 0; k_ < spans_; k_++) {                            \
            int64_t start = k_ * SPAN;                                       \
            int64_t count = (n) - start < SPAN ? (n) - start : SPAN;         \
            call;                                                            \
        }                                                                    \
    } while (0)

static inline uint32_t bits_of(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static inline float float_of(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* Version of this file's interface; native.py refuses a library that reports another. */
int unet_native_abi(void) { return 6; }

/* Whether the library was built with OpenMP (else every kernel runs on the calling thread). */
int unet_native_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/*
 * Power-of-two rounding with a flush and a clamp (functional.fixed_point_pow2 with a
 * min_exponent): with a = |x| clamped to [lo, hi] (as bit patterns; positive floats order as
 * their bits) and E its biased exponent, the rounded magnitude is 2^(E + [mantissa(a) >=
 * threshold[E - first]]), 0 below the pattern keep_from (2^min_exponent), at most the pattern
 * limit; then x's sign. NaN stays x's NaN.
 *
 * Every threshold lies in [t_min, t_max]; a mantissa outside that window rounds the same way
 * for every exponent, so a block of 64 values without one inside it (nearly all blocks: the
 * window is a few units wide out of 2^23) is decided with t_max and no table lookup; a block
 * with one is decided again with the table.
 */
static inline uint32_t pow2_bits(uint32_t u, uint32_t lo, uint32_t hi, uint32_t up, uint32_t keep_from,
                                 uint32_t limit) {
    uint32_t a = u & 0x7fffffffu;
    uint32_t c = a < lo ? lo : (a > hi ? hi : a);
    uint32_t r = ((c >> 23) + up) << 23;
    r = r < keep_from ? 0u : r;
    r = r > limit ? limit : r;
    r = a > 0x7f800000u ? a : r;
    return r | (u & 0x80000000u);
}

static inline uint32_t clamped_mantissa(uint32_t u, uint32_t lo, uint32_t hi) {
    uint32_t a = u & 0x7fffffffu;
    return (a < lo ? lo : (a > hi ? hi : a)) & 0x7fffffu;
}

/* One block of m <= 64 values: decided with t_max; returns whether a value is ambiguous. */
static inline uint32_t pow2_block(const uint32_t *saved, uint32_t *out, int64_t m, uint32_t lo, uint32_t hi,
                                  uint32_t t_min, uint32_t t_max, uint32_t keep_from, uint32_t limit) {
    uint32_t flag[64], ambiguous = 0;
    for (int64_t i = 0; i < m; i++) {
        uint32_t mantissa = clamped_mantissa(saved[i], lo, hi);
        flag[i] = mantissa - t_min < t_max - t_min ? 1u : 0u;
        out[i] = pow2_bits(saved[i], lo, hi, mantissa >= t_max ? 1u : 0u, keep_from, limit);
    }
    for (int64_t i = 0; i < m; i++) ambiguous |= flag[i];
    return ambiguous;
}

UNET_CLONES static void pow2_span(const uint32_t *x, uint32_t *out, int64_t n, uint32_t lo, uint32_t hi,
                                  uint32_t first, const uint32_t *threshold, uint32_t t_min, uint32_t t_max,
                                  uint32_t keep_from, uint32_t limit) {
    uint32_t saved[64]; /* the block's inputs: out may be x */
    for (int64_t b = 0; b < n; b += 64) {
        int64_t m = n - b < 64 ? n - b : 64;
        uint32_t *ob = out + b, ambiguous;
        if (m == 64) { /* fixed trip counts: the compiler unrolls and vectorizes without remainders */
            memcpy(saved, x + b, sizeof saved);
            ambiguous = pow2_block(saved, ob, 64, lo, hi, t_min, t_max, keep_from, limit);
        } else {
            memcpy(saved, x + b, (size_t)m * sizeof *saved);
            ambiguous = pow2_block(saved, ob, m, lo, hi, t_min, t_max, keep_from, limit);
        }
        if (ambiguous) {
            for (int64_t i = 0; i < m; i++) {
                uint32_t a = saved[i] & 0x7fffffffu;
                uint32_t c = a < lo ? lo : (a > hi ? hi : a);
                uint32_t up = (c & 0x7fffffu) >= threshold[(c >> 23) - first] ? 1u : 0u;
                ob[i] = pow2_bits(saved[i], lo, hi, up, keep_from, limit);
            }
        }
    }
}

void unet_pow2(const float *x, float *out, int64_t n, uint32_t lo, uint32_t hi, uint32_t first,
               const uint32_t *threshold, uint32_t t_min, uint32_t t_max, uint32_t keep_from, uint32_t limit,
               int threads) {
    const uint32_t *xi = (const uint32_t *)x;
    uint32_t *oi = (uint32_t *)out;
    FOR_SPANS(n, threads, pow2_span(xi + start, oi + start, count, lo, hi, first, threshold, t_min, t_max,
                                    keep_from, limit));
}

/*
 * Nearest rounding on the grid 1/scale: q = rint(x * scale) / scale, then, when clamp is set,
 * clamped to [-limit, limit] (NaN stays NaN). functional.fixed_point_nearest_saturate, and the
 * in-range branch of fixed_point_nearest_wrap (clamp 0).
 */
UNET_CLONES static void nearest_span(const float *x, float *out, int64_t n, float scale, float limit, int clamp) {
    if (clamp) {
        for (int64_t i = 0; i < n; i++) {
            float q = rintf(x[i] * scale) / scale;
            out[i] = q < -limit ? -limit : (q > limit ? limit : q);
        }
    } else {
        for (int64_t i = 0; i < n; i++) out[i] = rintf(x[i] * scale) / scale;
    }
}

void unet_nearest(const float *x, float *out, int64_t n, float scale, float limit, int clamp, int threads) {
    FOR_SPANS(n, threads, nearest_span(x + start, out + start, count, scale, limit, clamp));
}

/*
 * The wrap rule in general (functional.fixed_point_nearest_wrap outside the in-range case):
 * frac = x - trunc(x), q = clamp(x - frac, -limit, limit) + rint(frac * scale) / scale
 * (NaN and infinities give NaN, as frac(inf) is NaN).
 */
UNET_CLONES static void wrap_span(const float *x, float *out, int64_t n, float scale, float limit) {
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        float frac = v - truncf(v);
        float whole = v - frac;
        whole = whole < -limit ? -limit : (whole > limit ? limit : whole);
        out[i] = whole + rintf(frac * scale) / scale;
    }
}

void unet_wrap(const float *x, float *out, int64_t n, float scale, float limit, int threads) {
    FOR_SPANS(n, threads, wrap_span(x + start, out + start, count, scale, limit));
}

/* Whole numbers of the wrap rule with f = 0: q = trunc(clamp(x, -limit, limit)). */
UNET_CLONES static void clamp_trunc_span(const float *x, float *out, int64_t n, float limit) {
    for (int64_t i = 0; i < n; i++) {
        float c = x[i] < -limit ? -limit : (x[i] > limit ? limit : x[i]);
        out[i] = truncf(c);
    }
}

void unet_clamp_trunc(const float *x, float *out, int64_t n, float limit, int threads) {
    FOR_SPANS(n, threads, clamp_trunc_span(x + start, out + start, count, limit));
}

/*
 * The smallest and largest value of x[0..n) into lo[0], hi[0]; returns 1 when x holds a NaN
 * (then lo and hi are meaningless), else 0. n >= 1.
 */
UNET_CLONES static uint32_t minmax_span(const float *x, int64_t n, float *lo, float *hi) {
    float a[16], b[16];
    uint32_t nan[16];
    for (int j = 0; j < 16; j++) {
        a[j] = b[j] = x[0];
        nan[j] = 0;
    }
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) { /* 16 independent lanes: the compiler keeps them in vectors */
        for (int j = 0; j < 16; j++) {
            float v = x[i + j];
            a[j] = v < a[j] ? v : a[j];
            b[j] = v > b[j] ? v : b[j];
            nan[j] |= v != v ? 1u : 0u;
        }
    }
    for (; i < n; i++) {
        float v = x[i];
        a[0] = v < a[0] ? v : a[0];
        b[0] = v > b[0] ? v : b[0];
        nan[0] |= v != v ? 1u : 0u;
    }
    uint32_t any = 0;
    for (int j = 0; j < 16; j++) {
        a[0] = a[j] < a[0] ? a[j] : a[0];
        b[0] = b[j] > b[0] ? b[j] : b[0];
        any |= nan[j];
    }
    *lo = a[0];
    *hi = b[0];
    return any;
}

int unet_minmax(const float *x, int64_t n, float *lo, float *hi, int threads) {
    float a = x[0], b = x[0];
    uint32_t nan = 0;
    int64_t spans = (n + SPAN - 1) / SPAN;
    if (spans < 2) threads = 1;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if(threads > 1) reduction(min : a) reduction(max : b) reduction(| : nan)
#endif
    for (int64_t k = 0; k < spans; k++) {
        int64_t start = k * SPAN, count = n - start < SPAN ? n - start : SPAN;
        float s_lo, s_hi;
        nan |= minmax_span(x + start, count, &s_lo, &s_hi);
        a = s_lo < a ? s_lo : a;
        b = s_hi > b ? s_hi : b;
    }
    *lo = a;
    *hi = b;
    return (int)nan;
}

/* Min-max integer codes (functional.int_minmax_forward): q = floor((x - lo) / step) - half. */
UNET_CLONES static void int_minmax_span(const float *x, float *out, int64_t n, float lo, float step, float half) {
    for (int64_t i = 0; i < n; i++) out[i] = floorf((x[i] - lo) / step) - half;
}

void unet_int_minmax(const float *x, float *out, int64_t n, float lo, float step, float half, int threads) {
    FOR_SPANS(n, threads, int_minmax_span(x + start, out + start, count, lo, step, half));
}

/*
 * Binarization (functional.binary_forward): -1 where x < 0, else +1 (zeros and NaN give +1).
 * When inside is not NULL it also receives the BNN gradient mask [-1 <= x <= 1] (0 for NaN).
 */
UNET_CLONES static void binary_span(const float *x, float *out, uint8_t *inside, int64_t n) {
    if (inside) {
        for (int64_t i = 0; i < n; i++) {
            float v = x[i];
            inside[i] = (uint8_t)((v >= -1.0f) & (v <= 1.0f));
            out[i] = v < 0.0f ? -1.0f : 1.0f;
        }
    } else {
        for (int64_t i = 0; i < n; i++) out[i] = x[i] < 0.0f ? -1.0f : 1.0f;
    }
}

void unet_binary(const float *x, float *out, uint8_t *inside, int64_t n, int threads) {
    FOR_SPANS(n, threads, binary_span(x + start, out + start, inside ? inside + start : NULL, count));
}

/* The BNN backward: out = inside ? grad : +0. */
UNET_CLONES static void masked_grad_span(const float *grad, const uint8_t *inside, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = inside[i] ? grad[i] : 0.0f;
}

void unet_masked_grad(const float *grad, const uint8_t *inside, float *out, int64_t n, int threads) {
    FOR_SPANS(n, threads, masked_grad_span(grad + start, inside + start, out + start, count));
}

/*
 * Evaluation-mode BatchNorm as PyTorch's CPU kernel computes it, per channel c:
 *   invstd = 1 / sqrt(var[c] + eps), alpha[c] = invstd * weight[c],
 *   beta[c] = bias[c] - mean[c] * alpha[c], y = x * alpha[c] + beta[c],
 * float32 throughout; with fused != 0 the two multiply-adds are fused (one rounding, as a build
 * of PyTorch with FMA contraction computes them), else each operation rounds. native.py finds
 * which of the two the running PyTorch does.
 */
void unet_bn_affine(const float *mean, const float *var, const float *weight, const float *bias, int64_t channels,
                    float eps, int fused, float *alpha, float *beta) {
    for (int64_t c = 0; c < channels; c++) {
        float invstd = 1.0f / sqrtf(var[c] + eps);
        float a = invstd * (weight ? weight[c] : 1.0f);
        float b = bias ? bias[c] : 0.0f;
        alpha[c] = a;
        beta[c] = fused ? fmaf(-mean[c], a, b) : b - mean[c] * a;
    }
}

static inline float relu_of(float v) { return v < 0.0f ? 0.0f : v; } /* NaN and -0 pass, as clamp_min */

/* channels_last: pixels of `channels` values, channel fastest */
UNET_CLONES static void relu_bn_pixels_span(const float *x, float *out, int64_t pixels, int64_t channels,
                                            const float *alpha, const float *beta, int relu, int fused) {
    for (int64_t p = 0; p < pixels; p++) {
        const float *xp = x + p * channels;
        float *op = out + p * channels;
        if (fused && relu)
            for (int64_t c = 0; c < channels; c++) op[c] = fmaf(relu_of(xp[c]), alpha[c], beta[c]);
        else if (fused)
            for (int64_t c = 0; c < channels; c++) op[c] = fmaf(xp[c], alpha[c], beta[c]);
        else if (relu)
            for (int64_t c = 0; c < channels; c++) op[c] = relu_of(xp[c]) * alpha[c] + beta[c];
        else
            for (int64_t c = 0; c < channels; c++) op[c] = xp[c] * alpha[c] + beta[c];
    }
}

/* contiguous NCHW: rows of `inner` values of one channel */
UNET_CLONES static void relu_bn_row(const float *x, float *out, int64_t inner, float a, float b, int relu,
                                    int fused) {
    if (fused && relu)
        for (int64_t i = 0; i < inner; i++) out[i] = fmaf(relu_of(x[i]), a, b);
    else if (fused)
        for (int64_t i = 0; i < inner; i++) out[i] = fmaf(x[i], a, b);
    else if (relu)
        for (int64_t i = 0; i < inner; i++) out[i] = relu_of(x[i]) * a + b;
    else
        for (int64_t i = 0; i < inner; i++) out[i] = x[i] * a + b;
}

/* A quantizer rule applied to BatchNorm's output while it is still in cache (see unet_relu_bn). */
struct unet_post {
    int32_t kind; /* POST_* */
    uint32_t lo, hi, first, t_min, t_max, keep_from, limit; /* pow2 (see unet_pow2) */
    const uint32_t *threshold;
    float scale, bound; /* nearest: rint(x scale) / scale clamped to +-bound; clamp_trunc: bound */
    float code_scale;   /* when not 0: then y = trunc(y code_scale), the integer engine's codes */
};

enum { POST_NONE = 0, POST_POW2 = 1, POST_BINARY = 2, POST_NEAREST_CLAMP = 3, POST_CLAMP_TRUNC = 4 };

UNET_CLONES static void codes_span(float *y, int64_t n, float code_scale) {
    for (int64_t i = 0; i < n; i++) y[i] = truncf(y[i] * code_scale);
}

static void post_span(const struct unet_post *post, float *y, int64_t n) {
    switch (post->kind) {
    case POST_POW2:
        pow2_span((const uint32_t *)y, (uint32_t *)y, n, post->lo, post->hi, post->first, post->threshold,
                  post->t_min, post->t_max, post->keep_from, post->limit);
        break;
    case POST_BINARY:
        binary_span(y, y, NULL, n);
        break;
    case POST_NEAREST_CLAMP:
        nearest_span(y, y, n, post->scale, post->bound, 1);
        break;
    case POST_CLAMP_TRUNC:
        clamp_trunc_span(y, y, n, post->bound);
        break;
    default:
        break;
    }
    if (post->code_scale != 0.0f) codes_span(y, n, post->code_scale);
}

/*
 * out = BatchNorm(relu ? ReLU(x) : x) of an (outer, channels, inner) array: channels_last is
 * (N H W, C, 1), NCHW is (N, C, H W), then, when post is not NULL, post's quantizer rule on
 * each piece of out while it is in cache. When lo is not NULL, also the smallest and largest
 * output into lo[0], hi[0]; returns 1 when the output holds a NaN (lo, hi meaningless), else 0.
 */
int unet_relu_bn(const float *x, float *out, int64_t outer, int64_t channels, int64_t inner, const float *alpha,
                 const float *beta, int relu, int fused, float *lo, float *hi, const struct unet_post *post,
                 int threads) {
    int64_t n = outer * channels * inner;
    if (n == 0) return 0;
    int64_t rows = outer * channels;
    /* pieces of whole pixels (channels_last) or whole rows (NCHW), about SPAN values each */
    int64_t per = inner == 1 ? (SPAN + channels - 1) / channels : (SPAN + inner - 1) / inner;
    int64_t units = inner == 1 ? outer : rows;
    int64_t pieces = (units + per - 1) / per;
    if (pieces < 2) threads = 1;
    float a = INFINITY, b = -INFINITY;
    uint32_t nan = 0;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if(threads > 1) reduction(min : a) reduction(max : b) reduction(| : nan)
#endif
    for (int64_t k = 0; k < pieces; k++) {
        int64_t first = k * per, count = units - first < per ? units - first : per;
        int64_t start, length;
        if (inner == 1) {
            start = first * channels;
            length = count * channels;
            relu_bn_pixels_span(x + start, out + start, count, channels, alpha, beta, relu, fused);
        } else {
            start = first * inner;
            length = count * inner;
            for (int64_t r = first; r < first + count; r++) {
                int64_t c = r % channels;
                relu_bn_row(x + r * inner, out + r * inner, inner, alpha[c], beta[c], relu, fused);
            }
        }
        if (post) post_span(post, out + start, length);
        if (lo) {
            float s_lo, s_hi;
            nan |= minmax_span(out + start, length, &s_lo, &s_hi);
            a = s_lo < a ? s_lo : a;
            b = s_hi > b ? s_hi : b;
        }
    }
    if (lo) {
        *lo = a;
        *hi = b;
    }
    return (int)nan;
}

#define LIMB_CHUNK 1024 /* channels of one pixel formed at once, in a buffer on the stack */

UNET_CLONES static void codes_of(const float *xp, float mult, int32_t *v, int64_t channels) {
    for (int64_t c = 0; c < channels; c++) v[c] = (int32_t)(xp[c] * mult);
}

UNET_CLONES static void up2_pixel(const float *p00, const float *p01, const float *p10, const float *p11, int32_t k00,
                                  int32_t k01, int32_t k10, int32_t k11, int32_t *v, int64_t channels) {
    for (int64_t c = 0; c < channels; c++)
        v[c] = k00 * (int32_t)p00[c] + k01 * (int32_t)p01[c] + k10 * (int32_t)p10[c] + k11 * (int32_t)p11[c];
}

UNET_CLONES static void bytes_of(const int32_t *v, uint8_t *op, int64_t channels, int shift, int32_t mask,
                                 int32_t zero_point, int64_t offset, int64_t second) {
    for (int64_t c = 0; c < channels; c++) op[offset + c] = (uint8_t)(((v[c] >> shift) & mask) + zero_point);
    if (second >= 0)
        for (int64_t c = 0; c < channels; c++) op[second + c] = op[offset + c];
}

/* Every limb's bytes of channels [c0, c0 + n) of one pixel, whose codes are v, at byte `at` of each out. */
static void pixel_bytes(const int32_t *v, int64_t n, int64_t c0, uint8_t *const *outs, int64_t at, int count,
                        const int *shifts, const int *masks, const int *zero_points, int64_t offset, int64_t second) {
    for (int i = 0; i < count; i++)
        bytes_of(v, outs[i] + at, n, shifts[i], masks[i], zero_points[i], offset + c0, second >= 0 ? second + c0 : -1);
}

/*
 * The 8-bit limbs of integer codes held in float32, as the unsigned bytes a oneDNN int8
 * convolution reads (unet/integer/onednn.py), all limbs in one pass. x: `pixels` rows of
 * `channels` values; every v = x * mult (a float32 product, exact for a power-of-two mult) is
 * an integer below 2^24 in magnitude, so (int32_t)v is exact. Limb i = v >> shift[i] (floor), kept
 * to its low bits (& mask[i]; the top limb's mask is -1). outs[i] rows are `width` bytes:
 * limb + zero_point[i] goes to columns offset + c, and with second >= 0 to columns second + c
 * too (the input given twice, see OneDnnConv).
 * The caller has checked every byte fits 0..255.
 */
void unet_limbs_u8(const float *x, uint8_t *const *outs, int count, const int *shifts, const int *masks,
                   const int *zero_points, int64_t pixels, int64_t channels, float mult, int64_t width, int64_t offset,
                   int64_t second, int threads) {
    int64_t per = (2048 + channels - 1) / channels; /* whole pixels per piece */
    int64_t spans = (pixels + per - 1) / per;
    if (spans < 2) threads = 1;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if(threads > 1)
#endif
    for (int64_t k = 0; k < spans; k++) {
        int64_t first = k * per, last = pixels < first + per ? pixels : first + per;
        int32_t v[LIMB_CHUNK];
        for (int64_t p = first; p < last; p++)
            for (int64_t c0 = 0; c0 < channels; c0 += LIMB_CHUNK) {
                int64_t n = channels - c0 < LIMB_CHUNK ? channels - c0 : LIMB_CHUNK;
                codes_of(x + p * channels + c0, mult, v, n);
                pixel_bytes(v, n, c0, outs, p * width, count, shifts, masks, zero_points, offset, second);
            }
    }
}

/*
 * unet_limbs_u8 of the bilinear x2 upsampling (align_corners false) of x, times 16: x holds
 * `images` images of `rows` x `cols` pixels of `channels` integer codes (channels_last, below
 * 2^20 in magnitude); output pixel (Y, X) is sum wy wx x[y][x] over the two nearest rows and
 * columns with weights 3 (the nearer) and 1, edges repeated (unet.integer.kernels.upsample2_codes),
 * computed in int32, then split into byte limbs as unet_limbs_u8 does (mult 1). outs[i] rows:
 * (2 rows) x (2 cols) pixels of `width` bytes.
 */
void unet_up2_limbs_u8(const float *x, uint8_t *const *outs, int count, const int *shifts, const int *masks,
                       const int *zero_points, int64_t images, int64_t rows, int64_t cols, int64_t channels,
                       int64_t width, int64_t offset, int64_t second, int threads) {
    int64_t out_rows = images * 2 * rows;
    if (out_rows < 2) threads = 1;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if(threads > 1)
#endif
    for (int64_t r = 0; r < out_rows; r++) {
        int64_t n = r / (2 * rows), Y = r % (2 * rows), y = Y >> 1;
        int64_t ya = Y & 1 ? y : (y > 0 ? y - 1 : 0), yb = Y & 1 ? (y + 1 < rows ? y + 1 : rows - 1) : y;
        int32_t wa = Y & 1 ? 3 : 1, wb = Y & 1 ? 1 : 3;
        const float *ra = x + (n * rows + ya) * cols * channels, *rb = x + (n * rows + yb) * cols * channels;
        int32_t v[LIMB_CHUNK];
        for (int64_t X = 0; X < 2 * cols; X++) {
            int64_t xc = X >> 1;
            int64_t xa = X & 1 ? xc : (xc > 0 ? xc - 1 : 0), xb = X & 1 ? (xc + 1 < cols ? xc + 1 : cols - 1) : xc;
            int32_t va = X & 1 ? 3 : 1, vb = X & 1 ? 1 : 3;
            for (int64_t c0 = 0; c0 < channels; c0 += LIMB_CHUNK) {
                int64_t m = channels - c0 < LIMB_CHUNK ? channels - c0 : LIMB_CHUNK;
                up2_pixel(ra + xa * channels + c0, ra + xb * channels + c0, rb + xa * channels + c0,
                          rb + xb * channels + c0, wa * va, wa * vb, wb * va, wb * vb, v, m);
                pixel_bytes(v, m, c0, outs, (r * 2 * cols + X) * width, count, shifts, masks, zero_points, offset,
                            second);
            }
        }
    }
}

/*
 * The first float32 step of an integer unit from its accumulator given in limbs
 * (unet/integer/onednn.py): acc = sum_i part_i[k] 2^shift_i, each part a float32 integer, then
 * y = (float)(acc * scale + bias_c) in double precision, the operations and roundings of
 * (acc.to(float64) * scale + bias).float() (acc is exact in double: below 2^53). parts[i]
 * and y are `pixels` rows of `channels` values (channels_last). Returns 1 when some part holds
 * a magnitude of 2^24 or more (it may have been rounded: y is then not to be used), else 0.
 */
UNET_CLONES static int limbs_affine_span(const float *const *parts, const double *factor, int count, int64_t start,
                                         int64_t pixels, int64_t channels, const double *bias, double scale,
                                         float *y) {
    int wide = 0;
    for (int64_t p = 0; p < pixels; p++) {
        int64_t row = start + p * channels;
        const float *a = parts[0] + row;
        const float *b = count > 1 ? parts[1] + row : a;
        const float *c3 = count > 2 ? parts[2] + row : a;
        float *out = y + row;
        if (count == 1) {
            for (int64_t c = 0; c < channels; c++) {
                wide |= !(fabsf(a[c]) < 16777216.0f);
                out[c] = (float)((double)a[c] * factor[0] * scale + bias[c]);
            }
        } else if (count == 2) {
            for (int64_t c = 0; c < channels; c++) {
                wide |= !(fabsf(a[c]) < 16777216.0f) | !(fabsf(b[c]) < 16777216.0f);
                double acc = (double)a[c] * factor[0] + (double)b[c] * factor[1];
                out[c] = (float)(acc * scale + bias[c]);
            }
        } else if (count == 3) {
            for (int64_t c = 0; c < channels; c++) {
                wide |= !(fabsf(a[c]) < 16777216.0f) | !(fabsf(b[c]) < 16777216.0f) | !(fabsf(c3[c]) < 16777216.0f);
                double acc = (double)a[c] * factor[0] + (double)b[c] * factor[1] + (double)c3[c] * factor[2];
                out[c] = (float)(acc * scale + bias[c]);
            }
        } else {
            for (int64_t c = 0; c < channels; c++) {
                double acc = 0.0;
                for (int i = 0; i < count; i++) {
                    float part = parts[i][row + c];
                    wide |= !(fabsf(part) < 16777216.0f);
                    acc += (double)part * factor[i];
                }
                out[c] = (float)(acc * scale + bias[c]);
            }
        }
    }
    return wide;
}

/*
 * A whole integer unit after its convolution, one pass: y as limbs_affine_span forms it from
 * the accumulator's limbs, then (when alpha is not NULL) BatchNorm(ReLU(y)) as unet_relu_bn
 * (channels_last) and post's rule and code scale, written to out (`pixels` rows of
 * `channels`). Returns 1 when some part holds a magnitude of 2^24 or more (out is then not to
 * be used), else 0.
 */
int unet_limbs_unit(const float *const *parts, const int *shifts, int count, int64_t pixels, int64_t channels,
                    const double *bias, double scale, const float *alpha, const float *beta, int relu, int fused,
                    const struct unet_post *post, float *out, int threads) {
    double factor[64];
    if (count > 64) return 1;
    for (int i = 0; i < count; i++) factor[i] = ldexp(1.0, shifts[i]);
    int64_t per = (SPAN + channels - 1) / channels;
    int64_t spans = (pixels + per - 1) / per;
    int wide = 0;
    if (spans < 2) threads = 1;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if(threads > 1) reduction(| : wide)
#endif
    for (int64_t k = 0; k < spans; k++) {
        int64_t first = k * per, n = pixels - first < per ? pixels - first : per;
        float *piece = out + first * channels;
        wide |= limbs_affine_span(parts, factor, count, first * channels, n, channels, bias, scale, out);
        if (alpha) relu_bn_pixels_span(piece, piece, n, channels, alpha, beta, relu, fused);
        if (post) post_span(post, piece, n * channels);
    }
    return wide;
}

