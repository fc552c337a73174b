/* Fork generation: lets every engine notice it now lives in a child. */
#ifndef PN_FORK_H
#define PN_FORK_H

#include <stdint.h>

/* Installs the pthread_atfork child handler (idempotent). 0 or -errno. */
int pn_fork_init(void);

/* Increments in a child after every fork(); an engine that saved the value
 * at creation and sees another one runs in a child process. */
uint64_t pn_fork_generation(void);

#endif
