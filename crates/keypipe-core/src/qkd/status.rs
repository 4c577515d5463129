//! ETSI GS QKD 004 status codes.

use std::fmt;

/// The status a QKD 004 call reports (`status` in the API and the C ABI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Status {
    /// 0: successful.
    Successful = 0,
    /// 1: successful connection, but the peer application is not connected yet.
    PeerNotConnected = 1,
    /// 2: GET_KEY failed because not enough key is available (with timeout 0).
    InsufficientKey = 2,
    /// 3: GET_KEY failed because the peer application is not connected.
    PeerNotConnectedGetKey = 3,
    /// 4: no QKD connection available (device or peer node down).
    NoQkdConnection = 4,
    /// 5: OPEN_CONNECT failed because the KSID is already in use.
    KsidInUse = 5,
    /// 6: the call failed because its timeout ran out.
    Timeout = 6,
    /// 7: the requested QoS cannot be met; a counter-proposal is returned.
    QosNotMet = 7,
    /// 8: GET_KEY failed because the metadata buffer is too small; the
    /// needed size is returned and the key is not consumed.
    MetadataTooSmall = 8,
}

impl Status {
    /// The numeric code.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// A short English description.
    pub fn message(self) -> &'static str {
        match self {
            Status::Successful => "successful",
            Status::PeerNotConnected => "successful connection, but peer not connected",
            Status::InsufficientKey => "insufficient key available",
            Status::PeerNotConnectedGetKey => "peer application is not connected",
            Status::NoQkdConnection => "no QKD connection available",
            Status::KsidInUse => "key stream id already in use",
            Status::Timeout => "timeout",
            Status::QosNotMet => "requested QoS cannot be met; counter-proposal returned",
            Status::MetadataTooSmall => "metadata buffer too small; needed size returned",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.message())
    }
}
