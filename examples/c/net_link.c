#define _POSIX_C_SOURCE 200809L
/* Two sites linked over the network: each node is embedded with
 * kp_engine_new and a [link] section (its own listener, the peer's URL, the
 * shared link secret), exactly as two C programs on two hosts would do.
 * Here both live in one process for the demo; the link sync still goes
 * over TCP (HTTP) between them. Ports: KP_PORT_A and KP_PORT_B
 * (defaults 17004, 17005). Reads 2 000 chunks on each node and checks they
 * are identical. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"

#define CHUNKS 2000u
#define CHUNK 32u

static int port(const char *name, int fallback) {
    const char *v = getenv(name);
    return v ? atoi(v) : fallback;
}

static void config(char *out, size_t n, const char *role, int listen, int peer) {
    snprintf(out, n,
             "name = \"%s\"\n"
             "data_dir = \"%s\"\n"
             "role = \"%s\"\n"
             "[device]\n"
             "driver = \"simulated\"\n"
             "link_secret = \"0101010101010101010101010101010101010101010101010101010101010101\"\n"
             "[link]\n"
             "listen = \"127.0.0.1:%d\"\n"
             "peer = \"http://127.0.0.1:%d\"\n"
             "secret = \"0202020202020202020202020202020202020202020202020202020202020202\"\n",
             role, data_dir(), role, listen, peer);
}

int main(void) {
    int pa = port("KP_PORT_A", 17004), pb = port("KP_PORT_B", 17005);
    char ca[1024], cb[1024];
    config(ca, sizeof ca, "leader", pa, pb);
    config(cb, sizeof cb, "follower", pb, pa);
    kp_engine *a = NULL, *b = NULL;
    if (!check(kp_engine_new(ca, &a), "kp_engine_new A")) return 1;
    if (!check(kp_engine_new(cb, &b), "kp_engine_new B")) return 1;

    kp_qos qos;
    memset(&qos, 0, sizeof qos);
    qos.key_chunk_size = CHUNK;
    qos.timeout = 2000;
    uint8_t ksid[16] = {0};
    uint32_t status = 4;
    /* Status 4 until the two nodes have heard from each other. */
    for (int tries = 0; status == 4 && tries < 500; tries++) {
        if (!check(kp_open_connect(a, "kms-a", "kms-b", &qos, ksid, &status), "open A")) return 1;
        if (status == 4) nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    }
    if (status != 1) { fprintf(stderr, "open A: status %u, want 1\n", status); return 1; }
    kp_qos qos_b = qos;
    if (!check(kp_open_connect(b, "kms-a", "kms-b", &qos_b, ksid, &status), "open B")) return 1;
    if (status != 0) { fprintf(stderr, "open B: status %u, want 0\n", status); return 1; }

    static uint8_t ka[CHUNKS * CHUNK], kb[CHUNKS * CHUNK];
    for (uint32_t i = 0; i < CHUNKS; i++) {
        uint32_t index = i;
        if (!check(kp_get_key(a, ksid, &index, ka + (size_t)i * CHUNK, CHUNK, NULL, &status), "get A")) return 1;
        if (status != 0) { fprintf(stderr, "get A %u: status %u\n", i, status); return 1; }
        index = i;
        if (!check(kp_get_key(b, ksid, &index, kb + (size_t)i * CHUNK, CHUNK, NULL, &status), "get B")) return 1;
        if (status != 0) { fprintf(stderr, "get B %u: status %u\n", i, status); return 1; }
    }
    if (memcmp(ka, kb, sizeof ka) != 0) { fprintf(stderr, "keys differ between nodes\n"); return 1; }
    if (!check(kp_close(a, ksid, &status), "close A") || !check(kp_close(b, ksid, &status), "close B")) return 1;
    printf("net_link: %u chunks of %u B identical on both nodes over the network link\n", CHUNKS, CHUNK);
    memset(ka, 0, sizeof ka);
    memset(kb, 0, sizeof kb);
    kp_engine_free(a);
    kp_engine_free(b);
    return 0;
}
