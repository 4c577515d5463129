/* Shared by the C examples: report a failed keypipe call with its detail. */
#ifndef KEYPIPE_EXAMPLE_CHECK_H
#define KEYPIPE_EXAMPLE_CHECK_H

#include <stdio.h>

#include "keypipe.h"

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
