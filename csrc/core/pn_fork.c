/* Fork generation counter bumped by a pthread_atfork child handler. */
#include "core/pn_fork.h"

#include <pthread.h>
#include <stdatomic.h>

/* Process-wide C state, not a Python object: a fork affects the whole
 * process whatever interpreter or module instance observes it. */
static _Atomic uint64_t generation;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static int init_error;

static void
on_fork_child(void)
{
    /* Only this thread exists in the child; relaxed is enough. */
    atomic_fetch_add_explicit(&generation, 1, memory_order_relaxed);
}

static void
install(void)
{
    init_error = -pthread_atfork(NULL, NULL, on_fork_child);
}

int
pn_fork_init(void)
{
    pthread_once(&once, install);
    return init_error;
}

uint64_t
pn_fork_generation(void)
{
    return atomic_load_explicit(&generation, memory_order_relaxed);
}
