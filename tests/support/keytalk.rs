//! A `keypipe serve` process serving KeyTalk on loopback (TLS listener,
//! plain CA listener) with test services, and users made with the real
//! `keypipe user add`.

use std::path::PathBuf;

use serde_json::Value;

use super::keytalk_clients::Target;
use super::{HeldPort, ServerProcess};

/// The test services (besides the policy lines of each test).
pub const SERVICES: &str = r#"
[[keytalk.service]]
name = "DEMO"
self_service = true
apply_address_books = true
address_books = [{ ldap_svr_url = "ldaps://ldap.example.com", search_base = "ou=people,dc=example,dc=com" }]
messages = [
  { text = "second", utc = "2026-02-01T00:00:00Z" },
  { text = "first", utc = "2026-01-01T00:00:00Z" },
]
[keytalk.service.cert]
key_type = "p256"
days = 30
extended_key_usages = ["clientAuth", "emailProtection"]
sans = ["email:$(USER)@example.com"]
[keytalk.service.cert.subject]
cn = "$(USER)"
o = "keypipe test"
ou = "$(SERVICE)"
c = "NL"

[[keytalk.service]]
name = "HW"
cert = { key_type = "p256" }
credential_types = ["USERID", "PASSWD", "HWSIG"]
hwsig_formula = "1,2,3"
password_max_age_days = 30

[[keytalk.service]]
name = "RSA"
[keytalk.service.cert]
key_type = "rsa2048"

[[keytalk.service]]
name = "CHAL2"
challenge = { name = "Password challenge", prompt = "Other code?", response_hash = "HASH" }

[[keytalk.service]]
name = "CHAL"
challenge = { name = "Password challenge", prompt = "One-time code?", response_hash = "HASH" }
"#;

/// A KeyTalk server in a temporary directory.
pub struct KeyTalkServer {
    pub dir: tempfile::TempDir,
    pub server: ServerProcess,
    pub target: Target,
    /// A second TLS listener serving the same (as 443 and 4443 do).
    pub rcdp2: std::net::SocketAddr,
    /// The configuration without its ports (see [`KeyTalkServer::launch`]).
    template: Template,
}

/// What [`KeyTalkServer::start_with`] adds to the configuration.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    /// Lines of `[keytalk]` (e.g. `max_failures = 3`).
    pub policy: String,
    /// Lines at the head of the file, before `[keytalk]` (top-level keys
    /// and tables such as `[login]`).
    pub top: String,
    /// A PostgreSQL store (shared with other processes): `[store] url` at
    /// the head of the file, and `--store-url` for every admin command
    /// run through [`KeyTalkServer::add_user`] and [`KeyTalkServer::admin`].
    pub store_url: Option<String>,
    /// Protocols the main listener serves besides `keytalk` (e.g.
    /// `key-agreement`).
    pub also_serve: Vec<String>,
}

/// A configuration with `{main}`, `{rcdp}`, `{rcdp2}` and `{plain}` still
/// to fill in, and the admin commands' store.
#[derive(Clone, Debug)]
struct Template {
    config: String,
    store_url: Option<String>,
}

/// One `keypipe serve` process of a [`KeyTalkServer`]'s site (see
/// [`KeyTalkServer::start_another`]).
pub struct KeyTalkProcess {
    pub server: ServerProcess,
    pub target: Target,
}

/// `keypipe {args}` (the command first) with `input` on standard input,
/// which must succeed; its output as JSON, or as a JSON string when it is
/// not JSON (a hash).
pub fn admin_with_input(dir: &std::path::Path, args: &[&str], input: &str) -> Value {
    let out = super::admin_run(args[0], dir, &args[1..], Some(input));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(text.trim()).unwrap_or(Value::String(text.trim().to_owned()))
}

impl KeyTalkServer {
    /// Starts a server with `policy` lines in `[keytalk]` (e.g.
    /// `max_failures = 3`).
    pub fn start(policy: &str) -> KeyTalkServer {
        KeyTalkServer::start_with(Setup {
            policy: policy.to_owned(),
            ..Setup::default()
        })
    }

    /// Starts a server configured with `setup`.
    pub fn start_with(setup: Setup) -> KeyTalkServer {
        let dir = tempfile::tempdir().unwrap();
        // The challenge's answer is "123456".
        let hash = admin_with_input(dir.path(), &["keytalk", "hash"], "123456\n");
        let services = SERVICES.replace("HASH", hash.as_str().unwrap());
        let store = setup
            .store_url
            .as_ref()
            .map_or(String::new(), |u| format!("[store]\nurl = \"{u}\"\n"));
        let serve: Vec<String> = std::iter::once("keytalk".to_owned())
            .chain(setup.also_serve.iter().cloned())
            .map(|p| format!("{p:?}"))
            .collect();
        let config = format!(
            r#"{store}{top}
[keytalk]
{policy}
{services}

[[node]]
name = "kt"
listen = "127.0.0.1:{{main}}"
workers = 1
serve = [{serve}]
[node.keytalk]
listen = ["127.0.0.1:{{rcdp}}", "127.0.0.1:{{rcdp2}}"]
ca_listen = "127.0.0.1:{{plain}}"
"#,
            top = setup.top,
            policy = setup.policy,
            serve = serve.join(", "),
        );
        let template = Template {
            config,
            store_url: setup.store_url,
        };
        let (process, rcdp2) = KeyTalkServer::launch(dir.path(), &template);
        KeyTalkServer {
            dir,
            server: process.server,
            target: process.target,
            rcdp2,
            template,
        }
    }

    /// Starts one more process on this server's directory (so on its KEK)
    /// with its configuration (so on its store, when it names a shared
    /// one) on ports of its own. Start processes one after the other.
    pub fn start_another(&self) -> KeyTalkProcess {
        KeyTalkServer::launch(self.dir.path(), &self.template).0
    }

    /// Starts `template` in `dir` on new ports, waits until its KeyTalk
    /// listeners answer, and trusts its Primary CA (`dir/primary.pem`):
    /// the process and its second RCDP listener.
    fn launch(
        dir: &std::path::Path,
        template: &Template,
    ) -> (KeyTalkProcess, std::net::SocketAddr) {
        let (main, rcdp, plain, rcdp2) = (
            HeldPort::new(),
            HeldPort::new(),
            HeldPort::new(),
            HeldPort::new(),
        );
        let config = template
            .config
            .replace("{main}", &main.port().to_string())
            .replace("{rcdp}", &rcdp.port().to_string())
            .replace("{rcdp2}", &rcdp2.port().to_string())
            .replace("{plain}", &plain.port().to_string());
        let ports = (main.port(), rcdp.port(), plain.port(), rcdp2.port());
        drop((main, rcdp, plain, rcdp2));
        let server = ServerProcess::start(dir, ports.0, &config);
        let target = Target {
            rcdp: format!("127.0.0.1:{}", ports.1).parse().unwrap(),
            host: "localhost".into(),
            ca_pem: dir.join("primary.pem"),
            plain: format!("127.0.0.1:{}", ports.2).parse().unwrap(),
        };
        // The KeyTalk listeners start after the node's own.
        super::tls::wait_listening(target.plain);
        // Trust what the plain CA listener hands out (the Primary CA).
        let (status, _, body) = super::keytalk_clients::fetch_plain(&target, "/ca/1.0.0/primary");
        assert_eq!(status, 200);
        std::fs::write(&target.ca_pem, body).unwrap();
        super::tls::wait_listening(target.rcdp);
        let rcdp2 = format!("127.0.0.1:{}", ports.3).parse().unwrap();
        (KeyTalkProcess { server, target }, rcdp2)
    }

    /// `args` (the command first) with `--store-url` after the command
    /// when the server's store is a shared one.
    fn admin_args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = vec![args[0]];
        if let Some(url) = &self.template.store_url {
            all.extend(["--store-url", url.as_str()]);
        }
        all.extend_from_slice(&args[1..]);
        all
    }

    /// Adds a KeyTalk user with `password`, member of `services`.
    pub fn add_user(&self, name: &str, password: &str, services: &[&str]) {
        let mut args = vec!["user", "add", "--domain", "keytalk", "--name", name];
        for s in services {
            args.extend(["--service", s]);
        }
        admin_with_input(
            self.dir.path(),
            &self.admin_args(&args),
            &format!("{password}\n"),
        );
    }

    /// Runs an admin command on the server's store: its JSON lines.
    pub fn admin(&self, args: &[&str]) -> Vec<Value> {
        let args = self.admin_args(args);
        let out = super::admin_run(args[0], self.dir.path(), &args[1..], None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// A path in the server's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}
