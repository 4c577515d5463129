import threading
import time
import uuid

import pytest
from conftest import open_both

import keypipe

SLOW = '[device]\ndriver = "simulated"\nrate_bps = 1\n'


def test_bad_configuration_names_the_key():
    with pytest.raises(keypipe.ConfigError) as e:
        keypipe.Engine.pair("block_size = 8")
    assert "block_size" in e.value.message
    with pytest.raises(keypipe.ConfigError) as e:
        keypipe.Engine.pair("no_such_key = 1")
    assert "no_such_key" in e.value.message
    with pytest.raises(keypipe.ConfigError):
        keypipe.Kms("listen = 7")


def test_unknown_ksid_too_small_buffer_and_consumed_index(pair):
    a, b = pair
    with pytest.raises(keypipe.UnknownKsid):
        a.get_key(uuid.uuid4(), 0)
    ksid = open_both(a, b, keypipe.Qos(key_chunk_size=32))
    short = bytearray(b"\xee" * 8)
    with pytest.raises(keypipe.BufferTooSmall):
        a.get_key_into(ksid, short, index=0)
    assert short == bytearray(b"\xee" * 8), "a failed call writes nothing"
    with pytest.raises(TypeError):
        a.get_key_into(ksid, b"read-only bytes", index=0)
    a.get_key(ksid, 0)
    with pytest.raises(keypipe.IndexConsumed):
        a.get_key(ksid, 0)
    with pytest.raises(keypipe.UnknownKsid):
        a.push_start(uuid.uuid4())
    with pytest.raises(keypipe.InvalidArgument):
        a.push_open("ftp://x", "http://127.0.0.1:1", keypipe.Qos())


def test_no_key_yet_is_an_etsi_status():
    a, b = keypipe.Engine.pair(SLOW)
    with a, b:
        ksid = open_both(a, b, keypipe.Qos(key_chunk_size=32, timeout=0))
        with pytest.raises(keypipe.EtsiStatusError) as e:
            a.get_key(ksid)
        assert e.value.status == 2 and e.value.name == "INSUFFICIENT_KEY_AVAILABLE"


def test_shutdown_wakes_a_blocked_get_key_and_later_calls_fail_cleanly():
    a, b = keypipe.Engine.pair(SLOW)
    ksid = open_both(a, b, keypipe.Qos(key_chunk_size=32, timeout=30_000))
    outcome = {}

    def blocked():
        t = time.monotonic()
        try:
            a.get_key(ksid)
        except (keypipe.EtsiStatusError, keypipe.ShutDown) as e:
            outcome["error"] = e
        outcome["waited"] = time.monotonic() - t

    thread = threading.Thread(target=blocked)
    thread.start()
    time.sleep(0.3)
    a.shutdown()
    thread.join(10)
    assert not thread.is_alive()
    assert outcome["waited"] < 5
    err = outcome["error"]
    assert isinstance(err, keypipe.ShutDown) or err.status == 4
    with pytest.raises(keypipe.ShutDown):
        a.get_key(ksid, 1)
    assert a.stats().shut_down
    a.close()
    a.close()  # twice is fine
    with pytest.raises(keypipe.ShutDown):
        a.stats()
    b.close()


def test_a_kms_shutdown_wakes_its_waiter():
    kms = keypipe.Kms()
    errors = []
    thread = threading.Thread(target=lambda: errors.append(_wait(kms)))
    thread.start()
    time.sleep(0.2)
    kms.close()
    thread.join(10)
    assert not thread.is_alive() and isinstance(errors[0], keypipe.ShutDown)


def _wait(kms):
    try:
        kms.wait_key(uuid.uuid4(), 0, 30_000)
    except keypipe.KeypipeError as e:
        return e


def test_close_racing_calls_from_other_threads_ends_each_with_shutdown():
    # close() shuts down first, waits until no thread is inside the
    # library, then frees: every thread ends with ShutDown, none hangs,
    # none is handed a freed pointer.
    for _ in range(10):
        a, b = keypipe.Engine.pair()
        ksid = open_both(a, b, keypipe.Qos(key_chunk_size=32, timeout=200))
        ended = []

        def hammer():
            while True:
                try:
                    a.stats()
                    a.get_key(ksid)
                except keypipe.ShutDown:
                    ended.append(True)
                    return
                except (keypipe.IndexConsumed, keypipe.EtsiStatusError):
                    continue

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.05)
        a.close()
        for t in threads:
            t.join(10)
        assert not any(t.is_alive() for t in threads) and len(ended) == 4
        b.close()
