// Error paths of the C++ bindings: every failure is a keypipe::Error with
// its KP_ERR_* code and kp_last_error() detail, or a keypipe::StatusError
// with its ETSI status; moved-from objects are safe; shutdown() releases a
// thread blocked in get_key / wait_key at once. Exits 0 when all pass.
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <type_traits>

#include "keypipe.hpp"

namespace {

int failures = 0;

#define EXPECT(cond, ...)                                            \
    do {                                                             \
        if (!(cond)) {                                               \
            std::fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            std::fprintf(stderr, __VA_ARGS__);                       \
            std::fprintf(stderr, "\n");                              \
            ++failures;                                              \
        }                                                            \
    } while (0)

// Runs `f`; the keypipe::Error it threw (code 0 if it threw none or
// something else). `detail` gets its detail.
template <typename F>
kp_result error_of(F&& f, std::string* detail = nullptr) {
    try {
        f();
    } catch (const keypipe::Error& e) {
        if (detail) *detail = e.detail();
        return e.code();
    } catch (...) {
        return 1;
    }
    return 0;
}

// Runs `f`; the status of the keypipe::StatusError it threw (99 if none).
template <typename F>
std::uint32_t status_of(F&& f) {
    try {
        f();
    } catch (const keypipe::StatusError& e) {
        return e.status();
    } catch (...) {
        return 98;
    }
    return 99;
}

// Where single nodes keep their ledgers: $KP_DATA_DIR, or a new directory.
std::string data_dir() {
    const char* dir = std::getenv("KP_DATA_DIR");
    if (dir && *dir) return dir;
    static char made[] = "/tmp/keypipe-cpp-XXXXXX";
    static const bool ok = mkdtemp(made) != nullptr;
    return ok ? made : "/tmp";
}

const char* kSecret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

// Rate-limited pair: 16-byte blocks; `rate` bit/s.
std::string slow_config(unsigned rate) {
    return "block_size = 16\narena_blocks = 64\nring_blocks = 4\n[device]\ndriver = \"simulated\"\nrate_bps = " +
           std::to_string(rate) + "\n";
}

void types() {
    static_assert(!std::is_copy_constructible_v<keypipe::Engine>);
    static_assert(!std::is_copy_constructible_v<keypipe::Stream>);
    static_assert(!std::is_copy_constructible_v<keypipe::Kms>);
    static_assert(!std::is_copy_constructible_v<keypipe::SecretBytes>);
    static_assert(std::is_nothrow_move_constructible_v<keypipe::Engine>);
    static_assert(std::is_nothrow_move_assignable_v<keypipe::Engine>);
    static_assert(std::is_nothrow_move_constructible_v<keypipe::Stream>);
    static_assert(std::is_nothrow_move_assignable_v<keypipe::Stream>);
    static_assert(std::is_nothrow_move_constructible_v<keypipe::Kms>);
    static_assert(std::is_nothrow_move_constructible_v<keypipe::SecretBytes>);
    static_assert(std::is_nothrow_destructible_v<keypipe::Engine>);
    static_assert(std::is_nothrow_destructible_v<keypipe::Stream>);
    static_assert(std::is_nothrow_destructible_v<keypipe::Kms>);
    static_assert(std::is_nothrow_destructible_v<keypipe::SecretBytes>);
    static_assert(std::is_base_of_v<std::runtime_error, keypipe::Error>);
    static_assert(std::is_base_of_v<std::runtime_error, keypipe::StatusError>);
    static_assert(std::is_nothrow_copy_constructible_v<keypipe::Error>);
    static_assert(noexcept(std::declval<keypipe::Engine&>().shutdown()));
    static_assert(noexcept(std::declval<keypipe::Kms&>().shutdown()));
}

void values() {
    // Ksid
    keypipe::Ksid nil;
    EXPECT(nil.is_nil(), "default KSID is nil");
    auto parsed = keypipe::Ksid::parse("83CBFA59-0778-4344-abc1-4271b045e0ca");
    EXPECT(parsed && parsed->to_string() == "83cbfa59-0778-4344-abc1-4271b045e0ca", "KSID round trip");
    EXPECT(parsed && parsed->bytes[0] == 0x83 && parsed->bytes[15] == 0xca, "KSID is big-endian");
    EXPECT(keypipe::Ksid::parse("83cbfa5907784344abc14271b045e0ca") == parsed, "KSID without dashes");
    EXPECT(!keypipe::Ksid::parse("83cbfa59-0778-4344-abc1-4271b045e0cz"), "bad hex refused");
    EXPECT(!keypipe::Ksid::parse("83cbfa59+0778-4344-abc1-4271b045e0ca"), "bad dash refused");
    EXPECT(!keypipe::Ksid::parse(""), "empty refused");

    // SecretBytes: move-only, moved-from empty, constant-time equality, wipe
    const std::uint8_t raw[4] = {1, 2, 3, 4};
    keypipe::SecretBytes s = keypipe::SecretBytes::copy_of(raw, 4);
    keypipe::SecretBytes c = s.clone();
    EXPECT(s == c && s.size() == 4 && s[3] == 4, "clone equals");
    keypipe::SecretBytes m(std::move(s));
    EXPECT(s.empty() && s.data() == nullptr && m.size() == 4, "moved-from SecretBytes is empty");
    c[0] = 9;
    EXPECT(m != c, "a differing byte is unequal");
    m = std::move(c);
    EXPECT(m[0] == 9 && c.empty(), "move assignment");
    m.truncate(2);
    EXPECT(m.size() == 2, "truncate");
    m.clear();
    EXPECT(m.empty() && m.data() == nullptr, "clear");
    std::uint8_t buf[8];
    std::memset(buf, 0xAB, sizeof buf);
    keypipe::secure_zero(buf, sizeof buf);
    bool zero = true;
    for (auto b : buf) zero = zero && b == 0;
    EXPECT(zero, "secure_zero zeroes");

    // Qos
    keypipe::Qos q(16, 5);
    q.metadata_mimetype = std::string(300, 'x');
    std::string detail;
    EXPECT(error_of([&] { (void)q.to_c(); }, &detail) == KP_ERR_INVALID_ARGUMENT, "long mimetype refused");
    EXPECT(detail.find("keypipe.hpp:") == 0, "the header's own detail: %s", detail.c_str());

    EXPECT(std::string(keypipe::status_message(keypipe::status::timeout)) == "timeout", "status message");
    EXPECT(std::string(keypipe::version()) == KP_VERSION, "library version %s, header %s", keypipe::version(),
           KP_VERSION);
}

void construction_errors() {
    std::string detail;
    EXPECT(error_of([] { (void)keypipe::Engine::pair("block_size = 8"); }, &detail) == KP_ERR_CONFIG, "bad block_size");
    EXPECT(detail.find("block_size") != std::string::npos, "detail names the key: %s", detail.c_str());
    EXPECT(error_of([] { (void)keypipe::Engine::pair("block_size = ["); }, &detail) == KP_ERR_CONFIG, "bad TOML");
    EXPECT(!detail.empty(), "malformed TOML has a detail");
    EXPECT(error_of([] { (void)keypipe::Engine::pair("no_such_key = 1"); }, &detail) == KP_ERR_CONFIG,
           "unknown key refused");
    EXPECT(detail.find("no_such_key") != std::string::npos, "detail names the key: %s", detail.c_str());
    try {
        keypipe::Engine e(nullptr);
        EXPECT(false, "a single node with defaults must fail");
    } catch (const keypipe::Error& e) {
        EXPECT(e.code() == KP_ERR_CONFIG, "single node needs a secret: %d", e.code());
        EXPECT(std::string(e.operation()) == "kp_engine_new", "operation %s", e.operation());
        EXPECT(std::string(e.what()).find(e.detail()) != std::string::npos, "what() holds the detail");
        keypipe::Error copy = e;  // copying never throws, keeps everything
        EXPECT(copy.code() == e.code() && copy.detail() == e.detail(), "copy");
    }
    const std::string secret_only = std::string("[device]\ndriver = \"simulated\"\nlink_secret = \"") + kSecret + "\"\n";
    EXPECT(error_of([&] { keypipe::Engine e(secret_only); }, &detail) == KP_ERR_CONFIG, "secret needs data_dir");
    EXPECT(detail.find("data_dir") != std::string::npos, "detail names data_dir: %s", detail.c_str());

    EXPECT(error_of([] { keypipe::Kms k("capacity_bytes = \"lots\""); }, &detail) == KP_ERR_CONFIG, "bad KMS config");
    EXPECT(detail.find("capacity_bytes") != std::string::npos, "KMS detail names the key: %s", detail.c_str());
    keypipe::Kms taken;
    const std::string same_port = "listen = \"127.0.0.1:" + std::to_string(taken.port()) + "\"";
    EXPECT(error_of([&] { keypipe::Kms k(same_port); }, &detail) == KP_ERR_IO, "port in use: %s", detail.c_str());

    // A single node (its ledger in data_dir) has no peer: status 4.
    const std::string solo = "name = \"cpp-solo-" + std::to_string(getpid()) + "\"\ndata_dir = \"" + data_dir() +
                             "\"\n" + secret_only;
    keypipe::Engine e(solo);
    EXPECT(status_of([&] { (void)e.open_connect("a", "b", keypipe::Qos(32, 100)); }) == keypipe::status::no_qkd_connection,
           "no peer: StatusError 4");
    keypipe::Opened o = e.try_open_connect("a", "b", keypipe::Qos(32, 100));
    EXPECT(o.status == keypipe::status::no_qkd_connection, "try_open_connect: status %u", o.status);
}

void stream_errors() {
    auto [a, b] = keypipe::Engine::pair(slow_config(1280));  // 10 blocks/s

    // Status 7 with the counter-proposal; the throwing form throws it.
    keypipe::Opened counter = a.try_open_connect("a", "b", keypipe::Qos(0, 100));
    EXPECT(counter.status == keypipe::status::qos_not_met && counter.qos.key_chunk_size == 1,
           "counter-proposal: status %u chunk %u", counter.status, counter.qos.key_chunk_size);
    EXPECT(status_of([&] { (void)a.open_stream("a", "b", keypipe::Qos(1u << 20, 100)); }) == keypipe::status::qos_not_met,
           "open_stream throws status 7");

    keypipe::Stream sa = a.open_stream("a", "b", keypipe::Qos(16, 0));
    EXPECT(sa.open_status() == keypipe::status::peer_not_connected, "open A: %u", sa.open_status());
    keypipe::Key early = sa.try_get(0);
    EXPECT(early.status == keypipe::status::peer_not_connected_get_key && early.bytes.empty(),
           "peer not open yet: status %u", early.status);
    EXPECT(status_of([&] { (void)a.open_connect("a", "b", keypipe::Qos(16, 0), sa.ksid()); }) ==
               keypipe::status::ksid_in_use,
           "reopen: status 5");
    keypipe::Stream sb = b.open_stream("a", "b", keypipe::Qos(0, 1000), sa.ksid());
    EXPECT(sb.open_status() == 0 && sb.chunk_size() == 16, "open B");

    // Unknown KSID
    keypipe::Ksid unknown;
    unknown.bytes[0] = 1;
    std::string detail;
    EXPECT(error_of([&] { (void)a.get_key(unknown, 0); }, &detail) == KP_ERR_UNKNOWN_KSID, "get_key unknown KSID");
    EXPECT(!detail.empty(), "unknown KSID has a detail");
    std::uint8_t key[64];
    EXPECT(error_of([&] { (void)a.get_key_into(unknown, 0, key, sizeof key); }) == KP_ERR_UNKNOWN_KSID,
           "get_key_into unknown KSID");
    EXPECT(error_of([&] { a.close(unknown); }) == KP_ERR_UNKNOWN_KSID, "close unknown KSID");
    EXPECT(error_of([&] { a.push_start(unknown); }) == KP_ERR_UNKNOWN_KSID, "push_start unknown KSID");
    EXPECT(error_of([&] { a.push_start(sa.ksid()); }) == KP_ERR_UNKNOWN_KSID, "push_start on a pull stream");
    EXPECT(error_of([&] { (void)a.try_push_open("not a uri", "http://127.0.0.1:9", keypipe::Qos(16, 0)); }, &detail) ==
               KP_ERR_INVALID_ARGUMENT,
           "bad KMS URI");
    EXPECT(detail.find("source") != std::string::npos, "detail names the URI: %s", detail.c_str());

    // Too small a buffer: nothing written
    std::memset(key, 0xEE, sizeof key);
    EXPECT(error_of([&] { (void)sa.next_into(key, 8); }) == KP_ERR_KEY_BUFFER_TOO_SMALL, "short buffer");
    EXPECT(key[0] == 0xEE && key[7] == 0xEE, "short buffer untouched");

    // Index 0 (the slow link may need a moment), then consumed
    keypipe::Key k0;
    for (int i = 0; i < 3000; ++i) {
        k0 = sa.try_get(0);
        if (k0.status != keypipe::status::insufficient_key && k0.status != keypipe::status::peer_not_connected_get_key)
            break;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    EXPECT(k0.status == 0 && k0.bytes.size() == 16 && !k0.metadata.empty(), "index 0: status %u", k0.status);
    EXPECT(error_of([&] { (void)sa.get(0); }, &detail) == KP_ERR_INDEX_CONSUMED, "index 0 again is refused");
    EXPECT(error_of([&] { (void)a.get_key_into(sa.ksid(), 0, key, sizeof key); }) == KP_ERR_INDEX_CONSUMED,
           "index 0 again, into");
    keypipe::Key b0;
    for (int i = 0; i < 3000; ++i) {
        b0 = sb.try_get(0);
        if (b0.status != keypipe::status::insufficient_key) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    EXPECT(b0.status == 0 && b0.bytes == k0.bytes, "B's chunk 0 equals A's: status %u", b0.status);

    // Status 8: a metadata buffer too small; the key stays, then with room
    char meta[64];
    keypipe::KeyInfo small{};
    for (int i = 0; i < 3000; ++i) {
        small = a.try_get_key_into(sa.ksid(), 1, key, sizeof key, meta, 4);
        if (small.status != keypipe::status::insufficient_key) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    EXPECT(small.status == keypipe::status::metadata_too_small && small.metadata_length > 4,
           "metadata too small: status %u needed %u", small.status, small.metadata_length);
    EXPECT(status_of([&] { (void)a.get_key_into(sa.ksid(), 1, key, sizeof key, meta, 4); }) ==
               keypipe::status::metadata_too_small,
           "throwing form: StatusError 8");
    keypipe::KeyInfo roomy = a.get_key_into(sa.ksid(), 1, key, sizeof key, meta, sizeof meta);
    EXPECT(roomy.index == 1 && roomy.length == 16 && roomy.metadata_length + 1 == small.metadata_length &&
               meta[roomy.metadata_length] == 0 && std::strncmp(meta, "{\"age_ms\":", 10) == 0,
           "with room: length %zu metadata %u (%s)", roomy.length, roomy.metadata_length, meta);

    // Status 2 through the throwing form: far indexes drain the slow link
    std::uint32_t status = 0;
    for (std::uint32_t far = 1000; far < 1200 && status == 0; far += 10) status = status_of([&] { (void)sa.get(far); });
    EXPECT(status == keypipe::status::insufficient_key, "no key yet: StatusError %u", status);

    // Streams close on destruction; a closed Stream refuses calls.
    const keypipe::Ksid ksid = sa.ksid();
    sa.close();
    EXPECT(!sa.is_open(), "closed");
    EXPECT(error_of([&] { (void)sa.next(); }, &detail) == KP_ERR_UNKNOWN_KSID, "closed stream refuses");
    EXPECT(error_of([&] { a.close(ksid); }) == KP_ERR_UNKNOWN_KSID, "closed on the engine too");
    EXPECT(error_of([&] { sa.close(); }) == KP_ERR_UNKNOWN_KSID, "close twice");
    {
        keypipe::Stream scoped = a.open_stream("a", "b", keypipe::Qos(16, 0));
        const keypipe::Ksid k = scoped.ksid();
        { keypipe::Stream moved(std::move(scoped)); }  // closes here
        EXPECT(error_of([&] { a.close(k); }) == KP_ERR_UNKNOWN_KSID, "the destructor closed the KSID");
        keypipe::Stream released = a.open_stream("a", "b", keypipe::Qos(16, 0));
        const keypipe::Ksid r = released.release();
        EXPECT(!released.is_open(), "released");
        EXPECT(error_of([&] { a.close(r); }) == 0, "a released KSID stays open");
    }

    // A Stream outliving its Engine
    keypipe::Stream orphan = b.open_stream("a", "b", keypipe::Qos(16, 0));
    { keypipe::Engine gone = std::move(b); }
    EXPECT(error_of([&] { (void)orphan.next(); }, &detail) == KP_ERR_SHUT_DOWN, "engine gone: %s", detail.c_str());
    EXPECT(error_of([&] { (void)sb.try_next(); }) == KP_ERR_SHUT_DOWN, "engine gone (other stream)");
}

void shutdown_and_moves() {
    auto [a, b] = keypipe::Engine::pair();
    keypipe::Stream s = a.open_stream("a", "b", keypipe::Qos(32, 1000));
    keypipe::Stream t = b.open_stream("a", "b", keypipe::Qos(0, 1000), s.ksid());
    keypipe::Key k = s.next();
    EXPECT(k.bytes.size() == 32, "a chunk before shutdown");

    // Moved-from engines: empty, their calls fail, destroying them is safe
    keypipe::Engine moved = std::move(a);
    EXPECT(!a && a.get() == nullptr && moved, "moved-from engine is empty");
    EXPECT(error_of([&] { (void)a.stats(); }) == KP_ERR_NULL_ARGUMENT, "stats on a moved-from engine");
    EXPECT(error_of([&] { (void)a.get_key(s.ksid(), 5); }) == KP_ERR_NULL_ARGUMENT, "get_key on a moved-from engine");
    EXPECT(error_of([&] { (void)a.try_open_connect("a", "b", keypipe::Qos(32, 0)); }) == KP_ERR_NULL_ARGUMENT,
           "open on a moved-from engine");
    a.shutdown();  // no-op
    keypipe::Key k1 = s.next();  // the Stream follows its engine's state, not the object
    EXPECT(k1.index == 1, "stream after its engine moved: %u", k1.index);

    // Use after shutdown
    moved.shutdown();
    moved.shutdown();  // idempotent
    std::string detail;
    EXPECT(error_of([&] { (void)moved.get_key(s.ksid(), 2); }, &detail) == KP_ERR_SHUT_DOWN, "get_key after shutdown");
    EXPECT(!detail.empty(), "shut down has a detail");
    EXPECT(error_of([&] { (void)s.next(); }) == KP_ERR_SHUT_DOWN, "Stream::next after shutdown");
    std::uint8_t key[32];
    EXPECT(error_of([&] { (void)moved.get_key_into(s.ksid(), 2, key, sizeof key); }) == KP_ERR_SHUT_DOWN,
           "get_key_into after shutdown");
    EXPECT(error_of([&] { (void)moved.try_open_connect("a", "b", keypipe::Qos(32, 0)); }) == KP_ERR_SHUT_DOWN,
           "open after shutdown");
    EXPECT(error_of([&] { moved.close(s.ksid()); }) == KP_ERR_SHUT_DOWN, "close after shutdown");
    EXPECT(moved.stats().shut_down == 1, "stats after shutdown say so");

    // Move assignment frees the engine overwritten; moved-from Stream, Kms
    keypipe::Stream s2(std::move(s));
    EXPECT(!s.is_open() && s2.is_open(), "moved-from stream");
    moved = std::move(b);
    EXPECT(!b && moved, "move-assigned engine");
    keypipe::Kms kms;
    keypipe::Kms kms2(std::move(kms));
    EXPECT(!kms && kms2 && kms2.port() != 0, "moved-from KMS");
    EXPECT(error_of([&] { (void)kms.port(); }) == KP_ERR_NULL_ARGUMENT, "port of a moved-from KMS");
    kms.shutdown();  // no-op
}

void blocked_calls_released() {
    // 1 bit/s: a fresh 16-byte block takes 128 s, so get_key waits its full
    // timeout (30 s) unless shutdown() wakes it.
    auto [a, b] = keypipe::Engine::pair(slow_config(1));
    keypipe::Stream sa = a.open_stream("a", "b", keypipe::Qos(16, 30000));
    keypipe::Stream sb = b.open_stream("a", "b", keypipe::Qos(0, 1000), sa.ksid());
    std::atomic<bool> done{false};
    std::atomic<std::uint32_t> final_status{99};
    std::atomic<kp_result> final_error{0};
    std::atomic<std::uint32_t> delivered{0};
    std::thread reader([&] {
        try {
            for (std::uint32_t index = 100;; index += 10) {  // each a fresh block
                keypipe::Key k = sa.try_get(index);
                if (k.status != 0) {
                    final_status = k.status;
                    break;
                }
                ++delivered;
            }
        } catch (const keypipe::Error& e) {
            final_error = e.code();
        } catch (...) {
            final_error = 1;
        }
        done = true;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(700));
    EXPECT(!done, "the reader is blocked in get_key (%u chunks came first)", delivered.load());
    const auto t0 = std::chrono::steady_clock::now();
    a.shutdown();
    reader.join();
    const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
    EXPECT(waited.count() < 3000, "shutdown released the reader after %lld ms", static_cast<long long>(waited.count()));
    EXPECT(final_status == keypipe::status::no_qkd_connection && final_error == 0,
           "the blocked get_key answered status 4: status %u error %d", final_status.load(), final_error.load());

    // The same for a KMS side's wait_key
    keypipe::Kms kms;
    std::atomic<kp_result> kms_error{0};
    std::atomic<bool> kms_done{false};
    std::thread waiter([&] {
        kms_error = error_of([&] { (void)kms.try_wait_key(sa.ksid(), 0, std::chrono::milliseconds(30000)); });
        kms_done = true;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    EXPECT(!kms_done, "the KMS waiter is blocked");
    const auto t1 = std::chrono::steady_clock::now();
    kms.shutdown();
    waiter.join();
    const auto kms_waited = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t1);
    EXPECT(kms_waited.count() < 3000, "KMS shutdown released the waiter after %lld ms",
           static_cast<long long>(kms_waited.count()));
    EXPECT(kms_error == KP_ERR_SHUT_DOWN, "the blocked wait_key failed with KP_ERR_SHUT_DOWN: %d", kms_error.load());
    EXPECT(error_of([&] { (void)kms.try_get_key(sa.ksid(), 0); }) == KP_ERR_SHUT_DOWN, "KMS get after shutdown");
    EXPECT(error_of([&] { (void)kms.stats(); }) == KP_ERR_SHUT_DOWN, "KMS stats after shutdown");
    EXPECT(error_of([&] { (void)kms.port(); }) == KP_ERR_SHUT_DOWN, "KMS port after shutdown");
}

void kms_errors() {
    auto [a, b] = keypipe::Engine::pair();
    keypipe::Kms ka, kb;
    keypipe::Qos qos(32, 1000);
    qos.max_bps = 200 * 32 * 8;  // about 200 chunks/s
    keypipe::Stream pa = a.open_push_stream(ka.uri(), kb.uri(), qos);
    keypipe::Stream pb = b.open_push_stream(ka.uri(), kb.uri(), keypipe::Qos(0, 1000), pa.ksid());
    EXPECT(pa.open_status() == 1 && pb.open_status() == 0, "push opens: %u %u", pa.open_status(), pb.open_status());
    keypipe::KmsKey none = ka.try_get_key(pa.ksid(), 0);
    EXPECT(none.status == keypipe::status::insufficient_key, "nothing pushed yet: status %u", none.status);
    EXPECT(status_of([&] { (void)ka.get_key(pa.ksid(), 0); }) == keypipe::status::insufficient_key, "StatusError 2");
    EXPECT(status_of([&] { (void)ka.wait_key(pa.ksid(), 0, std::chrono::milliseconds(50)); }) ==
               keypipe::status::timeout,
           "StatusError 6");
    pa.start_push(0);
    pb.start_push();

    std::uint8_t small[8];
    std::string detail;
    EXPECT(error_of([&] { (void)ka.wait_key_into(pa.ksid(), 0, small, sizeof small, std::chrono::milliseconds(5000)); },
                    &detail) == KP_ERR_KEY_BUFFER_TOO_SMALL,
           "KMS short buffer: %s", detail.c_str());
    keypipe::KmsKey k0 = ka.wait_key(pa.ksid(), 0, std::chrono::milliseconds(5000));  // it stayed held
    EXPECT(k0.index == 0 && k0.bytes.size() == 32, "chunk 0 after the short buffer");
    EXPECT(error_of([&] { (void)ka.get_key(pa.ksid(), 0); }) == KP_ERR_INDEX_CONSUMED, "KMS index taken twice");
    for (int i = 0; i < 5000 && a.stats().pushes_acked == 0; ++i)  // the KMS holds it before A sees the 201
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    EXPECT(error_of([&] { pa.start_push(0); }, &detail) == KP_ERR_INDEX_CONSUMED, "pushing index 0 again: %s",
           detail.c_str());
    keypipe::KmsKey b0 = kb.wait_key(pa.ksid(), 0, std::chrono::milliseconds(5000));
    EXPECT(b0.bytes == k0.bytes, "both KMS sides got the same chunk 0");
    keypipe::KmsKey b1 = kb.next_key(pa.ksid(), std::chrono::milliseconds(5000));
    EXPECT(b1.index >= 1, "next after 0: %u", b1.index);
    keypipe::Ksid unknown;
    unknown.bytes[3] = 7;
    EXPECT(ka.try_next_key(unknown, std::chrono::milliseconds(0)).status == keypipe::status::insufficient_key,
           "a KSID never pushed: status 2");
    EXPECT(ka.stats().chunks_received >= 1, "KMS counters");
}

}  // namespace

// A stream the Engine object did not open (other code on the same
// handle, or one that resumed after a restart): get_key asks the library
// for its chunk size (kp_stream_qos) and returns exactly that many bytes.
void stream_opened_elsewhere() {
    auto [a, b] = keypipe::Engine::pair();
    kp_qos q{};
    q.key_chunk_size = 40;
    q.timeout = 2000;
    keypipe::Ksid k;
    std::uint32_t st = 99;
    EXPECT(kp_open_connect(a.get(), "a", "b", &q, k.data(), &st) == KP_OK && st == 1, "raw open A: %u", st);
    EXPECT(kp_open_connect(b.get(), "a", "b", &q, k.data(), &st) == KP_OK && st == 0, "raw open B: %u", st);
    keypipe::Key ka = a.get_key(k, 0);
    keypipe::Key kb = b.get_key(k, 0);
    EXPECT(ka.bytes.size() == 40 && ka.bytes == kb.bytes, "raw stream: %zu bytes", ka.bytes.size());
    std::uint8_t buf[64];
    keypipe::KeyInfo info = a.get_key_into(k, 1, buf, sizeof buf);
    EXPECT(info.length == 40, "get_key_into length %zu", static_cast<std::size_t>(info.length));
    keypipe::secure_zero(buf, sizeof buf);
    a.close(k);
    b.close(k);
}

int main() {
    types();
    try {
        values();
        construction_errors();
        stream_errors();
        shutdown_and_moves();
        blocked_calls_released();
        kms_errors();
        stream_opened_elsewhere();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "FAIL: unexpected exception: %s\n", e.what());
        ++failures;
    }
    if (failures) {
        std::fprintf(stderr, "cpp test: %d check(s) failed\n", failures);
        return 1;
    }
    std::printf("cpp test: all checks passed\n");
    return 0;
}
