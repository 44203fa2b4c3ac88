// L0 detect op: one detection step for every slot of the persistent batch.
//
// Same contract as l0/ops/detect_reference.py (the spec) and l0/ops/detect.py.
// Kinds: 1 loop, 2 near-loop, 4 echo, 3 no-progress (in that priority).
// One block per slot; threads stride over periods p = 1..P. Per step each slot
// costs O(P) work and one launch covers the whole batch: no host round trip.
// State layout matches TorchDetector's tensors (row-major [slots, P]).
// No standard headers: NVRTC (CuPy's compiler) has none of the host's.
#define L0_NONE_YET 2147483647  // INT_MAX: "no period found"

extern "C" __global__ void l0_detect_step(
    const long long* __restrict__ tokens,      // [n]   new token per slot, -1 = none
    long long* __restrict__ ring,              // [S,P] token t at column t % P
    long long* __restrict__ pos,               // [S]   tokens seen
    int* __restrict__ run,                     // [S,P]
    int* __restrict__ score,                   // [S,P]
    int* __restrict__ nlen,                    // [S,P]
    int* __restrict__ ncont,                   // [S,P]
    int* __restrict__ blank,                   // [S]
    const int* __restrict__ loop_need,         // [S,P]
    const int* __restrict__ near_need,         // [S,P]
    const int* __restrict__ thr,               // [S] near threshold, thousandths
    const int* __restrict__ content_milli,     // [S]
    const int* __restrict__ max_blank,         // [S]
    const unsigned char* __restrict__ active,  // [S] bool
    const int* __restrict__ content_tab, int content_n,
    const int* __restrict__ blank_tab, int blank_n,
    const int* __restrict__ number_tab, int number_n,
    int* __restrict__ erun,                    // [S,P] near-matching run at lag p
    int* __restrict__ echo,                    // [S,4] echo stretch: score, length, content, echoing
    long long* __restrict__ elag,              // [S]   sum of echo lags over the stretch
    const int* __restrict__ echo_need,         // [S,P]
    const int* __restrict__ echo_cfg,          // [S,4] threshold, span, content (thousandths), expected
    int P,
    int* __restrict__ out_kind,                // [n]
    int* __restrict__ out_period,              // [n]
    long long* __restrict__ out_next,          // [n]
    int* __restrict__ jstate,                  // [S] JSON lexer state, -1 untracked (l0/jsonstate.py)
    int* __restrict__ jdepth,                  // [S] JSON depth
    const int* __restrict__ jnext,             // [3, jn] packed effect: delta * 4 + end state
    int jn)
{
    const int s = blockIdx.x;
    const long long x = tokens[s];
    if (x < 0 || !active[s]) {
        if (threadIdx.x == 0) { out_kind[s] = 0; out_period[s] = 0; out_next[s] = -1; }
        return;
    }
    __shared__ int best_loop, best_near, best_echo;
    if (threadIdx.x == 0) { best_loop = L0_NONE_YET; best_near = L0_NONE_YET; best_echo = L0_NONE_YET; }
    __syncthreads();

    const long long t = pos[s];
    const size_t row = (size_t)s * P;
    const int cont = content_tab[x < content_n ? x : content_n - 1];
    const bool num_x = number_tab[x < number_n ? x : number_n - 1] != 0;
    const int th = thr[s];
    const long long cm = content_milli[s];
    int my_loop = L0_NONE_YET, my_near = L0_NONE_YET, my_echo = L0_NONE_YET;

    for (int i = threadIdx.x; i < P; i += blockDim.x) {
        const int p = i + 1;
        const size_t o = row + i;
        const long long back = t - p;
        const long long prev = back >= 0 ? ring[row + (size_t)(back % P)] : -1;
        const bool m = back >= 0 && prev == x;
        // Near match: two numbers compare equal (a list's counter is no difference).
        const bool mn = m || (back >= 0 && num_x && number_tab[prev < number_n ? prev : number_n - 1] != 0);
        const int r = m ? run[o] + 1 : 0;
        run[o] = r;
        int sc = score[o] + (mn ? 1000 - th : -th);
        int nl = 0, nc = 0;
        if (sc >= 0) { nl = nlen[o] + 1; nc = ncont[o] + (m && cont ? 1 : 0); } else { sc = 0; }
        score[o] = sc; nlen[o] = nl; ncont[o] = nc;
        const int er = mn ? erun[o] + 1 : 0;
        erun[o] = er;
        if (er >= echo_need[o] && p < my_echo) my_echo = p;
        if (r >= loop_need[o] && p < my_loop) my_loop = p;
        if (nl >= near_need[o] && (long long)nc * 1000 >= cm * nl && p < my_near) my_near = p;
    }
    atomicMin(&best_loop, my_loop);
    atomicMin(&best_near, my_near);
    atomicMin(&best_echo, my_echo);
    // Every thread has read the ring before thread 0 overwrites column t % P.
    __syncthreads();

    if (threadIdx.x == 0) {
        ring[row + (size_t)(t % P)] = x;
        const int js = jstate[s];
        if (js >= 0) {
            const int v = jnext[(size_t)js * jn + (x < jn ? x : jn - 1)];
            const int d = jdepth[s] + (v >> 2);
            if (d < 0) { jstate[s] = -1; jdepth[s] = 0; } else { jstate[s] = v & 3; jdepth[s] = d; }
        }
        const long long t1 = t + 1;
        pos[s] = t1;
        const int b = blank_tab[x < blank_n ? x : blank_n - 1] ? blank[s] + 1 : 0;
        blank[s] = b;
        // Echo stretch: a Kadane scan per slot (see the reference).
        int* ec = echo + (size_t)s * 4;
        const int* cfg = echo_cfg + (size_t)s * 4;
        const int lag = best_echo != L0_NONE_YET ? best_echo : 0;
        const int es = ec[0] + (lag ? 1000 - cfg[0] : -cfg[0]);
        if (es >= 0) {
            ec[0] = es; ec[1] += 1; ec[2] += (lag && cont) ? 1 : 0; ec[3] += lag ? 1 : 0;
            elag[s] += lag;
        } else {
            ec[0] = 0; ec[1] = 0; ec[2] = 0; ec[3] = 0;
            elag[s] = 0;
        }
        const long long elen = ec[1];
        const bool echo_ok = lag && elen >= cfg[1] && (long long)ec[2] * 1000 >= (long long)cfg[2] * elen &&
                             elen * ec[3] >= (long long)cfg[3] * elag[s];
        int kind = 0, per = 0;
        if (best_loop != L0_NONE_YET) { kind = 1; per = best_loop; }
        else if (best_near != L0_NONE_YET) { kind = 2; per = best_near; }
        else if (echo_ok) { kind = 4; per = lag; }
        else if (b > max_blank[s]) { kind = 3; }
        out_kind[s] = kind;
        out_period[s] = per;
        out_next[s] = per > 0 ? ring[row + (size_t)(((t1 - per) % P + P) % P)] : -1;
    }
}
