/* Waiting without the GIL, and the argument/exception helpers that go
 * with it. */
#ifndef PN_WAIT_H
#define PN_WAIT_H

#include "ext/module.h"
#include "core/pn_spin.h"

#include <stdatomic.h>
#include <stdint.h>

/* The current exception, normalised, with its traceback attached, and the
 * error indicator cleared (PyErr_GetRaisedException on 3.12+). */
PyObject *pn_fetch_exception(void);

/* Parses a concurrent.futures-style timeout: None -> PN_FOREVER, else an
 * absolute monotonic deadline in ns; a timeout <= 0 gives the current time
 * (a non-blocking check).  0 or -1 (TypeError/ValueError set). */
int pn_parse_timeout(PyObject *timeout, int64_t *deadline_ns);

/* Online CPUs (computed once): spinning only pays with more than one. */
int pn_ncpus(void);

/* Sleeps with the GIL released until *word != seen, the deadline passes or
 * a signal arrives; *sleepers counts this thread while it sleeps and
 * *spinners (if not NULL) while it waits at all.  It spins for what
 * `budget` allows and teaches it how long the wait took.  Returns 0
 * (woken or word changed), 1 on timeout, -1 with an exception set (a signal
 * handler raised).  Spins briefly before sleeping. */
int pn_wait_word(_Atomic uint32_t *word, uint32_t seen,
                 _Atomic uint32_t *sleepers, _Atomic uint32_t *spinners,
                 pn_spin_budget *budget, int64_t deadline_ns);

#endif
