#define _POSIX_C_SOURCE 200809L
/* kp_engine_free while another thread is blocked in kp_get_key (and
 * kp_kms_free while one waits in kp_kms_wait_key): the blocked call returns
 * promptly and the free never releases what it uses (run under ASan, and
 * under valgrind, which also checks the library's own accesses). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"

static kp_engine *a, *b;
static kp_kms *kms;
static uint8_t ksid[16];
static kp_result got_result, kms_result;
static uint32_t got_status, kms_status;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void *blocked_get(void *arg) {
    (void)arg;
    uint8_t *key = malloc(32);
    uint32_t index = 0;
    got_result = kp_get_key(a, ksid, &index, key, 32, NULL, &got_status);
    free(key);
    return NULL;
}

static void *blocked_kms(void *arg) {
    (void)arg;
    uint8_t key[32];
    size_t len = sizeof key;
    kms_result = kp_kms_wait_key(kms, ksid, 0, key, &len, 30000, &kms_status);
    return NULL;
}

int main(void) {
    /* A device too slow to ever fill a chunk: GET_KEY waits its timeout. */
    if (!check(kp_engine_pair_new("[device]\ndriver = \"simulated\"\nrate_bps = 1\n", &a, &b), "pair")) return 1;
    kp_qos qos;
    memset(&qos, 0, sizeof qos);
    qos.key_chunk_size = 32;
    qos.timeout = 30000;
    uint32_t status;
    if (!check(kp_open_connect(a, "x", "y", &qos, ksid, &status), "open A")) return 1;
    kp_qos qb = qos;
    if (!check(kp_open_connect(b, "x", "y", &qb, ksid, &status), "open B") || status != 0) return 1;
    if (!check(kp_kms_new(NULL, &kms), "kms")) return 1;

    pthread_t t1, t2;
    pthread_create(&t1, NULL, blocked_get, NULL);
    pthread_create(&t2, NULL, blocked_kms, NULL);
    nanosleep(&(struct timespec){0, 300 * 1000 * 1000}, NULL);
    double t0 = now_s();
    kp_engine_free(a); /* while t1 waits inside kp_get_key */
    kp_kms_free(kms);  /* while t2 waits inside kp_kms_wait_key */
    double freed = now_s() - t0;
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    kp_engine_free(b);
    int ok = 1;
    if (!(got_result == KP_OK && got_status == 4) && got_result != KP_ERR_SHUT_DOWN) {
        fprintf(stderr, "blocked kp_get_key: result %d status %u\n", got_result, got_status);
        ok = 0;
    }
    if (kms_result != KP_ERR_SHUT_DOWN) { fprintf(stderr, "blocked kp_kms_wait_key: result %d\n", kms_result); ok = 0; }
    if (freed > 5.0) { fprintf(stderr, "free took %.1f s\n", freed); ok = 0; }
    if (!ok) return 1;
    printf("shutdown_race: both frees woke their blocked calls and returned in %.0f ms\n", freed * 1000);
    return 0;
}
