"""Loading libkeypipe and declaring its C ABI (include/keypipe.h) for ctypes."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Optional

#: The ABI these bindings are written for (KP_ABI_VERSION in keypipe.h).
ABI_VERSION = 2

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64
size_t = ctypes.c_size_t
kp_result = ctypes.c_int32


class Qos(ctypes.Structure):
    _fields_ = [
        ("key_chunk_size", u32),
        ("max_bps", u32),
        ("min_bps", u32),
        ("jitter", u32),
        ("priority", u32),
        ("timeout", u32),
        ("ttl", u32),
        ("metadata_mimetype", ctypes.c_char * 256),
    ]


class Metadata(ctypes.Structure):
    _fields_ = [("size", u32), ("buffer", ctypes.POINTER(u8))]


class Stats(ctypes.Structure):
    _fields_ = [
        (n, u64)
        for n in (
            "blocks_produced",
            "blocks_consumed",
            "blocks_expired",
            "ring_full_stalls",
            "ring_len",
            "ring_capacity",
            "arena_free",
            "arena_capacity",
            "streams",
        )
    ] + [
        (n, u8)
        for n in ("device_up", "link_up", "memory_locked", "ledger_failed", "link_refused", "shut_down")
    ] + [
        (n, u64)
        for n in (
            "held_blocks",
            "ledger_position",
            "pushes_taken",
            "pushes_acked",
            "pushes_refused",
            "pushes_expired",
            "pushes_discarded",
            "pushes_rejected",
        )
    ]


class KmsCounters(ctypes.Structure):
    _fields_ = [("chunks_held", u64), ("key_bytes_held", u64), ("chunks_received", u64)]


def _candidates() -> list:
    explicit = os.environ.get("KEYPIPE_LIB")
    if explicit:
        return [explicit]
    found = ctypes.util.find_library("keypipe")
    return [c for c in (found, f"libkeypipe.so.{ABI_VERSION}", "libkeypipe.so") if c]


def _load() -> ctypes.CDLL:
    errors = []
    for name in _candidates():
        try:
            return ctypes.CDLL(name)
        except OSError as e:
            errors.append(f"{name}: {e}")
    raise ImportError(
        "keypipe: cannot load libkeypipe (install it with `make -C crates/keypipe-ffi install`, "
        "or set KEYPIPE_LIB to its path): " + "; ".join(errors)
    )


lib = _load()

P = ctypes.c_void_p
_sigs = {
    "kp_engine_new": (kp_result, [ctypes.c_char_p, ctypes.POINTER(P)]),
    "kp_engine_pair_new": (kp_result, [ctypes.c_char_p, ctypes.POINTER(P), ctypes.POINTER(P)]),
    "kp_engine_shutdown": (kp_result, [P]),
    "kp_engine_free": (None, [P]),
    "kp_open_connect": (
        kp_result,
        [P, ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(Qos), ctypes.c_void_p, ctypes.POINTER(u32)],
    ),
    "kp_push_open": (
        kp_result,
        [P, ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(Qos), ctypes.c_void_p, ctypes.POINTER(u32)],
    ),
    "kp_push_start": (kp_result, [P, ctypes.c_void_p, ctypes.POINTER(u32), ctypes.POINTER(u32)]),
    "kp_get_key": (
        kp_result,
        [P, ctypes.c_void_p, ctypes.POINTER(u32), ctypes.c_void_p, size_t, ctypes.POINTER(Metadata), ctypes.POINTER(u32)],
    ),
    "kp_close": (kp_result, [P, ctypes.c_void_p, ctypes.POINTER(u32)]),
    "kp_stream_qos": (kp_result, [P, ctypes.c_void_p, ctypes.POINTER(Qos)]),
    "kp_engine_stats": (kp_result, [P, ctypes.POINTER(Stats)]),
    "kp_result_message": (ctypes.c_char_p, [kp_result]),
    "kp_last_error": (kp_result, [ctypes.c_char_p, size_t, ctypes.POINTER(size_t)]),
    "kp_version": (ctypes.c_char_p, []),
    "kp_kms_new": (kp_result, [ctypes.c_char_p, ctypes.POINTER(P)]),
    "kp_kms_port": (kp_result, [P, ctypes.POINTER(u16)]),
    "kp_kms_get_key": (
        kp_result,
        [P, ctypes.c_void_p, u32, ctypes.c_void_p, ctypes.POINTER(size_t), ctypes.POINTER(u32)],
    ),
    "kp_kms_wait_key": (
        kp_result,
        [P, ctypes.c_void_p, u32, ctypes.c_void_p, ctypes.POINTER(size_t), u32, ctypes.POINTER(u32)],
    ),
    "kp_kms_next_key": (
        kp_result,
        [P, ctypes.c_void_p, ctypes.POINTER(u32), ctypes.c_void_p, ctypes.POINTER(size_t), u32, ctypes.POINTER(u32)],
    ),
    "kp_kms_stats": (kp_result, [P, ctypes.POINTER(KmsCounters)]),
    "kp_kms_shutdown": (kp_result, [P]),
    "kp_kms_free": (None, [P]),
}
for _name, (_res, _args) in _sigs.items():
    _f = getattr(lib, _name)
    _f.restype = _res
    _f.argtypes = _args


def last_error() -> str:
    """The calling thread's last error detail (read right after the call)."""
    n = size_t(0)
    buf = ctypes.create_string_buffer(1024)
    lib.kp_last_error(buf, len(buf), ctypes.byref(n))
    return buf.value.decode("utf-8", "replace")


def version() -> str:
    """The loaded library's version."""
    v: Optional[bytes] = lib.kp_version()
    return (v or b"").decode()
