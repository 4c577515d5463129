//! The services the store backs, built once at start for every listener:
//! NCP keys, key agreement and login, the Donau, KeyTalk (with its
//! listeners' certificates) and ETSI 014 (its listeners' certificates).

use std::sync::Arc;

use keypipe_server::api::{AgreementApi, KeyTalkApi};
use keypipe_server::config::{Config, Protocol};
use keypipe_server::kms::agreement::AgreementService;
use keypipe_server::kms::donau::Donau;
use keypipe_server::kms::keys::StoreKeys;
use keypipe_server::kms::keytalk::KeyTalk;
use keypipe_server::kms::login::LoginService;
use keypipe_server::kms::replay::ReplayCache;
use keypipe_server::node::Services;
use keypipe_server::store::{EphemeralStore, Store};
use keypipe_server::tls::Revoked;

/// The services of the protocols `config` serves, over `store` (none
/// without one); every listener checks client certificates against
/// `revoked`.
pub fn start(
    config: &mut Config,
    store: Option<Arc<Store>>,
    revoked: Arc<Revoked>,
) -> Result<Services, String> {
    let Some(store) = store else {
        return Ok(Services {
            revoked,
            ..Services::default()
        });
    };
    let keys = StoreKeys::new(Arc::clone(&store) as _).map_err(|e| e.to_string())?;
    // Shared with the site's other processes (PostgreSQL): the
    // references, throttles and KeyTalk sessions live in the store.
    let shared = store
        .is_shared()
        .then(|| Arc::clone(&store) as Arc<dyn EphemeralStore>);
    let agreement = config.serves(Protocol::KeyAgreement).then(|| {
        let (service, login) = (
            config.key_agreement.service_config(),
            config.login.service_config(),
        );
        let (agreement, login) = match &shared {
            Some(shared) => {
                let agreement = Arc::new(AgreementService::with_store(service, Arc::clone(shared)));
                let login = LoginService::with_store(
                    Arc::clone(&store) as _,
                    Arc::clone(&agreement),
                    login,
                    Arc::clone(shared),
                );
                (agreement, login)
            }
            None => {
                let agreement = Arc::new(AgreementService::new(service));
                let login =
                    LoginService::new(Arc::clone(&store) as _, Arc::clone(&agreement), login);
                (agreement, login)
            }
        };
        AgreementApi::new(agreement, Arc::new(login), config.key_agreement.max_queued)
    });
    let donau = match (&config.donau, config.serves(Protocol::Donau)) {
        (Some(settings), true) => {
            let donau = Donau::open(Arc::clone(&store) as _, settings.service_config())
                .map_err(|e| format!("donau: {e}"))?;
            let donau = Arc::new(donau);
            // Picks up CLI changes (mark-lost); ends with the Donau.
            keypipe_server::kms::donau::watch(&donau).map_err(|e| format!("donau: {e}"))?;
            Some((donau, settings.base_path.get_ref().clone()))
        }
        _ => None,
    };
    let keytalk = if config.serves(Protocol::KeyTalk) {
        Some(start_keytalk(config, &store, shared.clone())?)
    } else {
        None
    };
    if config.serves(Protocol::Etsi014) {
        prepare_etsi014(config, &store)?;
    }
    Ok(Services {
        keys: Some(Arc::new(keys)),
        agreement,
        donau,
        keytalk,
        etsi014: config.etsi014.clone(),
        revoked,
        ncp_replay: Arc::new(ReplayCache::new(config.ncp.replay_cache_entries)),
    })
}

/// ETSI 014: the CA (created on first start), and each 014 listener's
/// certificate when the configuration names none, with keypipe's CA
/// bundle as the client CA (SAE certificates are issued by it).
fn prepare_etsi014(config: &mut Config, store: &Arc<Store>) -> Result<(), String> {
    use keypipe_server::kms::ca::{Ca, KeyType};
    use keypipe_server::listener_cert::{ca_bundle_file, server_files};
    if Ca::new(store.as_ref())
        .init("keypipe")
        .map_err(|e| format!("etsi014: CA: {e}"))?
    {
        tracing::info!("etsi014: keypipe's CA created (Primary, Signing and Server CA)");
    }
    let data_dir = config.data_dir.clone();
    for node in config.nodes.iter_mut() {
        let name = node.name.clone();
        if let Some(listener) = node.etsi014.as_mut()
            && listener.tls.is_none()
        {
            let mut files = server_files(
                store,
                &data_dir,
                "etsi014",
                &name,
                &[listener.listen],
                &listener.names,
                KeyType::P256,
            )?;
            files.client_ca = Some(ca_bundle_file(store, &data_dir, "etsi014")?);
            files.client_auth = keypipe_server::tls::ClientAuth::Required;
            listener.tls = Some(files);
        }
    }
    Ok(())
}

/// KeyTalk: the CA (created on first start), the listener's certificate
/// when the configuration names none, and the service.
fn start_keytalk(
    config: &mut Config,
    store: &Arc<Store>,
    shared: Option<Arc<dyn EphemeralStore>>,
) -> Result<KeyTalkApi, String> {
    use keypipe_server::kms::ca::Ca;
    let ca = Ca::new(store.as_ref());
    if ca
        .init("keypipe")
        .map_err(|e| format!("keytalk: CA: {e}"))?
    {
        tracing::info!("keytalk: keypipe's CA created (Primary, Signing and Server CA)");
    }
    let data_dir = config.data_dir.clone();
    let mut ports = Vec::new();
    for node in config.nodes.iter_mut() {
        let name = node.name.clone();
        if let Some(kt) = node.keytalk.as_mut() {
            if kt.tls.is_none() {
                kt.tls = Some(keypipe_server::listener_cert::server_files(
                    store,
                    &data_dir,
                    "keytalk",
                    &name,
                    &kt.listen.all(),
                    &kt.names,
                    keypipe_server::kms::ca::KeyType::P384,
                )?);
            }
            ports.push(kt.ca_listen.port());
        }
    }
    let [port] = ports[..] else {
        return Err("keytalk: serve it on one node only".into());
    };
    let settings = config
        .keytalk
        .service_config(format!("http://$(KEYTALK_SVR_HOST):{port}/cert/?"))?;
    let loaded = ca.load().map_err(|e| format!("keytalk: CA: {e}"))?;
    let service = KeyTalk::with_shared(settings, Arc::clone(store) as _, loaded, shared);
    Ok(KeyTalkApi::new(
        Arc::new(service),
        config.keytalk.max_queued,
    ))
}
