import pytest

import keypipe


def test_both_nodes_push_to_their_kms_side_and_each_reads_identical_key(pair):
    a, b = pair
    with keypipe.Kms() as kms_a, keypipe.Kms("capacity_bytes = 4194304") as kms_b:
        qos = keypipe.Qos(key_chunk_size=32, timeout=2000)
        opened = a.push_open(kms_a.uri, kms_b.uri, qos)
        assert opened.status == 1
        assert b.push_open(kms_a.uri, kms_b.uri, qos, ksid=opened.ksid).status == 0
        a.push_start(opened.ksid)
        b.push_start(opened.ksid)
        ka = [kms_a.wait_key(opened.ksid, i, 10_000) for i in range(500)]
        kb = []
        for i in range(500):
            index, key = kms_b.next_key(opened.ksid, 10_000)
            assert index == i
            kb.append(key)
        assert ka == kb
        assert len(set(ka)) == 500
        with pytest.raises(keypipe.IndexConsumed):
            kms_a.get_key(opened.ksid, 3)
        assert kms_a.stats().chunks_received >= 500
        a.close_stream(opened.ksid)
        b.close_stream(opened.ksid)


def test_an_index_not_pushed_yet_is_a_status_not_key():
    with keypipe.Kms() as kms:
        import uuid

        ksid = uuid.uuid4()
        with pytest.raises(keypipe.EtsiStatusError) as e:
            kms.get_key(ksid, 0)
        assert e.value.status == 2
        with pytest.raises(keypipe.EtsiStatusError) as e:
            kms.wait_key(ksid, 0, 50)
        assert e.value.status == 6


def test_a_chunk_larger_than_the_buffer_stays_held_and_the_bytes_form_grows(pair):
    a, b = pair
    with keypipe.Kms() as kms_a, keypipe.Kms() as kms_b:
        qos = keypipe.Qos(key_chunk_size=256, timeout=2000)
        opened = a.push_open(kms_a.uri, kms_b.uri, qos)
        b.push_open(kms_a.uri, kms_b.uri, qos, ksid=opened.ksid)
        a.push_start(opened.ksid)
        b.push_start(opened.ksid)
        small = bytearray(b"\xee" * 16)
        kms_a.wait_key(opened.ksid, 1, 10_000)  # index 1 has arrived
        with pytest.raises(keypipe.BufferTooSmall) as e:
            kms_a.next_key_into(opened.ksid, small, 10_000)
        assert e.value.needed == 256 and small == bytearray(b"\xee" * 16)
        index, key = kms_a.next_key(opened.ksid, 10_000)  # the same chunk, now read
        assert index == 0 and len(key) == 256
        assert key == kms_b.wait_key(opened.ksid, 0, 10_000)
        buf = bytearray(256)
        assert kms_a.next_key_into(opened.ksid, buf, 10_000) == (2, 256)
        assert bytes(buf) == kms_b.wait_key(opened.ksid, 2, 10_000)
        buf[:] = bytes(256)
        a.close_stream(opened.ksid)
        b.close_stream(opened.ksid)
