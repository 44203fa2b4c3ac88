// L0 detect op, fused CPU kernel: one detection step for every slot.
//
// Same contract as l0/ops/detect_reference.py (the spec), l0/ops/detect.py and
// kernels/detect.cu, on the same state tensors (row-major [slots, P]) except
// the ring, which is int32 here: gcc does not vectorise the backwards walk
// over an int64 ring next to int32 counters, and it halves the traffic. The
// torch backend spends its time launching ~40 small ops per step; this does
// the whole step in one pass over each slot's counters. Built on first use by
// l0/ops/detect_cpu.py with the host C compiler and called through ctypes.
//
// The inner loop is branch-free so the compiler vectorises it; the ring is
// walked in two straight segments (before / after the wrap) instead of a
// modulo per period.
#include <limits.h>
#include <stddef.h>
#include <stdint.h>

// Best (smallest) loop / near-loop period and echo lag found so far in a slot.
typedef struct {
    int32_t loop, near, echo;
} best_t;

// Periods p = p0 .. p0+len-1, whose previous token is prev[-(p - p0)] and
// whose counters start at run[0] etc. `valid`: t >= p for the whole segment.
// `numbers` (a compile-time constant at each call): x is a number, so an
// earlier number token is a near match too (number_tab lookup = a gather,
// which keeps that variant scalar; the common one vectorises). The body is
// branch-free, with unconditional loads and and-masks instead of selects:
// in this form gcc 12 -O3 vectorises it (checked with -fopt-info-vec).
static inline __attribute__((always_inline)) void cells_body(
    const int numbers, const int32_t *restrict prev, int32_t p0, int len, int32_t valid, int32_t x,
    int32_t *restrict run, int32_t *restrict score, int32_t *restrict nlen, int32_t *restrict ncont,
    int32_t *restrict erun, const int32_t *restrict ln, const int32_t *restrict nn,
    const int32_t *restrict en, int32_t cont, int32_t th, int32_t cm, const int32_t *restrict number_tab,
    int number_n, best_t *restrict best) {
    const int32_t up = 1000 - th;
    int32_t best_loop = best->loop, best_near = best->near, best_echo = best->echo;
    for (int i = 0; i < len; i++) {
        const int32_t pv = prev[-i];
        const int32_t m = valid & (pv == x);
        int32_t mn = m;
        if (numbers) mn |= valid & (number_tab[pv < number_n ? pv : number_n - 1] != 0);
        const int32_t r0 = run[i], s0 = score[i], l0 = nlen[i], c0 = ncont[i], e0 = erun[i];
        const int32_t r = (r0 + 1) & -m;  // masks, not selects: see above
        const int32_t er = (e0 + 1) & -mn;
        const int32_t s = s0 + (mn ? up : -th);
        const int32_t keep = s >= 0;
        const int32_t nl = (l0 + 1) & -keep;
        const int32_t nc = (c0 + (m & cont)) & -keep;
        run[i] = r;
        score[i] = s & -keep;
        nlen[i] = nl;
        ncont[i] = nc;
        erun[i] = er;
        const int32_t p = p0 + i;
        // cond ? p : INT_MAX written as arithmetic (p > 0): gcc 12 vectorises
        // this min-reduction, not the select form.
        const int32_t cl = p | (((int32_t)(r >= ln[i]) - 1) & INT_MAX);
        const int32_t cn = p | (((int32_t)((nl >= nn[i]) & (nc * 1000 >= cm * nl)) - 1) & INT_MAX);
        const int32_t ce = p | (((int32_t)(er >= en[i]) - 1) & INT_MAX);
        best_loop = cl < best_loop ? cl : best_loop;
        best_near = cn < best_near ? cn : best_near;
        best_echo = ce < best_echo ? ce : best_echo;
    }
    best->loop = best_loop;
    best->near = best_near;
    best->echo = best_echo;
}

// Out of line: restrict on parameters (lost on locals after inlining) spares
// the vectoriser run-time alias checks. `number_tab` NULL: x is no number.
__attribute__((noinline)) static void cells(
    const int32_t *restrict prev, int32_t p0, int len, int32_t valid, int32_t x, int32_t *restrict run,
    int32_t *restrict score, int32_t *restrict nlen, int32_t *restrict ncont, int32_t *restrict erun,
    const int32_t *restrict ln, const int32_t *restrict nn, const int32_t *restrict en, int32_t cont,
    int32_t th, int32_t cm, const int32_t *restrict number_tab, int number_n, best_t *restrict best) {
    if (number_tab)
        cells_body(1, prev, p0, len, valid, x, run, score, nlen, ncont, erun, ln, nn, en, cont, th, cm,
                   number_tab, number_n, best);
    else
        cells_body(0, prev, p0, len, valid, x, run, score, nlen, ncont, erun, ln, nn, en, cont, th, cm,
                   NULL, 0, best);
}

static inline int32_t lookup(const int32_t *tab, int n, int64_t x) { return tab[x < n ? x : n - 1]; }

// The JSON tracker of a slot (see l0/jsonstate.py): one packed-table lookup.
static inline void track_json(int32_t *js, int32_t *jd, const int32_t *jnext, int jn, int64_t x) {
    if (*js < 0) return;
    const int32_t v = jnext[(size_t)*js * jn + (x < jn ? x : jn - 1)];
    const int32_t d = *jd + (v >> 2);
    if (d < 0) { *js = -1; *jd = 0; }
    else { *js = v & 3; *jd = d; }
}

// The state and tables of a detector (arguments as in kernels/detect.cu):
// fixed for the detector's life, so the host builds this once and a step
// passes one pointer (a ctypes call converts each argument on every call:
// 30-odd arguments cost more than the step's own work at small batches).
typedef struct {
    int32_t *ring;
    int64_t *pos;
    int32_t *run, *score, *nlen, *ncont, *blank;
    const int32_t *loop_need, *near_need, *thr, *content_milli, *max_blank;
    const uint8_t *active;
    const int32_t *content_tab;
    int content_n;
    const int32_t *blank_tab;
    int blank_n;
    const int32_t *number_tab;
    int number_n;
    int32_t *erun, *echo;
    int64_t *elag;
    const int32_t *echo_need, *echo_cfg;
    int P;
    int32_t *out_kind, *out_period;
    int64_t *out_next;
    int32_t *jstate, *jdepth;
    const int32_t *jnext;
    int jn;
    const int32_t *quiet_unseen;
} l0_detect_args;

// One step of slots 0..n-1 (tokens[s] < 0: no new token). With `latch`
// (int32 [n], may be NULL) the observe-only step of the step core is folded
// in: a slot's latch takes its kind when it has none yet, and the slots
// whose kind differs from `logged` (int32 [n]) are written to `changed` in
// order; returns how many (0 without `latch`).
int l0_detect_step_cpu(const l0_detect_args *a, const int64_t *tokens, int n, int32_t *latch,
                       const int32_t *logged, int32_t *changed) {
    int32_t *ring = a->ring, *run = a->run, *score = a->score, *nlen = a->nlen, *ncont = a->ncont;
    int32_t *blank = a->blank, *erun = a->erun, *echo = a->echo, *out_kind = a->out_kind;
    int32_t *out_period = a->out_period, *jstate = a->jstate, *jdepth = a->jdepth;
    int64_t *pos = a->pos, *elag = a->elag, *out_next = a->out_next;
    const int32_t *loop_need = a->loop_need, *near_need = a->near_need, *thr = a->thr;
    const int32_t *content_milli = a->content_milli, *max_blank = a->max_blank, *echo_need = a->echo_need;
    const int32_t *echo_cfg = a->echo_cfg, *content_tab = a->content_tab, *blank_tab = a->blank_tab;
    const int32_t *number_tab = a->number_tab, *jnext = a->jnext, *quiet_unseen = a->quiet_unseen;
    const uint8_t *active = a->active;
    const int content_n = a->content_n, blank_n = a->blank_n, number_n = a->number_n, P = a->P, jn = a->jn;
    for (int s = 0; s < n; s++) {
        const int64_t x = tokens[s];
        if (x < 0 || !active[s]) {
            out_kind[s] = 0;
            out_period[s] = 0;
            out_next[s] = -1;
            continue;
        }
        const size_t row = (size_t)s * P;
        const int64_t t = pos[s];
        const int tc = (int)(t % P);
        int32_t *rg = ring + row;
        best_t best = {INT_MAX, INT_MAX, INT_MAX};
        const int32_t *num = lookup(number_tab, number_n, x) ? number_tab : NULL;
        const int32_t cont = lookup(content_tab, content_n, x) != 0;
        const int32_t x32 = (int32_t)x;  // token ids < 2**31 (vocab sizes)
        // p = 1..tc: x[t-p] at column tc-p (always seen). p = tc+1..P: column
        // tc-p+P, seen only once the ring has wrapped (t >= P).
        if (tc > 0)
            cells(rg + tc - 1, 1, tc, 1, x32, run + row, score + row, nlen + row, ncont + row, erun + row,
                  loop_need + row, near_need + row, echo_need + row, cont, thr[s], content_milli[s], num,
                  number_n, &best);
        // Periods the slot has not seen yet (t < p, before the ring wraps)
        // stay all-zero, and fire nothing, when quiet_unseen[s] says their
        // thresholds allow it (see detect_cpu.py): a request shorter than P
        // then walks t periods instead of P, and the state it reads and
        // writes shrinks with it.
        const size_t o = row + tc;
        if (t >= P || !quiet_unseen[s])
            cells(rg + P - 1, tc + 1, P - tc, t >= P, x32, run + o, score + o, nlen + o, ncont + o, erun + o,
              loop_need + o, near_need + o, echo_need + o, cont, thr[s], content_milli[s], num, number_n,
              &best);
        rg[tc] = x32;
        track_json(jstate + s, jdepth + s, jnext, jn, x);
        const int64_t t1 = t + 1;
        pos[s] = t1;
        const int32_t b = lookup(blank_tab, blank_n, x) ? blank[s] + 1 : 0;
        blank[s] = b;
        // Echo stretch (a Kadane scan per slot, see the reference).
        int32_t *ec = echo + (size_t)s * 4;  // score, length, content, echoing
        const int32_t *cfg = echo_cfg + (size_t)s * 4;  // threshold, span, content, expected
        const int32_t lag = best.echo != INT_MAX ? best.echo : 0;
        const int32_t es = ec[0] + (lag ? 1000 - cfg[0] : -cfg[0]);
        if (es >= 0) {
            ec[0] = es;
            ec[1] += 1;
            ec[2] += lag && cont;
            ec[3] += lag != 0;
            elag[s] += lag;
        } else {
            ec[0] = ec[1] = ec[2] = ec[3] = 0;
            elag[s] = 0;
        }
        const int64_t elen = ec[1];
        const int echo_ok = lag && elen >= cfg[1] && (int64_t)ec[2] * 1000 >= (int64_t)cfg[2] * elen &&
                            elen * ec[3] >= (int64_t)cfg[3] * elag[s];
        int32_t kind = 0, per = 0;
        if (best.loop != INT_MAX) { kind = 1; per = best.loop; }
        else if (best.near != INT_MAX) { kind = 2; per = best.near; }
        else if (echo_ok) { kind = 4; per = lag; }
        else if (b > max_blank[s]) { kind = 3; }
        out_kind[s] = kind;
        out_period[s] = per;
        out_next[s] = per > 0 ? rg[((t1 - per) % P + P) % P] : -1;
    }
    int c = 0;
    if (latch)
        for (int s = 0; s < n; s++) {
            const int32_t k = out_kind[s];
            if (!latch[s]) latch[s] = k;
            if (k != logged[s]) changed[c++] = s;
        }
    return c;
}
