//! The CA over a real SQLite store in a temporary directory: the hierarchy
//! made once, server and client certificates issued from it, refusals with
//! their reason, and a CSR's public key certified.

use x509_parser::prelude::*;

use super::*;
use crate::store::{Store, StoreOptions};

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreOptions::new(dir.path())).unwrap();
    (dir, store)
}

fn first_der(pem_text: &str) -> Vec<u8> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).unwrap();
    p.contents
}

fn request(name: &str, role: Role, sans: &[&str]) -> LeafRequest {
    LeafRequest {
        name: name.into(),
        role,
        sans: sans.iter().map(|s| s.parse().unwrap()).collect(),
        days: 30,
        key: Ok(KeyType::P256),
    }
}

#[test]
fn init_once_then_issue_server_and_client_certificates() {
    let (_dir, store) = store();
    let ca = Ca::new(&store);
    assert!(matches!(ca.bundle_pem(), Err(CaError::NoCa)));
    assert!(ca.init("Example Org").unwrap());
    assert!(!ca.init("Example Org").unwrap(), "never replaced");
    let bundle = ca.bundle_pem().unwrap();
    assert_eq!(
        x509_parser::pem::Pem::iter_from_buffer(bundle.as_bytes()).count(),
        3,
        "Primary, Signing and Server CA"
    );
    let root = first_der(&bundle);
    let (_, root) = parse_x509_certificate(&root).unwrap();
    assert!(root.is_ca());
    assert_eq!(root.subject(), root.issuer(), "self-signed");
    assert!(root.verify_signature(None).is_ok());

    let server = ca
        .issue(&request(
            "node-a",
            Role::Server,
            &["DNS:node-a.example", "IP:10.0.0.1"],
        ))
        .unwrap();
    let client = ca.issue(&request("kms-a", Role::Kms, &[])).unwrap();
    assert_ne!(server.serial, client.serial);
    for (issued, role, eku_server) in [(&server, "server", true), (&client, "kms", false)] {
        let der = first_der(&issued.chain_pem);
        let (_, cert) = parse_x509_certificate(&der).unwrap();
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap();
        let ou = cert
            .subject()
            .iter_organizational_unit()
            .next()
            .unwrap()
            .as_str()
            .unwrap();
        assert_eq!(ou, role);
        assert!(cn == "node-a" || cn == "kms-a");
        let serial: String = cert
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(serial, issued.serial, "the hex serial is the certificate's");
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert_eq!(
            (eku.server_auth, eku.client_auth),
            (eku_server, !eku_server)
        );
        assert!(!cert.is_ca());
        // The chain's second certificate is the issuing CA, signed by the root.
        let pems: Vec<_> = x509_parser::pem::Pem::iter_from_buffer(issued.chain_pem.as_bytes())
            .map(Result::unwrap)
            .collect();
        assert_eq!(pems.len(), 2, "leaf and issuing CA");
        let (_, intermediate) = parse_x509_certificate(&pems[1].contents).unwrap();
        assert!(
            cert.verify_signature(Some(intermediate.public_key()))
                .is_ok()
        );
        assert!(
            intermediate
                .verify_signature(Some(root.public_key()))
                .is_ok()
        );
        assert_eq!(issued.ca_pem, ca.bundle_pem().unwrap());
        assert!(
            issued
                .key_pem
                .as_ref()
                .unwrap()
                .contains("BEGIN PRIVATE KEY")
        );
    }
    let listed = store.issued().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(
        (listed[0].role.as_str(), listed[0].issuer.as_str()),
        ("server", "server")
    );
    assert_eq!(
        (listed[1].role.as_str(), listed[1].issuer.as_str()),
        ("kms", "signing")
    );
}

#[test]
fn bad_requests_are_refused_with_their_reason() {
    let (_dir, store) = store();
    let ca = Ca::new(&store);
    assert!(matches!(
        ca.issue(&request("x", Role::Kms, &[])),
        Err(CaError::NoCa)
    ));
    ca.init("keypipe").unwrap();
    for (req, needle) in [
        (request("node a", Role::Kms, &[]), "name"),
        (request("", Role::Kms, &[]), "name"),
        (request(&"x".repeat(65), Role::Kms, &[]), "name"),
        (request("srv", Role::Server, &[]), "--san"),
        (
            LeafRequest {
                days: 0,
                ..request("k", Role::Kms, &[])
            },
            "validity",
        ),
    ] {
        let err = ca.issue(&req).unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    }
    for bad in [
        "dns:x",
        "DNS:",
        "DNS:a..b",
        "DNS:-a",
        "DNS:*.example",
        "IP:1.2.3",
        "x",
    ] {
        assert!(bad.parse::<San>().is_err(), "{bad}");
    }
    assert!("sysadmin".parse::<Role>().is_err());
    assert!(ca.init("").is_err());
    assert!(store.issued().unwrap().is_empty(), "nothing recorded");
}

#[test]
fn a_csr_public_key_is_certified_and_no_key_is_returned() {
    let (_dir, store) = store();
    let ca = Ca::new(&store);
    ca.init("keypipe").unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let issued = ca
        .issue(&LeafRequest {
            key: Err(rcgen::PublicKeyData::subject_public_key_info(&key)),
            ..request("alice", Role::User, &[])
        })
        .unwrap();
    assert!(issued.key_pem.is_none());
    let der = first_der(&issued.chain_pem);
    let (_, cert) = parse_x509_certificate(&der).unwrap();
    assert_eq!(
        cert.public_key().raw,
        rcgen::PublicKeyData::subject_public_key_info(&key)
    );
}
