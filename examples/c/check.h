/* Shared by the C examples: report a failed keypipe call with its detail. */
#ifndef KEYPIPE_EXAMPLE_CHECK_H
#define KEYPIPE_EXAMPLE_CHECK_H


#include <stdio.h>
#include <stdlib.h>

#include "keypipe.h"

/* Where an example's nodes keep their key ledgers: $KP_DATA_DIR, or a new
 * directory under /tmp. A node whose device can give the same key again
 * after a restart (a key file, a configured simulated secret) needs one. */
static inline const char *data_dir(void) {
    static char made[] = "/tmp/keypipe-example-XXXXXX";
    const char *dir = getenv("KP_DATA_DIR");
    if (dir && *dir) return dir;
    return mkdtemp(made) ? made : "/tmp";
}

/* 1 when `r` is KP_OK; else prints what failed, why, and the detail. */
static inline int check(kp_result r, const char *what) {
    if (r != KP_OK) {
        char detail[256];
        kp_last_error(detail, sizeof detail, NULL);
        fprintf(stderr, "%s: %s (%s)\n", what, kp_result_message(r), detail);
        return 0;
    }
    return 1;
}

#endif
