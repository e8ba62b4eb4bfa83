//! The OpenID Connect provider's operations — signing in, issuing codes and tokens, refreshing,
//! revoking, introspecting — on top of the [`store`](crate::store) and the [`keys`](crate::keys).
//! The HTTP handlers in [`api`](crate::api) only translate to and from these.

use std::sync::Arc;

use axle_core::time::now;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::oauth::{self, Authorization, OAuthError};
use crate::domain::{Client, ClientKind, Grant, Role, Status, User, password};
use crate::keys::{self, KeyError, KeyRing};
use crate::store::{
    Account, Change, CodeGrant, IdentityStore, Redeemed, RefreshGrant, Session, StoreError, digest,
};

/// How the provider is set up (from `[services.identity]`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The issuer URL, as clients reach it (through the gateway).
    pub issuer: String,
    /// Whether the issuer is https (cookies are then `Secure`).
    pub secure_issuer: bool,
    /// The `aud` of access tokens: the APIs they are for.
    pub audience: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub session_ttl: Duration,
    pub code_ttl: Duration,
    /// How long a signing key signs before a scheduled rotation.
    pub key_rotation: Duration,
}

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccessClaims {
    pub iss: String,
    /// The user's id, or the client's for client credentials.
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    pub scope: String,
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<Uuid>,
    #[serde(default)]
    pub roles: Vec<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
    /// The sign-on session it was issued in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<Uuid>,
}

impl AccessClaims {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// A token response (RFC 6749 §5.1, OIDC Core §3.1.3.3).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    pub scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}

/// A token request's form fields (RFC 6749 §4.1.3, §4.4.2, §6).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct TokenRequest {
    pub grant_type: Option<String>,
    pub code: Option<String>,
    pub redirect_uri: Option<String>,
    pub code_verifier: Option<String>,
    pub refresh_token: Option<String>,
    pub scope: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
}

/// Why the token endpoint refuses, and how it answers.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// 400 (or 401 for `invalid_client`) with the OAuth error body.
    #[error(transparent)]
    OAuth(#[from] OAuthError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Why signing in failed.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// Unknown user or wrong password (not told apart, so names cannot be probed).
    #[error("wrong username or password")]
    Wrong,
    #[error("too many failed attempts; try again in {0} seconds")]
    Locked(i64),
    #[error("this account is suspended")]
    Suspended,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone)]
pub struct Provider {
    pub store: IdentityStore,
    pub keys: Arc<KeyRing>,
    pub settings: Arc<Settings>,
}

/// A random secret: 32 bytes, base64url.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn oauth(code: &'static str, text: impl Into<String>) -> TokenError {
    TokenError::OAuth(OAuthError::new(code, text))
}

impl Provider {
    /// Loads the signing keys, making the first one if there is none.
    pub async fn load_keys(&self) -> Result<(), StoreError> {
        let mut stored = self.store.keys().await?;
        if stored.iter().all(|k| k.retired_at.is_some()) {
            self.rotate_keys("identity").await?;
            stored = self.store.keys().await?;
        }
        self.keys.replace(stored);
        Ok(())
    }

    /// Makes a new signing key the active one; the old one stays published until every token
    /// it signed has expired.
    pub async fn rotate_keys(&self, actor: &str) -> Result<String, StoreError> {
        let key = tokio::task::spawn_blocking(keys::generate)
            .await
            .map_err(|e| StoreError::Corrupt(e.to_string()))??;
        let retires_at = keys::retirement(now(), self.settings.access_ttl);
        let change = Change {
            actor,
            action: "signing_key_rotated",
            target: format!("key:{}", key.kid),
            version: 1,
            detail: serde_json::json!({ "kid": key.kid }),
            notice: None,
        };
        self.store.rotate_keys(&key, retires_at, &change).await?;
        self.keys.replace(self.store.keys().await?);
        tracing::info!(kid = %key.kid, "signing key rotated");
        Ok(key.kid)
    }

    /// Rotates when the active key is older than the rotation period.
    pub async fn rotate_if_due(&self) -> Result<(), StoreError> {
        // Another instance may have rotated: read the keys first.
        self.keys.replace(self.store.keys().await?);
        match self.keys.active_since() {
            Some(since) if now() - since < self.settings.key_rotation => Ok(()),
            _ => self.rotate_keys("schedule").await.map(|_| ()),
        }
    }

    /// Checks a user's password, counting failures and honouring the lock.
    pub async fn sign_in(&self, username: &str, password: &str) -> Result<Account, SignInError> {
        let username = username.trim().to_lowercase();
        let Some(account) = self.store.user_by_name(&username).await? else {
            // Spend the time a real check would, so timing does not tell names apart.
            let _ = password::verify(password, DUMMY_HASH);
            return Err(SignInError::Wrong);
        };
        let now = now();
        if let Some(until) = account.user.locked_until.filter(|u| *u > now) {
            return Err(SignInError::Locked((until - now).num_seconds().max(1)));
        }
        let hash = account.password_hash.clone();
        let pw = password.to_string();
        let matches = tokio::task::spawn_blocking(move || password::verify(&pw, &hash))
            .await
            .unwrap_or(false);
        if !matches {
            let id = account.user.id;
            let failures = self
                .store
                .sign_in_failed(id, |n| password::lock_after(n, now))
                .await?;
            tracing::info!(user = %id, failures, "sign-in failed");
            return Err(match password::lock_after(failures, now) {
                Some(until) => SignInError::Locked((until - now).num_seconds()),
                None => SignInError::Wrong,
            });
        }
        if account.user.status != Status::Active {
            return Err(SignInError::Suspended);
        }
        self.store.sign_in_succeeded(account.user.id).await?;
        Ok(account)
    }

    /// Starts a sign-on session for `user`: its cookie secret and the session.
    pub async fn start_session(
        &self,
        user: &User,
        user_agent: Option<&str>,
    ) -> Result<(String, Session), StoreError> {
        let at = now();
        let session = Session {
            id: axle_core::id::new_id(),
            user_id: user.id,
            user_agent: user_agent.map(|ua| ua.chars().take(200).collect()),
            created_at: at,
            last_seen_at: at,
            expires_at: at + self.settings.session_ttl,
        };
        let secret = random_secret();
        self.store.create_session(&secret, &session).await?;
        Ok((secret, session))
    }

    /// Issues an authorization code for an accepted request, signed-in user and session.
    pub async fn issue_code(
        &self,
        auth: &Authorization,
        session: &Session,
    ) -> Result<String, StoreError> {
        let code = random_secret();
        let grant = CodeGrant {
            client_id: auth.client_id.clone(),
            user_id: session.user_id,
            session_id: session.id,
            redirect_uri: auth.redirect_uri.clone(),
            scope: auth.scope.clone(),
            nonce: auth.nonce.clone(),
            code_challenge: auth.code_challenge.clone(),
            auth_time: session.created_at,
            expires_at: now() + self.settings.code_ttl,
        };
        self.store.insert_code(&code, &grant).await?;
        Ok(code)
    }

    /// Authenticates the client of a token, revocation or introspection request: a
    /// confidential client by its secret (`client_secret_basic` or `_post`), a public one by
    /// its id alone.
    pub async fn authenticate_client(
        &self,
        id: Option<&str>,
        secret: Option<&str>,
    ) -> Result<Client, TokenError> {
        let unknown = || oauth("invalid_client", "client authentication failed");
        let id = id.ok_or_else(unknown)?;
        let (client, hash) = self.store.client(id).await?.ok_or_else(unknown)?;
        if client.status != Status::Active {
            return Err(unknown());
        }
        match (client.kind, hash, secret) {
            (ClientKind::Public, _, None) => Ok(client),
            (ClientKind::Confidential, Some(hash), Some(secret))
                if constant_time_eq(digest(secret).as_bytes(), hash.as_bytes()) =>
            {
                Ok(client)
            }
            _ => Err(unknown()),
        }
    }

    /// The token endpoint.
    pub async fn token(
        &self,
        client: &Client,
        request: &TokenRequest,
    ) -> Result<TokenResponse, TokenError> {
        let allowed = |grant: Grant| {
            if client.grants.contains(&grant) {
                Ok(())
            } else {
                Err(oauth(
                    "unauthorized_client",
                    "this client may not use this grant type",
                ))
            }
        };
        match request.grant_type.as_deref() {
            Some("authorization_code") => {
                allowed(Grant::AuthorizationCode)?;
                self.redeem_code(client, request).await
            }
            Some("refresh_token") => {
                allowed(Grant::RefreshToken)?;
                self.refresh(client, request).await
            }
            Some("client_credentials") => {
                allowed(Grant::ClientCredentials)?;
                let scope = oauth::allowed_scope(request.scope.as_deref(), client)?;
                let claims = self.access_claims(
                    &client.id,
                    &client.id,
                    scope,
                    client.org_id,
                    client.roles.clone(),
                    None,
                    None,
                );
                Ok(self.respond(claims, None, None)?)
            }
            Some(_) => Err(oauth(
                "unsupported_grant_type",
                "grant_type is not supported",
            )),
            None => Err(oauth("invalid_request", "grant_type is missing")),
        }
    }

    async fn redeem_code(
        &self,
        client: &Client,
        request: &TokenRequest,
    ) -> Result<TokenResponse, TokenError> {
        let invalid = |text: &str| oauth("invalid_grant", text);
        let code = request
            .code
            .as_deref()
            .ok_or_else(|| oauth("invalid_request", "code is missing"))?;
        let grant = match self.store.redeem_code(code).await? {
            Redeemed::Fresh(grant) => grant,
            Redeemed::Reused => {
                tracing::warn!(client = %client.id, "an authorization code was presented twice; its tokens are revoked");
                return Err(invalid("the code was already used"));
            }
            Redeemed::Unknown => return Err(invalid("unknown code")),
        };
        if grant.client_id != client.id {
            return Err(invalid("the code was issued to another client"));
        }
        if grant.expires_at < now() {
            return Err(invalid("the code has expired"));
        }
        if request.redirect_uri.as_deref() != Some(grant.redirect_uri.as_str()) {
            return Err(invalid(
                "redirect_uri differs from the authorization request's",
            ));
        }
        match (&grant.code_challenge, request.code_verifier.as_deref()) {
            (Some(challenge), Some(verifier)) if oauth::pkce_matches(verifier, challenge) => {}
            (Some(_), _) => return Err(invalid("code_verifier does not match the code_challenge")),
            (None, Some(_)) => return Err(invalid("no code_challenge was sent for this code")),
            (None, None) => {}
        }
        let user = self.active_user(grant.user_id).await?;
        let family = crate::store::code_family(&digest(code));
        let refresh = RefreshGrant {
            family_id: family,
            client_id: client.id.clone(),
            user_id: user.id,
            session_id: Some(grant.session_id),
            scope: grant.scope.clone(),
            auth_time: grant.auth_time,
            expires_at: now() + self.settings.refresh_ttl,
        };
        self.user_tokens(client, &user, refresh, grant.nonce.as_deref())
            .await
    }

    async fn refresh(
        &self,
        client: &Client,
        request: &TokenRequest,
    ) -> Result<TokenResponse, TokenError> {
        let invalid = |text: &str| oauth("invalid_grant", text);
        let token = request
            .refresh_token
            .as_deref()
            .ok_or_else(|| oauth("invalid_request", "refresh_token is missing"))?;
        let grant = match self.store.use_refresh(token).await? {
            Redeemed::Fresh(grant) => grant,
            Redeemed::Reused => {
                tracing::warn!(client = %client.id, "a refresh token was presented again; its family is revoked");
                return Err(invalid("the refresh token was already used or revoked"));
            }
            Redeemed::Unknown => return Err(invalid("unknown refresh token")),
        };
        if grant.client_id != client.id {
            return Err(invalid("the refresh token was issued to another client"));
        }
        if grant.expires_at < now() {
            return Err(invalid("the refresh token has expired"));
        }
        if let Some(session) = grant.session_id
            && !self.store.session_live(session).await?
        {
            return Err(invalid("the session it was issued in has ended"));
        }
        let user = self.active_user(grant.user_id).await?;
        let scope = oauth::narrow_scope(&grant.scope, request.scope.as_deref())?;
        let next = RefreshGrant {
            scope,
            expires_at: now() + self.settings.refresh_ttl,
            ..grant
        };
        self.user_tokens(client, &user, next, None).await
    }

    async fn active_user(&self, id: Uuid) -> Result<User, TokenError> {
        match self.store.user(id).await? {
            Some(account) if account.user.status == Status::Active => Ok(account.user),
            _ => Err(oauth("invalid_grant", "the user is suspended or gone")),
        }
    }

    /// Access token, ID token (scope `openid`) and the next refresh token (when the client may
    /// refresh) for `user`.
    async fn user_tokens(
        &self,
        client: &Client,
        user: &User,
        refresh: RefreshGrant,
        nonce: Option<&str>,
    ) -> Result<TokenResponse, TokenError> {
        let claims = self.access_claims(
            &user.id.to_string(),
            &client.id,
            refresh.scope.clone(),
            user.org_id,
            user.roles.clone(),
            Some(user.username.clone()),
            refresh.session_id,
        );
        let id_token = if oauth::has_scope(&refresh.scope, "openid") {
            Some(self.id_token(client, user, &refresh, nonce)?)
        } else {
            None
        };
        let refresh_token = if client.grants.contains(&Grant::RefreshToken) {
            let token = random_secret();
            self.store.insert_refresh(&token, &refresh).await?;
            Some(token)
        } else {
            None
        };
        Ok(self.respond(claims, refresh_token, id_token)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn access_claims(
        &self,
        sub: &str,
        client_id: &str,
        scope: String,
        org: Option<Uuid>,
        roles: Vec<Role>,
        username: Option<String>,
        sid: Option<Uuid>,
    ) -> AccessClaims {
        let iat = now().timestamp();
        AccessClaims {
            iss: self.settings.issuer.clone(),
            sub: sub.to_string(),
            aud: self.settings.audience.clone(),
            exp: iat + self.settings.access_ttl.num_seconds(),
            iat,
            jti: axle_core::id::new_id().to_string(),
            scope,
            client_id: client_id.to_string(),
            org,
            roles,
            preferred_username: username,
            sid,
        }
    }

    fn respond(
        &self,
        claims: AccessClaims,
        refresh_token: Option<String>,
        id_token: Option<String>,
    ) -> Result<TokenResponse, KeyError> {
        Ok(TokenResponse {
            access_token: self.keys.sign(&claims)?,
            token_type: "Bearer",
            expires_in: claims.exp - claims.iat,
            scope: claims.scope,
            refresh_token,
            id_token,
        })
    }

    /// An ID token (OIDC Core §2) with the claims the granted scopes allow.
    fn id_token(
        &self,
        client: &Client,
        user: &User,
        grant: &RefreshGrant,
        nonce: Option<&str>,
    ) -> Result<String, KeyError> {
        let iat = now().timestamp();
        let mut claims = serde_json::json!({
            "iss": self.settings.issuer,
            "sub": user.id.to_string(),
            "aud": client.id,
            "azp": client.id,
            "exp": iat + self.settings.access_ttl.num_seconds(),
            "iat": iat,
            "auth_time": grant.auth_time.timestamp(),
        });
        if let Some(nonce) = nonce {
            claims["nonce"] = nonce.into();
        }
        if let Some(sid) = grant.session_id {
            claims["sid"] = sid.to_string().into();
        }
        merge(&mut claims, user_claims(user, &grant.scope));
        self.keys.sign(&claims)
    }

    /// Verifies an access token this provider issued and that has not been revoked.
    pub async fn verify_access(&self, token: &str) -> Result<Option<AccessClaims>, StoreError> {
        let Some(claims) = self.keys.verify::<AccessClaims>(
            token,
            &self.settings.issuer,
            Some(&self.settings.audience),
        ) else {
            return Ok(None);
        };
        if self.store.access_revoked(&claims.jti).await? {
            return Ok(None);
        }
        Ok(Some(claims))
    }

    /// RFC 7662: what a token is, for the client asking. Inactive for anything unknown,
    /// expired, revoked or another client's refresh token.
    pub async fn introspect(
        &self,
        client: &Client,
        token: &str,
    ) -> Result<serde_json::Value, StoreError> {
        let inactive = serde_json::json!({ "active": false });
        if let Some(claims) = self.verify_access(token).await? {
            let mut answer = serde_json::to_value(&claims).unwrap_or_default();
            answer["active"] = true.into();
            answer["token_type"] = "Bearer".into();
            answer["username"] = claims.preferred_username.clone().into();
            return Ok(answer);
        }
        match self.store.refresh_grant(token).await? {
            Some(grant) if grant.client_id == client.id => Ok(serde_json::json!({
                "active": true,
                "token_type": "refresh_token",
                "client_id": grant.client_id,
                "sub": grant.user_id.to_string(),
                "scope": grant.scope,
                "exp": grant.expires_at.timestamp(),
                "iss": self.settings.issuer,
            })),
            _ => Ok(inactive),
        }
    }

    /// RFC 7009: revokes a refresh token (its family) or an access token of `client`. Unknown
    /// tokens are not an error.
    pub async fn revoke(&self, client: &Client, token: &str) -> Result<(), StoreError> {
        if let Some(claims) = self
            .keys
            .verify::<AccessClaims>(token, &self.settings.issuer, None)
        {
            if claims.client_id == client.id {
                let expires = DateTime::from_timestamp(claims.exp, 0).unwrap_or_else(now);
                self.store.revoke_access(&claims.jti, expires).await?;
            }
            return Ok(());
        }
        self.store.revoke_refresh(token, &client.id).await
    }

    /// The UserInfo claims for an access token's subject.
    pub async fn userinfo(
        &self,
        claims: &AccessClaims,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        let Ok(id) = Uuid::parse_str(&claims.sub) else {
            return Ok(None);
        };
        let Some(account) = self.store.user(id).await? else {
            return Ok(None);
        };
        let mut info = serde_json::json!({ "sub": claims.sub });
        merge(&mut info, user_claims(&account.user, &claims.scope));
        Ok(Some(info))
    }
}

/// The claims about `user` that `scope` releases (OIDC Core §5.4), and Axle's `org`/`roles`.
fn user_claims(user: &User, scope: &str) -> serde_json::Value {
    let mut claims = serde_json::json!({});
    if oauth::has_scope(scope, "profile") {
        claims["name"] = user.display_name.clone().into();
        claims["preferred_username"] = user.username.clone().into();
        claims["updated_at"] = user.updated_at.timestamp().into();
    }
    if oauth::has_scope(scope, "email")
        && let Some(email) = &user.email
    {
        claims["email"] = email.clone().into();
        claims["email_verified"] = false.into();
    }
    if let Some(org) = user.org_id {
        claims["org"] = org.to_string().into();
    }
    claims["roles"] = serde_json::to_value(&user.roles).unwrap_or_default();
    claims
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    if let (Some(into), serde_json::Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An Argon2id hash of nothing anyone knows, checked against when the user does not exist.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$\
    hdYvc6yq5DrWnLDVbDfVs3iCmLw3fFgE8r4rQ2ZLoZ0";
