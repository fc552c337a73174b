/* pn_spinner: short bounded busy-waiting before a thread goes to sleep. */
#ifndef PN_SPIN_H
#define PN_SPIN_H

#include "core/pn_futex.h"

#include <sched.h>
#include <stdint.h>

/* A bounded spin only pauses: on a quiet machine the awaited event comes
 * within a few microseconds and no syscall is made; on an oversubscribed
 * one the spin costs at most its budget before the thread sleeps, as the
 * stdlib's threads always do.  (Yielding instead let spinners hand time
 * slices to each other: 100x slower round trips next to busy processes.)
 * Only an unbounded spin (PN_FOREVER) yields, after this many pauses. */
#define PN_SPIN_PAUSE_STEPS 64

typedef struct {
    int64_t stop_ns;        /* 0: no spinning; INT64_MAX: unbounded */
    unsigned steps;
} pn_spinner;

/* budget_ns: how long to spin, PN_FOREVER for no limit, <= 0 for none. */
static inline void
pn_spinner_init(pn_spinner *s, int64_t budget_ns)
{
    if (budget_ns == PN_FOREVER) {
        s->stop_ns = INT64_MAX;
    }
    else {
        s->stop_ns = budget_ns > 0 ? pn_monotonic_ns() + budget_ns : 0;
    }
    s->steps = 0;
}

/* One step of waiting; 0 once the budget is spent. */
static inline int
pn_spinner_step(pn_spinner *s)
{
    if (s->stop_ns == 0) {
        return 0;
    }
    if (s->stop_ns == INT64_MAX) {
        if (++s->steps < PN_SPIN_PAUSE_STEPS) {
            pn_cpu_relax();
        }
        else {
            sched_yield();
        }
        return 1;
    }
    pn_cpu_relax();
    if ((++s->steps & 31) != 0) {
        return 1;
    }
    if (pn_monotonic_ns() < s->stop_ns) {
        return 1;
    }
    s->stop_ns = 0;         /* spent stays spent */
    return 0;
}

/* An adaptive spin budget, learnt from how long waits really take: a wait
 * that ends within max_ns would have been caught by spinning, so the
 * budget grows toward twice its length; a longer one (a slow task, or a
 * machine so busy that the other thread is not running) shrinks it by half
 * down to a floor, so an oversubscribed machine soon stops paying for
 * spins.  Shared by threads without a lock: a lost update only delays the
 * adaptation. */
#define PN_SPIN_FLOOR_NS 500

typedef struct {
    _Atomic int64_t ns;
    int64_t max_ns;
} pn_spin_budget;

#define PN_SPIN_BUDGET_INIT(max) {(max), (max)}

static inline int64_t
pn_spin_budget_get(pn_spin_budget *b)
{
    return __atomic_load_n(&b->ns, __ATOMIC_RELAXED);
}

/* A wait took waited_ns in all (spinning and sleeping). */
static inline void
pn_spin_budget_learn(pn_spin_budget *b, int64_t waited_ns)
{
    int64_t v = __atomic_load_n(&b->ns, __ATOMIC_RELAXED);
    if (waited_ns <= b->max_ns) {
        int64_t want = 2 * waited_ns;
        v = want > v ? want : v;
        v = v > b->max_ns ? b->max_ns : v;
    }
    else {
        v /= 2;
        v = v < PN_SPIN_FLOOR_NS ? PN_SPIN_FLOOR_NS : v;
    }
    __atomic_store_n(&b->ns, v, __ATOMIC_RELAXED);
}

/* A spin of spun_ns missed and the whole wait took waited_ns.  An answer
 * that came long after the spin gave up means the spin was too short: the
 * budget learns the wait (so a budget at its floor recovers).  One that
 * came right after may have waited for the spinner to leave the core they
 * share: the budget shrinks. */
static inline void
pn_spin_budget_missed(pn_spin_budget *b, int64_t spun_ns, int64_t waited_ns)
{
    pn_spin_budget_learn(b, waited_ns > 2 * spun_ns ? waited_ns : INT64_MAX);
}

#endif
