import dataclasses

import pytest

import keypipe


@pytest.fixture
def pair():
    a, b = keypipe.Engine.pair()
    with a, b:
        yield a, b


def open_both(a, b, qos):
    opened = a.open_connect("kms-a", "kms-b", qos)
    assert opened.status == 1
    # Node B's open waits up to its timeout for node A's announcement.
    joined = b.open_connect("kms-a", "kms-b", dataclasses.replace(qos, timeout=5000), ksid=opened.ksid)
    assert joined.status == 0
    assert joined.qos.key_chunk_size == qos.key_chunk_size
    return opened.ksid
