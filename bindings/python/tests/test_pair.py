import uuid

import pytest
from conftest import open_both

import keypipe


def test_ten_thousand_chunks_are_identical_on_both_nodes_and_distinct(pair):
    a, b = pair
    ksid = open_both(a, b, keypipe.Qos(key_chunk_size=32, timeout=2000))
    ka = [a.get_key(ksid) for _ in range(10_000)]
    kb = [b.get_key(ksid) for _ in range(10_000)]
    assert [k.index for k in ka] == list(range(10_000))
    assert [k.key for k in ka] == [k.key for k in kb]
    assert len({k.key for k in ka}) == 10_000
    assert all(len(k.key) == 32 for k in ka)
    assert ka[0].metadata.startswith('{"age_ms":')
    assert "key=<32 bytes>" in repr(ka[0])
    assert a.close_stream(ksid) == 0
    assert b.close_stream(ksid) == 0


def test_get_key_into_a_caller_buffer_the_caller_wipes(pair):
    a, b = pair
    ksid = open_both(a, b, keypipe.Qos(key_chunk_size=64))
    buf_a, buf_b = bytearray(64), bytearray(64)
    assert a.get_key_into(ksid, buf_a, index=5)[0] == 5
    assert b.get_key_into(ksid, buf_b, index=5)[0] == 5
    assert buf_a == buf_b and any(buf_a)
    buf_a[:] = bytes(64)
    buf_b[:] = bytes(64)


def test_stats_report_the_engine(pair):
    a, b = pair
    open_both(a, b, keypipe.Qos(key_chunk_size=32))
    s = a.stats()
    assert s.device_up and s.link_up and s.streams == 1 and not s.shut_down
    assert s.ring_capacity > 0 and s.arena_capacity > 0
    assert keypipe.version() == keypipe.__version__


def test_a_stream_resumes_after_a_restart_and_reads_at_its_chunk_size(tmp_path):
    config = f'data_dir = "{tmp_path}"\n[device]\ndriver = "simulated"\nlink_secret = "{"5a" * 32}"\n'
    a, b = keypipe.Engine.pair(config)
    with a, b:
        ksid = open_both(a, b, keypipe.Qos(key_chunk_size=48, timeout=2000))
        before = [a.get_key(ksid).key for _ in range(3)]
        assert before == [b.get_key(ksid).key for _ in range(3)]
    # New processes' view: these objects never opened the stream, the
    # library tells its chunk size (kp_stream_qos).
    a, b = keypipe.Engine.pair(config)
    with a, b:
        assert a.chunk_size(ksid) == 48 and b.chunk_size(ksid) == 48
        for index in range(3):
            with pytest.raises(keypipe.IndexConsumed):
                a.get_key(ksid, index)
        for index in range(3, 4096):
            try:
                ka = a.get_key(ksid, index)
                break
            except keypipe.IndexConsumed:
                continue  # lost with the restart: never delivered
        kb = b.get_key(ksid, ka.index)
        assert len(ka.key) == 48 and ka.key == kb.key
        assert ka.key not in before
        with pytest.raises(keypipe.UnknownKsid):
            a.chunk_size(uuid.uuid4())
