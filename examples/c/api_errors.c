#define _POSIX_C_SOURCE 200809L
/* Every misuse of the C ABI gets a clear error code and leaves the engine
 * usable; every ETSI status 1..8 is produced by its scenario. Exits 0 when
 * all checks pass. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"

static int failures = 0;

#define EXPECT(cond, ...)                                         \
    do {                                                          \
        if (!(cond)) {                                            \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);  \
            fprintf(stderr, __VA_ARGS__);                         \
            fprintf(stderr, "\n");                                \
            failures++;                                           \
        }                                                         \
    } while (0)

static void nap_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

static kp_qos make_qos(uint32_t chunk, uint32_t timeout_ms) {
    kp_qos q;
    memset(&q, 0, sizeof q);
    q.key_chunk_size = chunk;
    q.timeout = timeout_ms;
    return q;
}

/* Opens a stream on A and the same KSID on B; returns B's final status. */
static uint32_t open_both(kp_engine *a, kp_engine *b, kp_qos q, uint8_t ksid[16]) {
    uint32_t status = 99;
    memset(ksid, 0, 16);
    if (kp_open_connect(a, "a", "b", &q, ksid, &status) != KP_OK) return 100;
    kp_qos qb = make_qos(0, 1000); /* B inherits A's QoS; waits up to 1 s for it */
    if (kp_open_connect(b, "a", "b", &qb, ksid, &status) != KP_OK) return 101;
    return status;
}

int main(void) {
    kp_engine *a = NULL, *b = NULL;
    uint32_t status = 99;
    char detail[512];

    /* --- construction errors --- */
    EXPECT(kp_engine_pair_new(NULL, NULL, &b) == KP_ERR_NULL_ARGUMENT, "NULL out pointer");
    EXPECT(kp_engine_pair_new("block_size = [", &a, &b) == KP_ERR_CONFIG, "malformed TOML");
    EXPECT(a == NULL && b == NULL, "outputs untouched on error");
    kp_last_error(detail, sizeof detail, NULL);
    EXPECT(strlen(detail) > 0, "last error has a detail");
    EXPECT(kp_engine_pair_new("block_size = 8", &a, &b) == KP_ERR_CONFIG, "block size below 16");
    kp_last_error(detail, sizeof detail, NULL);
    EXPECT(strstr(detail, "block_size") != NULL, "detail names the key: %s", detail);
    EXPECT(kp_engine_new(NULL, &a) == KP_ERR_CONFIG, "single node needs a link secret");
    EXPECT(kp_engine_new("[device]\ndriver = \"simulated\"\nlink_secret = \"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\"\n"
                         "[link]\npeer = \"http://127.0.0.1:9\"\nsecret = \"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\"", &a) == KP_ERR_CONFIG,
           "a network link needs link.listen");
    kp_last_error(detail, sizeof detail, NULL);
    EXPECT(strstr(detail, "link.listen") != NULL, "detail names the key: %s", detail);
    EXPECT(kp_engine_new("[link]\npeer = \"ftp://x\"\nsecret = \"00\"", &a) == KP_ERR_CONFIG, "bad link.peer");
    EXPECT(strcmp(kp_result_message(KP_ERR_UNKNOWN_KSID), "unknown result code") != 0, "messages exist");
    EXPECT(strcmp(kp_result_message(12345), "unknown result code") == 0, "unknown code");
    kp_engine_free(NULL);

    /* --- a single node without a peer: status 4 --- */
    kp_engine *solo = NULL;
    char solo_config[512];
    snprintf(solo_config, sizeof solo_config,
             "name = \"solo\"\ndata_dir = \"%s\"\n[device]\ndriver = \"simulated\"\nlink_secret = \"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\"",
             data_dir());
    EXPECT(kp_engine_new("[device]\ndriver = \"simulated\"\nlink_secret = \"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\"", &solo) == KP_ERR_CONFIG,
           "a configured secret needs a ledger");
    kp_last_error(detail, sizeof detail, NULL);
    EXPECT(strstr(detail, "data_dir") != NULL, "detail names data_dir: %s", detail);
    EXPECT(kp_engine_new(solo_config, &solo) == KP_OK, "solo node");
    uint8_t ksid[16] = {0};
    kp_qos q = make_qos(32, 100);
    EXPECT(kp_open_connect(solo, "a", "b", &q, ksid, &status) == KP_OK && status == 4, "no peer: status 4, got %u", status);
    kp_engine_free(solo);

    /* --- a pair, rate-limited so key can run short: 16-byte blocks at 1280 bit/s = 10 blocks/s --- */
    const char *slow = "block_size = 16\narena_blocks = 64\nring_blocks = 4\n[device]\ndriver = \"simulated\"\nrate_bps = 1280\n";
    EXPECT(kp_engine_pair_new(slow, &a, &b) == KP_OK, "pair");

    /* QoS counter-proposals: status 7 */
    memset(ksid, 0, 16);
    q = make_qos(0, 100);
    EXPECT(kp_open_connect(a, "a", "b", &q, ksid, &status) == KP_OK && status == 7, "chunk 0: status %u", status);
    EXPECT(q.key_chunk_size == 1, "counter-proposal chunk 1, got %u", q.key_chunk_size);
    q = make_qos(1u << 20, 100);
    EXPECT(kp_open_connect(a, "a", "b", &q, ksid, &status) == KP_OK && status == 7, "chunk too big: status %u", status);
    /* the counter-proposal is what this node can reserve at once: (4 - 1) * 16 bytes */
    EXPECT(q.key_chunk_size == 48, "counter-proposal 48, got %u", q.key_chunk_size);
    q = make_qos(16, 100);
    q.min_bps = 1000000;
    EXPECT(kp_open_connect(a, "a", "b", &q, ksid, &status) == KP_OK && status == 7 && q.min_bps == 1280, "min_bps: %u %u", status, q.min_bps);
    q = make_qos(16, 100);
    memset(q.metadata_mimetype, 'x', sizeof q.metadata_mimetype); /* not NUL-terminated */
    EXPECT(kp_open_connect(a, "a", "b", &q, ksid, &status) == KP_ERR_INVALID_ARGUMENT, "unterminated mimetype");
    EXPECT(kp_open_connect(a, NULL, "b", &q, ksid, &status) == KP_ERR_NULL_ARGUMENT, "NULL source");

    /* status 1, then status 3 before the peer side opened, then 5 on reopen */
    q = make_qos(16, 0);
    memset(ksid, 0, 16);
    EXPECT(kp_open_connect(a, "a", "b", &q, ksid, &status) == KP_OK && status == 1, "open: status %u", status);
    uint8_t key[64], other[64];
    uint32_t index = 0;
    EXPECT(kp_get_key(a, ksid, &index, key, sizeof key, NULL, &status) == KP_OK && status == 3, "peer not open: %u", status);
    EXPECT(kp_open_connect(a, "a", "b", &q, ksid, &status) == KP_OK && status == 5, "reopen: status %u", status);
    kp_qos qb = make_qos(0, 1000);
    EXPECT(kp_open_connect(b, "a", "b", &qb, ksid, &status) == KP_OK, "open B");
    EXPECT(status == 0, "B opens: status %u", status);

    /* argument errors leave everything usable */
    uint8_t unknown[16] = {1, 2, 3};
    EXPECT(kp_get_key(a, unknown, &index, key, sizeof key, NULL, &status) == KP_ERR_UNKNOWN_KSID, "unknown KSID");
    EXPECT(kp_close(a, unknown, &status) == KP_ERR_UNKNOWN_KSID, "close unknown KSID");
    kp_qos open_q;
    memset(&open_q, 0xEE, sizeof open_q);
    EXPECT(kp_stream_qos(a, unknown, &open_q) == KP_ERR_UNKNOWN_KSID, "QoS of unknown KSID");
    EXPECT(open_q.key_chunk_size == 0xEEEEEEEEu, "QoS of unknown KSID: untouched");
    EXPECT(kp_stream_qos(a, ksid, NULL) == KP_ERR_NULL_ARGUMENT, "QoS into NULL");
    EXPECT(kp_stream_qos(b, ksid, &open_q) == KP_OK, "QoS of an open stream");
    EXPECT(open_q.key_chunk_size == q.key_chunk_size, "B's stream has A's chunk size: %u", open_q.key_chunk_size);
    EXPECT(strcmp(open_q.metadata_mimetype, "application/json") == 0, "mimetype NUL-terminated");
    memset(key, 0xEE, sizeof key);
    EXPECT(kp_get_key(a, ksid, &index, key, 8, NULL, &status) == KP_ERR_KEY_BUFFER_TOO_SMALL, "short buffer");
    EXPECT(key[0] == 0xEE && key[7] == 0xEE, "short buffer untouched");
    EXPECT(kp_get_key(a, ksid, NULL, key, sizeof key, NULL, &status) == KP_ERR_NULL_ARGUMENT, "NULL index");
    EXPECT(kp_get_key(a, ksid, &index, NULL, sizeof key, NULL, &status) == KP_ERR_NULL_ARGUMENT, "NULL buffer");
    EXPECT(kp_get_key(a, NULL, &index, key, sizeof key, NULL, &status) == KP_ERR_NULL_ARGUMENT, "NULL KSID");
    EXPECT(kp_get_key(NULL, ksid, &index, key, sizeof key, NULL, &status) == KP_ERR_NULL_ARGUMENT, "NULL engine");

    /* status 2: timeout 0 and the key for a far index is not there yet */
    /* (far indexes each need a fresh block: drain the ring until the slow link has none) */
    status = 0;
    for (uint32_t far = 1000; far < 1100 && status != 2; far++) {
        index = far;
        EXPECT(kp_get_key(a, ksid, &index, key, sizeof key, NULL, &status) == KP_OK, "get far index");
        EXPECT(status == 0 || status == 2 || status == 3, "far index: status %u", status);
        if (status == 3) nap_ms(1); /* B's open still on its way to A */
    }
    EXPECT(status == 2, "no key yet: %u", status);

    /* status 8: metadata buffer too small, key not consumed */
    index = 0;
    uint8_t meta[64];
    kp_metadata md = {4, meta};
    for (int i = 0; i < 2000 && (status == 2 || status == 8 || i == 0); i++) {
        md.size = 4;
        kp_get_key(a, ksid, &index, key, sizeof key, &md, &status);
        if (status == 2) nap_ms(1);
    }
    EXPECT(status == 8 && md.size > 4, "metadata too small: status %u size %u", status, md.size);
    uint32_t needed = md.size;
    md.size = needed;
    EXPECT(kp_get_key(a, ksid, &index, key, sizeof key, &md, &status) == KP_OK && status == 0, "same index with room: %u", status);
    EXPECT(md.size + 1 == needed && meta[md.size] == 0, "metadata length %u, needed %u", md.size, needed);
    for (int i = 0; i < 2000; i++) {
        kp_get_key(b, ksid, &index, other, sizeof other, NULL, &status);
        if (status != 2) break;
        nap_ms(1);
    }
    EXPECT(status == 0 && memcmp(key, other, 16) == 0, "B's chunk 0 equals A's (status %u)", status);
    EXPECT(kp_get_key(a, ksid, &index, key, sizeof key, NULL, &status) == KP_ERR_INDEX_CONSUMED, "index 0 again is refused");

    /* status 6: a stream with a timeout, asking for key the slow link has not made yet */
    uint8_t ksid2[16];
    EXPECT(open_both(a, b, make_qos(16, 50), ksid2) == 0, "second stream");
    index = 5000;
    EXPECT(kp_get_key(a, ksid2, &index, key, sizeof key, NULL, &status) == KP_OK && status == 6, "timeout: %u", status);

    /* status 4: link outage */
    EXPECT(kp_simulated_link_set_down(a, 1) == KP_OK, "outage on");
    for (uint32_t i = 100; i < 400 && status != 4; i++) {
        index = i * 10; /* each needs a fresh block: drains the ring */
        kp_get_key(a, ksid2, &index, key, sizeof key, NULL, &status);
    }
    EXPECT(status == 4, "device down: status %u", status);
    EXPECT(kp_simulated_link_set_down(a, 0) == KP_OK, "outage off");

    /* still usable: close both ends */
    EXPECT(kp_close(a, ksid, &status) == KP_OK && status == 0, "close");
    EXPECT(kp_close(a, ksid, &status) == KP_ERR_UNKNOWN_KSID, "close twice");
    EXPECT(kp_close(b, ksid, &status) == KP_OK && status == 0, "close B");

    kp_engine_free(a);
    kp_engine_free(b);
    if (failures) {
        fprintf(stderr, "api_errors: %d check(s) failed\n", failures);
        return 1;
    }
    printf("api_errors: all checks passed\n");
    return 0;
}
