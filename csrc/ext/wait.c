/* Waiting without the GIL: a futex word watched with a short adaptive spin,
 * interruptible by signals, plus the timeout and exception helpers every
 * binding file shares. */
#include "ext/wait.h"
#include "core/pn_futex.h"

#include <errno.h>
#include <unistd.h>

PyObject *
pn_fetch_exception(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (type == NULL) {
        return NULL;
    }
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL) {
        PyException_SetTraceback(value, tb);
        Py_DECREF(tb);
    }
    Py_DECREF(type);
    return value;
#endif
}

int
pn_parse_timeout(PyObject *timeout, int64_t *deadline_ns)
{
    double secs;
    if (timeout == NULL || timeout == Py_None) {
        *deadline_ns = PN_FOREVER;
        return 0;
    }
    secs = PyFloat_AsDouble(timeout);
    if (secs == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (!(secs > 0)) {          /* zero, negative and NaN: just check */
        *deadline_ns = pn_monotonic_ns();
    }
    else if (secs > 1e9) {      /* ~31 years: as good as forever */
        *deadline_ns = PN_FOREVER;
    }
    else {
        *deadline_ns = pn_monotonic_ns() + (int64_t)(secs * 1e9);
    }
    return 0;
}

int
pn_ncpus(void)
{
    /* A plain int, computed once; a benign race if two threads do it. */
    static int n;
    if (n == 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (int)c : 1;
    }
    return n;
}

int
pn_wait_word(_Atomic uint32_t *word, uint32_t seen,
             _Atomic uint32_t *sleepers, _Atomic uint32_t *spinners,
             pn_spin_budget *budget, int64_t deadline_ns)
{
    for (;;) {
        int r = 0;
        Py_BEGIN_ALLOW_THREADS
        int changed = 0;
        /* Tells a worker about to take the GIL for this very task that the
         * GIL is free now (pairs with the acquire load in the worker). */
        if (spinners != NULL) {
            atomic_fetch_add_explicit(spinners, 1, memory_order_release);
        }
        int64_t started = pn_monotonic_ns();
        if (pn_ncpus() > 1) {
            pn_spinner spin;
            int64_t ns = pn_spin_budget_get(budget);
            if (deadline_ns != PN_FOREVER) {
                int64_t left = deadline_ns - pn_monotonic_ns();
                ns = left < ns ? left : ns;
            }
            pn_spinner_init(&spin, ns);
            do {
                if (atomic_load_explicit(word, memory_order_acquire)
                    != seen) {
                    changed = 1;
                    break;
                }
            } while (pn_spinner_step(&spin));
        }
        if (!changed) {
            /* Pairs with the completer's seq_cst store of the word and load
             * of *sleepers: either it sees us here or the kernel sees the
             * new word and does not put us to sleep. */
            atomic_fetch_add_explicit(sleepers, 1, memory_order_seq_cst);
            r = pn_futex_wait(word, seen, deadline_ns, 0);
            atomic_fetch_sub_explicit(sleepers, 1, memory_order_relaxed);
        }
        if (r == 0) {
            pn_spin_budget_learn(budget, pn_monotonic_ns() - started);
        }
        if (spinners != NULL) {
            atomic_fetch_sub_explicit(spinners, 1, memory_order_relaxed);
        }
        Py_END_ALLOW_THREADS
        if (r == -EINTR) {
            if (PyErr_CheckSignals() < 0) {
                return -1;
            }
            if (atomic_load_explicit(word, memory_order_acquire) != seen) {
                return 0;
            }
            continue;
        }
        return r == -ETIMEDOUT ? 1 : 0;
    }
}
