/* pn_spinner: bounded busy-waiting that yields the CPU once it runs long. */
#ifndef PN_SPIN_H
#define PN_SPIN_H

#include "core/pn_futex.h"

#include <sched.h>
#include <stdint.h>

/* Steps that only pause before the spinner starts yielding: on a quiet
 * machine the awaited event comes within these (~1-2 us); on a busy one the
 * thread we wait for may need this very CPU, so later steps yield it. */
#define PN_SPIN_PAUSE_STEPS 32

typedef struct {
    int64_t stop_ns;
    unsigned steps;
} pn_spinner;

/* budget_ns: how long to wait, PN_FOREVER for no limit, <= 0 for none. */
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
    if (++s->steps < PN_SPIN_PAUSE_STEPS) {
        pn_cpu_relax();
        if ((s->steps & 63) != 0) {
            return 1;
        }
    }
    else {
        sched_yield();
    }
    return pn_monotonic_ns() < s->stop_ns;
}

#endif
