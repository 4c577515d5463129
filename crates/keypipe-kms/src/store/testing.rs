//! Test support (not part of the API): fresh PostgreSQL databases on the
//! throwaway cluster of `scripts/pg.sh`.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The test cluster's connection string: `KEYPIPE_TEST_PG` (set by
/// `scripts/test.sh`), else the cluster `scripts/pg.sh ensure` starts (or
/// finds running) in `target/pg`.
pub fn pg_cluster() -> String {
    if let Ok(url) = std::env::var("KEYPIPE_TEST_PG") {
        return url;
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let out = Command::new(format!("{root}/scripts/pg.sh"))
        .arg("ensure")
        .output()
        .expect("run scripts/pg.sh");
    assert!(
        out.status.success(),
        "scripts/pg.sh ensure failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("pg.sh prints text")
        .trim()
        .to_owned()
}

/// A new, empty database on the test cluster, named after `label`, this
/// process and a counter; its connection string.
pub fn fresh_pg_database(label: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let cluster = pg_cluster();
    let name = format!(
        "kp_{}_{}_{}",
        label
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(30)
            .collect::<String>()
            .to_ascii_lowercase(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin =
        postgres::Client::connect(&cluster, postgres::NoTls).expect("connect to the test cluster");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create a test database");
    format!("{cluster} dbname={name}")
}
