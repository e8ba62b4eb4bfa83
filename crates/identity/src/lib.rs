//! `axle-identity`: single sign-on for Axle.
//!
//! An OpenID Connect provider — discovery, JWKS with key rotation, authorization code with
//! PKCE, client credentials, refresh-token rotation with reuse detection, revocation,
//! introspection, userinfo, RP-initiated logout — and the users, organisations, roles and
//! OAuth clients it signs in. Its issuer is served through the gateway
//! (`/api/identity`), its sign-in pages stand in the web shell (`axle-web`).
//!
//! Rooms: [`api`] (HTTP: OIDC endpoints, pages, account, admin) → [`provider`] (the
//! provider's operations) → [`domain`] (rules, no I/O) and [`keys`] (signing keys), over
//! [`store`] (SQL, with the audit trail and the outbox event of each change).

pub mod api;
pub mod domain;
pub mod keys;
pub mod provider;
pub mod store;

#[cfg(feature = "testing")]
pub mod testing;

use std::sync::Arc;
use std::time::Duration;

use axle_core::db::Migrations;
use axle_core::events::Outbox;
use axle_core::platform::{Platform, Service, ServiceParts, StartError};
use prometheus::Registry;
use secrecy::ExposeSecret;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

use crate::domain::Role;
use crate::provider::{Provider, Settings};
use crate::store::{Change, IdentityStore};

pub const NAME: &str = "identity";

/// The environment variable that sets the first administrator's password.
pub const ADMIN_PASSWORD_ENV: &str = "AXLE_ADMIN_PASSWORD";

pub fn migrations() -> Migrations {
    Migrations {
        sqlite: sqlx::migrate!("./migrations/sqlite"),
        postgres: sqlx::migrate!("./migrations/postgres"),
    }
}

/// Builds the identity service: opens its database, loads (or makes) its signing keys,
/// bootstraps the first administrator, and starts key rotation and clean-up.
pub async fn build(platform: &Platform) -> Result<Service, StartError> {
    let fail = |message: String| StartError::Service {
        service: NAME,
        message,
    };
    let config = &platform.config;
    let id = &config.services.identity;
    let db = platform.open_db(NAME, &migrations()).await?;
    let registry = Registry::new();
    let outbox = Outbox::new(db.clone(), &registry)?;
    let issuer = config.issuer();
    let public_path = url::Url::parse(&issuer)
        .map_err(|e| fail(format!("issuer {issuer:?}: {e}")))?
        .path()
        .trim_end_matches('/')
        .to_string();
    let secs = |s: u64| chrono::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1000));
    let provider = Provider {
        store: IdentityStore::new(db.clone()),
        keys: Arc::default(),
        settings: Arc::new(Settings {
            secure_issuer: issuer.starts_with("https://"),
            issuer,
            audience: id.audience.clone(),
            access_ttl: secs(id.access_token_ttl_secs),
            refresh_ttl: secs(id.refresh_token_ttl_secs),
            session_ttl: secs(id.session_ttl_secs),
            code_ttl: chrono::Duration::seconds(60),
            key_rotation: chrono::Duration::days(
                i64::try_from(id.key_rotation_days).unwrap_or(36500),
            ),
        }),
    };
    provider
        .load_keys()
        .await
        .map_err(|e| fail(format!("signing keys: {e}")))?;
    let csrf_key = provider
        .store
        .own_secret("csrf", provider::random_secret)
        .await
        .map_err(|e| fail(format!("csrf key: {e}")))?;
    let admin_password = id
        .admin_password
        .as_ref()
        .map(|p| p.expose_secret().to_string());
    bootstrap(&provider, admin_password)
        .await
        .map_err(|e| fail(format!("first administrator: {e}")))?;
    ensure_service_clients(&provider, config)
        .await
        .map_err(|e| fail(format!("Axle's own clients: {e}")))?;

    let api = api::router(api::AppState {
        secure_cookies: provider.settings.secure_issuer,
        provider: provider.clone(),
        outbox: outbox.clone(),
        csrf: axle_web::csrf::CsrfKey::new(csrf_key.as_bytes()),
        public_path,
    });
    let mut service = platform.assemble(ServiceParts {
        name: NAME,
        db,
        outbox: Some(outbox),
        registry,
        api,
        openapi: serde_json::to_value(api::ApiDoc::openapi()).unwrap_or_default(),
    })?;
    service.tasks.push(spawn_upkeep(
        provider,
        id.key_rotation_days > 0,
        platform.shutdown.clone(),
    ));
    Ok(service)
}

/// The client Axle's own pages sign in with (the web shell): public, with PKCE, first-party
/// (users are not asked to consent), returning to `<site>/auth/callback`.
pub const WEB_CLIENT: &str = "axle-web";

/// The client the `axle` command line signs in as (client credentials, roles platform-admin
/// and operator), its secret kept in the data directory for `axle token` to read.
pub const CLI_CLIENT: &str = "axle-cli";

/// Where the command line's client secret is kept, under the data directory.
pub fn cli_secret_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join(NAME).join("cli_secret")
}

/// A confidential client Axle registers for itself on first start (client credentials only),
/// its secret written to a file for the process that calls as it.
struct ServiceClient<'a> {
    id: &'a str,
    name: &'a str,
    roles: Vec<Role>,
    secret_path: std::path::PathBuf,
}

/// Registers [`CLI_CLIENT`] (platform-admin, operator) and the saga orchestrator's client
/// (operator, finance: it settles lots across vehicle, order and finance) when missing.
async fn ensure_service_clients(
    provider: &Provider,
    config: &axle_core::config::Config,
) -> Result<(), String> {
    for client in [
        ServiceClient {
            id: CLI_CLIENT,
            name: "Axle command line",
            roles: vec![Role::PlatformAdmin, Role::Operator],
            secret_path: cli_secret_path(&config.data_dir),
        },
        ServiceClient {
            id: axle_core::config::SAGA_CLIENT,
            name: "Axle saga orchestrator",
            roles: vec![Role::Operator, Role::Finance],
            secret_path: config.saga_secret_path(),
        },
    ] {
        ensure_client(provider, client).await?;
    }
    Ok(())
}

async fn ensure_client(provider: &Provider, client: ServiceClient<'_>) -> Result<(), String> {
    let store = &provider.store;
    if store
        .client(client.id)
        .await
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Ok(());
    }
    let new = api::NewClient {
        id: client.id.into(),
        name: client.name.into(),
        kind: domain::ClientKind::Confidential,
        redirect_uris: vec![],
        post_logout_redirect_uris: vec![],
        grants: vec![domain::Grant::ClientCredentials],
        scopes: vec![],
        roles: client.roles,
        org_id: None,
        first_party: true,
    };
    let (registered, secret) = api::build_client(new).map_err(|e| e.to_string())?;
    let secret = secret.ok_or("a confidential client has a secret")?;
    let path = client.secret_path;
    if let Some(dir) = path.parent() {
        axle_core::files::private_dir(dir).map_err(|e| e.to_string())?;
    }
    axle_core::files::write_private(&path, secret.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let change = Change {
        actor: "identity",
        action: "client_created",
        target: format!("client:{}", client.id),
        version: 1,
        detail: serde_json::json!({ "bootstrap": true }),
        notice: None,
    };
    let hash = store::digest(&secret);
    match store.create_client(&registered, Some(&hash), &change).await {
        Ok(()) | Err(store::StoreError::Exists(_)) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Registers [`WEB_CLIENT`] if it is missing.
async fn ensure_web_client(provider: &Provider) -> Result<(), String> {
    let store = &provider.store;
    if store
        .client(WEB_CLIENT)
        .await
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Ok(());
    }
    let site = url::Url::parse(&provider.settings.issuer)
        .map(|u| u.origin().ascii_serialization())
        .map_err(|e| e.to_string())?;
    let new = api::NewClient {
        id: WEB_CLIENT.into(),
        name: "Axle".into(),
        kind: domain::ClientKind::Public,
        redirect_uris: vec![format!("{site}/auth/callback")],
        post_logout_redirect_uris: vec![format!("{site}/")],
        grants: vec![
            domain::Grant::AuthorizationCode,
            domain::Grant::RefreshToken,
        ],
        scopes: ["openid", "profile", "email", "offline_access"]
            .map(String::from)
            .to_vec(),
        roles: vec![],
        org_id: None,
        first_party: true,
    };
    let (client, _) = api::build_client(new).map_err(|e| e.to_string())?;
    let change = Change {
        actor: "identity",
        action: "client_created",
        target: format!("client:{WEB_CLIENT}"),
        version: 1,
        detail: serde_json::json!({ "bootstrap": true }),
        notice: None,
    };
    match store.create_client(&client, None, &change).await {
        Ok(()) | Err(store::StoreError::Exists(_)) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// On a first start (no users yet): the administrator `admin` with the configured password,
/// or `AXLE_ADMIN_PASSWORD`, or a generated one printed once.
async fn bootstrap(provider: &Provider, configured: Option<String>) -> Result<(), String> {
    ensure_web_client(provider).await?;
    let store = &provider.store;
    if store.count_users().await.map_err(|e| e.to_string())? > 0 {
        return Ok(());
    }
    let from_env = std::env::var(ADMIN_PASSWORD_ENV)
        .ok()
        .filter(|p| !p.is_empty());
    let (password, generated) = match configured.or(from_env) {
        Some(p) => (p, false),
        None => (provider::random_secret(), true),
    };
    domain::password::check_new(&password, "admin")
        .map_err(|e| format!("{ADMIN_PASSWORD_ENV}: {e}"))?;
    let hash = domain::password::hash(&password).map_err(|e| e.to_string())?;
    let at = axle_core::time::now();
    let admin = domain::User {
        id: axle_core::id::new_id(),
        username: "admin".into(),
        email: None,
        display_name: "Administrator".into(),
        org_id: None,
        roles: vec![Role::PlatformAdmin, Role::Operator],
        status: domain::Status::Active,
        locked_until: None,
        version: 1,
        created_at: at,
        updated_at: at,
    };
    let change = Change {
        actor: "identity",
        action: "user_created",
        target: format!("user:{}", admin.id),
        version: 1,
        detail: serde_json::json!({ "username": "admin", "roles": admin.roles, "bootstrap": true }),
        notice: None,
    };
    store
        .create_user(&admin, &hash, &change)
        .await
        .map_err(|e| e.to_string())?;
    if generated {
        println!(
            "identity: created the administrator \"admin\" with the password {password} (shown \
             once; set {ADMIN_PASSWORD_ENV} or services.identity.admin_password to choose one)"
        );
    }
    Ok(())
}

/// Hourly: rotate the signing key when it is due, forget expired codes, tokens and sessions.
fn spawn_upkeep(provider: Provider, rotate: bool, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if rotate && let Err(e) = provider.rotate_if_due().await {
                        tracing::warn!(error = %e, "could not rotate the signing key");
                    }
                    if let Err(e) = provider.store.purge_expired().await {
                        tracing::warn!(error = %e, "could not purge expired grants");
                    }
                }
                _ = shutdown.cancelled() => return,
            }
        }
    })
}
