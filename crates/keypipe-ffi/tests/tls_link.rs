//! The C ABI's network link over mutual TLS: two engines (`kp_engine_new`
//! with `[tls]`, an `https://` peer, `link.listen_cert`) pair and hand out
//! identical key; an engine whose peer's certificate names another node
//! never links; a link listener off loopback without TLS refuses to start.

mod common;

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::ptr;
use std::time::{Duration, Instant};

use common::free_port;
use keypipe::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

/// A CA and, for each node, a server and a client certificate (CN = the
/// node's name, OU = node).
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path, nodes: &[&str]) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.crt"), ca_cert.pem()).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        for name in nodes {
            for (kind, eku) in [
                ("server", ExtendedKeyUsagePurpose::ServerAuth),
                ("client", ExtendedKeyUsagePurpose::ClientAuth),
            ] {
                let key = KeyPair::generate().unwrap();
                let mut p = CertificateParams::new(vec!["localhost".into()]).unwrap();
                p.distinguished_name.push(DnType::CommonName, *name);
                p.distinguished_name
                    .push(DnType::OrganizationalUnitName, "node");
                p.extended_key_usages = vec![eku];
                let cert = p.signed_by(&key, &issuer).unwrap();
                std::fs::write(dir.join(format!("{name}-{kind}.crt")), cert.pem()).unwrap();
                let key_path = dir.join(format!("{name}-{kind}.key"));
                std::fs::write(&key_path, key.serialize_pem()).unwrap();
                std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
                    .unwrap();
            }
        }
        Pki {
            dir: dir.to_owned(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The `data_dir` line of the engine using `name`'s certificates.
    fn data_dir(&self, name: &str) -> String {
        format!("data_dir = {:?}\n", self.path(&format!("data-{name}")))
    }
}

/// The TOML of engine `name` (`role`), linked to `peer_name` at `peer`.
fn config(
    pki: &Pki,
    name: &str,
    certs: &str,
    role: &str,
    listen: u16,
    peer: u16,
    peer_name: &str,
) -> String {
    format!(
        "{data}name = {name:?}\nrole = {role:?}\n[device]\ndriver = \"simulated\"\nlink_secret = \"{dev}\"\n\
         [tls]\nca = {ca:?}\ncert = {cc:?}\nkey = {ck:?}\n\
         [link]\npeer = \"https://localhost:{peer}\"\nsecret = \"{link}\"\npeer_name = {peer_name:?}\n\
         listen = \"127.0.0.1:{listen}\"\nlisten_cert = {sc:?}\nlisten_key = {sk:?}\n",
        data = pki.data_dir(certs),
        dev = "5a".repeat(32),
        link = "a5".repeat(32),
        ca = pki.path("ca.crt"),
        cc = pki.path(&format!("{certs}-client.crt")),
        ck = pki.path(&format!("{certs}-client.key")),
        sc = pki.path(&format!("{certs}-server.crt")),
        sk = pki.path(&format!("{certs}-server.key")),
    )
}

fn engine(toml: &str) -> Result<*mut kp_engine, kp_result> {
    let text = CString::new(toml).unwrap();
    let mut e = ptr::null_mut();
    // SAFETY: a NUL-terminated string and a writable pointer.
    let r = unsafe { kp_engine_new(text.as_ptr(), &mut e) };
    if r == KP_OK { Ok(e) } else { Err(r) }
}

fn link_up(e: *mut kp_engine) -> bool {
    // SAFETY: kp_stats is plain data; `e` is live.
    let mut s: kp_stats = unsafe { std::mem::zeroed() };
    // SAFETY: `e` is live, `s` writable.
    assert_eq!(unsafe { kp_engine_stats(e, &mut s) }, KP_OK);
    s.link_up == 1
}

fn qos() -> kp_qos {
    // SAFETY: kp_qos is plain data (all-zero mimetype: the default).
    let mut q: kp_qos = unsafe { std::mem::zeroed() };
    q.key_chunk_size = 32;
    q.timeout = 5000;
    q
}

#[test]
fn two_engines_over_mutual_tls_hand_out_identical_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["a", "b"]);
    let (pa, pb) = (free_port(), free_port());
    let a = engine(&config(&pki, "a", "a", "leader", pa, pb, "b")).unwrap();
    let b = engine(&config(&pki, "b", "b", "follower", pb, pa, "a")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(link_up(a) && link_up(b)) {
        assert!(
            Instant::now() < deadline,
            "the link never came up over mTLS"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut q, mut ksid, mut status) = (qos(), [0u8; 16], 99u32);
    let (src, dst) = (CString::new("a").unwrap(), CString::new("b").unwrap());
    // SAFETY: live engine, valid pointers.
    unsafe {
        assert_eq!(
            kp_open_connect(
                a,
                src.as_ptr(),
                dst.as_ptr(),
                &mut q,
                ksid.as_mut_ptr(),
                &mut status
            ),
            KP_OK
        );
        assert_eq!(status, 1);
        let mut qb = qos();
        assert_eq!(
            kp_open_connect(
                b,
                src.as_ptr(),
                dst.as_ptr(),
                &mut qb,
                ksid.as_mut_ptr(),
                &mut status
            ),
            KP_OK
        );
        assert_eq!(status, 0);
    }
    for i in 0..100u32 {
        let (mut ka, mut kb) = ([0u8; 32], [0u8; 32]);
        for (e, k) in [(a, &mut ka), (b, &mut kb)] {
            let mut index = i;
            // SAFETY: live engine, 32-byte buffer.
            let r = unsafe {
                kp_get_key(
                    e,
                    ksid.as_ptr(),
                    &mut index,
                    k.as_mut_ptr(),
                    32,
                    ptr::null_mut(),
                    &mut status,
                )
            };
            assert_eq!((r, status), (KP_OK, 0));
        }
        assert_eq!(ka, kb, "index {i}");
    }
    // SAFETY: freed once each.
    unsafe {
        kp_engine_free(a);
        kp_engine_free(b);
    }
}

#[test]
fn a_peer_with_another_name_never_links_and_plain_listeners_off_loopback_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["a", "b", "z"]);
    let (pa, pb) = (free_port(), free_port());
    // a expects its peer to be "b", but the peer presents z's certificates.
    let a = engine(&config(&pki, "a", "a", "leader", pa, pb, "b")).unwrap();
    let z = engine(&config(&pki, "b", "z", "follower", pb, pa, "a")).unwrap();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert!(!link_up(a) && !link_up(z), "linked with an impostor");
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: freed once each.
    unsafe {
        kp_engine_free(a);
        kp_engine_free(z);
    }
    let open = format!(
        "{}[device]\ndriver = \"simulated\"\nlink_secret = \"{}\"\n[link]\npeer = \"http://127.0.0.1:{pb}\"\nsecret = \"{}\"\nlisten = \"0.0.0.0:{pa}\"\n",
        pki.data_dir("open"),
        "5a".repeat(32),
        "a5".repeat(32)
    );
    assert_eq!(engine(&open).err(), Some(KP_ERR_CONFIG));
    let mut detail = [0u8; 512];
    let mut n = 0usize;
    // SAFETY: a writable buffer of its length.
    unsafe { kp_last_error(detail.as_mut_ptr().cast(), detail.len(), &mut n) };
    let text = String::from_utf8_lossy(&detail[..n]);
    assert!(
        text.contains("mutual TLS") || text.contains("insecure_plaintext"),
        "{text}"
    );
}
