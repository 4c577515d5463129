#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* explicit_bzero: a wipe the compiler may not drop */
/* kp_get_key throughput from C, one thread: an in-process pair, one stream
 * of 32-byte chunks (or argv[1] bytes), read for about 2 s (argv[2]) on
 * node A and node B in turn, a batch of indexes at a time (at most 128 KiB:
 * a stream read on one node only stops at its flow-control window). Prints keys/s, counting
 * every kp_get_key call. Built without sanitizers against a release library by
 * scripts/bench-c.sh (which also runs it against a baseline library). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    const uint32_t chunk = argc > 1 ? (uint32_t)atoi(argv[1]) : 32u;
    const double secs = argc > 2 ? atof(argv[2]) : 2.0;
    kp_engine *a = NULL, *b = NULL;
    if (!check(kp_engine_pair_new("arena_blocks = 4096\nring_blocks = 1024\n", &a, &b), "pair")) return 1;
    kp_qos qos;
    memset(&qos, 0, sizeof qos);
    qos.key_chunk_size = chunk;
    qos.timeout = 5000;
    uint8_t ksid[16] = {0};
    uint32_t status;
    if (!check(kp_open_connect(a, "a", "b", &qos, ksid, &status), "open A")) return 1;
    kp_qos qb = qos;
    if (!check(kp_open_connect(b, "a", "b", &qb, ksid, &status), "open B") || status != 0) return 1;
    nanosleep(&(struct timespec){0, 200 * 1000 * 1000}, NULL); /* let the ring fill */
    uint8_t *key = malloc(chunk);
    if (!key) return 1;
    const uint32_t batch = 131072u / chunk < 4096u ? 131072u / chunk : 4096u;
    uint64_t n = 0;
    uint32_t next = 0;
    double t0 = now_s(), t = t0;
    while (t - t0 < secs) {
        for (int node = 0; node < 2; node++) {
            for (uint32_t i = 0; i < batch; i++) {
                uint32_t index = next + i;
                if (kp_get_key(node ? b : a, ksid, &index, key, chunk, NULL, &status) != KP_OK || status != 0) {
                    fprintf(stderr, "get_key %u on node %c: status %u\n", index, node ? 'B' : 'A', status);
                    return 1;
                }
            }
        }
        next += batch;
        n += 2 * (uint64_t)batch;
        t = now_s();
    }
    printf("kp_get_key %u B, 1 thread: %.2f M keys/s (%llu keys in %.2f s, keypipe %s)\n", chunk,
           (double)n / (t - t0) / 1e6, (unsigned long long)n, t - t0, kp_version());
    explicit_bzero(key, chunk);
    free(key);
    kp_engine_free(a);
    kp_engine_free(b);
    return 0;
}
