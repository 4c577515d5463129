//! The service without HTTP: a real SQLite store and CA in a temporary
//! directory, calls made as the adapter makes them.

use std::sync::Arc;

use super::config::{KeyTalkConfig, Service};
use super::params::Params;
use super::{KeyTalk, Now, RcdpRequest};
use crate::ca::Ca;
use crate::login::password;
use crate::store::{KeyTalkStore, Store, StoreOptions, UserStore};

fn service(toml: &str) -> Service {
    Service::new(serde_json::from_value(toml_like(toml)).unwrap()).unwrap()
}

/// A tiny `key = value` reader for service definitions in these tests
/// (strings, booleans, string arrays, and `cert.x` keys).
fn toml_like(text: &str) -> serde_json::Value {
    let mut root = serde_json::Map::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once('=').unwrap();
        let value: serde_json::Value = serde_json::from_str(v.trim()).unwrap();
        let mut target = &mut root;
        let mut parts: Vec<&str> = k.trim().split('.').collect();
        let last = parts.pop().unwrap();
        for p in parts {
            target = target
                .entry(p)
                .or_insert_with(|| serde_json::json!({}))
                .as_object_mut()
                .unwrap();
        }
        target.insert(last.into(), value);
    }
    serde_json::Value::Object(root)
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    kt: KeyTalk,
}

fn fixture(services: Vec<Service>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open_with_env(&StoreOptions::new(dir.path()), &|_| None).unwrap());
    Ca::new(store.as_ref()).init("test").unwrap();
    let ca = Ca::new(store.as_ref()).load().unwrap();
    let config = KeyTalkConfig {
        services,
        failure_delay: std::time::Duration::ZERO,
        ..KeyTalkConfig::default()
    };
    let kt = KeyTalk::new(config, Arc::clone(&store) as _, ca).with_resolver(Box::new(|uri| {
        if uri.contains("app.example") {
            vec!["192.0.2.7".into()]
        } else {
            Vec::new()
        }
    }));
    Fixture {
        _dir: dir,
        store,
        kt,
    }
}

impl Fixture {
    fn user(&self, name: &str, pw: &str, services: &[&str]) {
        self.store
            .add_user("keytalk", name, &password::hash(pw.as_bytes()).unwrap())
            .unwrap();
        for s in services {
            self.store.add_membership("keytalk", name, s).unwrap();
        }
    }

    /// A session after hello and handshake.
    fn session(&self) -> String {
        let reply = self.call(None, "hello", "");
        let sid = reply.1.unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let utc = super::params::format_utc(now).replace('+', "%2B");
        assert_eq!(
            self.call(Some(&sid), "handshake", &format!("caller-utc={utc}"))
                .0["status"],
            "handshake"
        );
        sid
    }

    fn call(
        &self,
        sid: Option<&str>,
        action: &str,
        query: &str,
    ) -> (serde_json::Value, Option<String>) {
        let reply = self.kt.rcdp(
            RcdpRequest {
                version: "2.4.1",
                action,
                params: Params::parse(query.as_bytes(), b""),
                sid: sid.map(str::to_owned),
            },
            Now::current(),
        );
        let body = serde_json::from_slice(&reply.answer.to_body()).unwrap();
        (body, reply.sid.map(|s| s.as_str().to_owned()))
    }

    fn auth(&self, sid: &str, query: &str) -> String {
        let v = self.call(Some(sid), "authentication", query).0;
        v["auth-status"]
            .as_str()
            .or(v["status"].as_str())
            .unwrap()
            .to_owned()
    }
}

#[test]
fn resolved_addresses_and_digests_are_checked() {
    let uri = "https://app.example/login";
    let digest = "ab".repeat(32);
    let f = fixture(vec![service(&format!(
        r#"name = "URIS"
        service_uris = ["{uri}"]
        resolve_service_uris = true
        calc_service_uris_digest = true
        uri_digests = {{"{uri}": "{digest}"}}"#
    ))]);
    f.user("u", "correct horse", &["URIS"]);
    let sid = f.session();
    let req = f.call(Some(&sid), "auth-requirements", "service=URIS").0;
    assert_eq!(req["resolve-service-uris"], "true");
    assert_eq!(req["calc-service-uris-digest"], "true");
    let enc = |s: &str| {
        s.replace('%', "%25")
            .replace('&', "%26")
            .replace('+', "%2B")
            .replace('#', "%23")
    };
    let resolved = |ip: &str| enc(&format!(r#"[{{"uri":"{uri}","ips":["{ip}"]}}]"#));
    let digests = |d: &str| enc(&format!(r#"[{{"uri":"{uri}","digest":"{d}"}}]"#));
    let creds = "service=URIS&USERID=u&PASSWD=correct+horse";
    let v = f
        .call(
            Some(&sid),
            "authentication",
            &format!(
                "{creds}&resolved={}&digests={}",
                resolved("198.51.100.1"),
                digests(&digest)
            ),
        )
        .0;
    assert_eq!(v["code"], 1001, "{v}");
    let v = f
        .call(
            Some(&sid),
            "authentication",
            &format!(
                "{creds}&resolved={}&digests={}",
                resolved("192.0.2.7"),
                digests(&"cd".repeat(32))
            ),
        )
        .0;
    assert_eq!(v["code"], 1002, "{v}");
    let upper = digest.to_uppercase();
    let ok = f.auth(
        &sid,
        &format!(
            "{creds}&resolved={}&digests={}",
            resolved("[192.0.2.7]"),
            digests(&upper)
        ),
    );
    assert_eq!(ok, "OK");
}

#[test]
fn a_challenge_answered_for_another_service_or_user_fails_and_claims_no_device() {
    let f = fixture(vec![
        service(&format!(
            r#"name = "A"
            credential_types = ["USERID", "PASSWD", "HWSIG"]
            hwsig_formula = "1"
            challenge = {{"prompt": "code?", "response_hash": "{}"}}"#,
            password::hash(b"111").unwrap()
        )),
        service(&format!(
            r#"name = "B"
            challenge = {{"prompt": "code?", "response_hash": "{}"}}"#,
            password::hash(b"222").unwrap()
        )),
    ]);
    f.user("alice", "correct horse", &["A"]);
    f.user("bob", "correct horse", &["B"]);
    let sid = f.session();
    let first = "service=A&USERID=alice&PASSWD=correct+horse&HWSIG=CS-1";
    assert_eq!(f.auth(&sid, first), "CHALLENGE");
    assert!(
        f.store.devices().unwrap().is_empty(),
        "no device before the challenge is answered"
    );
    // B's answer, for B (which alice is no member of): refused.
    assert_eq!(f.auth(&sid, "service=B&USERID=alice&PASSWD=222"), "DELAY");
    assert_eq!(f.call(Some(&sid), "last-messages", "").0["status"], "error");
    // Another user answering alice's challenge: refused.
    assert_eq!(f.auth(&sid, first), "CHALLENGE");
    assert_eq!(
        f.auth(&sid, "service=A&USERID=bob&PASSWD=111&HWSIG=CS-1"),
        "DELAY"
    );
    // A wrong answer, then the password again and the right answer.
    assert_eq!(f.auth(&sid, first), "CHALLENGE");
    assert_eq!(
        f.auth(&sid, "service=A&USERID=alice&PASSWD=000&HWSIG=CS-1"),
        "DELAY"
    );
    assert!(f.store.devices().unwrap().is_empty());
    assert_eq!(f.auth(&sid, first), "CHALLENGE");
    assert_eq!(
        f.auth(&sid, "service=A&USERID=alice&PASSWD=111&HWSIG=CS-1"),
        "OK"
    );
    let devices = f.store.devices().unwrap();
    assert_eq!((devices.len(), devices[0].hwsig.as_str()), (1, "CS-1"));
}

#[test]
fn oversized_names_and_empty_device_signatures_are_refused_unchecked() {
    let f = fixture(vec![service(
        r#"name = "HW"
        credential_types = ["USERID", "PASSWD", "HWSIG"]
        hwsig_formula = "1""#,
    )]);
    f.user("u", "correct horse", &["HW"]);
    let sid = f.session();
    let long = "x".repeat(super::MAX_FIELD + 1);
    let v = f
        .call(
            Some(&sid),
            "authentication",
            &format!("service=HW&USERID={long}&PASSWD=a&HWSIG=CS-1"),
        )
        .0;
    assert_eq!(v["status"], "error");
    assert_eq!(
        f.auth(&sid, "service=HW&USERID=u&PASSWD=correct+horse&HWSIG=+"),
        "DELAY"
    );
    assert!(f.store.devices().unwrap().is_empty());
}

#[test]
fn a_session_issues_a_bounded_number_of_certificates() {
    let f = fixture(vec![service(
        r#"name = "S"
        cert.key_type = "p256""#,
    )]);
    f.user("u", "correct horse", &["S"]);
    let sid = f.session();
    assert_eq!(
        f.auth(&sid, "service=S&USERID=u&PASSWD=correct+horse"),
        "OK"
    );
    for _ in 0..super::MAX_CERTIFICATES_PER_SESSION {
        assert_eq!(f.call(Some(&sid), "cert", "format=P12").0["status"], "cert");
    }
    let v = f.call(Some(&sid), "cert", "format=P12").0;
    assert_eq!(v["status"], "error", "{v}");
}

#[test]
fn an_enrolment_certificate_never_carries_a_role_keypipe_trusts() {
    let def = |ou: &str| {
        toml_like(&format!(
            "name = \"sae\"\ncredential_types = [\"USERID\", \"PASSWD\"]\ncert.subject.cn = \"$(USER)\"\ncert.subject.ou = {ou:?}"
        ))
    };
    // Refused when the service is configured ...
    for ou in ["sae", "SAE", "kms", " node ", "server", "$(SERVICE)"] {
        let e = Service::new(serde_json::from_value(def(ou)).unwrap()).unwrap_err();
        assert!(
            e.contains("a role keypipe's own listeners trust"),
            "{ou}: {e}"
        );
    }
    // ... or, from a user's name, when a certificate would be issued.
    let s = Service::new(serde_json::from_value(def("$(USER)")).unwrap()).unwrap();
    assert!(s.subject("sae").unwrap_err().contains("may not carry it"));
    assert_eq!(s.subject("alice").unwrap().ou.as_deref(), Some("alice"));
}

/// Two processes sharing one database, their calls alternating (a load
/// balancer that does not pin clients).
mod shared {
    use super::*;
    use crate::keytalk::oob::Downloads;
    use crate::keytalk::shared::testing::Db;

    fn pair(db: &Db, services: Vec<Service>) -> (Fixture, Fixture) {
        let first = db.open();
        Ca::new(first.as_ref()).init("test").unwrap();
        let make = |store: Arc<Store>| {
            let ca = Ca::new(store.as_ref()).load().unwrap();
            let config = KeyTalkConfig {
                services: services.clone(),
                failure_delay: std::time::Duration::ZERO,
                ..KeyTalkConfig::default()
            };
            let shared = Some(Arc::clone(&store) as _);
            let kt = KeyTalk::with_shared(config, Arc::clone(&store) as _, ca, shared);
            assert!(kt.is_shared());
            Fixture {
                _dir: tempfile::tempdir().unwrap(),
                store,
                kt,
            }
        };
        (make(first), make(db.open()))
    }

    /// Session rows in the store (what `KeyTalk::sessions` only caches).
    fn sessions(db: &Db) -> u64 {
        use crate::store::EphemeralStore;
        db.open()
            .ephemeral_count(crate::keytalk::session::KIND)
            .unwrap()
    }

    /// `hello` through `x`, `handshake` through `y`.
    fn session(x: &Fixture, y: &Fixture) -> String {
        let sid = x.call(None, "hello", "").1.unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let utc = super::super::params::format_utc(now).replace('+', "%2B");
        let v = y
            .call(Some(&sid), "handshake", &format!("caller-utc={utc}"))
            .0;
        assert_eq!(v["status"], "handshake", "{v}");
        sid
    }

    fn enrolment_alternates(db: &Db) {
        let (a, b) = pair(db, vec![service(r#"name = "S""#)]);
        a.user("u", "correct horse", &["S"]);
        let sid = session(&a, &b);
        let v = a.call(Some(&sid), "auth-requirements", "service=S").0;
        assert_eq!(v["status"], "auth-requirements", "{v}");
        assert_eq!(
            b.auth(&sid, "service=S&USERID=u&PASSWD=correct+horse"),
            "OK"
        );
        assert_eq!(sessions(db), 1, "one row, whichever process asks");
        // Each process's count: the site's as of its last `hello`.
        assert_eq!((a.kt.sessions(), b.kt.sessions()), (1, 0));
        let v = a.call(Some(&sid), "csr-requirements", "").0;
        assert_eq!(v["status"], "csr-requirements", "{v}");
        let v = b.call(Some(&sid), "cert", "format=P12&out-of-band=true").0;
        assert_eq!(v["status"], "cert", "{v}");
        let url = v["cert-url-templ"].as_str().unwrap();
        let token = url.rsplit_once('?').unwrap().1;
        let v = a.call(Some(&sid), "cert", "format=PEM").0;
        assert_eq!(v["status"], "cert", "{v}");
        assert!(
            v["cert"]
                .as_str()
                .unwrap()
                .contains("ENCRYPTED PRIVATE KEY")
        );
        assert_eq!(b.call(Some(&sid), "eoc", "").0["status"], "eoc");
        let v = a.call(Some(&sid), "last-messages", "").0;
        assert_eq!(v["status"], "error", "ended on both: {v}");
        assert_eq!(sessions(db), 0);
        // The package parked by b: taken once, through a.
        let now = std::time::Instant::now();
        let package = a.kt.download(token, now).unwrap().unwrap();
        assert_eq!(package.content_type, "application/x-pkcs12");
        assert!(package.body.len() > 100);
        assert!(b.kt.download(token, now).unwrap().is_none());
        assert!(a.kt.download(token, now).unwrap().is_none());
        for secret in [sid.as_bytes(), token.as_bytes(), &package.body[..]] {
            assert!(db.lacks(secret));
        }
    }

    fn failures_lock_on_both(db: &Db) {
        let (a, b) = pair(db, vec![service(r#"name = "S""#)]);
        a.user("u", "correct horse", &["S"]);
        let wrong = "service=S&USERID=u&PASSWD=wrong";
        let sid = session(&a, &b);
        // Five failures (no delay here), alternating: the fifth locks.
        for i in 0..4 {
            let x = if i % 2 == 0 { &a } else { &b };
            assert_eq!(x.auth(&sid, wrong), "DELAY");
        }
        assert_eq!(b.auth(&sid, wrong), "LOCKED");
        // Locked on both, even with the right password, in a new session.
        let right = "service=S&USERID=u&PASSWD=correct+horse";
        let sid = session(&b, &a);
        assert_eq!(a.auth(&sid, right), "LOCKED");
        let sid = session(&a, &b);
        assert_eq!(b.auth(&sid, right), "LOCKED");
    }

    /// A full shared table of downloads refuses an out-of-band `cert`
    /// before issuing: nothing is issued or recorded, the session's count
    /// does not move, and the session goes on.
    fn a_full_download_table_refuses_before_issuing(db: &Db) {
        use crate::store::CaStore;
        let (mut a, mut b) = pair(db, vec![service(r#"name = "S""#)]);
        // Room for one package waiting, site-wide.
        for x in [&mut a, &mut b] {
            let store = Arc::clone(&x.store) as _;
            x.kt.downloads = Downloads::shared(x.kt.config.download_ttl, 1, store);
        }
        a.user("u", "correct horse", &["S"]);
        let sid = session(&a, &b);
        assert_eq!(
            b.auth(&sid, "service=S&USERID=u&PASSWD=correct+horse"),
            "OK"
        );
        let certificates = |x: &Fixture| {
            let now = std::time::Instant::now();
            let s = match x.kt.sessions.try_take(&sid, now).unwrap() {
                super::super::session::Taken::Session(s) => s,
                other => panic!("not taken: {other:?}"),
            };
            x.kt.sessions.try_release(&sid, s.holder()).unwrap();
            s.certificates
        };
        let issued = || a.store.issued().unwrap().len();
        let oob = "format=P12&out-of-band=true";
        let v = a.call(Some(&sid), "cert", oob).0;
        assert_eq!(v["status"], "cert", "{v}");
        let token = v["cert-url-templ"]
            .as_str()
            .unwrap()
            .rsplit_once('?')
            .unwrap()
            .1
            .to_owned();
        let before = (issued(), certificates(&a));
        assert_eq!(before.1, 1);
        let v = b.call(Some(&sid), "cert", oob).0;
        assert_eq!(v["status"], "error", "{v}");
        assert!(
            v["description"]
                .as_str()
                .unwrap()
                .contains("too many downloads waiting"),
            "{v}"
        );
        assert_eq!(
            (issued(), certificates(&b)),
            before,
            "a certificate issued and recorded, then not delivered"
        );
        // In band still works; a download makes room again.
        let v = a.call(Some(&sid), "cert", "format=P12").0;
        assert_eq!(v["status"], "cert", "{v}");
        let now = std::time::Instant::now();
        assert!(b.kt.download(&token, now).unwrap().is_some());
        let v = b.call(Some(&sid), "cert", oob).0;
        assert_eq!(v["status"], "cert", "{v}");
        assert_eq!((issued(), certificates(&a)), (before.0 + 2, 3));
    }

    #[test]
    fn a_full_download_table_refuses_before_issuing_on_sqlite() {
        a_full_download_table_refuses_before_issuing(&Db::sqlite());
    }

    #[test]
    fn a_full_download_table_refuses_before_issuing_on_postgres() {
        a_full_download_table_refuses_before_issuing(&Db::postgres("kt_full"));
    }

    #[test]
    fn an_enrolment_alternating_between_processes_completes_on_sqlite() {
        enrolment_alternates(&Db::sqlite());
    }

    #[test]
    fn an_enrolment_alternating_between_processes_completes_on_postgres() {
        enrolment_alternates(&Db::postgres("kt_enrol"));
    }

    #[test]
    fn failures_on_one_process_lock_the_user_on_the_other_on_sqlite() {
        failures_lock_on_both(&Db::sqlite());
    }

    #[test]
    fn failures_on_one_process_lock_the_user_on_the_other_on_postgres() {
        failures_lock_on_both(&Db::postgres("kt_lock"));
    }
}
