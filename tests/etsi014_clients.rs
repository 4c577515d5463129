//! ETSI GS QKD 014 with an independent client: the PyPI package
//! `etsi-qkd-014-client` 0.9.0 (Python on `requests`), as a library and as
//! its `qkd014-client` CLI, against two `keypipe serve` nodes over real TLS
//! with SAE client certificates from keypipe's CA.

mod support;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};
use support::etsi014::Kmes;
use uuid::Uuid;

const NOT_FOUND: &str = "one or more keys specified are not found on KME";

/// The default key size the nodes are configured with (not keypipe's own
/// default, so the status is seen to report the configuration).
const KEY_SIZE: u64 = 512;

/// A venv with exactly `etsi-qkd-014-client==0.9.0`; made once, reused.
fn venv() -> PathBuf {
    static VENV: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    VENV.get_or_init(|| {
        let ready = "import etsi_qkd_014_client as m, shutil; \
                     assert m.__version__ == '0.9.0' and shutil.which('qkd014-client')";
        support::python_venv("etsi014-venv", "etsi-qkd-014-client==0.9.0", ready)
    })
    .clone()
}

/// Runs one plan (argv[1], JSON) with the library and prints what each
/// call returned, as JSON: the status fields, and for every key call its
/// code, the type of its data, and its keys (id, base64, decoded length)
/// or its error message. It asserts nothing; the Rust side does.
const LIBRARY: &str = r#"
import base64, json, sys
from etsi_qkd_014_client import QKD014Client

plan = json.loads(sys.argv[1])
clients = {}
def client(sae, node):
    # One client per SAE and node: the node's host, the SAE's certificate.
    if (sae, node) not in clients:
        f = plan["saes"][sae]
        clients[(sae, node)] = QKD014Client(plan["hosts"][node], f["crt"], f["key"], plan["ca"])
    return clients[(sae, node)]

def answer(code, data):
    out = {"code": code, "type": type(data).__name__}
    if hasattr(data, "keys"):
        out["keys"] = [
            {"id": k.key_id, "key": k.key, "len": len(base64.b64decode(k.key, validate=True))}
            for k in data.keys
        ]
    if hasattr(data, "message"):
        out["message"] = data.message
    return out

results = []
for case in plan["cases"]:
    master = client(case["master"], case["master_node"])
    code, st = master.get_status(case["slave"])
    status = {"code": code, "type": type(st).__name__, **vars(st)}
    enc = answer(*master.get_key(case["slave"], number=case["number"], size=case["size"],
                                 additional_slave_sae_ids=case["additional"]))
    ids = [k["id"] for k in enc.get("keys", [])]
    # A third SAE first: refused, and nothing taken.
    third = answer(*client(case["third"], case["slave_node"]).get_key_with_key_IDs(case["master"], ids))
    decs, replays = [], []
    for slave in case["fetchers"]:
        s = client(slave, case["slave_node"])
        decs.append(answer(*s.get_key_with_key_IDs(case["master"], ids)))
    for slave in case["fetchers"]:
        s = client(slave, case["slave_node"])
        replays.append(answer(*s.get_key_with_key_IDs(case["master"], ids)))
    results.append({"status": status, "enc": enc, "third": third, "decs": decs, "replays": replays})
print(json.dumps(results))
"#;

/// One library case: `master` asks its node for `number` keys of `size`
/// bits for `slave` (plus `additional`); the slaves fetch them at theirs,
/// after `third` tries to there.
struct Case {
    master: &'static str,
    slave: &'static str,
    additional: &'static [&'static str],
    third: &'static str,
    number: Option<u64>,
    size: Option<u64>,
}

/// The library, node A as `127.0.0.1`, node B as `localhost`: status, keys
/// of several sizes and counts both ways, the same keys once at the slave's
/// node, 401 for a third SAE and 400 for a replay (as `DataError`s), and
/// multicast to two slaves.
#[test]
fn python_library_gets_status_and_keys_both_ways_and_is_refused_as_the_standard_says() {
    let venv = venv();
    let dir = tempfile::tempdir().unwrap();
    let settings = format!("key_size = {KEY_SIZE}\nmax_key_size = 8192\nmax_key_per_request = 16");
    let kmes = Kmes::start(dir.path(), [&["sae-a"], &["sae-b", "sae-c"]], &settings);
    kmes.wait_ready(0, "sae-a", "sae-b");
    kmes.wait_ready(0, "sae-a", "sae-c");
    kmes.wait_ready(1, "sae-b", "sae-a");
    let node_of = |sae: &str| usize::from(sae != "sae-a");
    let names = ["node-a", "node-b"];

    let case = |master, slave, third, number, size| Case {
        master,
        slave,
        additional: &[],
        third,
        number,
        size,
    };
    let cases = [
        case("sae-a", "sae-b", "sae-c", None, None),
        case("sae-a", "sae-b", "sae-c", Some(1), Some(64)),
        case("sae-a", "sae-b", "sae-c", Some(3), Some(256)),
        case("sae-a", "sae-b", "sae-c", Some(10), Some(1024)),
        case("sae-a", "sae-b", "sae-c", Some(1), Some(8192)),
        case("sae-a", "sae-c", "sae-b", Some(3), Some(8192)),
        case("sae-a", "sae-c", "sae-b", Some(10), Some(64)),
        case("sae-b", "sae-a", "sae-c", None, None),
        case("sae-b", "sae-a", "sae-c", Some(10), Some(256)),
        case("sae-b", "sae-a", "sae-c", Some(3), Some(1024)),
        // Multicast; the third is the master itself, at the slaves' node.
        Case {
            additional: &["sae-c"],
            ..case("sae-a", "sae-b", "sae-a", Some(2), Some(512))
        },
    ];
    let saes: serde_json::Map<String, Value> = ["sae-a", "sae-b", "sae-c"]
        .iter()
        .map(|s| {
            let f = json!({"crt": kmes.pki.client_crt(s), "key": kmes.pki.client_key(s)});
            (s.to_string(), f)
        })
        .collect();
    let plan = json!({
        "ca": kmes.pki.ca(),
        "hosts": [
            format!("127.0.0.1:{}", kmes.nodes[0].port),
            format!("localhost:{}", kmes.nodes[1].port),
        ],
        "saes": saes,
        "cases": cases.iter().map(|c| json!({
            "master": c.master,
            "master_node": node_of(c.master),
            "slave": c.slave,
            "slave_node": node_of(c.slave),
            "additional": if c.additional.is_empty() { None } else { Some(c.additional) },
            "fetchers": std::iter::once(&c.slave).chain(c.additional).collect::<Vec<_>>(),
            "third": c.third,
            "number": c.number,
            "size": c.size,
        })).collect::<Vec<_>>(),
    });
    let out = Command::new(venv.join("bin/python"))
        .args(["-c", LIBRARY, &plan.to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python: {stderr}");
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON from python");
    assert_eq!(results.len(), cases.len());

    let (mut ids, mut bytes) = (HashSet::new(), HashSet::new());
    for (c, r) in cases.iter().zip(&results) {
        let what = format!(
            "{} -> {} {:?} {:?}: {r}",
            c.master, c.slave, c.number, c.size
        );
        // Status: as the master asked it at its own node.
        let st = &r["status"];
        assert_eq!(st["code"], 200, "{what}");
        assert_eq!(st["type"], "DataStatus", "{what}");
        assert_eq!(st["master_sae_id"], c.master, "{what}");
        assert_eq!(st["slave_sae_id"], c.slave, "{what}");
        assert_eq!(st["source_kme_id"], names[node_of(c.master)], "{what}");
        assert_eq!(st["target_kme_id"], names[node_of(c.slave)], "{what}");
        assert_eq!(st["key_size"], KEY_SIZE, "{what}");
        assert!(st["stored_key_count"].as_u64().unwrap() > 0, "{what}");
        let size = c.size.unwrap_or(KEY_SIZE);
        assert!(st["min_key_size"].as_u64().unwrap() <= size, "{what}");
        assert!(st["max_key_size"].as_u64().unwrap() >= size, "{what}");
        let per_request = st["max_key_per_request"].as_u64().unwrap();
        assert!(per_request >= c.number.unwrap_or(1), "{what}");
        let multicast = st["max_sae_id_count"].as_u64().unwrap();
        assert!(multicast >= c.additional.len() as u64, "{what}");

        // enc_keys: as many keys as asked, of the size asked, UUID ids.
        let enc = &r["enc"];
        assert_eq!(enc["code"], 200, "{what}");
        assert_eq!(enc["type"], "DataKeyContainer", "{what}");
        let keys = enc["keys"].as_array().unwrap();
        assert_eq!(keys.len() as u64, c.number.unwrap_or(1), "{what}");
        for k in keys {
            assert_eq!(k["len"].as_u64().unwrap() * 8, size, "{what}");
            let id: Uuid = k["id"].as_str().unwrap().parse().expect("a UUID key_ID");
            assert!(ids.insert(id), "key_ID {id} given twice");
            assert!(bytes.insert(k["key"].to_string()), "a key given twice");
        }

        // A third SAE: 401 with an error body, not an exception.
        let third = &r["third"];
        assert_eq!(third["code"], 401, "{what}");
        assert_eq!(third["type"], "DataError", "{what}");
        assert!(
            third["message"].as_str().unwrap().contains(c.third),
            "{what}"
        );

        // Every slave gets exactly the same keys, in order, once.
        assert_eq!(r["decs"].as_array().unwrap().len(), 1 + c.additional.len());
        for dec in r["decs"].as_array().unwrap() {
            assert_eq!(dec["code"], 200, "{what}");
            assert_eq!(dec["type"], "DataKeyContainer", "{what}");
            assert_eq!(&dec["keys"], &enc["keys"], "{what}");
        }
        for replay in r["replays"].as_array().unwrap() {
            assert_eq!(replay["code"], 400, "{what}");
            assert_eq!(replay["type"], "DataError", "{what}");
            assert_eq!(replay["message"], NOT_FOUND, "{what}");
        }
    }
}

/// Runs `qkd014-client` of the venv as SAE `sae` against `host`: its
/// stdout (it exits 0 whatever the answer, so the code is in the text).
fn cli(kmes: &Kmes, sae: &str, host: &str, command: &[&str]) -> String {
    let out = Command::new(venv().join("bin/qkd014-client"))
        .args(["-H", host, "-c"])
        .arg(kmes.pki.client_crt(sae))
        .arg("-k")
        .arg(kmes.pki.client_key(sae))
        .arg("-r")
        .arg(kmes.pki.ca())
        .args(command)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "qkd014-client {command:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The values of the lines `NAME : value` of a CLI output.
fn fields<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
    let prefix = format!("{name} : ");
    out.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .map(str::trim)
        .collect()
}

/// The CLI: status and a key at node A (`127.0.0.1`), the same key by its
/// id at node B (`localhost`), then its replay refused.
#[test]
fn qkd014_client_cli_gets_a_key_at_node_a_and_the_same_key_by_id_at_node_b() {
    let dir = tempfile::tempdir().unwrap();
    let kmes = Kmes::start(dir.path(), [&["sae-a"], &["sae-b"]], "");
    kmes.wait_ready(0, "sae-a", "sae-b");
    let a = format!("127.0.0.1:{}", kmes.nodes[0].port);
    let b = format!("localhost:{}", kmes.nodes[1].port);

    let status = cli(&kmes, "sae-a", &a, &["get_status", "sae-b"]);
    assert_eq!(fields(&status, "Response code"), ["200"], "{status}");
    assert_eq!(fields(&status, "source_KME_ID"), ["node-a"], "{status}");
    assert_eq!(fields(&status, "target_KME_ID"), ["node-b"], "{status}");
    assert_eq!(fields(&status, "master_SAE_ID"), ["sae-a"], "{status}");
    assert_eq!(fields(&status, "slave_SAE_ID"), ["sae-b"], "{status}");
    let key_size: usize = fields(&status, "key_size")[0].parse().unwrap();

    let got = cli(&kmes, "sae-a", &a, &["get_key", "sae-b"]);
    assert_eq!(fields(&got, "Response code"), ["200"], "{got}");
    let (ids, keys) = (fields(&got, "Key id"), fields(&got, "Key"));
    assert_eq!((ids.len(), keys.len()), (1, 1), "{got}");
    let id: Uuid = ids[0].parse().expect("a UUID key_ID");
    let key = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, keys[0])
        .expect("base64");
    assert_eq!(key.len() * 8, key_size);

    let back = cli(&kmes, "sae-b", &b, &["get_key_with_id", ids[0], "sae-a"]);
    assert_eq!(fields(&back, "Response code"), ["200"], "{back}");
    assert_eq!(fields(&back, "Key id"), [id.to_string()], "{back}");
    assert_eq!(fields(&back, "Key"), keys, "{back}");

    let again = cli(&kmes, "sae-b", &b, &["get_key_with_id", ids[0], "sae-a"]);
    assert_eq!(fields(&again, "Response code"), ["400"], "{again}");
    assert_eq!(fields(&again, "Message"), [NOT_FOUND], "{again}");
}
