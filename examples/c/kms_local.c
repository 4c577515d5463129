#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* explicit_bzero: a wipe the compiler may not drop */
/* The ETSI 004 KMS side in-process: an in-process pair of nodes pushes one
 * stream to two KMS sides (kp_kms_new) over HTTP on loopback, and the
 * program reads the key from both through kp_kms_next_key (the iterator)
 * and kp_kms_get_key, checking each index comes once and both sides hold
 * the same bytes. Key buffers come straight from malloc (uninitialised);
 * run it under valgrind too. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"

#define CHUNK 48u

static int fails = 0;
#define EXPECT(cond, ...) do { if (!(cond)) { fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); fails++; } } while (0)

static uint16_t port_of(kp_kms *k) {
    uint16_t p = 0;
    return check(kp_kms_port(k, &p), "kp_kms_port") ? p : 0;
}

int main(void) {
    /* $KP_CHUNKS (default 300): fewer under valgrind. */
    const uint32_t CHUNKS = getenv("KP_CHUNKS") ? (uint32_t)atoi(getenv("KP_CHUNKS")) : 300u;
    kp_engine *a = NULL, *b = NULL;
    /* A small arena and ring: little key made ahead (quick under valgrind). */
    const char *config = "arena_blocks = 64\nring_blocks = 16\nmax_key_chunk_size = 4096\n";
    if (!check(kp_engine_pair_new(config, &a, &b), "kp_engine_pair_new")) return 1;
    kp_kms *kms_a = NULL, *kms_b = NULL;
    if (!check(kp_kms_new(NULL, &kms_a), "kp_kms_new A") || !check(kp_kms_new("capacity_bytes = 1048576", &kms_b), "kp_kms_new B")) return 1;
    EXPECT(kp_kms_new("listen = 7", &kms_b) == KP_ERR_CONFIG, "bad KMS config");
    EXPECT(kp_kms_new("colour = \"red\"", &kms_b) == KP_ERR_CONFIG, "unknown KMS config key");

    char uri_a[64], uri_b[64];
    snprintf(uri_a, sizeof uri_a, "http://127.0.0.1:%u", port_of(kms_a));
    snprintf(uri_b, sizeof uri_b, "http://127.0.0.1:%u", port_of(kms_b));
    kp_qos qos;
    memset(&qos, 0, sizeof qos);
    qos.key_chunk_size = CHUNK;
    qos.timeout = 2000;
    uint8_t ksid[16] = {0};
    uint32_t status = 99;
    EXPECT(kp_push_open(a, "ftp://x", uri_b, &qos, ksid, &status) == KP_ERR_INVALID_ARGUMENT, "bad KMS URI");
    if (!check(kp_push_open(a, uri_a, uri_b, &qos, ksid, &status), "push open A") || status != 1) { fprintf(stderr, "open A: %u\n", status); return 1; }
    kp_qos qb = qos;
    if (!check(kp_push_open(b, uri_a, uri_b, &qb, ksid, &status), "push open B") || status != 0) { fprintf(stderr, "open B: %u\n", status); return 1; }
    uint8_t unknown[16] = {9};
    EXPECT(kp_push_start(a, unknown, NULL, &status) == KP_ERR_UNKNOWN_KSID, "start unknown KSID");

    /* Nothing pushed yet: status 2 at once. */
    uint8_t *key = malloc(CHUNK);
    size_t len = CHUNK;
    if (!key) return 1;
    EXPECT(kp_kms_get_key(kms_a, ksid, 0, key, &len, &status) == KP_OK && status == 2, "before any push: status %u", status);
    EXPECT(kp_kms_wait_key(kms_a, ksid, 0, key, &len, 50, &status) == KP_OK && status == 6, "wait ends: status %u", status);

    if (!check(kp_push_start(a, ksid, NULL, &status), "push start A") || !check(kp_push_start(b, ksid, NULL, &status), "push start B")) return 1;

    uint8_t *ka = malloc((size_t)CHUNKS * CHUNK), *kb = malloc((size_t)CHUNKS * CHUNK);
    if (!ka || !kb) return 1;
    /* Side A through the iterator: increasing indexes, each once. */
    for (uint32_t i = 0; i < CHUNKS; i++) {
        uint32_t index = 12345;
        len = CHUNK;
        if (!check(kp_kms_next_key(kms_a, ksid, &index, ka + (size_t)i * CHUNK, &len, 30000, &status), "next A")) return 1;
        EXPECT(status == 0 && index == i && len == CHUNK, "next A %u: status %u index %u len %zu", i, status, index, len);
    }
    /* Side B by index; a too-small buffer leaves the chunk held. */
    len = CHUNK - 1;
    EXPECT(kp_kms_wait_key(kms_b, ksid, 0, kb, &len, 30000, &status) == KP_ERR_KEY_BUFFER_TOO_SMALL && len == CHUNK, "short buffer: len %zu", len);
    for (uint32_t i = 0; i < CHUNKS; i++) {
        len = CHUNK;
        if (!check(kp_kms_wait_key(kms_b, ksid, i, kb + (size_t)i * CHUNK, &len, 30000, &status), "wait B")) return 1;
        EXPECT(status == 0 && len == CHUNK, "wait B %u: status %u", i, status);
    }
    EXPECT(memcmp(ka, kb, (size_t)CHUNKS * CHUNK) == 0, "both KMS sides hold the same key");
    for (uint32_t i = 1; i < CHUNKS; i++)
        EXPECT(memcmp(ka + (size_t)(i - 1) * CHUNK, ka + (size_t)i * CHUNK, CHUNK) != 0, "chunk %u repeats", i);
    len = CHUNK;
    EXPECT(kp_kms_get_key(kms_b, ksid, 7, key, &len, &status) == KP_ERR_INDEX_CONSUMED, "index 7 twice");
    EXPECT(kp_kms_get_key(kms_a, ksid, 0, NULL, &len, &status) == KP_ERR_NULL_ARGUMENT, "NULL buffer");
    EXPECT(kp_kms_get_key(kms_a, ksid, 0, key, NULL, &status) == KP_ERR_NULL_ARGUMENT, "NULL length");
    len = (size_t)-1;
    EXPECT(kp_kms_get_key(kms_a, ksid, 0, key, &len, &status) == KP_ERR_INVALID_ARGUMENT, "length beyond any object");

    if (!check(kp_close(a, ksid, &status), "close A") || !check(kp_close(b, ksid, &status), "close B")) return 1;
    kp_stats s;
    if (!check(kp_engine_stats(a, &s), "stats")) return 1;
    EXPECT(s.pushes_acked >= CHUNKS, "pushes acknowledged: %llu", (unsigned long long)s.pushes_acked);
    kp_kms_counters c;
    if (!check(kp_kms_stats(kms_a, &c), "kms stats")) return 1;
    EXPECT(c.chunks_received >= CHUNKS, "received %llu", (unsigned long long)c.chunks_received);

    /* Shut down: later calls fail cleanly; free is still needed and safe. */
    EXPECT(kp_kms_shutdown(kms_a) == KP_OK, "kms shutdown");
    len = CHUNK;
    EXPECT(kp_kms_get_key(kms_a, ksid, CHUNKS + 5, key, &len, &status) == KP_ERR_SHUT_DOWN, "KMS call after shutdown");
    EXPECT(kp_engine_shutdown(a) == KP_OK && kp_engine_shutdown(a) == KP_OK, "engine shutdown twice");
    uint32_t index = 0;
    EXPECT(kp_get_key(a, ksid, &index, key, CHUNK, NULL, &status) == KP_ERR_SHUT_DOWN, "engine call after shutdown");
    EXPECT(kp_engine_stats(a, &s) == KP_OK && s.shut_down == 1, "stats after shutdown");

    explicit_bzero(ka, (size_t)CHUNKS * CHUNK);
    explicit_bzero(kb, (size_t)CHUNKS * CHUNK);
    free(ka);
    free(kb);
    free(key);
    kp_engine_free(a);
    kp_engine_free(b);
    kp_kms_free(kms_a);
    kp_kms_free(kms_b);
    if (fails) { fprintf(stderr, "kms_local: %d check(s) failed\n", fails); return 1; }
    printf("kms_local: %u chunks of %u B pushed to two in-process KMS sides, identical, each index once\n", CHUNKS, CHUNK);
    return 0;
}
