//! The rules of OAuth 2.0 and OpenID Connect requests, as pure functions: which authorization
//! requests are acceptable, where a redirect may go, and PKCE.
//!
//! Errors carry the OAuth error code (`invalid_request`, `invalid_scope`, …) the protocol
//! answers with. An error found before the redirect URI is known good is never sent to it: the
//! user sees an error page instead (RFC 6749 §4.1.2.1), so Axle cannot be made an open redirect.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use super::{Client, ClientKind, DomainError, Grant, Status};

/// An OAuth error: its registered code and a description for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {description}")]
pub struct OAuthError {
    pub code: &'static str,
    pub description: String,
}

impl OAuthError {
    pub fn new(code: &'static str, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
        }
    }
}

/// The parameters of an authorization request (`/authorize`), as received.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct AuthorizationParams {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    /// `login` forces the sign-in form even with a session; `none` forbids it.
    pub prompt: Option<String>,
}

/// An authorization request found acceptable for a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub client_id: String,
    pub redirect_uri: String,
    pub scope: String,
    pub state: Option<String>,
    pub nonce: Option<String>,
    /// The S256 challenge, when the client sent one.
    pub code_challenge: Option<String>,
    pub force_login: bool,
    pub no_prompt: bool,
}

/// Why an authorization request is refused, and whether the client may be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The client or the redirect URI is wrong: show the user an error page.
    ToUser(OAuthError),
    /// The redirect URI is good: send the error back to the client.
    ToClient {
        redirect_uri: String,
        state: Option<String>,
        error: OAuthError,
    },
}

/// Checks an authorization request for `client` (`None`: no such client).
pub fn authorize(
    params: &AuthorizationParams,
    client: Option<&Client>,
) -> Result<Authorization, Refusal> {
    let user_error = |code, text: &str| Refusal::ToUser(OAuthError::new(code, text));
    let Some(client_id) = params.client_id.as_deref() else {
        return Err(user_error("invalid_request", "client_id is missing"));
    };
    let client = match client {
        Some(c) if c.id == client_id && c.status == Status::Active => c,
        _ => return Err(user_error("invalid_client", "unknown client")),
    };
    let redirect_uri = match params.redirect_uri.as_deref() {
        Some(uri) if client.redirect_uris.iter().any(|r| r == uri) => uri.to_string(),
        Some(_) => {
            return Err(user_error(
                "invalid_request",
                "redirect_uri is not registered for this client",
            ));
        }
        None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
        None => return Err(user_error("invalid_request", "redirect_uri is missing")),
    };
    let to_client = |code, text: &str| Refusal::ToClient {
        redirect_uri: redirect_uri.clone(),
        state: params.state.clone(),
        error: OAuthError::new(code, text),
    };
    if params.response_type.as_deref() != Some("code") {
        return Err(to_client(
            "unsupported_response_type",
            "only response_type=code is supported",
        ));
    }
    if !client.grants.contains(&Grant::AuthorizationCode) {
        return Err(to_client(
            "unauthorized_client",
            "this client may not use the authorization code grant",
        ));
    }
    let scope = allowed_scope(params.scope.as_deref(), client)
        .map_err(|e| to_client(e.code, &e.description))?;
    let code_challenge = match (
        params.code_challenge.as_deref(),
        params.code_challenge_method.as_deref(),
    ) {
        (Some(challenge), Some("S256")) if is_s256_challenge(challenge) => {
            Some(challenge.to_string())
        }
        (Some(_), Some("S256")) => {
            return Err(to_client(
                "invalid_request",
                "code_challenge is not a base64url SHA-256",
            ));
        }
        (Some(_), _) => {
            return Err(to_client(
                "invalid_request",
                "code_challenge_method must be S256",
            ));
        }
        (None, _) if client.kind == ClientKind::Public => {
            return Err(to_client(
                "invalid_request",
                "a public client must send a PKCE code_challenge (S256)",
            ));
        }
        (None, _) => None,
    };
    let prompt: Vec<&str> = params.prompt.as_deref().unwrap_or("").split(' ').collect();
    Ok(Authorization {
        client_id: client.id.clone(),
        redirect_uri,
        scope,
        state: params.state.clone(),
        nonce: params.nonce.clone(),
        code_challenge,
        force_login: prompt.contains(&"login"),
        no_prompt: prompt.contains(&"none"),
    })
}

/// The scope granted for a request: what was asked for, each allowed to the client; nothing
/// asked → everything the client may have.
pub fn allowed_scope(requested: Option<&str>, client: &Client) -> Result<String, OAuthError> {
    let requested: Vec<&str> = requested
        .unwrap_or("")
        .split(' ')
        .filter(|s| !s.is_empty())
        .collect();
    if requested.is_empty() {
        return Ok(client.scopes.join(" "));
    }
    let mut granted: Vec<&str> = Vec::new();
    for scope in requested {
        if !client.scopes.iter().any(|s| s == scope) {
            return Err(OAuthError::new(
                "invalid_scope",
                format!("scope {scope:?} is not allowed for this client"),
            ));
        }
        if !granted.contains(&scope) {
            granted.push(scope);
        }
    }
    Ok(granted.join(" "))
}

/// A narrower scope asked for on refresh must be within the one granted.
pub fn narrow_scope(granted: &str, requested: Option<&str>) -> Result<String, OAuthError> {
    let Some(requested) = requested.filter(|r| !r.trim().is_empty()) else {
        return Ok(granted.to_string());
    };
    let have: Vec<&str> = granted.split(' ').collect();
    for scope in requested.split(' ').filter(|s| !s.is_empty()) {
        if !have.contains(&scope) {
            return Err(OAuthError::new(
                "invalid_scope",
                format!("scope {scope:?} was not granted"),
            ));
        }
    }
    Ok(requested.to_string())
}

pub fn has_scope(scope: &str, wanted: &str) -> bool {
    scope.split(' ').any(|s| s == wanted)
}

/// A redirect URI a client may register: absolute, no fragment, HTTPS — or HTTP to a loopback
/// address (RFC 8252 §7.3, for native apps and development).
pub fn check_redirect_uri(uri: &str) -> Result<(), DomainError> {
    let bad = |why: &str| Err(DomainError::Invalid(format!("redirect URI {uri:?}: {why}")));
    let Ok(parsed) = url::Url::parse(uri) else {
        return bad("not an absolute URL");
    };
    if parsed.fragment().is_some() {
        return bad("must not have a fragment");
    }
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => match parsed.host() {
            Some(url::Host::Domain("localhost")) => Ok(()),
            Some(url::Host::Ipv4(ip)) if ip.is_loopback() => Ok(()),
            Some(url::Host::Ipv6(ip)) if ip.is_loopback() => Ok(()),
            _ => bad("http is allowed to loopback addresses only; use https"),
        },
        _ => bad("must be https (or http to a loopback address)"),
    }
}

/// A scope name: printable ASCII without spaces, quotes or backslashes (RFC 6749 §3.3).
pub fn check_scope_token(scope: &str) -> Result<(), DomainError> {
    if scope.is_empty()
        || scope.len() > 64
        || !scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
    {
        return Err(DomainError::Invalid(format!(
            "{scope:?} is not a scope name"
        )));
    }
    Ok(())
}

fn is_s256_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `verifier` answers the S256 `challenge` (RFC 7636 §4.6).
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    well_formed && URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) == challenge
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn client(kind: ClientKind) -> Client {
        Client {
            id: "portal".into(),
            name: "Portal".into(),
            kind,
            redirect_uris: vec!["https://app.example/cb".into()],
            post_logout_redirect_uris: vec![],
            grants: vec![Grant::AuthorizationCode, Grant::RefreshToken],
            scopes: vec!["openid".into(), "profile".into(), "offline_access".into()],
            roles: vec![],
            org_id: None,
            first_party: false,
            status: Status::Active,
            version: 1,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    fn params() -> AuthorizationParams {
        AuthorizationParams {
            response_type: Some("code".into()),
            client_id: Some("portal".into()),
            redirect_uri: Some("https://app.example/cb".into()),
            scope: Some("openid profile".into()),
            state: Some("xyz".into()),
            code_challenge: Some(CHALLENGE.into()),
            code_challenge_method: Some("S256".into()),
            ..Default::default()
        }
    }

    #[test]
    fn the_rfc_7636_example_verifier_matches_its_challenge() {
        assert!(pkce_matches(VERIFIER, CHALLENGE));
        assert!(!pkce_matches(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXj",
            CHALLENGE
        ));
        assert!(!pkce_matches("short", CHALLENGE));
    }

    #[test]
    fn a_good_request_is_accepted_with_its_scope_and_state() {
        let c = client(ClientKind::Public);
        let a = authorize(&params(), Some(&c)).expect("accepted");
        assert_eq!(a.scope, "openid profile");
        assert_eq!(a.state.as_deref(), Some("xyz"));
        assert_eq!(a.code_challenge.as_deref(), Some(CHALLENGE));
    }

    #[test]
    fn a_wrong_client_or_redirect_uri_is_told_to_the_user_not_the_client() {
        let c = client(ClientKind::Public);
        let mut p = params();
        p.redirect_uri = Some("https://evil.example/cb".into());
        assert!(matches!(authorize(&p, Some(&c)), Err(Refusal::ToUser(_))));
        p.redirect_uri = Some("https://app.example/cb/".into());
        assert!(
            matches!(authorize(&p, Some(&c)), Err(Refusal::ToUser(_))),
            "exact match"
        );
        assert!(matches!(
            authorize(&params(), None),
            Err(Refusal::ToUser(_))
        ));
    }

    #[test]
    fn other_faults_go_back_to_the_client() {
        let public = client(ClientKind::Public);
        let code = |p: &AuthorizationParams, c: &Client| match authorize(p, Some(c)) {
            Err(Refusal::ToClient { error, state, .. }) => {
                assert_eq!(state.as_deref(), Some("xyz"));
                error.code
            }
            other => panic!("expected a refusal to the client, got {other:?}"),
        };
        let mut p = params();
        p.code_challenge = None;
        assert_eq!(code(&p, &public), "invalid_request", "PKCE required");
        let mut p = params();
        p.code_challenge_method = Some("plain".into());
        assert_eq!(code(&p, &public), "invalid_request");
        let mut p = params();
        p.scope = Some("openid admin".into());
        assert_eq!(code(&p, &public), "invalid_scope");
        let mut p = params();
        p.response_type = Some("token".into());
        assert_eq!(code(&p, &public), "unsupported_response_type");
        let mut p = params();
        p.code_challenge = None;
        assert!(authorize(&p, Some(&client(ClientKind::Confidential))).is_ok());
    }

    #[test]
    fn redirect_uris_are_https_or_loopback() {
        assert!(check_redirect_uri("https://app.example/cb").is_ok());
        assert!(check_redirect_uri("http://127.0.0.1:8000/cb").is_ok());
        assert!(check_redirect_uri("http://localhost/cb").is_ok());
        assert!(check_redirect_uri("http://app.example/cb").is_err());
        assert!(check_redirect_uri("https://app.example/cb#x").is_err());
        assert!(check_redirect_uri("javascript:alert(1)").is_err());
        assert!(check_redirect_uri("/cb").is_err());
    }

    #[test]
    fn refresh_may_narrow_the_scope_never_widen_it() {
        assert_eq!(
            narrow_scope("openid profile", None).as_deref(),
            Ok("openid profile")
        );
        assert_eq!(
            narrow_scope("openid profile", Some("openid")).as_deref(),
            Ok("openid")
        );
        assert!(narrow_scope("openid", Some("openid admin")).is_err());
    }
}
