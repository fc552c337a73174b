/* pn_workq: a mutex + condvar work queue with multi-unit nodes. */
#include "core/pn_workq.h"
#include "core/pn_fork.h"
#include "core/pn_spin.h"

#include <errno.h>

int
pn_workq_init(pn_workq *q, unsigned max_threads)
{
    int r;
    q->head = q->tail = NULL;
    q->len = 0;
    q->busy = q->nthreads = q->idle = 0;
    q->max_threads = max_threads;
    q->closing = 0;
    q->fork_gen = pn_fork_generation();
    if ((r = pthread_mutex_init(&q->mu, NULL)) != 0) {
        return -r;
    }
    if ((r = pthread_cond_init(&q->cv, NULL)) != 0) {
        pthread_mutex_destroy(&q->mu);
        return -r;
    }
    return 0;
}

void
pn_workq_destroy(pn_workq *q)
{
    pthread_cond_destroy(&q->cv);
    pthread_mutex_destroy(&q->mu);
}

int
pn_workq_push(pn_workq *q, pn_qnode *node, uint32_t units, int *start_thread)
{
    pthread_mutex_lock(&q->mu);
    if (q->closing) {
        pthread_mutex_unlock(&q->mu);
        return -ESHUTDOWN;
    }
    node->next = NULL;
    node->units_total = node->units_left = units;
    if (q->tail) {
        q->tail->next = node;
    }
    else {
        /* Pairs with the relaxed peeks in trypop/pop_wait's spin. */
        __atomic_store_n(&q->head, node, __ATOMIC_RELAXED);
    }
    q->tail = node;
    q->len += units;
    /* Like the stdlib's lazy start: one more thread while the outstanding
     * work exceeds the workers we have, up to the cap. */
    *start_thread = (q->len + q->busy > q->nthreads
                     && q->nthreads < q->max_threads);
    if (*start_thread) {
        q->nthreads++;
    }
    if (q->idle > 0) {
        if (units > 1 && q->idle > 1) {
            pthread_cond_broadcast(&q->cv);
        }
        else {
            pthread_cond_signal(&q->cv);
        }
    }
    pthread_mutex_unlock(&q->mu);
    return 0;
}

/* Claims a unit from the head; the mutex is held. */
static pn_qnode *
claim_locked(pn_workq *q, uint32_t *unit)
{
    pn_qnode *node = q->head;
    if (node == NULL) {
        return NULL;
    }
    *unit = node->units_total - node->units_left;
    if (--node->units_left == 0) {
        __atomic_store_n(&q->head, node->next, __ATOMIC_RELAXED);
        if (q->head == NULL) {
            q->tail = NULL;
        }
        node->next = NULL;
    }
    q->len--;
    q->busy++;
    return node;
}

pn_qnode *
pn_workq_trypop(pn_workq *q, uint32_t *unit)
{
    pn_qnode *node;
    /* Unlocked peek: a stale NULL only sends the caller to pop_wait, which
     * re-checks under the lock. */
    if (__atomic_load_n(&q->head, __ATOMIC_RELAXED) == NULL) {
        return NULL;
    }
    pthread_mutex_lock(&q->mu);
    node = claim_locked(q, unit);
    pthread_mutex_unlock(&q->mu);
    return node;
}

int
pn_workq_looks_empty(pn_workq *q)
{
    return __atomic_load_n(&q->head, __ATOMIC_RELAXED) == NULL;
}

pn_qnode *
pn_workq_pop_spin(pn_workq *q, uint32_t *unit, int64_t spin_ns)
{
    pn_spinner spin;
    pn_spinner_init(&spin, spin_ns);
    do {
        if (__atomic_load_n(&q->closing, __ATOMIC_RELAXED)) {
            return NULL;
        }
        if (__atomic_load_n(&q->head, __ATOMIC_RELAXED) != NULL) {
            return pn_workq_trypop(q, unit);
        }
    } while (pn_spinner_step(&spin));
    return NULL;
}

pn_qnode *
pn_workq_pop_wait(pn_workq *q, uint32_t *unit)
{
    pn_qnode *node;
    pthread_mutex_lock(&q->mu);
    while (q->head == NULL && !q->closing) {
        q->idle++;
        pthread_cond_wait(&q->cv, &q->mu);
        q->idle--;
    }
    node = claim_locked(q, unit);
    if (node == NULL) {
        q->nthreads--;      /* closing and empty: this worker exits */
    }
    pthread_mutex_unlock(&q->mu);
    return node;
}

void
pn_workq_unit_done(pn_workq *q)
{
    pthread_mutex_lock(&q->mu);
    q->busy--;
    pthread_mutex_unlock(&q->mu);
}

void
pn_workq_thread_exit(pn_workq *q)
{
    pthread_mutex_lock(&q->mu);
    q->nthreads--;
    pthread_mutex_unlock(&q->mu);
}

pn_qnode *
pn_workq_drain(pn_workq *q)
{
    pn_qnode *list;
    pthread_mutex_lock(&q->mu);
    list = q->head;
    q->head = q->tail = NULL;
    q->len = 0;
    pthread_mutex_unlock(&q->mu);
    return list;
}

void
pn_workq_close(pn_workq *q)
{
    pthread_mutex_lock(&q->mu);
    __atomic_store_n(&q->closing, 1, __ATOMIC_RELAXED);
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

int
pn_workq_remove(pn_workq *q, pn_qnode *node)
{
    pn_qnode **pp, *prev = NULL;
    int removed = 0;
    pthread_mutex_lock(&q->mu);
    for (pp = &q->head; *pp != NULL; prev = *pp, pp = &(*pp)->next) {
        if (*pp == node && node->units_left == node->units_total) {
            *pp = node->next;
            if (q->tail == node) {
                q->tail = prev;
            }
            q->len -= node->units_left;
            node->next = NULL;
            removed = 1;
            break;
        }
    }
    pthread_mutex_unlock(&q->mu);
    return removed;
}

pn_qnode *
pn_workq_after_fork(pn_workq *q)
{
    pn_qnode *list = q->head;
    /* The old mutex may be locked by a thread that no longer exists, so it
     * is re-created rather than locked. */
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    q->head = q->tail = NULL;
    q->len = 0;
    q->busy = q->nthreads = q->idle = 0;
    q->fork_gen = pn_fork_generation();
    return list;
}

void
pn_workq_counts(pn_workq *q, size_t *len, unsigned *busy, unsigned *nthreads,
                unsigned *idle)
{
    pthread_mutex_lock(&q->mu);
    *len = q->len;
    *busy = q->busy;
    *nthreads = q->nthreads;
    *idle = q->idle;
    pthread_mutex_unlock(&q->mu);
}
