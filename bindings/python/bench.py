"""Keys/s of Engine.get_key (32 B) and get_key_into on one thread: an
in-process pair, both nodes read in turn. Run:
    KEYPIPE_LIB=target/release/libkeypipe.so python3 bindings/python/bench.py
"""

import time

import keypipe


def run(secs: float = 2.0, chunk: int = 32) -> None:
    a, b = keypipe.Engine.pair("arena_blocks = 4096\nring_blocks = 1024\n")
    with a, b:
        qos = keypipe.Qos(key_chunk_size=chunk, timeout=5000)
        ksid = a.open_connect("a", "b", qos).ksid
        b.open_connect("a", "b", qos, ksid=ksid)
        time.sleep(0.2)
        batch = min(4096, 131072 // chunk)
        for name, into in (("get_key", False), ("get_key_into", True)):
            buf = bytearray(chunk)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < secs:
                for node in (a, b):
                    for _ in range(batch):
                        if into:
                            node.get_key_into(ksid, buf)
                        else:
                            node.get_key(ksid)
                n += 2 * batch
            dt = time.perf_counter() - t0
            print(f"python {name} {chunk} B, 1 thread: {n / dt / 1e3:.0f} k keys/s")


if __name__ == "__main__":
    run()
