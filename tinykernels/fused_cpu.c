/* Fused CPU kernels for training small Llamas, compiled on first use by fused_cpu.py.

Why C: on CPU every PyTorch elementwise op is its own pass over memory, and the ops between two
matmuls (RMSNorm, SwiGLU, rotary, the attention softmax, dtype casts) cost as much as the matmuls
themselves once bf16 matmuls run on AMX. Each function here does one such chain in a single pass
per row, with the row held in an fp32 buffer (so bf16 inputs are read once and rounded once on the
way out). Matmuls stay with PyTorch (MKL / oneDNN).

Conventions: every array is contiguous and row-major; a `void *` array holds fp32 or bf16 as its
`bf16` flag says (bf16 = the upper half of an fp32, rounded to nearest even, as PyTorch does).
Rows are split across OpenMP threads; this library links the libgomp that PyTorch has already
loaded, so both share one thread pool and torch.set_num_threads applies here too. Inputs smaller
than PARALLEL_MIN elements (a decoding step's few rows) stay on the calling thread: waking the
pool would cost more than the work.

Shapes: M rows of width D (RMSNorm) or F (SwiGLU); B batch, T time, H query heads, K key/value
heads, Dh head dim, R = rows of attention scores (B * H * T), each of length T.
*/

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

typedef uint16_t bf16;

#define PARALLEL_MIN (1 << 15)

int max_threads(void) { return omp_get_max_threads(); }

static inline float bf16_to_float(bf16 h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline bf16 float_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40u); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                     /* round to nearest even */
    return (bf16)(u >> 16);
}

/* The address of element `index` of an fp32 or bf16 array. */
static inline void *element(const void *base, int bf16_flag, int64_t index) {
    return (char *)base + index * (bf16_flag ? 2 : 4);
}

static void load_row(const void *src, int bf16_flag, int64_t n, float *dst) {
    if (bf16_flag) {
        const bf16 *s = (const bf16 *)src;
        for (int64_t i = 0; i < n; i++) dst[i] = bf16_to_float(s[i]);
    } else {
        memcpy(dst, src, n * sizeof(float));
    }
}

static void store_row(const float *src, int64_t n, void *dst, int bf16_flag) {
    if (bf16_flag) {
        bf16 *d = (bf16 *)dst;
        for (int64_t i = 0; i < n; i++) d[i] = float_to_bf16(src[i]);
    } else {
        memcpy(dst, src, n * sizeof(float));
    }
}

/* ------------------------------------------------------------------ RMSNorm
   y = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps) per row; y may be bf16 while x is fp32
   (under autocast the norm's output feeds a bf16 matmul, so it is rounded here, not in a cast). */
void rms_norm_forward(const void *x, int x_bf16, const float *w, void *y, int y_bf16, float *rstd,
                      int64_t M, int64_t D, float eps) {
#pragma omp parallel if (M * D >= PARALLEL_MIN)
    {
        float row[D];
#pragma omp for schedule(static)
        for (int64_t r = 0; r < M; r++) {
            load_row(element(x, x_bf16, r * D), x_bf16, D, row);
            float sum_sq = 0.0f;
            for (int64_t d = 0; d < D; d++) sum_sq += row[d] * row[d];
            float s = 1.0f / sqrtf(sum_sq / (float)D + eps);
            if (rstd) rstd[r] = s; /* NULL without autograd */
            for (int64_t d = 0; d < D; d++) row[d] = row[d] * s * w[d];
            store_row(row, D, element(y, y_bf16, r * D), y_bf16);
        }
    }
}

/* gx = rstd * (g - x_hat * mean(g * x_hat)) with g = gy * w and x_hat = x * rstd;
   gw = sum over rows of gy * x_hat, accumulated per thread into gw_partial (max_threads() x D,
   zeroed by the caller, summed by the caller). */
void rms_norm_backward(const void *gy, int gy_bf16, const void *x, int x_bf16, const float *w,
                       const float *rstd, void *gx, int gx_bf16, float *gw_partial, int64_t M,
                       int64_t D) {
#pragma omp parallel
    {
        float g[D], x_hat[D];
        float *gw = gw_partial + (int64_t)omp_get_thread_num() * D;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < M; r++) {
            load_row(element(gy, gy_bf16, r * D), gy_bf16, D, g);
            load_row(element(x, x_bf16, r * D), x_bf16, D, x_hat);
            float s = rstd[r], mean_g_xhat = 0.0f;
            for (int64_t d = 0; d < D; d++) {
                x_hat[d] *= s;
                gw[d] += g[d] * x_hat[d];
                g[d] *= w[d];
                mean_g_xhat += g[d] * x_hat[d];
            }
            mean_g_xhat /= (float)D;
            for (int64_t d = 0; d < D; d++) g[d] = (g[d] - x_hat[d] * mean_g_xhat) * s;
            store_row(g, D, element(gx, gx_bf16, r * D), gx_bf16);
        }
    }
}

/* ------------------------------------------------------------------ SwiGLU
   gate_up rows are [gate (F) | up (F)]; h = silu(gate) * up. The backward recomputes the sigmoid
   (one exp) instead of saving silu(gate): cheaper than a pass over a saved tensor. */
void swiglu_forward(const void *gate_up, void *h, int bf16_flag, int64_t M, int64_t F) {
#pragma omp parallel if (M * F >= PARALLEL_MIN)
    {
        float gate[F], up[F];
#pragma omp for schedule(static)
        for (int64_t r = 0; r < M; r++) {
            load_row(element(gate_up, bf16_flag, 2 * r * F), bf16_flag, F, gate);
            load_row(element(gate_up, bf16_flag, 2 * r * F + F), bf16_flag, F, up);
            for (int64_t i = 0; i < F; i++) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
            store_row(gate, F, element(h, bf16_flag, r * F), bf16_flag);
        }
    }
}

/* d gate = grad * up * sig * (1 + gate * (1 - sig)), d up = grad * silu(gate); both halves are
   written into one (M, 2F) gradient, the layout of gate_up. */
void swiglu_backward(const void *grad, const void *gate_up, void *grad_gate_up, int bf16_flag,
                     int64_t M, int64_t F) {
#pragma omp parallel
    {
        float g[F], gate[F], up[F];
#pragma omp for schedule(static)
        for (int64_t r = 0; r < M; r++) {
            load_row(element(grad, bf16_flag, r * F), bf16_flag, F, g);
            load_row(element(gate_up, bf16_flag, 2 * r * F), bf16_flag, F, gate);
            load_row(element(gate_up, bf16_flag, 2 * r * F + F), bf16_flag, F, up);
            for (int64_t i = 0; i < F; i++) {
                float sig = 1.0f / (1.0f + expf(-gate[i]));
                float d_up = g[i] * gate[i] * sig;
                gate[i] = g[i] * up[i] * sig * (1.0f + gate[i] * (1.0f - sig));
                up[i] = d_up;
            }
            store_row(gate, F, element(grad_gate_up, bf16_flag, 2 * r * F), bf16_flag);
            store_row(up, F, element(grad_gate_up, bf16_flag, 2 * r * F + F), bf16_flag);
        }
    }
}

/* ------------------------------------------------------------------ rotary + head-major layout
   qkv (B, T, H + 2K, Dh), token-major as the projection writes it, <-> q (B, H, T, Dh),
   k (B, K, T, Dh), v (B, K, T, Dh), head-major as batched matmuls want them. Query and key heads
   are rotated on the way: dimensions (2j, 2j+1) are one complex number, multiplied by
   rope[t, j] = (cos, sin) going to heads, and by its conjugate coming back (the backward: a
   rotation's transpose is its inverse). One pass replaces rotary, split, transpose copies and casts,
   and their backwards. */
static void rotate(float *row, const float *rope_t, int64_t Dh, float sin_sign) {
    for (int64_t j = 0; j < Dh / 2; j++) {
        float re = row[2 * j], im = row[2 * j + 1];
        float c = rope_t[2 * j], s = sin_sign * rope_t[2 * j + 1];
        row[2 * j] = re * c - im * s;
        row[2 * j + 1] = re * s + im * c;
    }
}

void rotary_layout(void *qkv, void *q, void *k, void *v, int bf16_flag, const float *rope,
                   int64_t B, int64_t T, int64_t H, int64_t K, int64_t Dh, int to_heads) {
    int64_t heads = H + 2 * K;
#pragma omp parallel
    {
        float row[Dh];
#pragma omp for schedule(static)
        for (int64_t bt = 0; bt < B * T; bt++) {
            int64_t b = bt / T, t = bt % T;
            for (int64_t n = 0; n < heads; n++) {
                void *packed = element(qkv, bf16_flag, (bt * heads + n) * Dh);
                void *split;
                if (n < H)
                    split = element(q, bf16_flag, ((b * H + n) * T + t) * Dh);
                else if (n < H + K)
                    split = element(k, bf16_flag, ((b * K + n - H) * T + t) * Dh);
                else
                    split = element(v, bf16_flag, ((b * K + n - H - K) * T + t) * Dh);
                load_row(to_heads ? packed : split, bf16_flag, Dh, row);
                if (n < H + K) rotate(row, rope + t * Dh, Dh, to_heads ? 1.0f : -1.0f);
                store_row(row, Dh, to_heads ? split : packed, bf16_flag);
            }
        }
    }
}

/* ------------------------------------------------------------------ causal softmax
   scores (R, T), in place, row r holding query position i = r % T against keys 0..T-1:
   p[j] = softmax over j <= i of scale * scores[j], and p[j] = 0 for j > i (the probabilities feed a
   matmul with the values, so the masked part must be zeros). */
void causal_softmax_forward(void *scores, int bf16_flag, int64_t R, int64_t T, float scale) {
#pragma omp parallel
    {
        float row[T];
#pragma omp for schedule(static)
        for (int64_t r = 0; r < R; r++) {
            int64_t n = r % T + 1;
            void *dst = element(scores, bf16_flag, r * T);
            load_row(dst, bf16_flag, n, row);
            float max = row[0], sum = 0.0f;
            for (int64_t j = 1; j < n; j++) max = row[j] > max ? row[j] : max;
            for (int64_t j = 0; j < n; j++) {
                row[j] = expf((row[j] - max) * scale);
                sum += row[j];
            }
            float inv = 1.0f / sum;
            for (int64_t j = 0; j < n; j++) row[j] *= inv;
            for (int64_t j = n; j < T; j++) row[j] = 0.0f;
            store_row(row, T, dst, bf16_flag);
        }
    }
}

/* d scores = scale * p * (dp - sum_j p dp), written over dp (the gradient of the probabilities);
   zeros above the diagonal. */
void causal_softmax_backward(const void *probs, void *grad, int bf16_flag, int64_t R, int64_t T,
                             float scale) {
#pragma omp parallel
    {
        float p[T], g[T];
#pragma omp for schedule(static)
        for (int64_t r = 0; r < R; r++) {
            int64_t n = r % T + 1;
            void *dst = element(grad, bf16_flag, r * T);
            load_row(element(probs, bf16_flag, r * T), bf16_flag, n, p);
            load_row(dst, bf16_flag, n, g);
            float dot = 0.0f;
            for (int64_t j = 0; j < n; j++) dot += p[j] * g[j];
            for (int64_t j = 0; j < n; j++) g[j] = scale * p[j] * (g[j] - dot);
            for (int64_t j = n; j < T; j++) g[j] = 0.0f;
            store_row(g, T, dst, bf16_flag);
        }
    }
}

/* ------------------------------------------------------------------ cross-entropy
   logits (N, V), targets (N,) (a negative target is ignored) -> losses (N,) = logsumexp - logit of
   the target, and, in the same pass, the gradient of each loss with respect to its logits,
   softmax - onehot(target) (zeros for ignored rows). Computing the gradient here means the backward
   is a single scaling, instead of the log-softmax, zero-fill, scatter and log-softmax backward
   passes over (N, V) that autograd would make. */
void cross_entropy_forward(const void *logits, int bf16_flag, const int64_t *targets, float *losses,
                           void *grad, int64_t N, int64_t V) {
#pragma omp parallel
    {
        float row[V];
#pragma omp for schedule(static)
        for (int64_t r = 0; r < N; r++) {
            int64_t target = targets[r];
            if (target < 0) {
                losses[r] = 0.0f;
                memset(element(grad, bf16_flag, r * V), 0, V * (bf16_flag ? 2 : 4));
                continue;
            }
            load_row(element(logits, bf16_flag, r * V), bf16_flag, V, row);
            float max = row[0], sum = 0.0f;
            for (int64_t j = 1; j < V; j++) max = row[j] > max ? row[j] : max;
            float target_logit = row[target];
            for (int64_t j = 0; j < V; j++) {
                row[j] = expf(row[j] - max);
                sum += row[j];
            }
            losses[r] = logf(sum) + max - target_logit;
            float inv = 1.0f / sum;
            for (int64_t j = 0; j < V; j++) row[j] *= inv;
            row[target] -= 1.0f;
            store_row(row, V, element(grad, bf16_flag, r * V), bf16_flag);
        }
    }
}

/* ------------------------------------------------------------------ one decoding step of attention
   qkv (B, H + 2K, Dh) fp32, one position's projections: q and k are rotated in place, k and v are
   stored into the layer's cache (B, 2K, T_max, Dh) at slot pos, and y (B, H, Dh) = softmax(scale
   q k^T) v over the row's slots, query head h reading key/value head h / (H / K). One call replaces
   about ten PyTorch ops per layer (rotary, cache writes, attention), each of which costs a few
   microseconds of dispatch at these sizes.
   rope is the whole (T_rope, Dh/2, 2) table, not one position's row, because left-padded prompts
   of different lengths put each row at its own position: left_pad (B,) counts row b's padding
   slots, so its token in slot pos sits at position pos - left_pad[b], and slots 0..left_pad[b]-1
   hold padding that no query may see. left_pad NULL is a batch without padding (every row at pos,
   every slot real). */
void decode_attention(float *qkv, float *cache, const float *rope, const int64_t *left_pad, float *y,
                      int64_t B, int64_t H, int64_t K, int64_t Dh, int64_t T_max, int64_t pos, float scale) {
    int64_t heads = H + 2 * K, group = H / K;
    for (int64_t b = 0; b < B; b++) {
        float *row = qkv + b * heads * Dh;
        const float *rope_t = rope + (pos - (left_pad ? left_pad[b] : 0)) * Dh;
        for (int64_t n = 0; n < H + K; n++) rotate(row + n * Dh, rope_t, Dh, 1.0f);
        for (int64_t n = 0; n < 2 * K; n++)
            memcpy(cache + ((b * 2 * K + n) * T_max + pos) * Dh, row + (H + n) * Dh, Dh * sizeof(float));
    }
#pragma omp parallel for collapse(2) if (B * H * (pos + 1) * Dh >= PARALLEL_MIN)
    for (int64_t b = 0; b < B; b++) {
        for (int64_t h = 0; h < H; h++) {
            // skipping the padding slots outright gives them exactly the zero weight that a -inf
            // score would, without reading them
            int64_t first = left_pad ? left_pad[b] : 0;
            const float *q = qkv + (b * heads + h) * Dh;
            const float *keys = cache + (b * 2 * K + h / group) * T_max * Dh;
            const float *values = cache + (b * 2 * K + K + h / group) * T_max * Dh;
            float p[pos + 1], out[Dh];
            for (int64_t t = first; t <= pos; t++) {
                float dot = 0.0f;
                for (int64_t d = 0; d < Dh; d++) dot += q[d] * keys[t * Dh + d];
                p[t] = dot * scale;
            }
            float max = p[first], sum = 0.0f;
            for (int64_t t = first + 1; t <= pos; t++) max = p[t] > max ? p[t] : max;
            for (int64_t t = first; t <= pos; t++) {
                p[t] = expf(p[t] - max);
                sum += p[t];
            }
            for (int64_t d = 0; d < Dh; d++) out[d] = 0.0f;
            for (int64_t t = first; t <= pos; t++)
                for (int64_t d = 0; d < Dh; d++) out[d] += p[t] * values[t * Dh + d];
            for (int64_t d = 0; d < Dh; d++) y[(b * H + h) * Dh + d] = out[d] / sum;
        }
    }
}
