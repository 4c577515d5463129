//! `keypipe keytalk …`: registered devices (list, reset), the RCCD a
//! KeyTalk client is configured with, and hashing a challenge answer.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;
use keypipe_server::kms::ca::Ca;
use keypipe_server::store::{KeyTalkStore, Store};
use serde_json::json;

/// The `keytalk` subcommands.
#[derive(Subcommand)]
pub enum KeyTalkCommand {
    /// List registered devices (hardware signatures), one JSON object per
    /// line; with --reset, forget a user's (its next login registers anew).
    Devices {
        /// Forget the devices of --name (of --service only, if given).
        #[arg(long, requires = "name")]
        reset: bool,
        /// The user (with --reset).
        #[arg(long)]
        name: Option<String>,
        /// The service (with --reset).
        #[arg(long)]
        service: Option<String>,
        /// The KeyTalk user domain.
        #[arg(long, default_value = "keytalk")]
        domain: String,
    },
    /// Write an RCCD (the zip a KeyTalk client imports): content/PCA.der,
    /// UCA.der, SCA.der, commcacert.der, user.ini, user.yaml, index.yaml.
    Rccd {
        /// The service the client enrols for.
        #[arg(long)]
        service: String,
        /// The server as clients reach it (host, or host:port).
        #[arg(long)]
        server: String,
        /// The provider's name shown by clients.
        #[arg(long, default_value = "keypipe")]
        provider: String,
        /// Package format the client asks for: P12 or PEM.
        #[arg(long, default_value = "P12")]
        format: String,
        /// Ask for the whole chain.
        #[arg(long)]
        chain: bool,
        /// The file to write (.rccd).
        #[arg(long)]
        out: PathBuf,
    },
    /// Hash a secret read from standard input (Argon2id PHC string, for
    /// a service's `challenge.response_hash`).
    Hash,
}

/// Runs one `keytalk` command; the text to print.
pub fn run(store: Store, command: KeyTalkCommand) -> Result<String, String> {
    Ok(match command {
        KeyTalkCommand::Devices {
            reset: true,
            name: Some(name),
            service,
            domain,
        } => {
            let n = store
                .reset_devices(&domain, &name, service.as_deref())
                .map_err(|e| e.to_string())?;
            json!({"domain": domain, "name": name, "service": service, "reset": n}).to_string()
        }
        KeyTalkCommand::Devices { .. } => store
            .devices()
            .map_err(|e| e.to_string())?
            .iter()
            .map(|d| {
                json!({"domain": d.domain, "name": d.name, "service": d.service,
                       "hwsig": d.hwsig, "registered_ms": d.registered_ms})
                .to_string()
            })
            .collect::<Vec<_>>()
            .join("\n"),
        KeyTalkCommand::Rccd {
            service,
            server,
            provider,
            format,
            chain,
            out,
        } => {
            let format = format.to_ascii_uppercase();
            if format != "P12" && format != "PEM" {
                return Err("--format: P12 or PEM".into());
            }
            // The values go into quoted strings of user.ini and user.yaml.
            let bad = |v: &str| {
                v.is_empty()
                    || v.len() > 256
                    || v.chars().any(|c| c.is_control() || c == '"' || c == '\\')
            };
            if bad(&service) || bad(&server) || bad(&provider) {
                return Err(
                    "--service, --server and --provider: 1 to 256 printable characters, no quotes"
                        .into(),
                );
            }
            let ca = Ca::new(&store).load().map_err(|e| e.to_string())?;
            let user_ini = format!(
                "ConfigVersion = \"2.0\";\nLatestProvider = \"{provider}\";\nLatestService = \"{service}\";\n\
                 Providers = (\n  {{\n    Name = \"{provider}\";\n    ContentVersion = 1;\n    Server = \"{server}\";\n    \
                 LogLevel = \"INFO\";\n    CAs = (\"PCA\", \"UCA\", \"SCA\");\n    Services = (\n      {{\n        \
                 Name = \"{service}\";\n        DisplayName = \"{service}\";\n        CleanupUserCert = true;\n        \
                 CertValidPercent = 10;\n        Uri = \"\";\n        CertFormat = \"{format}\";\n        \
                 CertChain = {chain};\n        Users = ();\n      }}\n    );\n  }}\n);\n"
            );
            let user_yaml = format!(
                "ConfigVersion: \"2.0\"\nLatestProvider: \"{provider}\"\nLatestService: \"{service}\"\n\
                 Providers:\n  - Name: \"{provider}\"\n    ContentVersion: 1\n    Server: \"{server}\"\n    \
                 LogLevel: INFO\n    CAs: [PCA, UCA, SCA]\n    Services:\n      - Name: \"{service}\"\n        \
                 DisplayName: \"{service}\"\n        CleanupUserCert: true\n        CertValidPercent: 10\n        \
                 Uri: \"\"\n        CertFormat: {format}\n        CertChain: {chain}\n        Users: []\n"
            );
            let index_yaml = format!(
                "ConfigVersion: 2\nContentVersion: 1\nProviderName: \"{provider}\"\n\
                 UserConfig: content/user.yaml\nPCA: content/PCA.der\nUCA: content/UCA.der\n\
                 SCA: content/SCA.der\nExtraSigningCAs: []\n"
            );
            let files: [(&str, &[u8]); 7] = [
                ("content/PCA.der", ca.primary_der()),
                ("content/UCA.der", ca.signing_der()),
                ("content/SCA.der", ca.server_der()),
                ("content/commcacert.der", ca.server_der()),
                ("content/user.ini", user_ini.as_bytes()),
                ("content/user.yaml", user_yaml.as_bytes()),
                ("index.yaml", index_yaml.as_bytes()),
            ];
            let file =
                std::fs::File::create(&out).map_err(|e| format!("{}: {e}", out.display()))?;
            let mut zip = zip::ZipWriter::new(file);
            let options = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored);
            for (name, bytes) in files {
                zip.start_file(name, options).map_err(|e| e.to_string())?;
                zip.write_all(bytes).map_err(|e| e.to_string())?;
            }
            zip.finish().map_err(|e| e.to_string())?;
            json!({"rccd": out, "service": service, "server": server}).to_string()
        }
        KeyTalkCommand::Hash => crate::user_cli::hash_stdin()?,
    })
}
