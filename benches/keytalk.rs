//! The parts of one KeyTalk enrolment, each on one core, to see where an
//! enrolment's time goes: the Argon2id password check, issuing and
//! recording a certificate (P-256 and RSA-2048 keys made here, a CSR's
//! key), packaging it (P12, PEM), checking a CSR, and a whole enrolment
//! through the sans-IO service (hello to cert, no HTTP, no TLS). The HTTP
//! and TLS figures come from `scripts/keytalk-load.sh`.

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keypipe_server::kms::ca::{Ca, EnrolKey, EnrolRequest, KeyType, Subject};
use keypipe_server::kms::keytalk::config::{KeyTalkConfig, Service};
use keypipe_server::kms::keytalk::csr::{self, CsrRequirements};
use keypipe_server::kms::keytalk::params::{Params, format_utc};
use keypipe_server::kms::keytalk::{KeyTalk, Now, RcdpRequest, package};
use keypipe_server::kms::login::password;
use keypipe_server::store::{Enrolment, KeyTalkStore, Store, StoreOptions, UserStore};

fn subject() -> Subject {
    Subject {
        cn: "alice".into(),
        o: Some("keypipe demo".into()),
        ou: Some("DEMO".into()),
        ..Subject::default()
    }
}

fn parts(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&StoreOptions::new(dir.path())).unwrap());
    Ca::new(store.as_ref()).init("bench").unwrap();
    let ca = Ca::new(store.as_ref()).load().unwrap();
    let mut g = c.benchmark_group("keytalk");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);

    let hash = password::hash(b"correct horse").unwrap();
    g.bench_function("argon2id_verify", |b| {
        b.iter(|| assert!(password::verify(&hash, b"correct horse")))
    });
    let request = |key| EnrolRequest {
        subject: subject(),
        ekus: vec!["clientAuth".parse().unwrap()],
        sans: Vec::new(),
        days: 365,
        key,
        enrolment: Enrolment {
            service: "DEMO".into(),
            holder: "alice".into(),
            device: None,
        },
    };
    g.bench_function("issue_p256_recorded", |b| {
        b.iter(|| {
            ca.enrol(store.as_ref(), &request(EnrolKey::Generate(KeyType::P256)))
                .unwrap()
        })
    });
    g.bench_function("issue_rsa2048_recorded", |b| {
        b.iter(|| {
            ca.enrol(
                store.as_ref(),
                &request(EnrolKey::Generate(KeyType::Rsa2048)),
            )
            .unwrap()
        })
    });
    let rsa = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "keypipe demo");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, "DEMO");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "alice");
    let csr_pem = params.serialize_request(&rsa).unwrap().pem().unwrap();
    let want = CsrRequirements {
        key_size: 2048,
        signing_algo: "sha256".into(),
        subject: subject(),
    };
    g.bench_function("csr_check", |b| {
        b.iter(|| csr::check(&csr_pem, &want).unwrap())
    });
    let spki = csr::check(&csr_pem, &want).unwrap();
    g.bench_function("issue_from_csr_recorded", |b| {
        b.iter(|| {
            ca.enrol(store.as_ref(), &request(EnrolKey::Csr(spki.clone())))
                .unwrap()
        })
    });
    let issued = ca
        .enrol(store.as_ref(), &request(EnrolKey::Generate(KeyType::P256)))
        .unwrap();
    let key = issued.key_pkcs8.unwrap();
    let chain = ca.chain_der();
    g.bench_function("package_p12_3des", |b| {
        b.iter(|| {
            package::p12(
                &issued.cert_der,
                &chain,
                &key,
                "0123456789abcdef0123456789abcd",
                "DEMO alice",
            )
            .unwrap()
        })
    });
    g.bench_function("package_pem_pbes2", |b| {
        b.iter(|| {
            package::pem_bundle(&[&issued.cert_der], &key, b"0123456789abcdef0123456789abcd")
                .unwrap()
        })
    });

    // A whole enrolment through the service.
    store.add_user("keytalk", "alice", &hash).unwrap();
    store.add_membership("keytalk", "alice", "DEMO").unwrap();
    let service: Service = Service::new(
        serde_json::from_value(serde_json::json!({
            "name": "DEMO",
            "cert": {"key_type": "p256", "subject": {"cn": "$(USER)", "o": "keypipe demo", "ou": "$(SERVICE)"}}
        }))
        .unwrap(),
    )
    .unwrap();
    let kt = KeyTalk::new(
        KeyTalkConfig {
            services: vec![service],
            ..KeyTalkConfig::default()
        },
        Arc::clone(&store) as _,
        Ca::new(store.as_ref()).load().unwrap(),
    );
    let call = |sid: Option<&str>, action: &str, query: &str| {
        let reply = kt.rcdp(
            RcdpRequest {
                version: "2.4.1",
                action,
                params: Params::parse(query.as_bytes(), b""),
                sid: sid.map(str::to_owned),
            },
            Now::current(),
        );
        assert_ne!(reply.answer.status_text(), "error");
        reply.sid.map(|s| s.as_str().to_owned())
    };
    g.bench_function("enrolment_p256_p12_sans_io", |b| {
        b.iter(|| {
            let sid = call(None, "hello", "").unwrap();
            let utc =
                format_utc(time::OffsetDateTime::now_utc().unix_timestamp()).replace('+', "%2B");
            call(Some(&sid), "handshake", &format!("caller-utc={utc}"));
            call(Some(&sid), "auth-requirements", "service=DEMO");
            call(
                Some(&sid),
                "authentication",
                "service=DEMO&USERID=alice&PASSWD=correct+horse",
            );
            call(Some(&sid), "cert", "format=P12");
            call(Some(&sid), "eoc", "");
        })
    });
    g.finish();
}

criterion_group!(benches, parts);
criterion_main!(benches);
