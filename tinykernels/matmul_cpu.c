/* The matmuls of a decoding step: y (M, N) = x (M, Kd) @ W (Kd, N) [+ residual], for the few rows
(M = the batch, typically 1 to 8) that one generated position has. Compiled with fused_cpu.c into
one library (see fused_cpu.py).

Why not MKL: a decoding step multiplies a handful of rows by every weight matrix of the model once,
so it is a stream of the whole model's weights (60 MB in fp32 for the 14M Llama) through the CPU,
and its speed is the speed of that stream. MKL's few-row products read the weights at 10-20 GB/s on
a 2-core Xeon where a plain sum reads 40-45 GB/s (bench/bench_llama.py's generation rows and
docs/benchmarks.md). Two things close the gap here:
  * The weights are packed once (pack_for_decoding in fused_cpu.py) into column panels: panel p
    holds columns 32p..32p+31 of every row, (Kd, 32) contiguous, zero-padded past N. A panel is then
    one sequential read of Kd * 128 bytes instead of Kd short reads a row apart.
  * Software prefetch PREFETCH_ROWS panel rows ahead: the hardware prefetchers stop at every 4 KB
    page and restart slowly, which costs more than a third of the bandwidth here (measured: 2.6 ms
    without, 1.6 ms with, for the 33 products of one 14M-model step at M = 8).
Each panel's 32 columns for up to 8 rows stay in 16 vector accumulators while the panel streams by;
more rows go round again over the same panel, which is then in L2.

Shapes: M rows of x, Kd inner dimension, N output columns, P = ceil(N / 32) panels.
*/

#include <stdint.h>
#include <string.h>

/* 16 floats: one AVX-512 register, or two AVX2 ones where the CPU has no AVX-512 (gcc splits it).
   aligned(4): the loads below are unaligned. */
typedef float vec16 __attribute__((vector_size(64), aligned(4)));

#define PANEL 32          /* columns per panel: two vec16 */
#define ROWS 8            /* rows of x per pass over a panel: 16 accumulators */
#define PREFETCH_ROWS 32  /* 32 panel rows = 4 KB ahead */
#define PARALLEL_MIN (1 << 16)

static inline vec16 load16(const float *p) {
    vec16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* rows r0..r0+m-1 of y, columns of panel `panel`. always_inline with a constant m (the switch
   below), so that the accumulator loops unroll and live in registers. */
static inline __attribute__((always_inline)) void panel_rows(int m, const float *x, const float *panel_w,
                                                            const float *residual, float *y, int64_t Kd,
                                                            int64_t N, int64_t n0) {
    vec16 acc[ROWS][2];
    for (int r = 0; r < m; r++) acc[r][0] = acc[r][1] = (vec16){0};
    for (int64_t k = 0; k < Kd; k++) {
        const float *w = panel_w + k * PANEL;
        __builtin_prefetch(w + PREFETCH_ROWS * PANEL);
        __builtin_prefetch(w + PREFETCH_ROWS * PANEL + 16);
        vec16 w0 = load16(w), w1 = load16(w + 16);
        for (int r = 0; r < m; r++) {
            float xv = x[r * Kd + k];
            acc[r][0] += xv * w0;
            acc[r][1] += xv * w1;
        }
    }
    int64_t width = N - n0 < PANEL ? N - n0 : PANEL;
    for (int r = 0; r < m; r++) {
        float out[PANEL];
        memcpy(out, acc[r], sizeof out);
        if (residual)
            for (int64_t c = 0; c < width; c++) out[c] += residual[r * N + n0 + c];
        memcpy(y + r * N + n0, out, width * sizeof(float));
    }
}

/* y = x @ W (+ residual, which may be y itself: each element is read before it is written).
   w_packed: (P, Kd, 32) panels from pack_for_decoding. */
void few_row_matmul(const float *x, const float *w_packed, const float *residual, float *y, int64_t M,
                    int64_t Kd, int64_t N) {
    int64_t panels = (N + PANEL - 1) / PANEL;
#pragma omp parallel for schedule(static) if (M * Kd * N >= PARALLEL_MIN)
    for (int64_t p = 0; p < panels; p++) {
        const float *panel_w = w_packed + p * Kd * PANEL;
        for (int64_t r0 = 0; r0 < M; r0 += ROWS) {
            const float *xr = x + r0 * Kd, *res = residual ? residual + r0 * N : NULL;
            float *yr = y + r0 * N;
            switch (M - r0 < ROWS ? M - r0 : ROWS) {
            case 1: panel_rows(1, xr, panel_w, res, yr, Kd, N, p * PANEL); break;
            case 2: panel_rows(2, xr, panel_w, res, yr, Kd, N, p * PANEL); break;
            case 3: panel_rows(3, xr, panel_w, res, yr, Kd, N, p * PANEL); break;
            case 4: panel_rows(4, xr, panel_w, res, yr, Kd, N, p * PANEL); break;
            case 5: panel_rows(5, xr, panel_w, res, yr, Kd, N, p * PANEL); break;
            case 6: panel_rows(6, xr, panel_w, res, yr, Kd, N, p * PANEL); break;
            case 7: panel_rows(7, xr, panel_w, res, yr, Kd, N, p * PANEL); break;
            default: panel_rows(8, xr, panel_w, res, yr, Kd, N, p * PANEL); break;
            }
        }
    }
}

/* The packing few_row_matmul reads: w (Kd, N) -> w_packed (P, Kd, 32), zeros past column N. One
   pass, so that packing a model's weights costs about as much as one decoding step. */
void pack_panels(const float *w, float *w_packed, int64_t Kd, int64_t N) {
    int64_t panels = (N + PANEL - 1) / PANEL;
#pragma omp parallel for schedule(static) if (Kd * N >= PARALLEL_MIN)
    for (int64_t p = 0; p < panels; p++) {
        int64_t width = N - p * PANEL < PANEL ? N - p * PANEL : PANEL;
        for (int64_t k = 0; k < Kd; k++) {
            float *dst = w_packed + (p * Kd + k) * PANEL;
            memcpy(dst, w + k * N + p * PANEL, width * sizeof(float));
            memset(dst + width, 0, (PANEL - width) * sizeof(float));
        }
    }
}
