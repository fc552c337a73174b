/* piston's Handle and TimerHandle: asyncio's callback handles in C, pooled
 * so that call_soon allocates nothing at steady state. */
#include "ext/loop.h"
#include "ext/wait.h"

#include <structmember.h>

/* Pooled objects are dead handles kept with their memory: no references,
 * untracked by the GC, revived with PyObject_Init.  Off under sanitizers so
 * ASan still sees every use after free. */
#ifdef PN_SANITIZE
#define POOL_MAX 0
#else
#define POOL_MAX PN_HANDLE_POOL_SIZE
#endif

pn_handle *
pn_handle_new(pn_state *st, PyTypeObject *tp, PyObject *loop,
              PyObject *callback, PyObject *const *args, Py_ssize_t nargs,
              PyObject *context, int track)
{
    pn_handle *h;
    PyObject *argt = NULL;

    if (nargs > PN_HANDLE_INLINE_ARGS) {
        argt = PyTuple_New(nargs);
        if (argt == NULL) {
            return NULL;
        }
        for (Py_ssize_t i = 0; i < nargs; i++) {
            PyTuple_SET_ITEM(argt, i, Py_NewRef(args[i]));
        }
    }
    if (context == NULL || context == Py_None) {
        context = PyContext_CopyCurrent();
        if (context == NULL) {
            Py_XDECREF(argt);
            return NULL;
        }
    }
    else {
        Py_INCREF(context);
    }
    if (st->handle_pool_len > 0) {
        h = st->handle_pool[--st->handle_pool_len];
        PyObject_Init((PyObject *)h, tp);
    }
    else {
        h = PyObject_GC_New(pn_handle, tp);
        if (h == NULL) {
            Py_XDECREF(argt);
            Py_DECREF(context);
            return NULL;
        }
    }
    h->callback = Py_NewRef(callback);
    h->args = argt;
    h->nargs = nargs;
    if (argt == NULL) {
        for (Py_ssize_t i = 0; i < nargs; i++) {
            h->argv[i] = Py_NewRef(args[i]);
        }
    }
    h->context = context;
    h->loop = Py_NewRef(loop);
    h->source_traceback = NULL;
    h->repr = NULL;
    h->weakreflist = NULL;
    h->cancelled = 0;
    h->untracked = !track;
    h->ctx_shared = 0;
    pn_timer_init(&h->timer, 0.0);
    if (track) {
        PyObject_GC_Track(h);
    }
    return h;
}

static int
handle_traverse(pn_handle *h, visitproc visit, void *arg)
{
    return pn_handle_visit_fields(h, visit, arg);
}

/* Drops the callback's arguments, inline and any tuple. */
static void
clear_args(pn_handle *h)
{
    Py_ssize_t n = h->nargs;
    h->nargs = 0;
    if (n <= PN_HANDLE_INLINE_ARGS) {
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_CLEAR(h->argv[i]);
        }
    }
    Py_CLEAR(h->args);
}

static int
handle_clear(pn_handle *h)
{
    Py_CLEAR(h->callback);
    clear_args(h);
    h->ctx_shared = 0;
    Py_CLEAR(h->context);
    Py_CLEAR(h->loop);
    Py_CLEAR(h->source_traceback);
    Py_CLEAR(h->repr);
    return 0;
}

static void
handle_dealloc(pn_handle *h)
{
    PyTypeObject *tp = Py_TYPE(h);
    pn_state *st = PyType_GetModuleState(tp);

    PyObject_GC_UnTrack(h);
    if (h->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)h);
    }
    handle_clear(h);
    if (st != NULL && st->handle_pool_len < POOL_MAX) {
        st->handle_pool[st->handle_pool_len++] = h;
    }
    else {
        PyObject_GC_Del(h);
    }
    Py_DECREF(tp);
}

void
pn_handle_pool_clear(pn_state *st)
{
    while (st->handle_pool_len > 0) {
        PyObject_GC_Del(st->handle_pool[--st->handle_pool_len]);
    }
}

/* Context snapshots.  A handle scheduled without context= must run in a
 * copy of the context current when it was scheduled, a copy no other
 * callback sees (a ContextVar set by one callback must not leak into
 * another).  Copies taken while the current context keeps the same
 * variables hold the very same immutable mapping, so one snapshot stands
 * for all of them until a handle needs a context object of its own: when
 * its callback runs, or when get_context() hands it out.  The copy made
 * then is fresh and dies with the handle, while a 100k burst of timers
 * otherwise kept 100k contexts alive, touched again in deadline order
 * (bench loop, "100k timers firing"). */

struct one_referent {
    PyObject *obj;
    int count;
};

static int
note_referent(PyObject *obj, void *arg)
{
    struct one_referent *r = arg;
    r->obj = obj;
    r->count++;
    return 0;
}

/* The variables mapping a Context wraps: its one GC referent when it is
 * not entered (gc.get_referents shows the same).  NULL when it does not
 * look like that: then no snapshot is shared. */
static const void *
context_vars(PyObject *ctx)
{
    struct one_referent r = {NULL, 0};
    if (!PyContext_CheckExact(ctx) || Py_TYPE(ctx)->tp_traverse == NULL) {
        return NULL;
    }
    (void)Py_TYPE(ctx)->tp_traverse(ctx, note_referent, &r);
    return r.count == 1 ? r.obj : NULL;
}

PyObject *
pn_loop_context_snapshot(pn_loop *loop)
{
    PyObject *copy = PyContext_CopyCurrent();
    const void *vars;

    if (copy == NULL) {
        return NULL;
    }
    vars = context_vars(copy);
    /* The snapshot keeps its mapping alive, so an equal address is the
     * same mapping, not a new one at a reused address. */
    if (vars != NULL && vars == loop->ctx_snapshot_vars) {
        Py_DECREF(copy);
        return Py_NewRef(loop->ctx_snapshot);
    }
    Py_XSETREF(loop->ctx_snapshot, Py_NewRef(copy));
    loop->ctx_snapshot_vars = vars;
    return copy;
}

int
pn_handle_own_context(pn_handle *h)
{
    PyObject *copy;
    if (!h->ctx_shared || h->context == NULL) {
        return 0;
    }
    copy = PyContext_Copy(h->context);
    if (copy == NULL) {
        return -1;
    }
    Py_SETREF(h->context, copy);
    h->ctx_shared = 0;
    return 0;
}

int
pn_handle_run(pn_handle *h)
{
    pn_state *st;
    PyObject *res = NULL, *exc, *r;
    PyObject *cb = h->callback;
    PyObject *args = h->args;
    PyObject *stack[PN_HANDLE_INLINE_ARGS];
    PyObject *const *argp = stack;
    Py_ssize_t nargs = h->nargs;

    if (cb == NULL) {
        return 0;
    }
    /* The callback may cancel its own handle: keep what we call alive. */
    Py_INCREF(cb);
    if (nargs > PN_HANDLE_INLINE_ARGS) {
        Py_INCREF(args);
        argp = &PyTuple_GET_ITEM(args, 0);
    }
    else {
        for (Py_ssize_t i = 0; i < nargs; i++) {
            stack[i] = Py_NewRef(h->argv[i]);
        }
    }
    if (pn_handle_own_context(h) == 0 && PyContext_Enter(h->context) == 0) {
        res = PyObject_Vectorcall(cb, argp, nargs, NULL);
        if (PyContext_Exit(h->context) < 0) {
            Py_CLEAR(res);
        }
    }
    Py_DECREF(cb);
    if (nargs > PN_HANDLE_INLINE_ARGS) {
        Py_DECREF(args);
    }
    else {
        for (Py_ssize_t i = 0; i < nargs; i++) {
            Py_DECREF(stack[i]);
        }
    }
    if (res != NULL) {
        Py_DECREF(res);
        return 0;
    }
    if (PyErr_ExceptionMatches(PyExc_SystemExit)
        || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
        return -1;
    }
    exc = pn_fetch_exception();
    st = PyType_GetModuleState(Py_TYPE(h));
    r = PyObject_CallMethodObjArgs(h->loop, st->str__pn_callback_error,
                                   (PyObject *)h, exc ? exc : Py_None, NULL);
    Py_XDECREF(exc);
    if (r == NULL) {
        /* The exception handler itself raised something fatal. */
        if (PyErr_ExceptionMatches(PyExc_SystemExit)
            || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
            return -1;
        }
        PyErr_WriteUnraisable((PyObject *)h);
        return 0;
    }
    Py_DECREF(r);
    return 0;
}

void
pn_handle_cancel_core(pn_handle *h)
{
    h->cancelled = 1;
    Py_CLEAR(h->callback);
    clear_args(h);
}

static PyObject *
handle_cancel(pn_handle *h, PyObject *Py_UNUSED(ignored))
{
    pn_state *st = PyType_GetModuleState(Py_TYPE(h));
    pn_loop *loop = NULL;

    if (h->cancelled) {
        Py_RETURN_NONE;
    }
    if (st != NULL && h->loop != NULL
        && PyObject_TypeCheck(h->loop, st->LoopCoreType)) {
        loop = (pn_loop *)h->loop;
    }
    /* Debug mode keeps a readable repr of what was cancelled. */
    if (loop != NULL && loop->debug && h->repr == NULL) {
        h->repr = PyObject_Repr((PyObject *)h);
        if (h->repr == NULL) {
            return NULL;
        }
    }
    /* The heap's reference may be the last one but the caller's: hold one
     * while the handle leaves the heap. */
    Py_INCREF(h);
    pn_handle_cancel_core(h);
    if (loop != NULL && pn_timer_queued(&h->timer)) {
        pn__loop_timer_cancelled(loop, h);
    }
    Py_DECREF(h);
    Py_RETURN_NONE;
}

static PyObject *
handle_cancelled(pn_handle *h, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(h->cancelled);
}

static PyObject *
handle_get_context(pn_handle *h, PyObject *Py_UNUSED(ignored))
{
    if (pn_handle_own_context(h) < 0) {
        return NULL;
    }
    return Py_NewRef(h->context ? h->context : Py_None);
}

static PyObject *
handle_get_context_attr(pn_handle *h, void *Py_UNUSED(c))
{
    return handle_get_context(h, NULL);
}

static PyObject *
handle_run_method(pn_handle *h, PyObject *Py_UNUSED(ignored))
{
    if (!h->cancelled && pn_handle_run(h) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
handle_repr(pn_handle *h)
{
    pn_state *st = PyType_GetModuleState(Py_TYPE(h));
    if (h->repr != NULL) {
        return Py_NewRef(h->repr);
    }
    if (st != NULL && st->handle_repr != NULL) {
        return PyObject_CallOneArg(st->handle_repr, (PyObject *)h);
    }
    return PyUnicode_FromFormat("<%s object at %p>", Py_TYPE(h)->tp_name,
                                (void *)h);
}

static PyObject *
handle_get_callback(pn_handle *h, void *Py_UNUSED(c))
{
    return Py_NewRef(h->callback ? h->callback : Py_None);
}

/* The arguments as a tuple (kept, so `_args` is the same object each
 * time), or None once cancelled. */
static PyObject *
handle_args_tuple(pn_handle *h)
{
    if (h->callback == NULL) {
        return Py_None;
    }
    if (h->args == NULL) {
        PyObject *t = PyTuple_New(h->nargs);
        if (t == NULL) {
            return NULL;
        }
        for (Py_ssize_t i = 0; i < h->nargs; i++) {
            PyTuple_SET_ITEM(t, i, Py_NewRef(h->argv[i]));
        }
        h->args = t;
    }
    return h->args;
}

static PyObject *
handle_get_args(pn_handle *h, void *Py_UNUSED(c))
{
    return Py_XNewRef(handle_args_tuple(h));
}

static PyObject *
handle_get_cancelled(pn_handle *h, void *Py_UNUSED(c))
{
    return PyBool_FromLong(h->cancelled);
}

static PyObject *
handle_get_obj(pn_handle *h, void *closure)
{
    PyObject *o = *(PyObject **)((char *)h + (Py_ssize_t)closure);
    return Py_NewRef(o ? o : Py_None);
}

static int
handle_set_obj(pn_handle *h, PyObject *v, void *closure)
{
    PyObject **slot = (PyObject **)((char *)h + (Py_ssize_t)closure);
    Py_XSETREF(*slot, v == Py_None ? NULL : Py_XNewRef(v));
    return 0;
}

static PyGetSetDef handle_getset[] = {
    {"_callback", (getter)handle_get_callback, NULL, NULL, NULL},
    {"_args", (getter)handle_get_args, NULL, NULL, NULL},
    {"_cancelled", (getter)handle_get_cancelled, NULL, NULL, NULL},
    {"_loop", (getter)handle_get_obj, NULL, NULL,
     (void *)offsetof(pn_handle, loop)},
    {"_context", (getter)handle_get_context_attr, NULL, NULL, NULL},
    {"_source_traceback", (getter)handle_get_obj, (setter)handle_set_obj,
     NULL, (void *)offsetof(pn_handle, source_traceback)},
    {"_repr", (getter)handle_get_obj, (setter)handle_set_obj, NULL,
     (void *)offsetof(pn_handle, repr)},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef handle_methods[] = {
    {"cancel", (PyCFunction)handle_cancel, METH_NOARGS,
     "Cancel the call; a no-op if it already ran or was cancelled."},
    {"cancelled", (PyCFunction)handle_cancelled, METH_NOARGS,
     "True if the call was cancelled."},
    {"get_context", (PyCFunction)handle_get_context, METH_NOARGS,
     "The contextvars.Context the callback runs in."},
    {"_run", (PyCFunction)handle_run_method, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef handle_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(pn_handle, weakreflist),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot handle_slots[] = {
    {Py_tp_dealloc, handle_dealloc},
    {Py_tp_traverse, handle_traverse},
    {Py_tp_clear, handle_clear},
    {Py_tp_repr, handle_repr},
    {Py_tp_methods, handle_methods},
    {Py_tp_getset, handle_getset},
    {Py_tp_members, handle_members},
    {Py_tp_doc, "A callback scheduled on a piston loop (asyncio.Handle's "
                "API)."},
    {0, NULL},
};

static PyType_Spec handle_spec = {
    .name = "piston.Handle",
    .basicsize = sizeof(pn_handle),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE
             | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = handle_slots,
};

/* TimerHandle */

static PyObject *
timer_when(pn_handle *h, PyObject *Py_UNUSED(ignored))
{
    return PyFloat_FromDouble(h->timer.when);
}

static PyObject *
timer_get_when(pn_handle *h, void *Py_UNUSED(c))
{
    return PyFloat_FromDouble(h->timer.when);
}

static PyObject *
timer_get_scheduled(pn_handle *h, void *Py_UNUSED(c))
{
    return PyBool_FromLong(pn_timer_queued(&h->timer));
}

static Py_hash_t
timer_hash(pn_handle *h)
{
    PyObject *f = PyFloat_FromDouble(h->timer.when);
    Py_hash_t r;
    if (f == NULL) {
        return -1;
    }
    r = PyObject_Hash(f);
    Py_DECREF(f);
    return r;
}

static PyObject *
timer_richcompare(pn_handle *a, PyObject *other, int op)
{
    pn_handle *b;
    int eq;

    if (!PyObject_TypeCheck(other, Py_TYPE(a))
        && !PyObject_TypeCheck((PyObject *)a, Py_TYPE(other))) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    b = (pn_handle *)other;
    switch (op) {
    case Py_LT:
        return PyBool_FromLong(a->timer.when < b->timer.when);
    case Py_GT:
        return PyBool_FromLong(a->timer.when > b->timer.when);
    case Py_LE:
        if (a->timer.when < b->timer.when) {
            Py_RETURN_TRUE;
        }
        op = Py_EQ;
        break;
    case Py_GE:
        if (a->timer.when > b->timer.when) {
            Py_RETURN_TRUE;
        }
        op = Py_EQ;
        break;
    default:
        break;
    }
    /* Equal: same deadline, callback, args and cancelled state. */
    eq = a->timer.when == b->timer.when && a->cancelled == b->cancelled;
    if (eq) {
        int r = PyObject_RichCompareBool(
            a->callback ? a->callback : Py_None,
            b->callback ? b->callback : Py_None, Py_EQ);
        if (r < 0) {
            return NULL;
        }
        eq = r;
    }
    if (eq) {
        PyObject *aa = handle_args_tuple(a), *ba;
        int r = -1;
        if (aa != NULL && (ba = handle_args_tuple(b)) != NULL) {
            r = PyObject_RichCompareBool(aa, ba, Py_EQ);
        }
        if (r < 0) {
            return NULL;
        }
        eq = r;
    }
    if (op == Py_NE) {
        eq = !eq;
    }
    return PyBool_FromLong(eq);
}

static PyGetSetDef timer_getset[] = {
    {"_when", (getter)timer_get_when, NULL, NULL, NULL},
    {"_scheduled", (getter)timer_get_scheduled, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef timer_methods[] = {
    {"when", (PyCFunction)timer_when, METH_NOARGS,
     "The loop.time() at which the callback is scheduled."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot timer_slots[] = {
    {Py_tp_dealloc, handle_dealloc},
    {Py_tp_traverse, handle_traverse},
    {Py_tp_clear, handle_clear},
    {Py_tp_hash, timer_hash},
    {Py_tp_richcompare, timer_richcompare},
    {Py_tp_methods, timer_methods},
    {Py_tp_getset, timer_getset},
    {Py_tp_doc, "A callback scheduled at a time on a piston loop "
                "(asyncio.TimerHandle's API)."},
    {0, NULL},
};

static PyType_Spec timer_spec = {
    .name = "piston.TimerHandle",
    .basicsize = sizeof(pn_handle),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = timer_slots,
};

static PyObject *
set_handle_repr(PyObject *m, PyObject *fn)
{
    pn_state *st = PyModule_GetState(m);
    Py_XSETREF(st->handle_repr, fn == Py_None ? NULL : Py_NewRef(fn));
    Py_RETURN_NONE;
}

static PyObject *
set_extract_stack(PyObject *m, PyObject *fn)
{
    pn_state *st = PyModule_GetState(m);
    Py_XSETREF(st->extract_stack, fn == Py_None ? NULL : Py_NewRef(fn));
    Py_RETURN_NONE;
}

static PyMethodDef handle_module_methods[] = {
    {"_set_handle_repr", set_handle_repr, METH_O,
     "Installs the function that formats Handle reprs."},
    {"_set_extract_stack", set_extract_stack, METH_O,
     "Installs the function that captures where a handle was created "
     "(debug mode)."},
    {NULL, NULL, 0, NULL},
};

int
pn_handle_exec(PyObject *m, pn_state *st)
{
    st->HandleType = (PyTypeObject *)PyType_FromModuleAndSpec(
        m, &handle_spec, NULL);
    if (st->HandleType == NULL) {
        return -1;
    }
    st->TimerHandleType = (PyTypeObject *)PyType_FromModuleAndSpec(
        m, &timer_spec, (PyObject *)st->HandleType);
    if (st->TimerHandleType == NULL) {
        return -1;
    }
    if (PyModule_AddType(m, st->HandleType) < 0
        || PyModule_AddType(m, st->TimerHandleType) < 0
        || PyModule_AddFunctions(m, handle_module_methods) < 0) {
        return -1;
    }
    return 0;
}
