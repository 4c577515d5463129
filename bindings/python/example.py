"""A KMS at each end of a QKD link, in one Python process: both nodes push
their key to an in-process KMS side, and each KMS reads the same key for
every index. Run (after building the library):

    KEYPIPE_LIB=target/release/libkeypipe.so python3 bindings/python/example.py
"""

import keypipe


def main(chunks: int = 100) -> None:
    node_a, node_b = keypipe.Engine.pair()
    with node_a, node_b, keypipe.Kms() as kms_a, keypipe.Kms() as kms_b:
        qos = keypipe.Qos(key_chunk_size=32, timeout=2000)
        # Node A creates the stream and pushes to the source KMS; node B
        # joins it by KSID and pushes to the destination KMS.
        opened = node_a.push_open(kms_a.uri, kms_b.uri, qos)
        node_b.push_open(kms_a.uri, kms_b.uri, qos, ksid=opened.ksid)
        node_a.push_start(opened.ksid)
        node_b.push_start(opened.ksid)
        key_a, key_b = bytearray(32), bytearray(32)
        for expected in range(chunks):
            index_a, _ = kms_a.next_key_into(opened.ksid, key_a, timeout_ms=10_000)
            index_b, _ = kms_b.next_key_into(opened.ksid, key_b, timeout_ms=10_000)
            assert index_a == index_b == expected and key_a == key_b
        key_a[:] = bytes(32)  # the caller's copies: wiped by the caller
        key_b[:] = bytes(32)
        node_a.close_stream(opened.ksid)
        node_b.close_stream(opened.ksid)
        print(f"python example: {chunks} chunks pushed to both KMS sides, identical (keypipe {keypipe.version()})")


if __name__ == "__main__":
    main()
