#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* explicit_bzero: a wipe the compiler may not drop */
/* One site of a QKD link as a C KMS embeds it: a node (kp_engine_new with a
 * network [link]) and the ETSI 004 KMS side (kp_kms_new) in one process.
 * The node pushes the stream's key to this process's KMS side over HTTP;
 * the program reads every index through kp_kms_wait_key and writes the key
 * bytes to $KP_OUT (the test compares both sites' files). Run it twice:
 *
 *   kms_site leader     creates the KSID, writes it to $KP_KSID_FILE
 *   kms_site follower   reads the KSID, opens it on its node
 *
 * Environment: KP_PORT_A / KP_PORT_B (link listeners), KP_KMS_A / KP_KMS_B
 * (KMS sides), KP_DATA_DIR (this site's own), KP_KSID_FILE, KP_DONE_FILE
 * (the follower says it has read everything, so the leader keeps its node
 * up until then), KP_OUT, KP_CHUNKS (default 1000). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

#define CHUNK 32u

static const char *env(const char *name) {
    const char *v = getenv(name);
    if (!v || !*v) { fprintf(stderr, "kms_site: %s is not set\n", name); exit(2); }
    return v;
}

static void nap_ms(long ms) { nanosleep(&(struct timespec){ms / 1000, (ms % 1000) * 1000000L}, NULL); }

/* Waits (at most 30 s) for `path` to exist; reads up to `n` bytes of it. */
static int wait_file(const char *path, uint8_t *buf, size_t n) {
    for (int i = 0; i < 3000; i++) {
        FILE *f = fopen(path, "rb");
        if (f) {
            size_t got = fread(buf, 1, n, f);
            fclose(f);
            if (got == n) return 1;
        }
        nap_ms(10);
    }
    return 0;
}

/* Writes `n` bytes to `path` whole (written aside, then renamed). */
static int put_file(const char *path, const uint8_t *buf, size_t n) {
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f || fwrite(buf, 1, n, f) != n || fclose(f) != 0) return 0;
    return rename(tmp, path) == 0;
}

int main(int argc, char **argv) {
    if (argc != 2 || (strcmp(argv[1], "leader") != 0 && strcmp(argv[1], "follower") != 0)) {
        fprintf(stderr, "usage: kms_site leader|follower\n");
        return 2;
    }
    const int leader = strcmp(argv[1], "leader") == 0;
    const int pa = atoi(env("KP_PORT_A")), pb = atoi(env("KP_PORT_B"));
    const int ka = atoi(env("KP_KMS_A")), kb = atoi(env("KP_KMS_B"));
    const char *ksid_file = env("KP_KSID_FILE"), *done_file = env("KP_DONE_FILE"), *out = env("KP_OUT");
    const uint32_t chunks = getenv("KP_CHUNKS") ? (uint32_t)atoi(getenv("KP_CHUNKS")) : 1000u;

    char kms_config[128];
    snprintf(kms_config, sizeof kms_config, "listen = \"127.0.0.1:%d\"\nname = \"kms-%s\"\n",
             leader ? ka : kb, leader ? "a" : "b");
    kp_kms *kms = NULL;
    if (!check(kp_kms_new(kms_config, &kms), "kp_kms_new")) return 1;

    char config[1024];
    snprintf(config, sizeof config,
             "name = \"%s\"\n"
             "data_dir = \"%s\"\n"
             "role = \"%s\"\n"
             "[device]\n"
             "driver = \"simulated\"\n"
             "link_secret = \"0303030303030303030303030303030303030303030303030303030303030303\"\n"
             "[link]\n"
             "listen = \"127.0.0.1:%d\"\n"
             "peer = \"http://127.0.0.1:%d\"\n"
             "secret = \"0404040404040404040404040404040404040404040404040404040404040404\"\n",
             leader ? "site-a" : "site-b", data_dir(), argv[1], leader ? pa : pb, leader ? pb : pa);
    kp_engine *node = NULL;
    if (!check(kp_engine_new(config, &node), "kp_engine_new")) return 1;

    char kms_a[64], kms_b[64];
    snprintf(kms_a, sizeof kms_a, "http://127.0.0.1:%d", ka);
    snprintf(kms_b, sizeof kms_b, "http://127.0.0.1:%d", kb);
    kp_qos qos;
    memset(&qos, 0, sizeof qos);
    qos.key_chunk_size = CHUNK;
    qos.timeout = 5000;
    uint8_t ksid[16] = {0};
    uint32_t status = 4;
    if (!leader && !wait_file(ksid_file, ksid, sizeof ksid)) { fprintf(stderr, "follower: no KSID\n"); return 1; }
    /* Status 4 until the two nodes have heard from each other. */
    for (int tries = 0; status == 4 && tries < 1000; tries++) {
        if (!check(kp_push_open(node, kms_a, kms_b, &qos, ksid, &status), "kp_push_open")) return 1;
        if (status == 4) nap_ms(10);
    }
    if (status != (leader ? 1u : 0u)) { fprintf(stderr, "%s: open status %u\n", argv[1], status); return 1; }
    if (leader && !put_file(ksid_file, ksid, sizeof ksid)) { perror("KSID file"); return 1; }
    if (!check(kp_push_start(node, ksid, NULL, &status), "kp_push_start")) return 1;

    /* Uninitialised on purpose: the library only writes key buffers. */
    uint8_t *keys = malloc((size_t)chunks * CHUNK);
    if (!keys) return 1;
    for (uint32_t i = 0; i < chunks; i++) {
        size_t len = CHUNK;
        if (!check(kp_kms_wait_key(kms, ksid, i, keys + (size_t)i * CHUNK, &len, 20000, &status), "kp_kms_wait_key")) return 1;
        if (status != 0 || len != CHUNK) { fprintf(stderr, "%s: index %u: status %u, len %zu\n", argv[1], i, status, len); return 1; }
    }
    /* Each index once: asking again is an error, never key. */
    size_t len = CHUNK;
    uint8_t again[CHUNK];
    if (kp_kms_get_key(kms, ksid, 0, again, &len, &status) != KP_ERR_INDEX_CONSUMED) { fprintf(stderr, "index 0 handed out twice\n"); return 1; }

    FILE *f = fopen(out, "wb");
    if (!f || fwrite(keys, CHUNK, chunks, f) != chunks || fclose(f) != 0) { perror("KP_OUT"); return 1; }
    explicit_bzero(keys, (size_t)chunks * CHUNK);
    free(keys);

    if (leader) {
        uint8_t done;
        if (!wait_file(done_file, &done, 1)) { fprintf(stderr, "leader: the follower never finished\n"); return 1; }
    } else if (!put_file(done_file, (const uint8_t *)"1", 1)) { perror("KP_DONE_FILE"); return 1; }
    if (!check(kp_close(node, ksid, &status), "kp_close")) return 1;
    kp_kms_counters c;
    if (!check(kp_kms_stats(kms, &c), "kp_kms_stats")) return 1;
    printf("kms_site %s: %u chunks pushed to this process's KMS side and read (received %llu)\n", argv[1], chunks,
           (unsigned long long)c.chunks_received);
    kp_engine_free(node);
    kp_kms_free(kms);
    return 0;
}
