// The C++ bindings in use: a simulated QKD link in this process, one key
// stream read on both nodes (10 000 chunks of 32 B, identical on both, no
// two alike), then push mode: each node pushes the stream to its own
// in-process KMS side, and 500 indexes read from each KMS are identical.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <vector>

#include "keypipe.hpp"

namespace {

constexpr std::uint32_t kChunks = 10000;
constexpr std::uint32_t kChunk = 32;
constexpr std::uint32_t kPushed = 500;

int fail(const char* what) {
    std::fprintf(stderr, "cpp example: FAILED: %s\n", what);
    return 1;
}

// Pull mode: node A creates the KSID, node B names it.
int pull(keypipe::Engine& a, keypipe::Engine& b) {
    keypipe::Qos qos(kChunk, 2000);
    qos.metadata_mimetype = "application/json";
    keypipe::Stream sa = a.open_stream("kms-a", "kms-b", qos);
    if (sa.open_status() != keypipe::status::peer_not_connected) return fail("open A: status 1 expected");
    // B inherits A's chunk size; waits up to 1 s for A's announcement.
    keypipe::Stream sb = b.open_stream("kms-a", "kms-b", keypipe::Qos(0, 1000), sa.ksid());
    if (sb.open_status() != keypipe::status::successful || sb.chunk_size() != kChunk)
        return fail("open B: status 0 and the inherited chunk size expected");

    // Node A: straight into one buffer, no allocation per chunk.
    keypipe::SecretBytes ka(std::size_t{kChunks} * kChunk);
    const auto t0 = std::chrono::steady_clock::now();
    for (std::uint32_t i = 0; i < kChunks; ++i) {
        keypipe::KeyInfo info = sa.next_into(ka.data() + std::size_t{i} * kChunk, kChunk);
        if (info.index != i || info.length != kChunk) return fail("node A: index or length");
    }
    // Node B: one SecretBytes per chunk, with its metadata.
    std::vector<keypipe::SecretBytes> kb;
    kb.reserve(kChunks);
    for (std::uint32_t i = 0; i < kChunks; ++i) {
        keypipe::Key key = sb.next();
        if (key.index != i || key.bytes.size() != kChunk) return fail("node B: index or size");
        if (i == 0 && key.metadata.compare(0, 10, "{\"age_ms\":") != 0) return fail("node B: metadata");
        kb.push_back(std::move(key.bytes));
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    for (std::uint32_t i = 0; i < kChunks; ++i)
        if (!keypipe::SecretBytes::equal(ka.data() + std::size_t{i} * kChunk, kb[i].data(), kChunk))
            return fail("the nodes' chunks differ");
    // Distinct: sort the indexes by their chunk, then no two neighbours equal.
    std::vector<std::uint32_t> order(kChunks);
    std::iota(order.begin(), order.end(), 0u);
    const std::uint8_t* base = ka.data();
    std::sort(order.begin(), order.end(), [base](std::uint32_t x, std::uint32_t y) {
        return std::memcmp(base + std::size_t{x} * kChunk, base + std::size_t{y} * kChunk, kChunk) < 0;
    });
    for (std::uint32_t i = 1; i < kChunks; ++i)
        if (std::memcmp(base + std::size_t{order[i - 1]} * kChunk, base + std::size_t{order[i]} * kChunk, kChunk) == 0)
            return fail("two chunks are equal");

    sa.close();
    sb.close();
    const keypipe::Stats st = a.stats();
    std::printf("cpp example: %u chunks of %u B identical on both nodes and all distinct "
                "(%.0f keys/s incl. both nodes, keypipe %s, %llu blocks consumed, mlock %s)\n",
                kChunks, kChunk, 2.0 * kChunks / secs, keypipe::version(),
                static_cast<unsigned long long>(st.blocks_consumed), st.memory_locked ? "yes" : "no");
    return 0;
}

// Push mode: A pushes to kms_a (the source KMS), B to kms_b.
int push(keypipe::Engine& a, keypipe::Engine& b) {
    keypipe::Kms kms_a("listen = \"127.0.0.1:0\"\ncapacity_bytes = 1048576\nname = \"kms-a\"\n");
    keypipe::Kms kms_b("listen = \"127.0.0.1:0\"\ncapacity_bytes = 1048576\nname = \"kms-b\"\n");
    keypipe::Qos qos(kChunk, 2000);
    qos.max_bps = 4000 * kChunk * 8;  // pace the pushes: about 4000 chunks/s
    keypipe::Stream pa = a.open_push_stream(kms_a.uri(), kms_b.uri(), qos);
    keypipe::Stream pb = b.open_push_stream(kms_a.uri(), kms_b.uri(), keypipe::Qos(0, 1000), pa.ksid());
    if (pb.open_status() != keypipe::status::successful) return fail("push open B: status 0 expected");
    pa.start_push(0);
    pb.start_push();

    using std::chrono::milliseconds;
    // KMS B through the iterator form: increasing indexes.
    std::vector<std::uint32_t> indexes;
    std::vector<keypipe::SecretBytes> from_b;
    for (std::uint32_t n = 0; n < kPushed; ++n) {
        keypipe::KmsKey k = kms_b.next_key(pa.ksid(), milliseconds(10000));
        if (!indexes.empty() && k.index <= indexes.back()) return fail("KMS B: indexes not increasing");
        if (k.bytes.size() != kChunk) return fail("KMS B: chunk size");
        indexes.push_back(k.index);
        from_b.push_back(std::move(k.bytes));
    }
    // KMS A by index: the same indexes, the same key.
    for (std::uint32_t n = 0; n < kPushed; ++n) {
        keypipe::KmsKey k = kms_a.wait_key(pa.ksid(), indexes[n], milliseconds(10000));
        if (k.index != indexes[n] || k.bytes != from_b[n]) return fail("the KMSes' chunks differ");
    }
    // The rest of the pipe-through-the-pointer path: one more of each.
    keypipe::SecretBytes one(kChunk), two(kChunk);
    keypipe::KmsKeyInfo ib = kms_b.next_key_into(pa.ksid(), two.data(), two.size(), milliseconds(10000));
    keypipe::KmsKeyInfo ia = kms_a.wait_key_into(pa.ksid(), ib.index, one.data(), one.size(), milliseconds(10000));
    if (ia.length != kChunk || ib.length != kChunk || one != two) return fail("the *_into chunks differ");

    const std::uint32_t gaps = indexes.back() + 1 - kPushed;
    pa.close();
    pb.close();
    const keypipe::KmsStats ca = kms_a.stats(), cb = kms_b.stats();
    const keypipe::Stats sa = a.stats(), sb = b.stats();
    if (ca.chunks_received < kPushed + 1 || cb.chunks_received < kPushed + 1) return fail("KMS counters");
    if (sa.pushes_acked < kPushed + 1 || sb.pushes_acked < kPushed + 1) return fail("push counters");
    std::printf("cpp example: %u pushed chunks identical on both KMS sides (KSID %s, indexes %u..%u, %u skipped; "
                "received %llu + %llu, acked %llu + %llu)\n",
                kPushed + 1, pa.ksid().to_string().c_str(), indexes.front(), ib.index, gaps,
                static_cast<unsigned long long>(ca.chunks_received),
                static_cast<unsigned long long>(cb.chunks_received),
                static_cast<unsigned long long>(sa.pushes_acked), static_cast<unsigned long long>(sb.pushes_acked));
    return 0;
}

}  // namespace

int main() {
    try {
        auto [a, b] = keypipe::Engine::pair();
        if (int rc = pull(a, b)) return rc;
        if (int rc = push(a, b)) return rc;
    } catch (const keypipe::Error& e) {
        std::fprintf(stderr, "cpp example: keypipe error %d: %s\n", e.code(), e.what());
        return 1;
    } catch (const keypipe::StatusError& e) {
        std::fprintf(stderr, "cpp example: status %u: %s\n", e.status(), e.what());
        return 1;
    }
    std::printf("cpp example: ok\n");
    return 0;
}
