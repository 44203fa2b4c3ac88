// L0 act op: apply one step's decisions to the logits, one block per row.
//
// Same contract as l0/ops/act.py (act_torch is the spec). Per row b:
//   latch   = latch ? latch : kind                      (the first detection sticks)
//   closing = closing ? closing : (JSON row and a loop under stop with close-on-loop ? LOOP
//             : JSON row with close-at-budget and max_tok - pos <= margin + depth + in_string + 1 ? BUDGET : 0)
//   stop    = (latched under STOP, or closing) && pos >= min_tokens && the stop
//             token's logit is finite as received   -> every other logit = -inf
//   close   = closing && JSON state known && !stop  -> logits += close_bias[jstate]
//   penalize= next_token >= 0 && !close && (action == PENALIZE || (a stop was wanted but can't))
//             -> logits[next_token] -= penalty
// Arithmetic in float32, rounded once to the logits' dtype. A token that was
// -inf stays -inf; a row with a finite logit keeps one.
// Readout row b (int64 x 8): kind, period, pos, applied, reason, latch, closing, depth.
// No standard headers: NVRTC (CuPy's compiler) has none of the host's.

#define L0_OFF 0
#define L0_STOP 2
#define L0_PENALIZE 3
#define L0_STR 1
#define L0_CLOSE_ON_LOOP 1
#define L0_CLOSE_AT_BUDGET 2

__device__ __forceinline__ bool l0_finite_f32(float x) {
    return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u;
}
__device__ __forceinline__ bool l0_finite_b16(unsigned short h) { return (h & 0x7f80u) != 0x7f80u; }
__device__ __forceinline__ bool l0_finite_h16(unsigned short h) { return (h & 0x7c00u) != 0x7c00u; }

__device__ __forceinline__ float l0_load_b16(unsigned short h) { return __uint_as_float(((unsigned)h) << 16); }
__device__ __forceinline__ unsigned short l0_store_b16(float f) {
    // Round to nearest even, as torch's float -> bfloat16 (NaN cannot arise here).
    unsigned u = __float_as_uint(f);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
__device__ __forceinline__ float l0_load_h16(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ unsigned short l0_store_h16(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
__device__ __forceinline__ float l0_load_f32(float x) { return x; }
__device__ __forceinline__ float l0_store_f32(float x) { return x; }

#define L0_ACT_KERNEL(NAME, T, FINITE, LOAD, STORE, NEG_INF)                                          \
extern "C" __global__ void NAME(                                                                      \
    T* __restrict__ logits, long long row_stride, int V,                                              \
    const int* __restrict__ kind, const int* __restrict__ period,                                     \
    const long long* __restrict__ next_token, const long long* __restrict__ pos,                      \
    const int* __restrict__ jstate, const int* __restrict__ jdepth,                                   \
    int* __restrict__ latch, const int* __restrict__ action, const long long* __restrict__ stop_tok,   \
    const long long* __restrict__ min_tok, const float* __restrict__ penalty,                         \
    const long long* __restrict__ max_tok, const int* __restrict__ close_cfg,                         \
    int* __restrict__ closing, const int* __restrict__ margin, const float* __restrict__ close_bias,   \
    int bias_n,                                                                                       \
    long long* __restrict__ readout)                                                                  \
{                                                                                                     \
    const int b = blockIdx.x;                                                                         \
    T* row = logits + (size_t)b * (size_t)row_stride;                                                 \
    const int k = kind[b];                                                                            \
    const int l = latch[b] != 0 ? latch[b] : k;                                                       \
    const int a = action[b];                                                                          \
    const long long st = stop_tok[b];                                                                 \
    const long long p = pos[b];                                                                       \
    const int js = jstate[b];                                                                         \
    const int jd = jdepth[b];                                                                         \
    const bool stop_open = st >= 0 && st < V && FINITE(row[st]);                                     \
    const bool ready = p >= min_tok[b];                                                               \
    const bool want_stop = l != 0 && a == L0_STOP;                                                    \
    const bool json_ok = js >= 0;                                                                     \
    const int cfg = close_cfg[b];                                                                     \
    const long long need = (long long)(margin[b] + jd + (js >= L0_STR ? 1 : 0) + 1);                  \
    const bool on_loop = json_ok && (cfg & L0_CLOSE_ON_LOOP) && want_stop;                            \
    const bool on_budget = json_ok && (cfg & L0_CLOSE_AT_BUDGET) && max_tok[b] >= 0 &&                \
                           max_tok[b] - p <= need;                                                    \
    const int c = closing[b] != 0 ? closing[b] : (on_loop ? 1 : (on_budget ? 2 : 0));                 \
    const bool stop_row = (want_stop || c != 0) && ready && stop_open;                                \
    const bool close_row = c != 0 && json_ok && !stop_row;                                            \
    const long long nt = next_token[b];                                                               \
    const bool pen_row = nt >= 0 && nt < V && !close_row &&                                           \
                         (a == L0_PENALIZE || (want_stop && !stop_row));                              \
    /* Every thread has read row[st] before any logit is written (st itself is never written). */     \
    __syncthreads();                                                                                  \
    if (stop_row) {                                                                                   \
        for (long long j = threadIdx.x; j < V; j += blockDim.x)                                       \
            if (j != st) row[j] = NEG_INF;                                                            \
    } else if (close_row) {                                                                           \
        const float* bias = close_bias + (size_t)js * (size_t)bias_n;                                 \
        const long long w = V < bias_n ? V : bias_n;                                                  \
        for (long long j = threadIdx.x; j < w; j += blockDim.x)                                       \
            row[j] = STORE(LOAD(row[j]) + bias[j]);                                                   \
    } else if (pen_row && threadIdx.x == 0) {                                                         \
        row[nt] = STORE(LOAD(row[nt]) - penalty[b]);                                                  \
    }                                                                                                 \
    if (threadIdx.x == 0) {                                                                           \
        latch[b] = l;                                                                                 \
        closing[b] = c;                                                                               \
        long long* r = readout + (size_t)b * 8;                                                       \
        r[0] = k; r[1] = period[b]; r[2] = p;                                                         \
        r[3] = stop_row ? 1 : (close_row ? 3 : (pen_row ? 2 : 0));                                    \
        r[4] = (!(want_stop || c != 0) || stop_row) ? 0 : (st < 0 ? 2 : (!ready ? 1 : 3));            \
        r[5] = l; r[6] = c; r[7] = jd;                                                                \
    }                                                                                                 \
}

L0_ACT_KERNEL(l0_act_f32, float, l0_finite_f32, l0_load_f32, l0_store_f32, __int_as_float(0xff800000))
L0_ACT_KERNEL(l0_act_bf16, unsigned short, l0_finite_b16, l0_load_b16, l0_store_b16, (unsigned short)0xff80u)
L0_ACT_KERNEL(l0_act_f16, unsigned short, l0_finite_h16, l0_load_h16, l0_store_h16, (unsigned short)0xfc00u)
