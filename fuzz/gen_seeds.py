#!/usr/bin/env python3
"""Writes the seed corpora fuzz/seeds/<target>/ and the hand-made
regressions fuzz/regressions/<target>/ (both checked in).

The seeds follow each entry function's input layout (see the docs of
`keypipe_*::fuzzing::<target>`): valid inputs and near-valid ones. Keys,
certificates and CSRs are made fresh (python3 `cryptography`, `openssl`),
so running this again changes those files; run it only when a layout
changes. Files found by the fuzzer are never written here: copy them into
fuzz/regressions/<target>/ by hand.
"""

import base64
import json
import os
import shutil
import struct
import subprocess
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dh, ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

HERE = os.path.dirname(os.path.abspath(__file__))

FFDHE2048 = int(
    "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695"
    "A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A"
    "D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935"
    "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A"
    "BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4"
    "AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61"
    "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005"
    "C58EF1837D1683B2C6F34A26C1B2EFFA886B423861285C97FFFFFFFFFFFFFFFF",
    16,
)


def write(kind, target, name, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(HERE, kind, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def seed(target, name, data):
    write("seeds", target, name, data)


def regression(target, name, data):
    write("regressions", target, name, data)


def chunk(b):
    if isinstance(b, str):
        b = b.encode()
    assert len(b) < 256
    return bytes([len(b)]) + b


def u16(n):
    return struct.pack("<H", n)


def u64(n):
    return struct.pack("<Q", n)


# --- HTTP -----------------------------------------------------------------

GET = b"GET /api/v1/keys/a/status?x=1 HTTP/1.1\r\nHost: kms\r\nAccept: */*\r\n\r\n"
POST = (
    b"POST /api/v1/keys/a/enc_keys HTTP/1.1\r\nHost: kms\r\n"
    b"Content-Type: application/json\r\nContent-Length: 12\r\n\r\n{\"number\":1}"
)
CHUNKED = (
    b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: v\r\n\r\n"
)
HTTP10 = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
EXPECT = (
    b"PUT /k HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok"
)
PIPELINE = GET + POST
CLOSE = b"DELETE /s HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, close\r\n\r\n"


def http_seeds():
    default = b"\x00" + u16(17) + b"\x05"
    small = b"\x01" + b"\x10" + u16(16) + b"\x02" + u16(40) + b"\x01"
    for name, req in [
        ("get", GET),
        ("post", POST),
        ("chunked", CHUNKED),
        ("http10", HTTP10),
        ("expect", EXPECT),
        ("pipeline", PIPELINE),
        ("close", CLOSE),
        ("bare_lf", b"GET / HTTP/1.1\nHost: h\n\n"),
        ("two_hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        (
            "cl_and_te",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        ("te_gzip", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n"),
        ("obs_text", b"GET /\xc3\xa9 HTTP/1.1\r\nHost: h\r\nX: caf\xc3\xa9\r\n\r\n"),
    ]:
        seed("http_request", name, default + req)
        seed("http_differential", name, req)
    seed("http_request", "small_limits", small + CHUNKED)
    regression(
        "http_request",
        "huge_content_length",
        default
        + b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551616\r\n\r\n",
    )
    regression(
        "http_request",
        "header_limit_then_bare_lf",
        b"\x01\x00" + u16(16) + b"\x02" + u16(30) + b"\x03" + b"GET /" + b"a" * 40 + b" HTTP/1.1\nX",
    )
    regression(
        "http_differential",
        "leading_crlf",
        b"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    regression(
        "http_differential",
        "empty_header_value",
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Empty:\r\nY:  \t v \t\r\n\r\n",
    )
    head = b"\x00" + u16(3) + u16(20) + u16(40) + b"\x03"
    for name, body in [
        ("two_chunks", b"3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: v\r\n\r\n"),
        ("one_byte_chunks", b"1\r\nX\r\n" * 8 + b"0\r\n\r\n"),
        ("empty", b"0\r\n\r\n"),
        ("upper_hex", b"A\r\n0123456789\r\n0\r\n\r\n"),
        ("space_before_size", b" 3\r\nabc\r\n0\r\n\r\n"),
        ("data_too_long", b"3\r\nabcX\r\n0\r\n\r\n"),
        ("bare_lf_trailer", b"0\r\nT: v\n\r\n"),
        ("ctl_in_extension", b"3;\x01\r\nabc\r\n0\r\n\r\n"),
    ]:
        seed("http_chunked", name, head + body)
    seed(
        "http_chunked",
        "small_limits",
        b"\x01" + b"\x20" + u16(8) + b"\x02" + u16(60) + u16(61) + u16(62) + b"\x01"
        + b"1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n",
    )
    regression("http_chunked", "nine_digit_size", head + b"123456789\r\n")
    regression("http_chunked", "max_size_line", head + b"ffffffff\r\nab")
    for name, url in [
        ("http_ip", "http://127.0.0.1:7004/kms/"),
        ("https_name", "https://kms.example-1.net:8443/base/path"),
        ("ipv6", "http://[::1]:9"),
        ("default_port", "https://KMS.Example"),
        ("ftp", "ftp://h"),
        ("bad_port", "http://h:x"),
        ("path_chars", "http://h/a-b._~!$&'()*+,;=:@%20"),
        ("crlf", "http://h/x\r\nX-Evil: 1"),
    ]:
        seed("origin_parse", name, url)
    regression("origin_parse", "ipv6_without_port", "http://[::1]")
    regression("origin_parse", "ipv6_default_port", "http://[::1]:80/kms")
    regression("origin_parse", "bracket_in_name", "http://a]:80/x")


# --- ETSI 004, KMS side -------------------------------------------------


def push_built(pusher, status, ksid, index, key, junk=b"", at=0):
    out = bytes([pusher, 0, status, ksid, index]) + chunk(key) + chunk(junk)
    if junk:
        out += bytes([at])
    return out


def push_raw(pusher, body):
    return bytes([pusher, 1]) + chunk(body)


def etsi004_seeds():
    key = bytes(range(32))
    seed(
        "etsi004_kms_push",
        "push_repeat_conflict",
        b"\x00"
        + push_built(0, 0, 1, 0, key)
        + push_built(0, 0, 1, 0, key)
        + push_built(0, 0, 1, 0, key[::-1])
        + push_built(0, 0, 1, 1, key),
    )
    seed(
        "etsi004_kms_push",
        "pushers",
        b"\x01"
        + push_built(3, 0, 0, 0, key)
        + push_built(4, 0, 0, 1, key)
        + push_built(1, 0, 2, 0, key)
        + push_built(5, 0, 2, 0, key),
    )
    ksid = "00000000-0000-0000-0000-00005ca1ab1f"
    body = json.dumps(
        {
            "status": 0,
            "index": 7,
            "key_buffer": base64.b64encode(key).decode(),
            "metadata": {"buffer": {"key_stream_id": ksid}},
        }
    )
    seed("etsi004_kms_push", "raw_valid", b"\x00" + push_raw(0, body))
    seed(
        "etsi004_kms_push",
        "raw_escape",
        b"\x00" + push_raw(0, body.replace("/", "\\/").replace('"index"', '"ind\\u0065x"')),
    )
    seed(
        "etsi004_kms_push",
        "raw_no_metadata",
        b"\x00" + push_raw(0, '{"status":0,"index":1,"key_buffer":"AAAA"}'),
    )
    seed("etsi004_kms_push", "junk", b"\x00" + push_built(0, 0, 0, 0, key, b'",1]}', 40))
    regression(
        "etsi004_kms_push",
        "duplicate_field",
        b"\x00" + push_raw(0, body[:-1] + ',"index":8}'),
    )
    regression(
        "etsi004_kms_push",
        "trailing_garbage",
        b"\x00" + push_raw(0, body + " x"),
    )
    regression(
        "etsi004_kms_push",
        "braced_uuid",
        b"\x00" + push_raw(0, body.replace(ksid, "{" + ksid + "}")),
    )


# --- TLS identity -------------------------------------------------------


def cert_der(ou="node", cn="node-a"):
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else []
    if ou:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    name = x509.Name(attributes)
    import datetime

    now = datetime.datetime(2026, 1, 1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(0x0102A0)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def tls_seeds():
    der = cert_der()
    seed("tls_identity", "node_cert", der)
    seed("tls_identity", "kms_cert", cert_der("kms", "kms-1"))
    seed("tls_identity", "truncated", der[: len(der) // 2])
    regression("tls_identity", "no_subject_fields", cert_der("", ""))


# --- link sync ------------------------------------------------------------


def msg(kind, ksid=0, block=0, extra=b""):
    return bytes([ksid, block, kind]) + extra


def link_seeds():
    sync = msg(0, extra=u64(0)) + msg(1)
    seed(
        "link_session",
        "hello_then_batches",
        b"\x00\x00"  # genuine hello, answered now
        + b"\x01\x02" + sync + b"\x00"  # a batch: sync_begin, sync_end
        + b"\x01\x03" + msg(8, 1, 0, u64(64)) + msg(4, 1, 2, u64(9) + u64(7)) + msg(3, 1) + b"\x00"
        + b"\x07" + u16(300)  # time passes: a heartbeat
        + b"\x01\x00\x00",
    )
    seed(
        "link_session",
        "late_answers_and_replays",
        b"\x00\x01"  # hello, answer kept
        + b"\x05\x00"  # answer handed back late
        + b"\x01\x01" + msg(9, 2, 4) + b"\x01"  # batch, answer kept
        + b"\x01\x01" + msg(10, 2, 5) + b"\x00"
        + b"\x04\x01"  # replay the first batch
        + b"\x05\x00"
        + b"\x06"  # peer resyncs
        + b"\x00\x00",
    )
    seed(
        "link_session",
        "crafted",
        b"\x02\x00\x00\x11\x01\x00"  # crafted hello, right MAC
        + b"\x03\x00\x02\x01\x01" + msg(1) + b"\x00\x12"  # crafted batch, in sequence
        + b"\x03\x00\x02\x01\x01" + msg(7, 0, 1, b"\x02" + u64(5) + b"\x03" + u64(20) + b"\x01")
        + b"\x00\x12"  # next one: lease_lost with two runs
        + b"\x03\x00\x02\x00" + chunk(b'{"msgs":[{"type":"sync_end"}]}') + b"\x00\x12",
    )
    seed(
        "link_session",
        "wrong_macs",
        b"\x00\x00"
        + b"\x03\x00\x02\x01\x01" + msg(1) + b"\x02\x12"  # follower key
        + b"\x03\x00\x02\x01\x01" + msg(1) + b"\x03\x05\x03\x01\x12"  # damaged
        + b"\x03\x00\x02\x01\x01" + msg(1) + b"\x05\x12"  # none
        + b"\x02\x00\x00\x11\x01\x02"  # hello under the follower key
        + b"\x02\x01" + chunk(b'{"version":3}') + b"\x00",  # malformed, signed
    )
    seed(
        "link_session",
        "refused_hellos",
        b"\x02\x00\x10\x11\x02\x01\x00"  # version 2
        + b"\x02\x00\x80\x11\x01\x00"  # follower role
        + b"\x02\x00\x01\x20\x11\x01\x00"  # block size 32
        + b"\x02\x00\x40\x11\x01\x00",  # to another node
    )
    regression(
        "link_session",
        "replayed_hello_then_batch",
        b"\x00\x00\x04\x00\x01\x01" + msg(1) + b"\x00",
    )
    regression(
        "link_session",
        "unknown_session_echo",
        b"\x03\x09\x07\x03\x01\x01" + msg(1) + b"\x00\x12",
    )


# --- ETSI 014 -------------------------------------------------------------


def key_id(tag, first, length, mac):
    payload = (tag << 106) | (first << 50) | ((length - 1) << 38) | (mac & ((1 << 38) - 1))
    hi48 = payload >> 74
    mid12 = (payload >> 62) & 0xFFF
    lo62 = payload & ((1 << 62) - 1)
    bits = (hi48 << 80) | (0x8 << 76) | (mid12 << 64) | (0b10 << 62) | lo62
    return bits.to_bytes(16, "big")


def uuid_text(b):
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def etsi014_seeds():
    kid = key_id(0xBEEF, 12345, 32, 0xABCDEF12)
    seed("etsi014_request", "query", "number=3&size=1024&x=y")
    seed("etsi014_request", "query_escaped", "number=%33&size=25%36")
    seed(
        "etsi014_request",
        "body",
        '{"number":2,"size":512,"additional_slave_SAE_IDs":["c"],"extension_optional":[{"x_y":1}]}',
    )
    seed("etsi014_request", "mandatory", '{"extension_mandatory":[{"abc_route_type":"direct"}]}')
    seed("etsi014_request", "key_ids_body", json.dumps({"key_IDs": [{"key_ID": uuid_text(kid)}, uuid_text(kid)]}))
    seed("etsi014_request", "key_ids_query", f"key_ID={uuid_text(kid)}&key_ID=nope")
    seed("etsi014_request", "raw_key_id", kid)
    seed("etsi014_request", "empty", "")
    regression("etsi014_request", "big_numbers", '{"number":18446744073709551616,"size":-0}')
    regression("etsi014_request", "max_key_id", key_id(0xFFFF, (1 << 56) - 1, 4096, (1 << 38) - 1))


# --- NCP ------------------------------------------------------------------

TAGS = {"aes": 0, "conv": 1, "rsa": 2, "ec": 3, "old-off": 4, "nope": 5}
ACTIONS = {
    "encrypt": 0,
    "decrypt": 1,
    "createCustomKey": 2,
    "reencrypt": 3,
    "re-encrypt": 4,
    "sign": 5,
    "verify": 6,
    "Encrypt": 7,
}


def ncp(tag, action, body):
    return bytes([TAGS[tag], ACTIONS[action]]) + body.encode()


def ncp_seeds():
    s = lambda name, tag, action, body: seed("ncp_request", name, ncp(tag, action, body))
    s("encrypt", "aes", "encrypt", '{"plaintext":"aGVsbG8="}')
    s("encrypt_array", "aes", "encrypt", '{"plaintext":["YQ==","","YWJj"],"context":null}')
    s("encrypt_conv", "conv", "encrypt", '{"plaintext":"YQ==","context":"Y3R4"}')
    s("encrypt_rsa", "rsa", "encrypt", '{"plaintext":"aGVsbG8="}')
    s("custom_key", "aes", "createCustomKey", '{"requestPlainKey":true,"bits":128}')
    s("custom_key_conv", "conv", "createCustomKey", '{"requestPlainKey":true,"context":"eA=="}')
    s("sign_ec", "ec", "sign", '{"data":"aGVsbG8="}')
    s("verify_ec", "ec", "verify", '{"data":"aGVsbG8=","signature":"ncpkms:v1:MEUCIQ=="}')
    s("decrypt_bad", "aes", "decrypt", '{"ciphertext":["ncpkms:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==","ncpkms:v9:YQ=="]}')
    s("reencrypt_old", "old-off", "re-encrypt", '{"ciphertext":"ncpkms:v1:YWJj"}')
    s("escaped", "aes", "encrypt", '{"plaintext":"YW\\/j","x":[1,{"y":null}]}')
    s("unknown_action", "nope", "Encrypt", "{}")
    regression("ncp_request", "trailing", ncp("aes", "encrypt", '{"plaintext":"YQ=="} x'))
    regression("ncp_request", "array_body", ncp("ec", "sign", '[{"data":"YQ=="}]'))
    c = lambda name, limit, text: seed("ncp_ciphertext", name, u16(limit) + text.encode())
    c("valid", 64, "ncpkms:v1:YWJj")
    c("max_version", 64, "ncpkms:v4294967295:AA==")
    c("leading_zero", 64, "ncpkms:v01:YWJj")
    c("bad_padding", 64, "ncpkms:v1:YWJ=")
    c("too_large", 2, "ncpkms:v1:YWJj")
    c("empty", 64, "ncpkms:v7:")
    regression("ncp_ciphertext", "version_overflow", u16(64) + b"ncpkms:v4294967296:YWJj")
    regression("ncp_ciphertext", "arabic_digit", u16(64) + "ncpkms:v١:YWJj".encode())


# --- key agreement and login ---------------------------------------------


def dh_raw(y, length):
    return y.to_bytes(length, "big")


def agreement_seeds():
    g256 = ec.derive_private_key(1, ec.SECP256R1()).public_key()
    g384 = ec.derive_private_key(1, ec.SECP384R1()).public_key()
    raw256 = g256.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    raw384 = g384.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    spki256 = g256.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    compressed = g256.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    x942 = (
        dh.DHParameterNumbers(FFDHE2048, 2, (FFDHE2048 - 1) // 2)
        .parameters()
        .generate_private_key()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with tempfile.TemporaryDirectory() as tmp:
        pem = os.path.join(tmp, "dh.pem")
        der = os.path.join(tmp, "dh.der")
        subprocess.run(
            ["openssl", "genpkey", "-algorithm", "DH", "-pkeyopt", "group:ffdhe2048", "-out", pem],
            check=True,
            capture_output=True,
        )
        subprocess.run(["openssl", "pkey", "-in", pem, "-pubout", "-outform", "DER", "-out", der], check=True)
        pkcs3 = open(der, "rb").read()
    s = lambda name, data: seed("agreement_public_key", name, data)
    s("p256_raw", raw256)
    s("p384_raw", raw384)
    s("p256_spki", spki256)
    s("ffdhe2048_y4", dh_raw(4, 256))
    s("ffdhe3072_y4", dh_raw(4, 384))
    s("ffdhe2048_x942", x942)
    s("ffdhe2048_pkcs3", pkcs3)
    s("compressed", compressed)
    s("y_is_1", dh_raw(1, 256))
    s("y_is_p_minus_1", dh_raw(FFDHE2048 - 1, 256))
    regression("agreement_public_key", "y_is_p", dh_raw(FFDHE2048, 256))
    regression("agreement_public_key", "non_residue", dh_raw(FFDHE2048 - 2, 256))
    b64 = lambda b: base64.b64encode(b).decode()
    spec = lambda pk, schemes, ident=b"client", nonce=b"0123456789abcdef": json.dumps(
        {
            "identifier": b64(ident),
            "nonce": b64(nonce),
            "public_key": b64(pk),
            "supported_schemes": schemes,
        }
    )
    a = lambda name, data: seed("agreement_request", name, data)
    a("p256_raw", spec(raw256, ["SCHEME-EC-AES1"]))
    a("p384_spki", spec(g384.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo), ["SCHEME-EC-AES2", "X"]))
    a("ffdhe_raw", spec(dh_raw(4, 256), ["SCHEME-AES1"]))
    a("ffdhe_pkcs3", spec(pkcs3, ["SCHEME-AES1", "SCHEME-AES2"]))
    a("no_common_scheme", spec(raw256, ["SCHEME-AES2"]))
    a("short_nonce", spec(raw256, ["SCHEME-EC-AES1"], nonce=b"short"))
    regression("agreement_request", "unknown_schemes", spec(raw256, ["scheme-ec-aes1"]))
    regression("agreement_request", "empty_identifier", spec(raw256, ["SCHEME-EC-AES1"], ident=b""))
    reference = "5b6b3a54-2f64-4ad1-9f5c-f1c1e6a6f0a1"

    def sealed(key, password, iv=b"\x01" * 12):
        return b64(iv + AESGCM(key).encrypt(iv, password, reference.encode()))

    l = lambda name, data: seed("login_request", name, data)
    l("aes128", json.dumps({"domain": "d", "username": "u", "password": sealed(bytes([3] * 16), b"pw")}))
    l("aes256", json.dumps({"domain": "d", "username": "u", "password": sealed(bytes([5] * 32), b"")}))
    l("plain", json.dumps({"domain": "d", "username": "u", "password": "hunter2"}))
    l("short", json.dumps({"domain": "d", "username": "u", "password": b64(b"x" * 27)}))
    l("refresh", json.dumps({"refresh_token": "abc"}))
    regression("login_request", "escaped_password", '{"domain":"d","username":"u","password":"AQEBAQEBAQEBAQEB\\u0041A=="}')


# --- KeyTalk --------------------------------------------------------------


def keytalk_seeds():
    k = lambda name, query, body: seed("keytalk_form", name, chunk(query) + body.encode())
    k("hello", "version=2.4.1&caller-hw-description=laptop", "")
    k("auth", "", "USERID=alice&PASSWD=p%40ss+word&HWSIG=+cafe+&HWSIG=x")
    k("cookie", "", "keytalkcookie=A622BB821BEC1F5315668C8F9A8E780F; Path=/\nother=1")
    k("time", "2016-04-22T12:44:35.614010+02:00", "2016-04-22 10:44:35")
    k("responses", "", '[{"name":"RES","value":"123"},{"name":"CK","value":4}]')
    k("version", "2.3.9", "auth-requirements")
    k("flags", "a=TRUE&b=0&c=yes", "a=false")
    regression("keytalk_form", "bad_escapes", chunk("%zz%4%") + b"%ff%FE+%")
    regression("keytalk_form", "leap_second", chunk("2016-12-31T23:59:60Z") + b"9999-12-31T23:59:59-23:59")
    while True:
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "user")]))
            .sign(rsa_key, hashes.SHA256())
        )
        b64 = base64.b64encode(csr.public_bytes(serialization.Encoding.DER))
        # A `+` at either end is the bug kept in regressions/ (plus_at_end).
        if not b64.startswith(b"+") and not b64.rstrip(b"=").endswith(b"+"):
            break
    pem = csr.public_bytes(serialization.Encoding.PEM)
    der = csr.public_bytes(serialization.Encoding.DER)
    seed("keytalk_csr", "rsa2048_pem", pem)
    seed("keytalk_csr", "rsa2048_b64_spaces", base64.b64encode(der).replace(b"+", b" "))
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "user")]))
        .sign(ec_key, hashes.SHA256())
    )
    seed("keytalk_csr", "ec_pem", ec_csr.public_bytes(serialization.Encoding.PEM))
    seed("keytalk_csr", "pem_no_newline", b"-----BEGIN X-----MIIB-----END X-----")
    regression("keytalk_csr", "plus_at_end", b"AAA+")
    regression("keytalk_csr", "plus_at_start", b"+AAA")
    regression("keytalk_csr", "end_before_begin", b"-----END X-----\n-----BEGIN X-----\nAAAA")


# --- Donau and gateway ----------------------------------------------------


def donau_seeds():
    for name, text in [
        ("ten", "EUR:10"),
        ("half", "EUR:0.5"),
        ("smallest", "KUDOS:0.00000001"),
        ("largest", "ABCDEFGHIJK:4503599627370496"),
        ("trailing_zero", "EUR:1.50"),
        ("no_fraction_digits", "EUR:1."),
        ("lower_case", "eur:1"),
        ("etag_list", 'W/"0123456789abcdef", "x"'),
        ("star", "*"),
    ]:
        seed("donau_amount", name, text)
    regression("donau_amount", "too_large", "EUR:4503599627370497")
    regression("donau_amount", "nine_fraction_digits", "EUR:1.000000001")
    seed("donau_crockford", "hello", b"\x05Hello")
    seed("donau_crockford", "rsa_key", bytes([3]) + b"\x00\x00\xc5\x01" + bytes(range(1, 60)) + b"\x01\x00\x01")
    seed("donau_crockford", "zeros", bytes(32))
    regression("donau_crockford", "ff", b"\xff")
    regression("donau_crockford", "sha512_len", bytes(range(64)))


def gateway(flags, skew, method, target, extra=b"", present=0):
    return bytes([flags]) + u16(skew) + chunk(method) + chunk(target) + extra + bytes([present])


def gateway_seeds():
    g = lambda name, data: seed("gateway_verify", name, data)
    g("v2_right", gateway(0, 100, "POST", "/keys/v2/a1b2c3/encrypt"))
    g("v1_right", gateway(1, 100, "POST", "/keys/v1/a1b2c3/encrypt?x=1"))
    g("stale", gateway(4, 40000, "POST", "/keys/v2/t/sign"))
    g("wrong_api_key", gateway(1 | 16, 0, "POST", "/keys/v1/t/sign", chunk("OTHER")))
    g("bad_signature", gateway(32, 0, "GET", "/", chunk("pCOR2nRPVAqHYjaINdvENtISrL6J/4lA4XzIXrB67/w=")))
    g("missing_api_key", gateway(1, 0, "POST", "/keys/v1/t/verify", b"", 8))
    g("text_timestamp", gateway(2, 0, "POST", "/x", chunk("+1700000000000")))
    regression("gateway_verify", "unknown_access_key", gateway(8, 0, "POST", "/x", chunk("AKOTHER")))
    regression("gateway_verify", "all_missing", gateway(0, 0, "POST", "/x", b"", 15))


def main():
    # Seeds are made here alone; regressions may hold crashes the fuzzer
    # found: only the hand-made ones are (re)written.
    shutil.rmtree(os.path.join(HERE, "seeds"), ignore_errors=True)
    http_seeds()
    etsi004_seeds()
    tls_seeds()
    link_seeds()
    etsi014_seeds()
    ncp_seeds()
    agreement_seeds()
    keytalk_seeds()
    donau_seeds()
    gateway_seeds()


if __name__ == "__main__":
    main()
