#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* explicit_bzero: a wipe the compiler may not drop */
/* Builds a simulated QKD link (both nodes in this process), opens a key
 * stream on node A, opens the same KSID on node B, reads 10 000 chunks from
 * each, checks every pair is byte-identical, and closes both ends. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"

#define CHUNKS 10000u
#define CHUNK 32u

int main(void) {
    kp_engine *a = NULL, *b = NULL;
    if (!check(kp_engine_pair_new(NULL, &a, &b), "kp_engine_pair_new")) return 1;

    kp_qos qos;
    memset(&qos, 0, sizeof qos);
    qos.key_chunk_size = CHUNK;
    qos.timeout = 2000;
    strcpy(qos.metadata_mimetype, "application/json");

    uint8_t ksid[16] = {0}; /* all zero: node A assigns the KSID */
    uint32_t status = 99;
    if (!check(kp_open_connect(a, "kms-a", "kms-b", &qos, ksid, &status), "open A")) return 1;
    if (status != 1) { fprintf(stderr, "open A: status %u, want 1 (peer not connected)\n", status); return 1; }

    kp_qos qos_b;
    memset(&qos_b, 0, sizeof qos_b);
    qos_b.key_chunk_size = 999; /* ignored: the destination inherits the source's QoS */
    qos_b.timeout = 1000;       /* wait up to 1 s for node A's announcement of the KSID */
    if (!check(kp_open_connect(b, "kms-a", "kms-b", &qos_b, ksid, &status), "open B")) return 1;
    if (status != 0 || qos_b.key_chunk_size != CHUNK) { fprintf(stderr, "open B: status %u, chunk %u\n", status, qos_b.key_chunk_size); return 1; }

    uint8_t *ka = malloc(CHUNKS * CHUNK), *kb = malloc(CHUNKS * CHUNK);
    if (!ka || !kb) return 1;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (uint32_t i = 0; i < CHUNKS; i++) {
        uint32_t index = i;
        if (!check(kp_get_key(a, ksid, &index, ka + (size_t)i * CHUNK, CHUNK, NULL, &status), "get A")) return 1;
        if (status != 0 || index != i) { fprintf(stderr, "get A %u: status %u\n", i, status); return 1; }
    }
    for (uint32_t i = 0; i < CHUNKS; i++) {
        uint32_t index = i;
        uint8_t meta[64];
        kp_metadata md = { sizeof meta, meta };
        if (!check(kp_get_key(b, ksid, &index, kb + (size_t)i * CHUNK, CHUNK, &md, &status), "get B")) return 1;
        if (status != 0) { fprintf(stderr, "get B %u: status %u\n", i, status); return 1; }
        if (i == 0 && strncmp((const char *)meta, "{\"age_ms\":", 10) != 0) { fprintf(stderr, "metadata %s\n", meta); return 1; }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (memcmp(ka, kb, (size_t)CHUNKS * CHUNK) != 0) { fprintf(stderr, "keys differ between nodes\n"); return 1; }
    /* no two chunks equal: 32 random bytes never collide unless key repeats */
    for (uint32_t i = 1; i < CHUNKS; i++)
        if (memcmp(ka + (size_t)(i - 1) * CHUNK, ka + (size_t)i * CHUNK, CHUNK) == 0) { fprintf(stderr, "chunk %u repeats\n", i); return 1; }

    if (!check(kp_close(a, ksid, &status), "close A") || status != 0) return 1;
    if (!check(kp_close(b, ksid, &status), "close B") || status != 0) return 1;

    kp_stats st;
    if (!check(kp_engine_stats(a, &st), "stats")) return 1;
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("pair_stream: %u chunks of %u B identical on both nodes (%.0f keys/s incl. both nodes, keypipe %s, %llu blocks consumed, mlock %s)\n",
           CHUNKS, CHUNK, 2.0 * CHUNKS / secs, kp_version(), (unsigned long long)st.blocks_consumed, st.memory_locked ? "yes" : "no");
    explicit_bzero(ka, (size_t)CHUNKS * CHUNK);
    explicit_bzero(kb, (size_t)CHUNKS * CHUNK);
    free(ka);
    free(kb);
    kp_engine_free(a);
    kp_engine_free(b);
    return 0;
}
