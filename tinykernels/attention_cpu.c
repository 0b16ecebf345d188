/* Causal self-attention in fp32 for CPU training at short context (T <= 512): forward and backward.
Compiled with fused_cpu.c into one library (fused_cpu.py); called by tinykernels/attention_cpu.py.
About 3x PyTorch's CPU flash attention (sdpa) forward + backward at the 14M model's shape
(B 8, H 8, T 256, Dh 42): 7 against 21 ms per layer on a 2-core Xeon (docs/benchmarks.md).

Shapes: B batch, H query heads, K key/value heads (K divides H; query head h reads kv head
h / G with G = H / K), T tokens, Dh head dim, Dp = Dh rounded up to 16, Tp = T rounded up to 16,
Tl = Tp + 16 (row stride of T-wide buffers: off a power of two, so a column of them does not crowd
a few L1 sets). q (B, H, T, Dh); k, v, dk, dv (B, K, T, Dh); dq (B, H, T, Dh); y, dy (B, T, H, Dh)
token-major so the output projection reads y with no transpose; lse (B, H, T) = log-sum-exp of the
scaled scores of each query row, so backward recomputes P = exp(scale S - lse) in one pass.

Why not flash-style tiling: at T <= 512 one head's (T, T) probabilities fit in L2, so a task keeps
them whole and every product is a plain GEMM over the causal (lower-triangle) blocks only. All go
through one register-blocked microkernel `tile`:
    out[r, 0:16C] (+)= sum_p A[r*rs + p*ps] * Bm[p*ldb + 0:16C]
A is read one scalar at a time (broadcast), so it may be strided or transposed in place (P^T is P
read with rs=1, ps=Tl) and needs no copy; Bm is read as whole 16-float vectors, so it is a packed,
zero-padded copy (K^T, V^T, K, V) or P, dS as they are. R=8 rows x C<=3 vectors = 24 accumulators
fit the 32 AVX-512 registers beside the C loaded vectors (~160 GFLOP/s per core here, near peak).
The elementwise steps run as the tile's epilogue while its result is in registers: the running row
max of the scores (forward), P = exp(scale S - lse) and dS = P (dP - D) scale (backward), with an
inlined polynomial exp. GCC vector extensions keep all this portable: an AVX2 build splits each
16-float vector in two, correct though slower.

Per task: forward, one (b, h): scores for 32 rows, their softmax, then O = P V. Backward, one
(b, kv head), so the G query heads sharing it accumulate dk, dv without races: per head, P, then dP
and dS (whole triangles), dQ = dS K, and dV^T += dO^T P, dK^T += Q^T dS (transposed so that Dh=42
is not padded to 48 there; transposed back at the end). Tasks go to OpenMP threads (PyTorch's
pool); scratch is per thread, grown once and reused, so steady-state calls never page-fault.
*/

/* every function here is static or takes pointers, so the AVX2 build's note that 64-byte vector
   arguments change the ABI does not apply */
#pragma GCC diagnostic ignored "-Wpsabi"

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64)));
#define RB 8   /* rows per register block (and per softmax block) */
#define MAXC 3 /* 16-float vectors per register block */
#define SB 32  /* rows per forward score block */

static inline int64_t up16(int64_t n) { return (n + 15) & ~(int64_t)15; }
static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

typedef int32_t v16i __attribute__((vector_size(64)));

/* exp(x) for x <= ~0 (scores minus their max or log-sum-exp): 2^n times a degree-5 polynomial
   fitted for relative error (2e-7) on |f| <= ln2 / 2. Inlined, unlike libmvec's, into epilogues. */
static inline __attribute__((always_inline)) v16 vexp(v16 x) {
    v16i low = x < -87.0f; /* below, 2^n leaves the normal range; clamping keeps exp(x) ~ 1e-38 */
    x = (v16)(((v16i)x & ~low) | ((v16i)((v16){0} - 87.0f) & low));
    /* n = round(x / ln 2) for x <= 0.5 ln 2 (conversion truncates toward zero; the 1.5 * 2^23 trick
       would not survive -ffast-math) */
    v16i ni = __builtin_convertvector(x * 1.44269504f - 0.5f, v16i);
    v16 n = __builtin_convertvector(ni, v16);
    v16 f = x - n * 0.693359375f + n * 2.12194440e-4f;
    v16 y = 8.3431560e-3f * f + 4.1936748e-2f; /* exp(f) = 1 + f + f^2 y(f), |f| <= ln2/2: 2e-7 */
    y = y * f + 1.6666840e-1f;
    y = y * f + 4.9998784e-1f;
    y = y * f * f + f + 1.0f;
    return (v16)((v16i)y + (ni << 23));
}

static inline v16 vselect(v16i m, v16 a, v16 b) { return (v16)(((v16i)a & m) | ((v16i)b & ~m)); }
static inline v16 vmax(v16 a, v16 b) { return vselect(a > b, a, b); }
static inline float hmax(v16 x) {
    x = vmax(x, __builtin_shuffle(x, (v16i){8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7}));
    x = vmax(x, __builtin_shuffle(x, (v16i){4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11}));
    x = vmax(x, __builtin_shuffle(x, (v16i){2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13}));
    x = vmax(x, __builtin_shuffle(x, (v16i){1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14}));
    return x[0];
}
static inline float hsum(v16 x) {
    x += __builtin_shuffle(x, (v16i){8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7});
    x += __builtin_shuffle(x, (v16i){4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11});
    x += __builtin_shuffle(x, (v16i){2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13});
    x += __builtin_shuffle(x, (v16i){1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14});
    return x[0];
}

/* What a tile does with its finished accumulators: SCORE stores scale*S and folds it into the rows'
   running max (keys j <= i only); EXP makes P = exp(scale*S - lse), zero past the diagonal; DSOFT
   makes dS = P * (dP - D) * scale (P is already zero there). */
enum { STORE, ADD, SCORE, EXP, DSOFT };
typedef struct {
    int mode;
    float scale;
    const float *row; /* per output row: lse (EXP) or D (DSOFT) */
    const float *p;   /* DSOFT: P, laid out like out */
    int64_t i0, j0;   /* SCORE, EXP: query index of row 0 and key index of column 0 */
    v16 *rmax;        /* SCORE: running lane-wise max of each row's scaled scores j <= i */
    int tri;          /* Bm is lower triangular by 16-row steps: vector c only from reduction step 16c */
} epi_t;

static inline __attribute__((always_inline)) void accumulate(int R, int C, v16 acc[RB][MAXC], const float *A,
                                                             int64_t rs, int64_t ps, const float *Bm, int64_t ldb,
                                                             int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; p++) {
        const v16 *b = (const v16 *)(Bm + p * ldb);
        v16 bv[MAXC];
        for (int c = 0; c < C; c++) bv[c] = b[c];
        for (int r = 0; r < R; r++) {
            float a = A[r * rs + p * ps];
            for (int c = 0; c < C; c++) acc[r][c] += a * bv[c];
        }
    }
}

static inline __attribute__((always_inline)) void tile(int R, int C, const epi_t *e, int64_t col, const float *A, int64_t rs,
                                                       int64_t ps, const float *Bm, int64_t ldb, int64_t np,
                                                       float *out, int64_t ldc) {
    v16 acc[RB][MAXC];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) acc[r][c] = (v16){0};
    if (!e->tri) {
        accumulate(R, C, acc, A, rs, ps, Bm, ldb, 0, np);
    } else { /* skip the zero (and unwritten) part above the diagonal, 16 reduction steps per vector */
        accumulate(R, 1, acc, A, rs, ps, Bm, ldb, 0, C == 1 ? np : min64(np, 16));
        if (C >= 2) accumulate(R, 2, acc, A, rs, ps, Bm, ldb, 16, C == 2 ? np : min64(np, 32));
        if (C >= 3) accumulate(R, 3, acc, A, rs, ps, Bm, ldb, 32, np);
    }
    const v16i iota = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    int mode = e->mode;
    float scale = e->scale;
    const float *row = e->row, *pm = e->p + col;
    int32_t j0 = (int32_t)(e->j0 + col), i0 = (int32_t)e->i0;
    for (int r = 0; r < R; r++) {
        v16 m = mode == SCORE ? e->rmax[r] : (v16){0};
        for (int c = 0; c < C; c++) {
            v16 *o = (v16 *)(out + r * ldc) + c, x = acc[r][c];
            if (mode == ADD) x += *o;
            else if (mode == SCORE) {
                v16i keep = iota + (j0 + 16 * c) <= i0 + r;
                x *= scale;
                m = vmax(m, vselect(keep, x, (v16){0} - INFINITY));
            } else if (mode == EXP) {
                v16i keep = iota + (j0 + 16 * c) <= i0 + r;
                x = (v16)((v16i)vexp(x * scale - row[r]) & keep);
            } else if (mode == DSOFT)
                x = ((const v16 *)(pm + r * ldc))[c] * (x - row[r]) * scale;
            *o = x;
        }
        if (mode == SCORE) e->rmax[r] = m;
    }
}

/* One compiled copy per (rows, vectors) so every loop above unrolls into registers. */
typedef void (*tile_fn)(const epi_t *, int64_t, const float *, int64_t, int64_t, const float *, int64_t, int64_t, float *, int64_t);
#define TILE(R, C)                                                                                   \
    static void tile_##R##_##C(const epi_t *e, int64_t col, const float *A, int64_t rs, int64_t ps, const float *Bm,     \
                               int64_t ldb, int64_t np, float *out, int64_t ldc) {                   \
        tile(R, C, e, col, A, rs, ps, Bm, ldb, np, out, ldc);                                           \
    }
#define TILES(C) TILE(1, C) TILE(2, C) TILE(3, C) TILE(4, C) TILE(5, C) TILE(6, C) TILE(7, C) TILE(8, C)
TILES(1) TILES(2) TILES(3)
#define ROW(C) {0, tile_1_##C, tile_2_##C, tile_3_##C, tile_4_##C, tile_5_##C, tile_6_##C, tile_7_##C, tile_8_##C}
static const tile_fn tiles[MAXC + 1][RB + 1] = {{0}, ROW(1), ROW(2), ROW(3)};

/* R rows x nv vectors of output, cut into near-equal chunks of <= MAXC vectors (4 -> 2+2, not 3+1). */
static void block(int R, int64_t nv, const epi_t *e, const float *A, int64_t rs, int64_t ps, const float *Bm,
                  int64_t ldb, int64_t np, float *out, int64_t ldc) {
    int64_t n = (nv + MAXC - 1) / MAXC;
    for (int64_t k = 0; k < n; k++) {
        int64_t c0 = nv * k / n, c1 = nv * (k + 1) / n;
        tiles[c1 - c0][R](e, 16 * c0, A, rs, ps, Bm + 16 * c0, ldb, np, out + 16 * c0, ldc);
    }
}

/* Per-thread scratch, grown on demand and kept for the life of the thread. */
static float *scratch(int64_t floats) {
    static __thread float *buf;
    static __thread int64_t cap;
    if (floats > cap) {
        free(buf);
        cap = floats + 1024;
        buf = aligned_alloc(64, cap * sizeof(float));
        if (!buf) abort(); /* a few MB per thread at T = 512 */
    }
    return buf;
}

static const epi_t store = {STORE, 0, NULL, NULL, 0, 0, NULL, 0};
static const epi_t store_tri = {STORE, 0, NULL, NULL, 0, 0, NULL, 1}, add_tri = {ADD, 0, NULL, NULL, 0, 0, NULL, 1};

typedef float v16u __attribute__((vector_size(64), aligned(4)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));
typedef float v4u __attribute__((vector_size(16), aligned(4)));

/* dst[0:n] = src[0:n] * mul for one row of Dh floats. Short and frequent: whole vectors, then halves,
   then up to 3 scalars, and an empty asm in the loop, so gcc emits no memmove call (~30 cycles each). */
static inline void copy_row(float *restrict dst, const float *restrict src, int64_t n, float mul) {
    int64_t d = 0;
    for (; d + 16 <= n; d += 16) {
        *(v16u *)(dst + d) = *(const v16u *)(src + d) * mul;
        __asm__ volatile("" ::: "memory");
    }
    if (d + 8 <= n) *(v8u *)(dst + d) = *(const v8u *)(src + d) * mul, d += 8;
    if (d + 4 <= n) *(v4u *)(dst + d) = *(const v4u *)(src + d) * mul, d += 4;
    if (d < n) dst[d] = src[d] * mul, d++;
    if (d < n) dst[d] = src[d] * mul, d++;
    if (d < n) dst[d] = src[d] * mul;
}

/* The dot product of two rows of n floats, in the same pieces as copy_row (D_i = dO_i . O_i). */
static inline float dot_row(const float *x, const float *y, int64_t n) {
    v16 acc = {0};
    int64_t d = 0;
    for (; d + 16 <= n; d += 16) acc += *(const v16u *)(x + d) * *(const v16u *)(y + d);
    float s = hsum(acc);
    if (d + 8 <= n) {
        v8u t = *(const v8u *)(x + d) * *(const v8u *)(y + d);
        s += t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7], d += 8;
    }
    if (d + 4 <= n) {
        v4u t = *(const v4u *)(x + d) * *(const v4u *)(y + d);
        s += t[0] + t[1] + t[2] + t[3], d += 4;
    }
    for (; d < n; d++) s += x[d] * y[d];
    return s;
}

/* x (T, Dh), token stride `stride` -> zero-padded (Tp, Dp), rows T..Tp-1 zero too. Whole unaligned
   vectors, the last one masked to the row's Dh floats: the lanes past the row read the start of the
   next row (so the final rows, whose reads would leave the slab, take the piecewise copy). */
static void pack_rows(const float *x, int64_t T, int64_t Tp, int64_t Dh, int64_t Dp, int64_t stride, float *out) {
    const v16i iota = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    v16i tail = iota < (int32_t)(Dh - (Dp - 16));
    for (int64_t t = 0; t < Tp; t++) {
        v16 *o = (v16 *)(out + t * Dp);
        const float *row = x + t * stride;
        if (t < T && t * stride + Dp <= (T - 1) * stride + Dh) {
            for (int64_t c = 0; c < Dp / 16 - 1; c++) o[c] = *(const v16u *)(row + 16 * c);
            o[Dp / 16 - 1] = (v16)((v16i) * (const v16u *)(row + Dp - 16) & tail);
        } else if (t < T) {
            o[Dp / 16 - 1] = (v16){0};
            copy_row(out + t * Dp, row, Dh, 1.0f);
        } else {
            memset(out + t * Dp, 0, Dp * sizeof(float));
        }
    }
}

/* Transposes a 16x16 block in registers: stage k swaps bit k of the row and column index (rows a,
   b = a | 2^k exchange the halves of their 2^k-wide column groups): 64 shuffles instead of 256
   scalar strided stores. */
static inline __attribute__((always_inline)) void transpose16(v16 m[16]) {
    static const v16i lo[4] = {
        {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30},
        {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29},
        {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27},
        {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23}};
    static const v16i hi[4] = {
        {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31},
        {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31},
        {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31},
        {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31}};
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++)
#pragma GCC unroll 16
        for (int a = 0; a < 16; a++)
            if (!(a & (1 << k))) {
                int b = a | (1 << k);
                v16 ta = __builtin_shuffle(m[a], m[b], lo[k]), tb = __builtin_shuffle(m[a], m[b], hi[k]);
                m[a] = ta, m[b] = tb;
            }
}

/* x (T, Dh) -> transposed (Dp, Tp) with row stride ldo. Blocks read whole rows of 16 from x; lanes
   past Dh hold the next row's start and land in rows Dh..Dp-1 of out, which no product reads (their
   reductions stop at Dh). Only reads that would leave x take the element-wise path, which also
   zeroes tokens T..Tp-1. */
static void pack_transposed(const float *x, int64_t T, int64_t Tp, int64_t Dh, int64_t Dp, float *out, int64_t ldo) {
    for (int64_t r0 = 0; r0 < Tp; r0 += 16)
        for (int64_t c0 = 0; c0 < Dp; c0 += 16) {
            v16 m[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++) {
                int64_t t = r0 + i;
                if (t < T && t * Dh + c0 + 16 <= T * Dh) {
                    m[i] = *(const v16u *)(x + t * Dh + c0);
                } else {
                    m[i] = (v16){0};
                    for (int64_t d = c0; d < Dh && d < c0 + 16 && t < T; d++) m[i][d - c0] = x[t * Dh + d];
                }
            }
            transpose16(m);
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++) *(v16 *)(out + (c0 + i) * ldo + r0) = m[i];
        }
}

/* The inverse: xt (Dh, T), row stride ldx -> out (T, Dh). Rows Dh..Dp-1 of xt are read (never
   written: their values only reach lanes that are not stored). */
static void unpack_transposed(const float *xt, int64_t ldx, int64_t T, int64_t Dh, float *out) {
    for (int64_t t0 = 0; t0 < T; t0 += 16) {
        /* out is usually cold: request the next block's lines for writing ahead of the stores */
        for (int64_t off = (t0 + 16) * Dh; off < min64(t0 + 32, T) * Dh; off += 16) __builtin_prefetch(out + off, 1);
        for (int64_t d0 = 0; d0 < Dh; d0 += 16) {
            v16 m[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++) m[i] = *(const v16 *)(xt + (d0 + i) * ldx + t0);
            transpose16(m);
            for (int i = 0; i < 16 && t0 + i < T; i++) {
                if (d0 + 16 <= Dh) *(v16u *)(out + (t0 + i) * Dh + d0) = m[i];
                else copy_row(out + (t0 + i) * Dh + d0, (const float *)&m[i], Dh - d0, 1.0f);
            }
        }
    }
}

/* Scaled scores of rows i0..i0+R-1 (row stride ld; lane-wise row maxima in rmax, from the SCORE
   epilogue) -> unnormalised exp(s - max), in place, whole vectors with the diagonal's vector masked
   (zeros past it reach i0+R, as far as P V reads, since i0 is a multiple of 8); 1/sum per row in inv. */
static void softmax_rows(float *s, int64_t i0, int R, int64_t ld, const v16 *rmax, float *lse, float *inv) {
    const v16i iota = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    for (int r = 0; r < R; r++) {
        int64_t i = i0 + r, nv = i / 16 + 1; /* vectors holding keys 0..i */
        v16 *row = (v16 *)(s + r * ld), sum = {0};
        float mx = hmax(rmax[r]);
        for (int64_t c = 0; c < nv - 1; c++) sum += row[c] = vexp(row[c] - mx);
        v16 e = (v16)((v16i)vexp(row[nv - 1] - mx) & (iota + (int32_t)(16 * (nv - 1)) <= (int32_t)i));
        sum += row[nv - 1] = e;
        float total = hsum(sum);
        inv[r] = 1.0f / total;
        lse[i] = mx + logf(total);
    }
}

/* Rows [r0, r1) of a causal score-like product out = A Bm (np-long reduction), each row block of RB
   rows only up to the 16-column vector holding its diagonal. Panel-outer: one 48-column panel of Bm
   (K^T or V^T: Dh x 48, 8 KB) stays in L1 while every row block uses it; row-block-outer would stream
   the whole (Dh, T) matrix, larger than L1, per row block (~100 instead of ~160 GFLOP/s). The
   epilogue template e is for row r0 and is shifted to each block's rows. */
static void causal_product(int64_t r0, int64_t r1, const epi_t *e, const float *A, int64_t rs,
                           const float *Bm, int64_t ldb, int64_t np, float *out, int64_t ldo) {
    for (int64_t c0 = 0; c0 < up16(r1) / 16; c0 += MAXC)
        for (int64_t i0 = r0; i0 < r1; i0 += RB) {
            int R = (int)min64(RB, r1 - i0);
            int64_t nv = up16(i0 + R) / 16, d = i0 - r0;
            if (c0 >= nv) continue;
            epi_t eb = *e;
            eb.i0 = i0;
            if (eb.row) eb.row += d;
            if (eb.p) eb.p += d * ldo;
            if (eb.rmax) eb.rmax += d;
            tiles[min64(MAXC, nv - c0)][R](&eb, 16 * c0, A + i0 * rs, rs, 1, Bm + 16 * c0, ldb, np,
                                            out + d * ldo + 16 * c0, ldo);
        }
}

void attention_forward(const float *q, const float *k, const float *v, float *y, float *lse, int64_t B,
                       int64_t H, int64_t K, int64_t T, int64_t Dh, float scale) {
    int64_t G = H / K, Dp = up16(Dh), Tp = up16(T), Tl = Tp + 16;
#pragma omp parallel for schedule(static)
    for (int64_t bh = 0; bh < B * H; bh++) {
        int64_t b = bh / H, h = bh % H, kv = b * K + h / G;
        float *kt = scratch(2 * Dp * Tl + SB * Tl + RB * Dp);
        float *vp = kt + Dp * Tl, *p = vp + Dp * Tl, *o = p + SB * Tl, inv[RB];
        pack_transposed(k + kv * T * Dh, T, Tp, Dh, Dp, kt, Tl);
        pack_rows(v + kv * T * Dh, T, Tp, Dh, Dp, Dh, vp);
        const float *qh = q + bh * T * Dh;
        for (int64_t s0 = 0; s0 < T; s0 += SB) { /* SB rows of scores at a time, so panels are reused */
            int64_t s1 = min64(s0 + SB, T);
            v16 rmax[SB];
            for (int r = 0; r < SB; r++) rmax[r] = (v16){0} - INFINITY;
            epi_t e_score = {SCORE, scale, NULL, NULL, 0, 0, rmax, 0};
            causal_product(s0, s1, &e_score, qh, Dh, kt, Tl, Dh, p, Tl);
            for (int64_t i0 = s0; i0 < s1; i0 += RB) {
                int R = (int)min64(RB, T - i0);
                float *pr = p + (i0 - s0) * Tl;
                softmax_rows(pr, i0, R, Tl, rmax + (i0 - s0), lse + bh * T, inv);
                block(R, Dp / 16, &store, pr, Tl, 1, vp, Dp, i0 + R, o, Dp);
                for (int r = 0; r < R; r++) {
                    float *yr = y + ((b * T + i0 + r) * H + h) * Dh;
                    copy_row(yr, o + r * Dp, Dh, inv[r]);
                    if (i0 + RB + r < T) /* the next block's (cold) rows, for writing */
                        for (int64_t d = 0; d < Dh; d += 16) __builtin_prefetch(yr + RB * H * Dh + d, 1);
                }
            }
        }
    }
}

void attention_backward(const float *q, const float *k, const float *v, const float *y, const float *lse,
                        const float *dy, float *dq, float *dk, float *dv, int64_t B, int64_t H, int64_t K,
                        int64_t T, int64_t Dh, float scale) {
    int64_t G = H / K, Dp = up16(Dh), Tp = up16(T), Tl = Tp + 16;
#pragma omp parallel for schedule(static)
    for (int64_t bk = 0; bk < B * K; bk++) {
        int64_t b = bk / K, kvh = bk % K;
        float *kt = scratch(5 * Dp * Tl + 2 * T * Tl + RB * Dp + T);
        float *vt = kt + Dp * Tl, *kp = vt + Dp * Tl, *dkt = kp + Dp * Tl, *dvt = dkt + Dp * Tl;
        float *p = dvt + Dp * Tl, *ds = p + T * Tl, *dqt = ds + T * Tl, *D = dqt + RB * Dp;
        pack_rows(k + bk * T * Dh, T, Tp, Dh, Dp, Dh, kp);
        pack_transposed(k + bk * T * Dh, T, Tp, Dh, Dp, kt, Tl);
        pack_transposed(v + bk * T * Dh, T, Tp, Dh, Dp, vt, Tl);
        for (int64_t g = 0; g < G; g++) {
            int64_t h = kvh * G + g, bh = b * H + h, ld = H * Dh; /* ld: token stride of y, dy */
            const float *qh = q + bh * T * Dh, *lh = lse + bh * T, *dyh = dy + (b * T * H + h) * Dh;
            const float *yh = y + (b * T * H + h) * Dh;
            for (int64_t i = 0; i < T; i++) D[i] = dot_row(dyh + i * ld, yh + i * ld, Dh);
            /* P = exp(scale S - lse), then dS = P (dO V^T - D) * scale, whole (T, T) triangles; dQ = dS K */
            epi_t e_exp = {EXP, scale, lh, NULL, 0, 0, NULL, 0}, e_ds = {DSOFT, scale, D, p, 0, 0, NULL, 0};
            causal_product(0, T, &e_exp, qh, Dh, kt, Tl, Dh, p, Tl);
            causal_product(0, T, &e_ds, dyh, ld, vt, Tl, Dh, ds, Tl);
            for (int64_t i0 = 0; i0 < T; i0 += RB) {
                int R = (int)min64(RB, T - i0);
                block(R, Dp / 16, &store, ds + i0 * Tl, Tl, 1, kp, Dp, i0 + R, dqt, Dp);
                for (int64_t off = (i0 + RB) * Dh; off < min64(i0 + 2 * RB, T) * Dh; off += 16)
                    __builtin_prefetch(dq + bh * T * Dh + off, 1); /* the next block's rows, for writing */
                for (int r = 0; r < R; r++) copy_row(dq + (bh * T + i0 + r) * Dh, dqt + r * Dp, Dh, 1.0f);
            }
            /* dV^T (+)= dO^T P and dK^T (+)= Q^T dS: key index j along the vectors, so Dh needs no
               padding, and P, dS are read as stored. Panels of 48 keys j0.., queries i >= j0; the tri
               tiles start vector c at query j0 + 16c, so they read only the entries computed above. */
            const epi_t *e = g > 0 ? &add_tri : &store_tri;
            int64_t nb = (Dh + RB - 1) / RB;
            for (int64_t c0 = 0; c0 < Tp / 16; c0 += MAXC) {
                int C = (int)min64(MAXC, Tp / 16 - c0);
                int64_t j0 = 16 * c0;
                for (int64_t kb = 0; kb < nb; kb++) {
                    int64_t d0 = Dh * kb / nb;
                    int R = (int)(Dh * (kb + 1) / nb - d0);
                    tiles[C][R](e, 0, dyh + j0 * ld + d0, 1, ld, p + j0 * Tl + j0, Tl, T - j0, dvt + d0 * Tl + j0, Tl);
                    tiles[C][R](e, 0, qh + j0 * Dh + d0, 1, Dh, ds + j0 * Tl + j0, Tl, T - j0, dkt + d0 * Tl + j0, Tl);
                }
            }
        }
        unpack_transposed(dkt, Tl, T, Dh, dk + bk * T * Dh);
        unpack_transposed(dvt, Tl, T, Dh, dv + bk * T * Dh);
    }
}
