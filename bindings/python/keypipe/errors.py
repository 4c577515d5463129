"""Exceptions: one per KP_ERR_* code, and the ETSI status of a call that ran."""

from __future__ import annotations

from typing import Dict, Type

#: ETSI GS QKD 004 statuses.
STATUS_NAMES = {
    0: "SUCCESSFUL",
    1: "PEER_NOT_CONNECTED",
    2: "INSUFFICIENT_KEY_AVAILABLE",
    3: "PEER_NOT_CONNECTED_GET_KEY",
    4: "NO_QKD_CONNECTION_AVAILABLE",
    5: "KSID_ALREADY_IN_USE",
    6: "TIMEOUT_ERROR",
    7: "QOS_NOT_MET",
    8: "METADATA_SIZE_INSUFFICIENT",
}


class KeypipeError(Exception):
    """A call returned a negative kp_result: `code` and the library's detail."""

    code = 0

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} (kp_result {code})")
        self.code = code
        self.message = message


class NullArgument(KeypipeError):
    code = -1


class InvalidArgument(KeypipeError):
    code = -2


class ConfigError(KeypipeError):
    code = -3


class BufferTooSmall(KeypipeError):
    """The key buffer is smaller than the chunk; `needed` is its size when
    the library reports it (KMS side reads), else 0. No key was taken."""

    code = -4
    needed = 0


class UnknownKsid(KeypipeError):
    code = -5


class IndexConsumed(KeypipeError):
    code = -6


class EngineStartError(KeypipeError):
    code = -7


class InternalError(KeypipeError):
    code = -8


class QosConflict(KeypipeError):
    code = -9


class StreamFailed(KeypipeError):
    code = -10


class ShutDown(KeypipeError):
    code = -11


class IoError(KeypipeError):
    code = -12


_BY_CODE: Dict[int, Type[KeypipeError]] = {
    c.code: c
    for c in (
        NullArgument,
        InvalidArgument,
        ConfigError,
        BufferTooSmall,
        UnknownKsid,
        IndexConsumed,
        EngineStartError,
        InternalError,
        QosConflict,
        StreamFailed,
        ShutDown,
        IoError,
    )
}


def error_for(code: int, message: str) -> KeypipeError:
    """The exception for a negative kp_result."""
    return _BY_CODE.get(code, KeypipeError)(code, message)


class EtsiStatusError(Exception):
    """The call ran, but its ETSI status is not a success."""

    def __init__(self, status: int, what: str) -> None:
        self.status = status
        self.name = STATUS_NAMES.get(status, "UNKNOWN")
        super().__init__(f"{what}: ETSI status {status} ({self.name})")
