"""keypipe: QKD key streams (ETSI GS QKD 004) from Python, over libkeypipe.

    from keypipe import Engine
    a, b = Engine.pair()
    with a, b:
        opened = a.open_connect("kms-a", "kms-b", Qos(key_chunk_size=32))
        b.open_connect("kms-a", "kms-b", Qos(key_chunk_size=32), ksid=opened.ksid)
        assert a.get_key(opened.ksid, 0).key == b.get_key(opened.ksid, 0).key

Errors: a negative kp_result raises a `KeypipeError` subclass (its `code`
and the library's detail); a call that ran with an ETSI status other than
success raises `EtsiStatusError` (its `status`). Key bytes come back as
`bytes`, which Python cannot wipe; `get_key_into` / `Kms.wait_key_into`
write into a caller's `bytearray` the caller can wipe (see README.md).
"""

from __future__ import annotations

import ctypes
import threading
import uuid
from dataclasses import dataclass, fields
from typing import Optional, Tuple, Union

from . import _ffi
from ._ffi import lib
from .errors import (  # noqa: F401  (re-exported)
    STATUS_NAMES,
    BufferTooSmall,
    ConfigError,
    EngineStartError,
    EtsiStatusError,
    IndexConsumed,
    InternalError,
    InvalidArgument,
    IoError,
    KeypipeError,
    NullArgument,
    QosConflict,
    ShutDown,
    StreamFailed,
    UnknownKsid,
    error_for,
)

__version__ = "0.2.0"

_loaded = _ffi.version()
if _loaded.split(".")[:2] != ["0", str(_ffi.ABI_VERSION)]:
    raise ImportError(f"keypipe: libkeypipe {_loaded} has another ABI than these bindings (ABI {_ffi.ABI_VERSION})")

Writable = Union[bytearray, memoryview]


def version() -> str:
    """The loaded libkeypipe's version."""
    return _loaded


def _check(code: int) -> None:
    if code != 0:
        raise error_for(code, _ffi.last_error())


def _wipe(buf: ctypes.Array) -> None:
    ctypes.memset(buf, 0, ctypes.sizeof(buf))


def _ksid_buf(ksid: Optional[uuid.UUID]) -> ctypes.Array:
    return (ctypes.c_uint8 * 16).from_buffer_copy(ksid.bytes if ksid else bytes(16))


def _writable(buf: Writable) -> Tuple[ctypes.Array, int]:
    view = memoryview(buf)
    if view.readonly or not view.c_contiguous or view.itemsize != 1:
        raise TypeError("key buffer: a writable, contiguous byte buffer (bytearray) is needed")
    n = view.nbytes
    return (ctypes.c_uint8 * n).from_buffer(view.cast("B")), n


@dataclass
class Qos:
    """Quality of service of a stream (kp_qos); 0 / "" lets the node choose."""

    key_chunk_size: int = 32
    max_bps: int = 0
    min_bps: int = 0
    jitter: int = 0
    priority: int = 0
    timeout: int = 1000
    ttl: int = 0
    metadata_mimetype: str = ""

    def _to_c(self) -> _ffi.Qos:
        q = _ffi.Qos()
        for f in fields(self):
            if f.name != "metadata_mimetype":
                setattr(q, f.name, getattr(self, f.name))
        mime = self.metadata_mimetype.encode()
        if len(mime) > 255:
            raise ValueError("metadata_mimetype: at most 255 bytes")
        q.metadata_mimetype = mime
        return q

    @classmethod
    def _from_c(cls, q: _ffi.Qos) -> "Qos":
        values = {f.name: getattr(q, f.name) for f in fields(cls) if f.name != "metadata_mimetype"}
        return cls(metadata_mimetype=q.metadata_mimetype.decode(), **values)


@dataclass(frozen=True)
class OpenResult:
    """What OPEN_CONNECT answered: status 0 (both sides open) or 1 (waiting for the peer)."""

    status: int
    ksid: uuid.UUID
    qos: Qos


@dataclass(frozen=True)
class Key:
    """One delivered chunk."""

    index: int
    key: bytes
    metadata: str

    def __repr__(self) -> str:  # never print key bytes
        return f"Key(index={self.index}, key=<{len(self.key)} bytes>, metadata={self.metadata!r})"


@dataclass(frozen=True)
class Stats:
    """Counters and health of an engine (kp_stats)."""

    blocks_produced: int
    blocks_consumed: int
    blocks_expired: int
    ring_full_stalls: int
    ring_len: int
    ring_capacity: int
    arena_free: int
    arena_capacity: int
    streams: int
    device_up: bool
    link_up: bool
    memory_locked: bool
    ledger_failed: bool
    link_refused: bool
    shut_down: bool
    held_blocks: int
    ledger_position: int
    pushes_taken: int
    pushes_acked: int
    pushes_refused: int
    pushes_expired: int
    pushes_discarded: int
    pushes_rejected: int


@dataclass(frozen=True)
class KmsStats:
    """Counters of a KMS side."""

    chunks_held: int
    key_bytes_held: int
    chunks_received: int


class _Handle:
    """A C handle, freed once (on close, `with` exit or garbage collection).

    The C library forbids *starting* a call once the handle's free has
    begun. Python threads cannot promise that, so every call enters through
    `_enter` / `_leave`: `close` first shuts the C handle down (blocked
    calls wake; calls that start now fail cleanly with ShutDown), waits
    until no Python call is inside the library, and only then frees it."""

    _free = None
    _shutdown = None

    def __init__(self, ptr: ctypes.c_void_p) -> None:
        self._ptr: Optional[ctypes.c_void_p] = ptr
        self._closing = False
        self._calls = 0
        self._cond = threading.Condition()

    def _enter(self) -> ctypes.c_void_p:
        with self._cond:
            if self._closing:
                raise ShutDown(-11, f"the {type(self).__name__} was closed")
            self._calls += 1
            return self._ptr

    def _leave(self) -> None:
        with self._cond:
            self._calls -= 1
            if self._calls == 0:
                self._cond.notify_all()

    def _call(self, fn, *args) -> None:
        """`fn(handle, *args)`, counted as a call in flight; raises on error."""
        p = self._enter()
        try:
            _check(fn(p, *args))
        finally:
            self._leave()

    def close(self) -> None:
        """Shuts down (waking blocked calls), waits for calls in flight, then frees. Idempotent."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            p = self._ptr
        type(self)._shutdown(p)
        with self._cond:
            while self._calls:
                self._cond.wait()
            self._ptr = None
        type(self)._free(p)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class Engine(_Handle):
    """One node of a QKD link (kp_engine). Thread-safe; blocking calls release the GIL."""

    _free = lib.kp_engine_free
    _shutdown = lib.kp_engine_shutdown

    def __init__(self, config: str) -> None:
        p = ctypes.c_void_p()
        _check(lib.kp_engine_new(config.encode(), ctypes.byref(p)))
        super().__init__(p)

    @classmethod
    def _wrap(cls, p: ctypes.c_void_p) -> "Engine":
        e = cls.__new__(cls)
        _Handle.__init__(e, p)
        return e

    @classmethod
    def pair(cls, config: Optional[str] = None) -> Tuple["Engine", "Engine"]:
        """Both nodes of an in-process link: (node A, the leader; node B)."""
        a, b = ctypes.c_void_p(), ctypes.c_void_p()
        _check(lib.kp_engine_pair_new(config.encode() if config else None, ctypes.byref(a), ctypes.byref(b)))
        return cls._wrap(a), cls._wrap(b)

    def _open(self, fn, source: str, destination: str, qos: Optional[Qos], ksid: Optional[uuid.UUID]) -> OpenResult:
        q = (qos or Qos())._to_c()
        k = _ksid_buf(ksid)
        status = ctypes.c_uint32()
        self._call(fn, source.encode(), destination.encode(), ctypes.byref(q), k, ctypes.byref(status))
        if status.value not in (0, 1):
            raise EtsiStatusError(status.value, "open_connect")
        result = OpenResult(status.value, uuid.UUID(bytes=bytes(k)), Qos._from_c(q))
        self._streams()[result.ksid] = [result.qos.key_chunk_size, 0]
        return result

    def _streams(self) -> dict:
        """KSID -> [chunk size, next index] of the streams opened through this object."""
        return self.__dict__.setdefault("_opened", {})

    def open_connect(
        self, source: str, destination: str, qos: Optional[Qos] = None, ksid: Optional[uuid.UUID] = None
    ) -> OpenResult:
        """OPEN_CONNECT (pull); `ksid=None` lets this node assign one."""
        return self._open(lib.kp_open_connect, source, destination, qos, ksid)

    def push_open(
        self, source: str, destination: str, qos: Optional[Qos] = None, ksid: Optional[uuid.UUID] = None
    ) -> OpenResult:
        """OPEN_CONNECT in push mode: `source`/`destination` are KMS base URIs."""
        return self._open(lib.kp_push_open, source, destination, qos, ksid)

    def push_start(self, ksid: uuid.UUID, index: Optional[int] = None) -> None:
        """Starts pushing the stream to its KMS (from `index`, or where it stands)."""
        status = ctypes.c_uint32()
        at = ctypes.byref(ctypes.c_uint32(index)) if index is not None else None
        self._call(lib.kp_push_start, _ksid_buf(ksid), at, ctypes.byref(status))

    def get_key_into(self, ksid: uuid.UUID, buffer: Writable, index: Optional[int] = None) -> Tuple[int, str]:
        """GET_KEY into the caller's writable buffer (which the caller wipes).

        Returns (index, metadata). `index=None`: the index after the last
        one this object got for the stream (0 first; after a restart, name
        the index to resume from: one already delivered is IndexConsumed)."""
        buf, n = _writable(buffer)
        stream = self._streams().get(ksid)
        wanted = index if index is not None else (stream[1] if stream else 0)
        capacity = 128
        while True:
            idx = ctypes.c_uint32(wanted)
            meta_buf = (ctypes.c_uint8 * capacity)()
            meta = _ffi.Metadata(capacity, ctypes.cast(meta_buf, ctypes.POINTER(ctypes.c_uint8)))
            status = ctypes.c_uint32()
            self._call(lib.kp_get_key, _ksid_buf(ksid), ctypes.byref(idx), buf, n, ctypes.byref(meta), ctypes.byref(status))
            if status.value == 8 and meta.size > capacity:
                capacity = meta.size  # the key was not taken: ask again with room for the metadata
                continue
            if status.value != 0:
                raise EtsiStatusError(status.value, "get_key")
            break
        if stream is not None:
            stream[1] = max(stream[1], idx.value + 1)
        return idx.value, bytes(meta_buf[: meta.size]).decode()

    def chunk_size(self, ksid: uuid.UUID) -> int:
        """The stream's key_chunk_size: as opened through this object, else
        asked of the library (kp_stream_qos: a stream that resumed after a
        restart, or was opened by other code on the same engine)."""
        stream = self._streams().get(ksid)
        if stream is not None:
            return stream[0]
        q = _ffi.Qos()
        self._call(lib.kp_stream_qos, _ksid_buf(ksid), ctypes.byref(q))
        self._streams().setdefault(ksid, [q.key_chunk_size, 0])
        return q.key_chunk_size

    def get_key(self, ksid: uuid.UUID, index: Optional[int] = None) -> Key:
        """GET_KEY: the chunk as `bytes` (the library's copy is wiped; `bytes` cannot be)."""
        buf = (ctypes.c_uint8 * self.chunk_size(ksid))()
        try:
            view = memoryview(buf).cast("B")
            got, metadata = self.get_key_into(ksid, view, index)
            return Key(got, bytes(view), metadata)
        finally:
            _wipe(buf)

    def close_stream(self, ksid: uuid.UUID) -> int:
        """CLOSE: the ETSI status (0)."""
        status = ctypes.c_uint32()
        self._call(lib.kp_close, _ksid_buf(ksid), ctypes.byref(status))
        return status.value

    def stats(self) -> Stats:
        """The engine's counters and health (kp_engine_stats)."""
        s = _ffi.Stats()
        self._call(lib.kp_engine_stats, ctypes.byref(s))
        return Stats(*[getattr(s, n) if t is not ctypes.c_uint8 else bool(getattr(s, n)) for n, t in s._fields_])

    def shutdown(self) -> None:
        """Wakes blocked calls; later calls raise ShutDown. `close()` still frees."""
        self._call(lib.kp_engine_shutdown)


class Kms(_Handle):
    """The ETSI 004 KMS side in-process (kp_kms): receives pushed key."""

    _free = lib.kp_kms_free
    _shutdown = lib.kp_kms_shutdown

    def __init__(self, config: Optional[str] = None) -> None:
        p = ctypes.c_void_p()
        _check(lib.kp_kms_new(config.encode() if config else None, ctypes.byref(p)))
        super().__init__(p)

    @property
    def port(self) -> int:
        """The port pushes reach this KMS side on."""
        port = ctypes.c_uint16()
        self._call(lib.kp_kms_port, ctypes.byref(port))
        return port.value

    @property
    def uri(self) -> str:
        """The base URI a node pushes to (give it to `push_open`)."""
        return f"http://127.0.0.1:{self.port}"

    def _receive(self, fn, args_before, buffer: Writable, args_after) -> int:
        """Runs a kp_kms_* read into `buffer`: the chunk's length. A chunk
        larger than the buffer raises BufferTooSmall with `needed` (the
        chunk stays held)."""
        buf, n = _writable(buffer)
        length, status = ctypes.c_size_t(n), ctypes.c_uint32()
        try:
            self._call(fn, *args_before, buf, ctypes.byref(length), *args_after, ctypes.byref(status))
        except BufferTooSmall as e:
            e.needed = length.value
            raise
        if status.value != 0:
            raise EtsiStatusError(status.value, fn.__name__)
        return length.value

    def wait_key_into(self, ksid: uuid.UUID, index: int, buffer: Writable, timeout_ms: int = 0) -> int:
        """Index `index` into the caller's buffer, waiting at most `timeout_ms`: its length."""
        return self._receive(lib.kp_kms_wait_key, (_ksid_buf(ksid), index), buffer, (timeout_ms,))

    def next_key_into(self, ksid: uuid.UUID, buffer: Writable, timeout_ms: int = 0) -> Tuple[int, int]:
        """The lowest index held now into the caller's buffer: (index, length).

        Each received index once; a late push may come after higher indexes."""
        index = ctypes.c_uint32()
        n = self._receive(lib.kp_kms_next_key, (_ksid_buf(ksid), ctypes.byref(index)), buffer, (timeout_ms,))
        return index.value, n

    def _bytes(self, read) -> Tuple[int, bytes]:
        """`read(buffer) -> (index, length)` into a buffer wiped before returning; grows once to fit."""
        while True:
            buf = (ctypes.c_uint8 * self._size)()
            try:
                index, n = read(memoryview(buf).cast("B"))
                return index, bytes(memoryview(buf).cast("B")[:n])
            except BufferTooSmall as e:
                if e.needed <= self._size:
                    raise
                self._size = e.needed
            finally:
                _wipe(buf)

    #: Buffer size of the `bytes` forms: the largest chunk seen so far.
    _size = 64

    def get_key(self, ksid: uuid.UUID, index: int) -> bytes:
        """Index `index` if received (EtsiStatusError status 2 if not yet); each index once."""
        return self.wait_key(ksid, index, 0)

    def wait_key(self, ksid: uuid.UUID, index: int, timeout_ms: int) -> bytes:
        """Index `index`, waiting at most `timeout_ms` (status 6 when the wait ends)."""
        return self._bytes(lambda v: (index, self.wait_key_into(ksid, index, v, timeout_ms)))[1]

    def next_key(self, ksid: uuid.UUID, timeout_ms: int) -> Tuple[int, bytes]:
        """The lowest index held now: (index, key); see `next_key_into` on order."""
        return self._bytes(lambda v: self.next_key_into(ksid, v, timeout_ms))

    def stats(self) -> KmsStats:
        """Counters of this KMS side."""
        c = _ffi.KmsCounters()
        self._call(lib.kp_kms_stats, ctypes.byref(c))
        return KmsStats(c.chunks_held, c.key_bytes_held, c.chunks_received)

    def shutdown(self) -> None:
        """Wakes blocked waits; later calls raise ShutDown. `close()` still frees."""
        self._call(lib.kp_kms_shutdown)
