/* Tests of core/pn_spin.h: the bounded spinner. */
#include "core/pn_spin.h"
#include "pn_test.h"

#define MS 1000000LL

PN_TEST(no_budget_stops_at_once)
{
    pn_spinner s;
    pn_spinner_init(&s, 0);
    PN_CHECK_EQ(pn_spinner_step(&s), 0);
    pn_spinner_init(&s, -1000);
    PN_CHECK_EQ(pn_spinner_step(&s), 0);
}

PN_TEST(budget_is_spent_then_stops)
{
    pn_spinner s;
    unsigned long steps = 0;
    int64_t t0 = pn_monotonic_ns();
    pn_spinner_init(&s, 20 * MS);
    while (pn_spinner_step(&s)) {
        steps++;
    }
    int64_t spent = pn_monotonic_ns() - t0;
    PN_CHECK(steps > 0);
    PN_CHECK(spent >= 20 * MS);
    PN_CHECK(spent < 5000 * MS);
    /* Once spent it stays spent. */
    PN_CHECK_EQ(pn_spinner_step(&s), 0);
}

/* PN_FOREVER never runs out; past the pause steps it yields the CPU. */
PN_TEST(forever_keeps_going_past_pause_steps)
{
    pn_spinner s;
    pn_spinner_init(&s, PN_FOREVER);
    for (unsigned i = 0; i < 4 * PN_SPIN_PAUSE_STEPS + 1000; i++) {
        PN_CHECK_EQ(pn_spinner_step(&s), 1);
    }
}

/* A short budget is honoured in the pause phase too: the clock is read
 * every 64 steps, so a 1 us budget ends within a few hundred steps' time
 * rather than after the whole pause phase. */
PN_TEST(tiny_budget_ends_quickly)
{
    pn_spinner s;
    unsigned long steps = 0;
    pn_spinner_init(&s, 1000);
    while (pn_spinner_step(&s)) {
        steps++;
        PN_CHECK(steps < 10000000UL);
    }
}

PN_TEST(missed_spin_learns_or_shrinks)
{
    pn_spin_budget b = PN_SPIN_BUDGET_INIT(100000);
    for (int i = 0; i < 20; i++) {
        pn_spin_budget_learn(&b, INT64_MAX);
    }
    PN_CHECK_EQ(pn_spin_budget_get(&b), PN_SPIN_FLOOR_NS);
    /* The answer came long after a floor spin: the budget recovers. */
    pn_spin_budget_missed(&b, PN_SPIN_FLOOR_NS, 5000);
    PN_CHECK_EQ(pn_spin_budget_get(&b), 10000);
    /* Right after the spin gave up: it may have kept the core; shrink. */
    pn_spin_budget_missed(&b, 10000, 12000);
    PN_CHECK_EQ(pn_spin_budget_get(&b), 5000);
    /* Longer than the most it may spin: shrink too. */
    pn_spin_budget_missed(&b, 5000, 1000000);
    PN_CHECK_EQ(pn_spin_budget_get(&b), 2500);
}

static const pn_test_case cases[] = {
    PN_CASE(missed_spin_learns_or_shrinks),
    PN_CASE(no_budget_stops_at_once),
    PN_CASE(budget_is_spent_then_stops),
    PN_CASE(forever_keeps_going_past_pause_steps),
    PN_CASE(tiny_budget_ends_quickly),
    {NULL, NULL},
};

PN_TEST_MAIN(cases)
