// keypipe.hpp: header-only C++17 RAII wrappers over the keypipe C ABI
// (include/keypipe.h). Link libkeypipe.a (or -lkeypipe) as for C:
//   c++ -std=c++17 -I include -I bindings/cpp app.cpp libkeypipe.a -lpthread -ldl -lm
//
// Types (namespace keypipe)
//   Engine       one QKD node (kp_engine), move-only; Engine::pair() gives the
//                two nodes of an in-process simulated link.
//   Stream       an open key stream (a KSID on one Engine), move-only; its
//                destructor closes the KSID (kp_close). Engine::open_stream,
//                Engine::open_push_stream.
//   Kms          the in-process KMS side that receives pushed key (kp_kms),
//                move-only.
//   SecretBytes  key bytes: move-only, zeroized when destroyed.
//   Ksid         a key stream id (16 bytes, big-endian as in its text form).
//   Qos          the stream's quality of service (kp_qos).
//
// Errors
//   - keypipe::Error (a std::runtime_error): a call returned a negative
//     kp_result. code() is the KP_ERR_* code, detail() the text of
//     kp_last_error() read right after the failing call on the same thread,
//     operation() the C function ("kp_get_key"). what() joins the three.
//     The few errors this header raises itself (a Qos mimetype over 255
//     bytes, a Stream already closed, the Engine of a Stream destroyed)
//     use the same codes and a detail starting with "keypipe.hpp:".
//   - keypipe::StatusError (a std::runtime_error): the call ran (KP_OK) but
//     its ETSI status is not a success. status() is the status (0..8), see
//     keypipe::status and status_message().
//   - Success statuses: 0 for every call, and 1 (peer not connected yet)
//     too for open_connect / push_open, because the stream is open then.
//   - Each call that has routine non-success statuses also comes in a try_
//     form (try_open_connect, try_get_key, try_get_key_into, Kms::try_*):
//     it throws only keypipe::Error and returns the status in the result's
//     `status` field (status 2 or 6 when polling or waiting for key, 3 while
//     the peer opens, 4 when the link is down or the engine is shut down,
//     7 with the counter-proposal in Opened::qos, 8 with the metadata size
//     needed). The throwing form is `if (r.status != 0) throw StatusError`.
//   - Nothing is noexcept that can fail; accessors, moves, shutdown() and
//     every destructor are noexcept (destructors ignore failures: they run
//     kp_close / kp_engine_free / kp_kms_free, which cannot report any).
//
// Key buffers
//   - Engine::get_key / Stream::next return the key in a SecretBytes
//     allocated once per call with exactly the chunk's size: the stream's
//     key_chunk_size, which the Engine records when the stream is opened
//     through it, or else asks of the library (kp_stream_qos). Kms::wait_key / next_key
//     allocate the chunk size last seen and, on KP_ERR_KEY_BUFFER_TOO_SMALL
//     (the chunk stays held, *key_len tells its size), retry at that size.
//   - get_key_into(ksid, index, uint8_t* buf, size_t len, ...) and the
//     Kms::*_into calls write straight into the caller's buffer (which may
//     be uninitialised; at most the chunk's bytes are written) and allocate
//     nothing: no std::vector, no SecretBytes, no std::string (the metadata
//     goes to an optional caller char buffer). The caller zeroizes it
//     (keypipe::secure_zero).
//
// Zeroizing
//   SecretBytes owns a heap buffer; clear(), move-assignment and the
//   destructor overwrite all of it with secure_zero() (explicit_bzero on
//   glibc, else a volatile byte loop followed by a compiler barrier) before
//   freeing it. It cannot be copied (clone() is explicit); a moved-from
//   SecretBytes is empty. Comparison (==) takes time independent of the
//   bytes. The buffer is not mlocked: the engine's own key arena is.
//   Metadata (JSON such as {"age_ms":3}) is not secret: a std::string.
//
// Threads and lifetimes
//   - An Engine or Kms may be used from any number of threads at once (the
//     C handles are thread-safe); shutdown() from another thread wakes calls
//     blocked in get_key (status 4) or Kms::wait_key (KP_ERR_SHUT_DOWN), and
//     every later call fails with keypipe::Error KP_ERR_SHUT_DOWN.
//   - A Stream is used by one thread at a time (next() moves its index);
//     Engine::get_key on the same KSID may run in other threads.
//   - Moving an Engine or Kms leaves an empty object: destroying it does
//     nothing, and calls on it fail with KP_ERR_NULL_ARGUMENT.
//   - ~Engine shuts the engine down (waking blocked calls), then frees it
//     once no Stream call is using it. A Stream may outlive its Engine: its
//     calls then fail with KP_ERR_SHUT_DOWN and its destructor does nothing.
//   - No call may start on an Engine or Kms while it is being destroyed.
//
// Configuration: TOML text as documented in keypipe.h (engine: role,
// block_size, arena_blocks, ring_blocks, max_key_chunk_size, ..., name,
// data_dir, [device] driver / rate_bps / link_secret / path, [link] ...;
// KMS side: listen, capacity_bytes, name). nullptr = the defaults.

#ifndef KEYPIPE_HPP
#define KEYPIPE_HPP

#include "keypipe.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#if defined(__GLIBC__) && defined(__USE_MISC) && \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 25))
#define KEYPIPE_HPP_EXPLICIT_BZERO 1
#endif

namespace keypipe {

// ---------------------------------------------------------------- statuses

// ETSI GS QKD 004 statuses (the `*status` of a call that returned KP_OK).
namespace status {
inline constexpr std::uint32_t successful = 0;
inline constexpr std::uint32_t peer_not_connected = 1;
inline constexpr std::uint32_t insufficient_key = 2;
inline constexpr std::uint32_t peer_not_connected_get_key = 3;
inline constexpr std::uint32_t no_qkd_connection = 4;
inline constexpr std::uint32_t ksid_in_use = 5;
inline constexpr std::uint32_t timeout = 6;
inline constexpr std::uint32_t qos_not_met = 7;
inline constexpr std::uint32_t metadata_too_small = 8;
}  // namespace status

// A static description of an ETSI status.
inline const char* status_message(std::uint32_t s) noexcept {
    switch (s) {
        case 0: return "successful";
        case 1: return "peer not connected (the other side has not opened the KSID yet)";
        case 2: return "insufficient key (none available yet)";
        case 3: return "peer side not connected for GET_KEY";
        case 4: return "no QKD connection (link down, or the engine was shut down)";
        case 5: return "KSID already in use";
        case 6: return "timeout";
        case 7: return "QoS not met (see the counter-proposal)";
        case 8: return "metadata buffer too small";
        default: return "unknown status";
    }
}

// A static description of a kp_result code.
inline const char* result_message(kp_result code) noexcept { return kp_result_message(code); }

// The loaded library's version (KP_VERSION is the header's).
inline const char* version() noexcept { return kp_version(); }

// Overwrites n bytes at p with zeros in a way the compiler cannot drop.
inline void secure_zero(void* p, std::size_t n) noexcept {
    if (p == nullptr || n == 0) return;
#ifdef KEYPIPE_HPP_EXPLICIT_BZERO
    ::explicit_bzero(p, n);
#else
    volatile unsigned char* v = static_cast<volatile unsigned char*>(p);
    for (std::size_t i = 0; i < n; ++i) v[i] = 0;
#if defined(__GNUC__) || defined(__clang__)
    __asm__ __volatile__("" : : "r"(p) : "memory");
#endif
#endif
}

// ------------------------------------------------------------------ errors

// A call returned a negative kp_result (misuse or an internal error).
class Error : public std::runtime_error {
public:
    Error(kp_result code, const char* operation, std::string detail)
        : std::runtime_error(compose(code, operation, detail)),
          code_(code),
          operation_(operation),
          detail_(std::make_shared<const std::string>(std::move(detail))) {}

    // The KP_ERR_* code.
    kp_result code() const noexcept { return code_; }
    // The C function that failed (a static string).
    const char* operation() const noexcept { return operation_; }
    // kp_last_error() right after the failure (or the header's own detail).
    const std::string& detail() const noexcept { return *detail_; }

private:
    static std::string compose(kp_result code, const char* operation, const std::string& detail) {
        std::string s = operation;
        s += ": ";
        s += kp_result_message(code);
        if (!detail.empty()) {
            s += " (";
            s += detail;
            s += ")";
        }
        return s;
    }

    kp_result code_;
    const char* operation_;
    std::shared_ptr<const std::string> detail_;  // shared: copying never throws
};

// The call ran but answered an ETSI status that is not a success.
class StatusError : public std::runtime_error {
public:
    StatusError(std::uint32_t status, const char* operation)
        : std::runtime_error(std::string(operation) + ": status " + std::to_string(status) + ": " +
                             status_message(status)),
          status_(status),
          operation_(operation) {}

    // The ETSI status (see keypipe::status).
    std::uint32_t status() const noexcept { return status_; }
    // The C function that answered it (a static string).
    const char* operation() const noexcept { return operation_; }

private:
    std::uint32_t status_;
    const char* operation_;
};

namespace detail {

// The calling thread's kp_last_error() text. Call it before any other
// keypipe call on this thread.
inline std::string last_error_text() {
    char small[256];
    std::size_t n = 0;
    if (kp_last_error(small, sizeof small, &n) != KP_OK) return std::string();
    if (n < sizeof small) return std::string(small, n);
    std::string big(n + 1, '\0');
    std::size_t m = 0;
    if (kp_last_error(&big[0], big.size(), &m) != KP_OK) return std::string(small);
    big.resize(m < n ? m : n);
    return big;
}

[[noreturn]] inline void throw_last(kp_result code, const char* operation) {
    throw Error(code, operation, last_error_text());
}

inline void check(kp_result code, const char* operation) {
    if (code != KP_OK) throw_last(code, operation);
}

[[noreturn]] inline void throw_own(kp_result code, const char* operation, const std::string& detail) {
    throw Error(code, operation, "keypipe.hpp: " + detail);
}

inline std::uint32_t clamp_ms(std::chrono::milliseconds t) noexcept {
    if (t.count() <= 0) return 0;
    constexpr auto most = std::numeric_limits<std::uint32_t>::max();
    return t.count() >= static_cast<std::chrono::milliseconds::rep>(most)
               ? most
               : static_cast<std::uint32_t>(t.count());
}

}  // namespace detail

// ------------------------------------------------------------- SecretBytes

// Key bytes on the heap, zeroized (all of the allocation) when cleared,
// move-assigned over or destroyed. Move-only.
class SecretBytes {
public:
    SecretBytes() noexcept = default;

    // n bytes, uninitialised (for the library to write).
    explicit SecretBytes(std::size_t n) : data_(n ? new std::uint8_t[n] : nullptr), size_(n), capacity_(n) {}

    // A copy of n bytes at p.
    static SecretBytes copy_of(const std::uint8_t* p, std::size_t n) {
        SecretBytes s(n);
        if (n) std::memcpy(s.data_, p, n);
        return s;
    }

    SecretBytes(const SecretBytes&) = delete;
    SecretBytes& operator=(const SecretBytes&) = delete;

    SecretBytes(SecretBytes&& o) noexcept
        : data_(std::exchange(o.data_, nullptr)),
          size_(std::exchange(o.size_, 0)),
          capacity_(std::exchange(o.capacity_, 0)) {}

    SecretBytes& operator=(SecretBytes&& o) noexcept {
        if (this != &o) {
            clear();
            data_ = std::exchange(o.data_, nullptr);
            size_ = std::exchange(o.size_, 0);
            capacity_ = std::exchange(o.capacity_, 0);
        }
        return *this;
    }

    ~SecretBytes() { clear(); }

    // Zeroizes and frees the bytes; the object is empty afterwards.
    void clear() noexcept {
        if (data_ != nullptr) {
            secure_zero(data_, capacity_);
            delete[] data_;
        }
        data_ = nullptr;
        size_ = 0;
        capacity_ = 0;
    }

    // Shortens to n bytes (no-op when n >= size()); the bytes past n stay
    // allocated until they are zeroized with the rest.
    void truncate(std::size_t n) noexcept {
        if (n < size_) {
            secure_zero(data_ + n, size_ - n);
            size_ = n;
        }
    }

    // An explicit copy (also zeroized when destroyed).
    SecretBytes clone() const { return copy_of(data_, size_); }

    std::uint8_t* data() noexcept { return data_; }
    const std::uint8_t* data() const noexcept { return data_; }
    std::size_t size() const noexcept { return size_; }
    bool empty() const noexcept { return size_ == 0; }
    std::uint8_t* begin() noexcept { return data_; }
    std::uint8_t* end() noexcept { return data_ + size_; }
    const std::uint8_t* begin() const noexcept { return data_; }
    const std::uint8_t* end() const noexcept { return data_ + size_; }
    std::uint8_t& operator[](std::size_t i) noexcept { return data_[i]; }
    const std::uint8_t& operator[](std::size_t i) const noexcept { return data_[i]; }

    // Equal sizes and bytes; the time taken does not depend on the bytes.
    friend bool operator==(const SecretBytes& a, const SecretBytes& b) noexcept {
        return a.size_ == b.size_ && equal(a.data_, b.data_, a.size_);
    }
    friend bool operator!=(const SecretBytes& a, const SecretBytes& b) noexcept { return !(a == b); }

    // Compares n bytes in time independent of their values.
    static bool equal(const std::uint8_t* a, const std::uint8_t* b, std::size_t n) noexcept {
        volatile std::uint8_t diff = 0;
        for (std::size_t i = 0; i < n; ++i) diff = static_cast<std::uint8_t>(diff | (a[i] ^ b[i]));
        return diff == 0;
    }

private:
    std::uint8_t* data_ = nullptr;
    std::size_t size_ = 0;
    std::size_t capacity_ = 0;
};

// -------------------------------------------------------------------- Ksid

// A key stream id: 16 bytes, big-endian as in the UUID text form. All zero
// (the default) asks open_connect / push_open to assign one.
struct Ksid {
    std::array<std::uint8_t, 16> bytes{};

    constexpr Ksid() noexcept = default;
    constexpr explicit Ksid(const std::array<std::uint8_t, 16>& b) noexcept : bytes(b) {}

    // The 16 bytes at p.
    static Ksid from_bytes(const std::uint8_t* p) noexcept {
        Ksid k;
        std::memcpy(k.bytes.data(), p, 16);
        return k;
    }

    // "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" or 32 hex digits; nullopt if
    // the text is neither.
    static std::optional<Ksid> parse(std::string_view text) noexcept {
        const bool dashed = text.size() == 36;
        if (!dashed && text.size() != 32) return std::nullopt;
        Ksid k;
        std::size_t at = 0;
        for (std::size_t i = 0; i < 16; ++i) {
            if (dashed && (at == 8 || at == 13 || at == 18 || at == 23)) {
                if (text[at] != '-') return std::nullopt;
                ++at;
            }
            const int hi = hex(text[at]);
            const int lo = hex(text[at + 1]);
            if (hi < 0 || lo < 0) return std::nullopt;
            k.bytes[i] = static_cast<std::uint8_t>(hi << 4 | lo);
            at += 2;
        }
        return k;
    }

    // The lower-case 8-4-4-4-12 text form.
    std::string to_string() const {
        static const char digits[] = "0123456789abcdef";
        std::string s;
        s.reserve(36);
        for (std::size_t i = 0; i < 16; ++i) {
            if (i == 4 || i == 6 || i == 8 || i == 10) s += '-';
            s += digits[bytes[i] >> 4];
            s += digits[bytes[i] & 15];
        }
        return s;
    }

    bool is_nil() const noexcept {
        for (auto b : bytes)
            if (b != 0) return false;
        return true;
    }

    std::uint8_t* data() noexcept { return bytes.data(); }
    const std::uint8_t* data() const noexcept { return bytes.data(); }

    friend bool operator==(const Ksid& a, const Ksid& b) noexcept { return a.bytes == b.bytes; }
    friend bool operator!=(const Ksid& a, const Ksid& b) noexcept { return a.bytes != b.bytes; }
    friend bool operator<(const Ksid& a, const Ksid& b) noexcept { return a.bytes < b.bytes; }

private:
    static int hex(char c) noexcept {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    }
};

// --------------------------------------------------------------------- Qos

// Quality of service of a key stream (kp_qos). The node that names an
// existing KSID inherits the creator's key_chunk_size.
struct Qos {
    std::uint32_t key_chunk_size = 0;  // bytes per index
    std::uint32_t max_bps = 0;         // highest wanted rate (0: no limit); paces pushes
    std::uint32_t min_bps = 0;         // lowest needed rate
    std::uint32_t jitter = 0;          // informative
    std::uint32_t priority = 0;        // informative
    std::uint32_t timeout = 0;         // longest get_key wait, ms (0: never wait)
    std::uint32_t ttl = 0;             // seconds undelivered key is kept (0: node default)
    std::string metadata_mimetype;     // "" (= "application/json") or "application/json"

    Qos() = default;
    Qos(std::uint32_t chunk_size, std::uint32_t timeout_ms) : key_chunk_size(chunk_size), timeout(timeout_ms) {}

    // The C struct; keypipe::Error KP_ERR_INVALID_ARGUMENT when the
    // mimetype does not fit its 256 bytes with the NUL (or holds a NUL).
    kp_qos to_c() const {
        kp_qos q;
        std::memset(&q, 0, sizeof q);
        if (metadata_mimetype.size() >= sizeof q.metadata_mimetype ||
            metadata_mimetype.find('\0') != std::string::npos)
            detail::throw_own(KP_ERR_INVALID_ARGUMENT, "kp_qos",
                              "qos.metadata_mimetype must be under 256 bytes, without NUL");
        q.key_chunk_size = key_chunk_size;
        q.max_bps = max_bps;
        q.min_bps = min_bps;
        q.jitter = jitter;
        q.priority = priority;
        q.timeout = timeout;
        q.ttl = ttl;
        std::memcpy(q.metadata_mimetype, metadata_mimetype.data(), metadata_mimetype.size());
        return q;
    }

    static Qos from_c(const kp_qos& q) {
        Qos out;
        out.key_chunk_size = q.key_chunk_size;
        out.max_bps = q.max_bps;
        out.min_bps = q.min_bps;
        out.jitter = q.jitter;
        out.priority = q.priority;
        out.timeout = q.timeout;
        out.ttl = q.ttl;
        const void* nul = std::memchr(q.metadata_mimetype, 0, sizeof q.metadata_mimetype);
        const std::size_t n = nul ? static_cast<std::size_t>(static_cast<const char*>(nul) - q.metadata_mimetype)
                                  : sizeof q.metadata_mimetype;
        out.metadata_mimetype.assign(q.metadata_mimetype, n);
        return out;
    }
};

// ----------------------------------------------------------------- results

// What OPEN_CONNECT answered.
struct Opened {
    std::uint32_t status = 0;  // 0 both sides open, 1 peer not yet; try_ form: also 4, 5, 7
    Ksid ksid;                 // the stream's KSID (assigned when an all-zero one was given)
    Qos qos;                   // the negotiated QoS, or the counter-proposal (status 7)
};

// One chunk from Engine::get_key / Stream::next.
struct Key {
    std::uint32_t status = 0;  // 0 delivered (always, from the throwing forms)
    std::uint32_t index = 0;   // the chunk's index
    SecretBytes bytes;         // key_chunk_size bytes (empty unless status 0)
    std::string metadata;      // JSON text, e.g. {"age_ms":0}
};

// What get_key_into wrote into the caller's buffers.
struct KeyInfo {
    std::uint32_t status = 0;           // 0 delivered
    std::uint32_t index = 0;            // the chunk's index
    std::size_t length = 0;             // key bytes written at the start of buf (status 0)
    std::uint32_t metadata_length = 0;  // status 0: text length written (NUL after it);
                                        // status 8: capacity needed including the NUL
};

// One chunk taken from a KMS side.
struct KmsKey {
    std::uint32_t status = 0;  // 0 taken; try_ forms: 2 not received yet, 6 timed out
    std::uint32_t index = 0;   // the chunk's index
    SecretBytes bytes;         // the chunk (empty unless status 0)
};

// What a Kms::*_into call wrote into the caller's buffer.
struct KmsKeyInfo {
    std::uint32_t status = 0;
    std::uint32_t index = 0;
    std::size_t length = 0;  // bytes written (status 0)
};

using Stats = kp_stats;
using KmsStats = kp_kms_counters;

// ------------------------------------------------------------ engine state

namespace detail {

// What an Engine owns: the C handle and the chunk size of each stream
// opened through it. Shared with its Streams (weakly).
struct EngineState {
    kp_engine* handle;
    mutable std::shared_mutex mutex;
    std::map<Ksid, std::uint32_t> chunks;

    explicit EngineState(kp_engine* h) noexcept : handle(h) {}
    EngineState(const EngineState&) = delete;
    EngineState& operator=(const EngineState&) = delete;
    ~EngineState() { kp_engine_free(handle); }

    void remember(const Ksid& k, std::uint32_t chunk) {
        std::unique_lock<std::shared_mutex> lock(mutex);
        chunks[k] = chunk;
    }
    void forget(const Ksid& k) noexcept {
        try {
            std::unique_lock<std::shared_mutex> lock(mutex);
            chunks.erase(k);
        } catch (...) {
        }
    }
    std::optional<std::uint32_t> chunk_of(const Ksid& k) const noexcept {
        try {
            std::shared_lock<std::shared_mutex> lock(mutex);
            auto it = chunks.find(k);
            if (it != chunks.end()) return it->second;
        } catch (...) {
        }
        return std::nullopt;
    }
};

inline kp_engine* handle_of(const EngineState* s) noexcept { return s ? s->handle : nullptr; }

inline Opened open(EngineState* s, bool push, const std::string& source, const std::string& destination,
                   const Qos& qos, const Ksid& ksid) {
    kp_qos q = qos.to_c();
    Ksid k = ksid;
    std::uint32_t st = 0;
    const char* op = push ? "kp_push_open" : "kp_open_connect";
    const kp_result r = push ? kp_push_open(handle_of(s), source.c_str(), destination.c_str(), &q, k.data(), &st)
                             : kp_open_connect(handle_of(s), source.c_str(), destination.c_str(), &q, k.data(), &st);
    check(r, op);
    Opened o;
    o.status = st;
    o.ksid = k;
    if ((st == status::successful || st == status::peer_not_connected) && s != nullptr) {
        try {
            o.qos = Qos::from_c(q);
            s->remember(k, q.key_chunk_size);
        } catch (...) {
            std::uint32_t ignored = 0;
            kp_close(s->handle, k.data(), &ignored);  // nobody would know it is open
            throw;
        }
    } else {
        o.qos = Qos::from_c(q);
    }
    return o;
}

inline void require_open(const Opened& o, const char* op) {
    if (o.status != status::successful && o.status != status::peer_not_connected) throw StatusError(o.status, op);
}

// The stream's chunk size: recorded when it was opened through this
// Engine, else asked of the library (kp_stream_qos: a stream that resumed
// after a restart, or was opened by other code on the same handle).
inline std::uint32_t chunk_size(const EngineState* s, const Ksid& ksid) {
    if (s != nullptr) {
        if (const std::optional<std::uint32_t> known = s->chunk_of(ksid)) return *known;
    }
    kp_qos q{};
    check(kp_stream_qos(handle_of(s), ksid.data(), &q), "kp_stream_qos");
    return q.key_chunk_size;
}

inline KeyInfo get_into(const EngineState* s, const Ksid& ksid, std::uint32_t index, std::uint8_t* buf,
                        std::size_t len, char* metadata, std::uint32_t metadata_capacity) {
    const std::uint32_t chunk = chunk_size(s, ksid);  // first: once key is taken, nothing may throw
    std::uint32_t at = index;
    std::uint32_t st = 0;
    kp_metadata md{metadata_capacity, reinterpret_cast<std::uint8_t*>(metadata)};
    check(kp_get_key(handle_of(s), ksid.data(), &at, buf, len, metadata ? &md : nullptr, &st), "kp_get_key");
    KeyInfo info;
    info.status = st;
    info.index = st == status::successful ? at : index;
    if (metadata != nullptr && (st == status::successful || st == status::metadata_too_small))
        info.metadata_length = md.size;
    if (st == status::successful) info.length = chunk;
    return info;
}

inline Key get(const EngineState* s, const Ksid& ksid, std::uint32_t index) {
    const std::uint32_t chunk = chunk_size(s, ksid);
    Key key;
    key.index = index;
    key.bytes = SecretBytes(chunk);
    std::string metadata(128, '\0');
    for (int attempt = 0;; ++attempt) {
        std::uint32_t at = index;
        std::uint32_t st = 0;
        kp_metadata md{static_cast<std::uint32_t>(metadata.size()), reinterpret_cast<std::uint8_t*>(&metadata[0])};
        check(kp_get_key(s->handle, ksid.data(), &at, key.bytes.data(), key.bytes.size(), &md, &st), "kp_get_key");
        if (st == status::metadata_too_small && attempt < 4 && md.size > metadata.size()) {
            metadata.assign(md.size, '\0');  // the key was not consumed: ask again
            continue;
        }
        key.status = st;
        if (st == status::successful) {
            key.index = at;
            const std::size_t nul = metadata.find('\0');
            metadata.resize(std::min<std::size_t>(md.size, nul == std::string::npos ? metadata.size() : nul));
            key.metadata = std::move(metadata);
        } else {
            key.bytes.clear();
        }
        return key;
    }
}

inline void close(EngineState* s, const Ksid& ksid) {
    std::uint32_t st = 0;
    const kp_result r = kp_close(handle_of(s), ksid.data(), &st);
    if (r != KP_OK) {
        std::string text = last_error_text();  // before anything else
        if (s != nullptr && r == KP_ERR_UNKNOWN_KSID) s->forget(ksid);
        throw Error(r, "kp_close", std::move(text));
    }
    if (s != nullptr) s->forget(ksid);
    if (st != status::successful) throw StatusError(st, "kp_close");
}

inline void push_start(const EngineState* s, const Ksid& ksid, std::optional<std::uint32_t> from) {
    std::uint32_t st = 0;
    const std::uint32_t at = from.value_or(0);
    check(kp_push_start(handle_of(s), ksid.data(), from ? &at : nullptr, &st), "kp_push_start");
    if (st != status::successful) throw StatusError(st, "kp_push_start");
}

}  // namespace detail

class Stream;

// ------------------------------------------------------------------ Engine

// One QKD node (kp_engine). Move-only; thread-safe.
class Engine {
public:
    // kp_engine_new: one node from a TOML configuration (nullptr = the
    // defaults, which kp_engine_new refuses: a single node needs
    // [device] link_secret, and then data_dir).
    explicit Engine(const char* config_toml) {
        kp_engine* h = nullptr;
        detail::check(kp_engine_new(config_toml, &h), "kp_engine_new");
        state_ = adopt(h);
    }
    explicit Engine(const std::string& config_toml) : Engine(config_toml.c_str()) {}

    // kp_engine_pair_new: node A (leader, first) and node B of an
    // in-process simulated link (or of a shared key file).
    static std::pair<Engine, Engine> pair(const char* config_toml = nullptr) {
        kp_engine* a = nullptr;
        kp_engine* b = nullptr;
        detail::check(kp_engine_pair_new(config_toml, &a, &b), "kp_engine_pair_new");
        std::shared_ptr<detail::EngineState> sa;
        try {
            sa = adopt(a);
        } catch (...) {
            kp_engine_free(b);
            throw;
        }
        return std::pair<Engine, Engine>(Engine(std::move(sa)), Engine(adopt(b)));
    }
    static std::pair<Engine, Engine> pair(const std::string& config_toml) { return pair(config_toml.c_str()); }

    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;
    Engine(Engine&& o) noexcept = default;  // leaves `o` empty
    Engine& operator=(Engine&& o) noexcept {
        if (this != &o) {
            reset();
            state_ = std::move(o.state_);
        }
        return *this;
    }
    ~Engine() { reset(); }

    // The C handle (nullptr when empty); still owned by this Engine.
    kp_engine* get() const noexcept { return detail::handle_of(state_.get()); }
    explicit operator bool() const noexcept { return state_ != nullptr; }

    // OPEN_CONNECT (pull). Returns on status 0 or 1; else StatusError.
    Opened open_connect(const std::string& source, const std::string& destination, const Qos& qos,
                        const Ksid& ksid = Ksid()) {
        Opened o = try_open_connect(source, destination, qos, ksid);
        detail::require_open(o, "kp_open_connect");
        return o;
    }
    [[nodiscard]] Opened try_open_connect(const std::string& source, const std::string& destination,
                                          const Qos& qos, const Ksid& ksid = Ksid()) {
        return detail::open(state_.get(), false, source, destination, qos, ksid);
    }

    // OPEN_CONNECT in push mode: `source_kms_uri` / `destination_kms_uri`
    // are KMS base URIs (http://host:port, e.g. Kms::uri()); the node that
    // creates the KSID pushes to the source, the other to the destination.
    Opened push_open(const std::string& source_kms_uri, const std::string& destination_kms_uri, const Qos& qos,
                     const Ksid& ksid = Ksid()) {
        Opened o = try_push_open(source_kms_uri, destination_kms_uri, qos, ksid);
        detail::require_open(o, "kp_push_open");
        return o;
    }
    [[nodiscard]] Opened try_push_open(const std::string& source_kms_uri, const std::string& destination_kms_uri,
                                       const Qos& qos, const Ksid& ksid = Ksid()) {
        return detail::open(state_.get(), true, source_kms_uri, destination_kms_uri, qos, ksid);
    }

    // Starts pushing a stream opened with push_open (from `from`, else
    // from where it stands).
    void push_start(const Ksid& ksid, std::optional<std::uint32_t> from = std::nullopt) {
        detail::push_start(state_.get(), ksid, from);
    }

    // open_connect / push_open, returned as a Stream that closes the KSID.
    inline Stream open_stream(const std::string& source, const std::string& destination, const Qos& qos,
                              const Ksid& ksid = Ksid());
    inline Stream open_push_stream(const std::string& source_kms_uri, const std::string& destination_kms_uri,
                                   const Qos& qos, const Ksid& ksid = Ksid());

    // GET_KEY of chunk `index` into a new SecretBytes, with its metadata.
    // Waits at most the stream's qos.timeout. Status 0 or StatusError.
    Key get_key(const Ksid& ksid, std::uint32_t index) {
        Key k = try_get_key(ksid, index);
        if (k.status != status::successful) throw StatusError(k.status, "kp_get_key");
        return k;
    }
    [[nodiscard]] Key try_get_key(const Ksid& ksid, std::uint32_t index) {
        return detail::get(state_.get(), ksid, index);
    }

    // GET_KEY into the caller's buffer (len >= the chunk size, else
    // Error KP_ERR_KEY_BUFFER_TOO_SMALL, buf untouched); metadata, when
    // not null, gets the NUL-terminated JSON text (capacity in bytes).
    // Allocates nothing. Status 0 or StatusError (8: metadata too small).
    KeyInfo get_key_into(const Ksid& ksid, std::uint32_t index, std::uint8_t* buf, std::size_t len,
                         char* metadata = nullptr, std::uint32_t metadata_capacity = 0) {
        KeyInfo i = try_get_key_into(ksid, index, buf, len, metadata, metadata_capacity);
        if (i.status != status::successful) throw StatusError(i.status, "kp_get_key");
        return i;
    }
    [[nodiscard]] KeyInfo try_get_key_into(const Ksid& ksid, std::uint32_t index, std::uint8_t* buf,
                                           std::size_t len, char* metadata = nullptr,
                                           std::uint32_t metadata_capacity = 0) {
        return detail::get_into(state_.get(), ksid, index, buf, len, metadata, metadata_capacity);
    }

    // CLOSE. Error KP_ERR_UNKNOWN_KSID when not open here.
    void close(const Ksid& ksid) { detail::close(state_.get(), ksid); }

    // Counters and health. After shutdown() still answers: the last
    // counters, with shut_down = 1.
    Stats stats() const {
        Stats s;
        std::memset(&s, 0, sizeof s);
        detail::check(kp_engine_stats(get(), &s), "kp_engine_stats");
        return s;
    }

    // Simulated link only: injects (true) or ends an outage.
    void set_link_down(bool down) {
        detail::check(kp_simulated_link_set_down(get(), down ? 1 : 0), "kp_simulated_link_set_down");
    }

    // Wakes calls blocked on this engine (they answer status 4); later
    // calls fail with KP_ERR_SHUT_DOWN. Idempotent; a no-op when empty.
    void shutdown() noexcept {
        if (state_) kp_engine_shutdown(state_->handle);
    }

private:
    explicit Engine(std::shared_ptr<detail::EngineState> s) noexcept : state_(std::move(s)) {}

    static std::shared_ptr<detail::EngineState> adopt(kp_engine* h) {
        try {
            return std::make_shared<detail::EngineState>(h);
        } catch (...) {
            kp_engine_free(h);
            throw;
        }
    }

    void reset() noexcept {
        shutdown();  // a Stream call in flight returns; the last owner frees
        state_.reset();
    }

    friend class Stream;
    std::shared_ptr<detail::EngineState> state_;
};

// ------------------------------------------------------------------ Stream

// A KSID open on one Engine; the destructor closes it (kp_close, errors
// ignored). Move-only. Reads chunks in order with next() (from index 0, or
// from the index after the last one read), or any index with get().
class Stream {
public:
    Stream() noexcept = default;  // empty
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;
    Stream(Stream&& o) noexcept
        : engine_(std::move(o.engine_)),
          ksid_(o.ksid_),
          qos_(std::move(o.qos_)),
          status_(o.status_),
          next_(o.next_),
          open_(std::exchange(o.open_, false)) {}
    Stream& operator=(Stream&& o) noexcept {
        if (this != &o) {
            close_quietly();
            engine_ = std::move(o.engine_);
            ksid_ = o.ksid_;
            qos_ = std::move(o.qos_);
            status_ = o.status_;
            next_ = o.next_;
            open_ = std::exchange(o.open_, false);
        }
        return *this;
    }
    ~Stream() { close_quietly(); }

    const Ksid& ksid() const noexcept { return ksid_; }
    // The open's status: 0 both sides open, 1 the peer had not opened yet.
    std::uint32_t open_status() const noexcept { return status_; }
    // The negotiated QoS.
    const Qos& qos() const noexcept { return qos_; }
    std::uint32_t chunk_size() const noexcept { return qos_.key_chunk_size; }
    // The index next() reads.
    std::uint32_t next_index() const noexcept { return next_; }
    bool is_open() const noexcept { return open_; }
    explicit operator bool() const noexcept { return open_; }

    // The chunk at next_index(), then next_index() moves past it.
    Key next() {
        Key k = get(next_);
        next_ = k.index + 1;
        return k;
    }
    [[nodiscard]] Key try_next() {
        Key k = try_get(next_);
        if (k.status == status::successful) next_ = k.index + 1;
        return k;
    }
    Key get(std::uint32_t index) {
        auto s = lock("kp_get_key");
        Key k = detail::get(s.get(), ksid_, index);
        if (k.status != status::successful) throw StatusError(k.status, "kp_get_key");
        return k;
    }
    [[nodiscard]] Key try_get(std::uint32_t index) {
        auto s = lock("kp_get_key");
        return detail::get(s.get(), ksid_, index);
    }
    // next() into the caller's buffer (len >= chunk_size()).
    KeyInfo next_into(std::uint8_t* buf, std::size_t len, char* metadata = nullptr,
                      std::uint32_t metadata_capacity = 0) {
        KeyInfo i = try_next_into(buf, len, metadata, metadata_capacity);
        if (i.status != status::successful) throw StatusError(i.status, "kp_get_key");
        return i;
    }
    [[nodiscard]] KeyInfo try_next_into(std::uint8_t* buf, std::size_t len, char* metadata = nullptr,
                                        std::uint32_t metadata_capacity = 0) {
        auto s = lock("kp_get_key");
        KeyInfo i = detail::get_into(s.get(), ksid_, next_, buf, len, metadata, metadata_capacity);
        if (i.status == status::successful) next_ = i.index + 1;
        return i;
    }

    // Push streams (Engine::open_push_stream): starts pushing.
    void start_push(std::optional<std::uint32_t> from = std::nullopt) {
        auto s = lock("kp_push_start");
        detail::push_start(s.get(), ksid_, from);
    }

    // kp_close now, reporting failure; the stream is closed (empty)
    // afterwards even when this throws.
    void close() {
        auto s = lock("kp_close");
        open_ = false;
        detail::close(s.get(), ksid_);
    }

    // Stops managing the KSID: it stays open on the engine.
    Ksid release() noexcept {
        open_ = false;
        return ksid_;
    }

private:
    friend class Engine;
    Stream(std::weak_ptr<detail::EngineState> e, Opened o) noexcept
        : engine_(std::move(e)), ksid_(o.ksid), qos_(std::move(o.qos)), status_(o.status), open_(true) {}

    std::shared_ptr<detail::EngineState> lock(const char* op) const {
        if (!open_) detail::throw_own(KP_ERR_UNKNOWN_KSID, op, "this keypipe::Stream is closed, released or moved from");
        auto s = engine_.lock();
        if (!s) detail::throw_own(KP_ERR_SHUT_DOWN, op, "the keypipe::Engine of this stream was destroyed");
        return s;
    }

    void close_quietly() noexcept {
        if (!open_) return;
        open_ = false;
        if (auto s = engine_.lock()) {
            std::uint32_t ignored = 0;
            kp_close(s->handle, ksid_.data(), &ignored);
            s->forget(ksid_);
        }
    }

    std::weak_ptr<detail::EngineState> engine_;
    Ksid ksid_;
    Qos qos_;
    std::uint32_t status_ = 0;
    std::uint32_t next_ = 0;
    bool open_ = false;
};

inline Stream Engine::open_stream(const std::string& source, const std::string& destination, const Qos& qos,
                                  const Ksid& ksid) {
    Opened o = open_connect(source, destination, qos, ksid);
    return Stream(state_, std::move(o));
}

inline Stream Engine::open_push_stream(const std::string& source_kms_uri, const std::string& destination_kms_uri,
                                       const Qos& qos, const Ksid& ksid) {
    Opened o = push_open(source_kms_uri, destination_kms_uri, qos, ksid);
    return Stream(state_, std::move(o));
}

// --------------------------------------------------------------------- Kms

namespace detail {

struct KmsState {
    kp_kms* handle;
    std::atomic<std::size_t> hint{64};  // chunk size last seen: the first buffer tried

    explicit KmsState(kp_kms* h) noexcept : handle(h) {}
    KmsState(const KmsState&) = delete;
    KmsState& operator=(const KmsState&) = delete;
    ~KmsState() { kp_kms_free(handle); }
};

inline kp_result kms_take(kp_kms* h, const Ksid& ksid, bool next, std::uint32_t& index, std::uint8_t* buf,
                          std::size_t& len, std::uint32_t timeout_ms, std::uint32_t& st) noexcept {
    return next ? kp_kms_next_key(h, ksid.data(), &index, buf, &len, timeout_ms, &st)
                : kp_kms_wait_key(h, ksid.data(), index, buf, &len, timeout_ms, &st);
}

inline const char* kms_op(bool next) noexcept { return next ? "kp_kms_next_key" : "kp_kms_wait_key"; }

inline KmsKeyInfo kms_into(KmsState* s, const Ksid& ksid, bool next, std::uint32_t index, std::uint8_t* buf,
                           std::size_t len, std::uint32_t timeout_ms) {
    std::uint32_t at = index;
    std::uint32_t st = 0;
    std::size_t n = len;
    check(kms_take(s ? s->handle : nullptr, ksid, next, at, buf, n, timeout_ms, st), kms_op(next));
    KmsKeyInfo info;
    info.status = st;
    info.index = at;
    info.length = st == status::successful ? n : 0;
    return info;
}

inline KmsKey kms_key(KmsState* s, const Ksid& ksid, bool next, std::uint32_t index, std::uint32_t timeout_ms) {
    std::size_t capacity = s ? s->hint.load(std::memory_order_relaxed) : 1;
    for (int attempt = 0;; ++attempt) {
        SecretBytes buf(capacity ? capacity : 1);
        std::uint32_t at = index;
        std::uint32_t st = 0;
        std::size_t n = buf.size();
        const kp_result r = kms_take(s ? s->handle : nullptr, ksid, next, at, buf.data(), n, timeout_ms, st);
        if (r == KP_ERR_KEY_BUFFER_TOO_SMALL && attempt < 8 && n > buf.size()) {
            capacity = n;  // `*key_len` is the chunk's length; it stays held
            if (s != nullptr) s->hint.store(n, std::memory_order_relaxed);
            continue;
        }
        check(r, kms_op(next));
        KmsKey key;
        key.status = st;
        key.index = at;
        if (st == status::successful) {
            buf.truncate(n);
            key.bytes = std::move(buf);
        }
        return key;
    }
}

}  // namespace detail

// The KMS side in-process (kp_kms): receives the key QKD nodes push and
// hands each index out once. Move-only; thread-safe.
class Kms {
public:
    // kp_kms_new from TOML (listen = "127.0.0.1:0", capacity_bytes, name;
    // nullptr = the defaults).
    explicit Kms(const char* config_toml = nullptr) {
        kp_kms* h = nullptr;
        detail::check(kp_kms_new(config_toml, &h), "kp_kms_new");
        try {
            state_ = std::make_unique<detail::KmsState>(h);
        } catch (...) {
            kp_kms_free(h);
            throw;
        }
    }
    explicit Kms(const std::string& config_toml) : Kms(config_toml.c_str()) {}

    Kms(const Kms&) = delete;
    Kms& operator=(const Kms&) = delete;
    Kms(Kms&&) noexcept = default;             // leaves the source empty
    Kms& operator=(Kms&&) noexcept = default;  // frees what this held
    ~Kms() = default;                          // kp_kms_free

    kp_kms* get() const noexcept { return state_ ? state_->handle : nullptr; }
    explicit operator bool() const noexcept { return state_ != nullptr; }

    // The TCP port it listens on.
    std::uint16_t port() const {
        std::uint16_t p = 0;
        detail::check(kp_kms_port(get(), &p), "kp_kms_port");
        return p;
    }
    // Its base URI for push_open: "http://<host>:<port()>".
    std::string uri(const std::string& host = "127.0.0.1") const {
        return "http://" + host + ":" + std::to_string(port());
    }

    // Takes chunk `index` if received (no wait). Status 0 or StatusError.
    KmsKey get_key(const Ksid& ksid, std::uint32_t index) { return ok(try_get_key(ksid, index), false); }
    [[nodiscard]] KmsKey try_get_key(const Ksid& ksid, std::uint32_t index) {
        return detail::kms_key(state_.get(), ksid, false, index, 0);
    }
    // Takes chunk `index`, waiting at most `timeout`. Status 0 or StatusError.
    KmsKey wait_key(const Ksid& ksid, std::uint32_t index, std::chrono::milliseconds timeout) {
        return ok(try_wait_key(ksid, index, timeout), false);
    }
    [[nodiscard]] KmsKey try_wait_key(const Ksid& ksid, std::uint32_t index, std::chrono::milliseconds timeout) {
        return detail::kms_key(state_.get(), ksid, false, index, detail::clamp_ms(timeout));
    }
    // Takes the lowest-indexed chunk held now, waiting at most `timeout`
    // for one: each received index once, a late one possibly after higher
    // ones (pair key by Key::index). Status 0 or StatusError.
    KmsKey next_key(const Ksid& ksid, std::chrono::milliseconds timeout) {
        return ok(try_next_key(ksid, timeout), true);
    }
    [[nodiscard]] KmsKey try_next_key(const Ksid& ksid, std::chrono::milliseconds timeout) {
        return detail::kms_key(state_.get(), ksid, true, 0, detail::clamp_ms(timeout));
    }

    // The same into the caller's buffer (Error KP_ERR_KEY_BUFFER_TOO_SMALL
    // when len is under the chunk's length: the chunk stays held).
    KmsKeyInfo wait_key_into(const Ksid& ksid, std::uint32_t index, std::uint8_t* buf, std::size_t len,
                             std::chrono::milliseconds timeout) {
        return ok(try_wait_key_into(ksid, index, buf, len, timeout), false);
    }
    [[nodiscard]] KmsKeyInfo try_wait_key_into(const Ksid& ksid, std::uint32_t index, std::uint8_t* buf,
                                               std::size_t len, std::chrono::milliseconds timeout) {
        return detail::kms_into(state_.get(), ksid, false, index, buf, len, detail::clamp_ms(timeout));
    }
    KmsKeyInfo next_key_into(const Ksid& ksid, std::uint8_t* buf, std::size_t len, std::chrono::milliseconds timeout) {
        return ok(try_next_key_into(ksid, buf, len, timeout), true);
    }
    [[nodiscard]] KmsKeyInfo try_next_key_into(const Ksid& ksid, std::uint8_t* buf, std::size_t len,
                                               std::chrono::milliseconds timeout) {
        return detail::kms_into(state_.get(), ksid, true, 0, buf, len, detail::clamp_ms(timeout));
    }

    // Counters (Error KP_ERR_SHUT_DOWN after shutdown).
    KmsStats stats() const {
        KmsStats s;
        std::memset(&s, 0, sizeof s);
        detail::check(kp_kms_stats(get(), &s), "kp_kms_stats");
        return s;
    }

    // Wakes waiting calls (they fail with KP_ERR_SHUT_DOWN), as do later
    // calls. Idempotent; a no-op when empty.
    void shutdown() noexcept {
        if (state_) kp_kms_shutdown(state_->handle);
    }

private:
    template <typename T>
    static T ok(T r, bool next) {
        if (r.status != status::successful) throw StatusError(r.status, detail::kms_op(next));
        return r;
    }

    std::unique_ptr<detail::KmsState> state_;
};

}  // namespace keypipe

#endif  // KEYPIPE_HPP
