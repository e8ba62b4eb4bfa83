//! The pages of the sign-in flow, in the web shell: the authorization endpoint with its sign-in
//! form, the consent page for third-party clients, and RP-initiated sign-out.
//!
//! Every form carries a CSRF token bound to the browser. A request whose client or redirect
//! URI is wrong gets an error page, never a redirect, so Axle cannot be made an open redirect;
//! other faults go back to the client's registered redirect URI as OAuth errors.

use askama::Template;
use axle_web::{FlashKind, Html, Shell};
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum_extra::extract::CookieJar;
use axum_extra::extract::cookie::{Cookie, SameSite};
use serde::Deserialize;

use super::AppState;
use crate::domain::oauth::{self, Authorization, AuthorizationParams, OAuthError, Refusal};
use crate::domain::{Client, User};
use crate::provider::SignInError;
use crate::store::Session;

/// The sign-on session cookie (its value is a secret; the database keeps its hash).
pub const SESSION_COOKIE: &str = "axle_sso";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/authorize", get(authorize).post(sign_in))
        .route("/consent", axum::routing::post(consent))
        .route("/logout", get(confirm_sign_out).post(sign_out))
        .route("/reset", get(reset_page).post(reset))
}

#[derive(Template)]
#[template(path = "signin.html")]
struct SignInPage {
    shell: Shell,
    action: String,
    csrf: String,
    hidden: Vec<(&'static str, String)>,
    client_name: String,
    username: String,
    /// The password reset page.
    reset: String,
}

#[derive(Template)]
#[template(path = "consent.html")]
struct ConsentPage {
    shell: Shell,
    action: String,
    csrf: String,
    hidden: Vec<(&'static str, String)>,
    client_name: String,
    username: String,
    scopes: Vec<String>,
}

#[derive(Template)]
#[template(path = "signout.html")]
struct SignOutPage {
    shell: Shell,
    action: String,
    csrf: String,
    hidden: Vec<(&'static str, String)>,
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    shell: Shell,
    heading: String,
    text: String,
}

fn message(state: &AppState, status: StatusCode, heading: &str, text: &str) -> Response {
    let page = MessagePage {
        shell: Shell::new(heading, state.assets()),
        heading: heading.into(),
        text: text.into(),
    };
    (status, Html::from(&page)).into_response()
}

fn forbidden_form(state: &AppState) -> Response {
    message(
        state,
        StatusCode::FORBIDDEN,
        "This form has expired",
        "The form was not sent from this browser's own page (its security token is missing or \
         wrong). Go back, reload the page and try again.",
    )
}

/// The authorization request's fields, carried through the forms.
fn hidden(auth: &Authorization) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("response_type", "code".to_string()),
        ("client_id", auth.client_id.clone()),
        ("redirect_uri", auth.redirect_uri.clone()),
        ("scope", auth.scope.clone()),
    ];
    let optional = [
        ("state", &auth.state),
        ("nonce", &auth.nonce),
        ("code_challenge", &auth.code_challenge),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            fields.push((name, value.clone()));
        }
    }
    if auth.code_challenge.is_some() {
        fields.push(("code_challenge_method", "S256".into()));
    }
    fields
}

/// The page's CSP, letting its form's answer redirect to the client.
fn with_csp(mut response: Response, redirect_uri: &str) -> Response {
    let origin = url::Url::parse(redirect_uri)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default();
    let csp = axle_web::security::csp_with_form_targets([origin.as_str()]);
    if let Ok(value) = HeaderValue::from_str(&csp) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, value);
    }
    response
}

/// A redirect to the client with `params` added to its redirect URI's query.
fn to_client(redirect_uri: &str, params: &[(&str, &str)]) -> Response {
    let Ok(mut url) = url::Url::parse(redirect_uri) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    {
        let mut query = url.query_pairs_mut();
        for (name, value) in params {
            query.append_pair(name, value);
        }
    }
    Redirect::to(url.as_str()).into_response()
}

fn error_to_client(
    state: &AppState,
    redirect_uri: &str,
    client_state: Option<&str>,
    error: &OAuthError,
) -> Response {
    let issuer = state.provider.settings.issuer.clone();
    let mut params = vec![
        ("error", error.code),
        ("error_description", error.description.as_str()),
        ("iss", issuer.as_str()),
    ];
    if let Some(s) = client_state {
        params.push(("state", s));
    }
    to_client(redirect_uri, &params)
}

/// Checks an authorization request; `Err` is the page or redirect that refuses it.
async fn accept(
    state: &AppState,
    params: &AuthorizationParams,
) -> Result<(Authorization, Client), Response> {
    let client = match params.client_id.as_deref() {
        Some(id) => state
            .provider
            .store
            .client(id)
            .await
            .map_err(|e| internal(state, e))?
            .map(|(c, _)| c),
        None => None,
    };
    match oauth::authorize(params, client.as_ref()) {
        Ok(auth) => match client {
            Some(client) => Ok((auth, client)),
            None => Err(internal(state, "an accepted request has no client")),
        },
        Err(Refusal::ToUser(e)) => Err(message(
            state,
            StatusCode::BAD_REQUEST,
            "This sign-in link is not valid",
            &format!(
                "The application that sent you here made a mistake: {}.",
                e.description
            ),
        )),
        Err(Refusal::ToClient {
            redirect_uri,
            state: s,
            error,
        }) => Err(error_to_client(state, &redirect_uri, s.as_deref(), &error)),
    }
}

fn internal(state: &AppState, e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "identity page failed");
    message(
        state,
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        "Please try again in a moment.",
    )
}

/// The signed-in user of this browser, if its session is live and the user active.
async fn signed_in(state: &AppState, jar: &CookieJar) -> Result<Option<(Session, User)>, Response> {
    let Some(cookie) = jar.get(SESSION_COOKIE) else {
        return Ok(None);
    };
    let store = &state.provider.store;
    let Some(session) = store
        .session_by_secret(cookie.value())
        .await
        .map_err(|e| internal(state, e))?
    else {
        return Ok(None);
    };
    match store
        .user(session.user_id)
        .await
        .map_err(|e| internal(state, e))?
    {
        Some(account) if account.user.status == crate::domain::Status::Active => {
            Ok(Some((session, account.user)))
        }
        _ => Ok(None),
    }
}

fn sign_in_page(
    state: &AppState,
    jar: CookieJar,
    auth: &Authorization,
    client: &Client,
    username: &str,
    flash: Option<&str>,
    status: StatusCode,
) -> Response {
    let (jar, csrf) = state
        .csrf
        .token(jar, &state.public_path, state.secure_cookies);
    let mut shell = Shell::new("Sign in", state.assets());
    if let Some(text) = flash {
        shell = shell.with_flash(FlashKind::Error, text);
    }
    let page = SignInPage {
        shell,
        action: format!("{}/authorize", state.public_path),
        csrf,
        hidden: hidden(auth),
        client_name: client.name.clone(),
        username: username.to_string(),
        reset: format!("{}/reset", state.public_path),
    };
    with_csp(
        (status, jar, Html::from(&page)).into_response(),
        &auth.redirect_uri,
    )
}

/// The authorization endpoint (OIDC Core §3.1.2): a signed-in browser goes straight back to
/// the client with a code (after consenting, for third-party clients); otherwise the
/// sign-in form.
pub async fn authorize(
    State(state): State<AppState>,
    jar: CookieJar,
    Query(params): Query<AuthorizationParams>,
) -> Response {
    let (auth, client) = match accept(&state, &params).await {
        Ok(accepted) => accepted,
        Err(response) => return response,
    };
    if !auth.force_login {
        match signed_in(&state, &jar).await {
            Ok(Some((session, user))) => {
                return proceed(&state, jar, &auth, &client, &session, &user).await;
            }
            Ok(None) => {}
            Err(response) => return response,
        }
    }
    if auth.no_prompt {
        let error = OAuthError::new("login_required", "the user is not signed in");
        return error_to_client(&state, &auth.redirect_uri, auth.state.as_deref(), &error);
    }
    sign_in_page(&state, jar, &auth, &client, "", None, StatusCode::OK)
}

/// After signing in: consent when the client needs it, else a code for the client.
async fn proceed(
    state: &AppState,
    jar: CookieJar,
    auth: &Authorization,
    client: &Client,
    session: &Session,
    user: &User,
) -> Response {
    if !client.first_party {
        let given = match state.provider.store.consented(user.id, &client.id).await {
            Ok(given) => given.unwrap_or_default(),
            Err(e) => return internal(state, e),
        };
        let covered = auth.scope.split(' ').all(|s| oauth::has_scope(&given, s));
        if !covered {
            let (jar, csrf) = state
                .csrf
                .token(jar, &state.public_path, state.secure_cookies);
            let page = ConsentPage {
                shell: Shell::new("Allow access", state.assets()),
                action: format!("{}/consent", state.public_path),
                csrf,
                hidden: hidden(auth),
                client_name: client.name.clone(),
                username: user.username.clone(),
                scopes: auth.scope.split(' ').map(String::from).collect(),
            };
            return with_csp((jar, Html::from(&page)).into_response(), &auth.redirect_uri);
        }
    }
    let code = match state.provider.issue_code(auth, session).await {
        Ok(code) => code,
        Err(e) => return internal(state, e),
    };
    let issuer = state.provider.settings.issuer.clone();
    let mut params = vec![("code", code.as_str()), ("iss", issuer.as_str())];
    if let Some(s) = &auth.state {
        params.push(("state", s));
    }
    (jar, to_client(&auth.redirect_uri, &params)).into_response()
}

#[derive(Debug, Deserialize)]
pub struct SignInForm {
    csrf: Option<String>,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(flatten)]
    params: AuthorizationParams,
}

/// The sign-in form's answer: a session, then on to the client.
pub async fn sign_in(
    State(state): State<AppState>,
    jar: CookieJar,
    headers: HeaderMap,
    axum::Form(form): axum::Form<SignInForm>,
) -> Response {
    if !state.csrf.verify(&jar, form.csrf.as_deref()) {
        return forbidden_form(&state);
    }
    let (auth, client) = match accept(&state, &form.params).await {
        Ok(accepted) => accepted,
        Err(response) => return response,
    };
    let refuse = |text: &str, status| {
        sign_in_page(
            &state,
            jar.clone(),
            &auth,
            &client,
            &form.username,
            Some(text),
            status,
        )
    };
    let account = match state.provider.sign_in(&form.username, &form.password).await {
        Ok(account) => account,
        Err(e @ SignInError::Wrong) => return refuse(&e.to_string(), StatusCode::UNAUTHORIZED),
        Err(e @ (SignInError::Locked(_) | SignInError::Suspended)) => {
            return refuse(&e.to_string(), StatusCode::FORBIDDEN);
        }
        Err(SignInError::Store(e)) => return internal(&state, e),
    };
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let (secret, session) = match state
        .provider
        .start_session(&account.user, user_agent)
        .await
    {
        Ok(started) => started,
        Err(e) => return internal(&state, e),
    };
    let cookie = Cookie::build((SESSION_COOKIE, secret))
        .path(state.public_path.clone())
        .http_only(true)
        .secure(state.secure_cookies)
        .same_site(SameSite::Lax)
        .build();
    tracing::info!(user = %account.user.id, session = %session.id, "signed in");
    proceed(
        &state,
        jar.add(cookie),
        &auth,
        &client,
        &session,
        &account.user,
    )
    .await
}

#[derive(Debug, Deserialize)]
pub struct ConsentForm {
    csrf: Option<String>,
    decision: Option<String>,
    #[serde(flatten)]
    params: AuthorizationParams,
}

/// The consent page's answer.
pub async fn consent(
    State(state): State<AppState>,
    jar: CookieJar,
    axum::Form(form): axum::Form<ConsentForm>,
) -> Response {
    if !state.csrf.verify(&jar, form.csrf.as_deref()) {
        return forbidden_form(&state);
    }
    let (auth, client) = match accept(&state, &form.params).await {
        Ok(accepted) => accepted,
        Err(response) => return response,
    };
    let (session, user) = match signed_in(&state, &jar).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            return sign_in_page(
                &state,
                jar,
                &auth,
                &client,
                "",
                Some("Please sign in again."),
                StatusCode::UNAUTHORIZED,
            );
        }
        Err(response) => return response,
    };
    if form.decision.as_deref() != Some("allow") {
        let error = OAuthError::new("access_denied", "the user did not allow access");
        return error_to_client(&state, &auth.redirect_uri, auth.state.as_deref(), &error);
    }
    if let Err(e) = state
        .provider
        .store
        .consent(user.id, &client.id, &auth.scope)
        .await
    {
        return internal(&state, e);
    }
    proceed(&state, jar, &auth, &client, &session, &user).await
}

/// RP-initiated logout's parameters (OpenID Connect RP-Initiated Logout 1.0).
#[derive(Debug, Default, Deserialize)]
pub struct LogoutParams {
    id_token_hint: Option<String>,
    post_logout_redirect_uri: Option<String>,
    state: Option<String>,
    client_id: Option<String>,
}

impl LogoutParams {
    fn hidden(&self) -> Vec<(&'static str, String)> {
        [
            ("id_token_hint", &self.id_token_hint),
            ("post_logout_redirect_uri", &self.post_logout_redirect_uri),
            ("state", &self.state),
            ("client_id", &self.client_id),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.clone().map(|v| (name, v)))
        .collect()
    }
}

/// Where to send the browser after signing out: the client's registered URI, if the request
/// names one the client (by `client_id` or the ID token's audience) registered.
async fn after_sign_out(state: &AppState, params: &LogoutParams) -> Option<String> {
    let uri = params.post_logout_redirect_uri.as_deref()?;
    let client_id = match (&params.client_id, &params.id_token_hint) {
        (Some(id), _) => id.clone(),
        (None, Some(hint)) => state
            .provider
            .keys
            .audience_of(hint, &state.provider.settings.issuer)?,
        _ => return None,
    };
    let (client, _) = state.provider.store.client(&client_id).await.ok()??;
    client
        .post_logout_redirect_uris
        .iter()
        .any(|u| u == uri)
        .then(|| uri.to_string())
}

/// Asks the user to confirm signing out (a link alone must not sign anyone out).
pub async fn confirm_sign_out(
    State(state): State<AppState>,
    jar: CookieJar,
    Query(params): Query<LogoutParams>,
) -> Response {
    let user = match signed_in(&state, &jar).await {
        Ok(found) => found.map(|(_, u)| u.username),
        Err(response) => return response,
    };
    let (jar, csrf) = state
        .csrf
        .token(jar, &state.public_path, state.secure_cookies);
    let mut shell = Shell::new("Sign out", state.assets());
    shell.user = user;
    let page = SignOutPage {
        shell,
        action: format!("{}/logout", state.public_path),
        csrf,
        hidden: params.hidden(),
    };
    let response = (jar, Html::from(&page)).into_response();
    match after_sign_out(&state, &params).await {
        Some(uri) => with_csp(response, &uri),
        None => response,
    }
}

/// Ends this browser's session (and the refresh tokens issued in it).
pub async fn sign_out(
    State(state): State<AppState>,
    jar: CookieJar,
    axum::Form(form): axum::Form<SignOutForm>,
) -> Response {
    if !state.csrf.verify(&jar, form.csrf.as_deref()) {
        return forbidden_form(&state);
    }
    match signed_in(&state, &jar).await {
        Ok(Some((session, user))) => {
            if let Err(e) = state.provider.store.end_session(user.id, session.id).await {
                return internal(&state, e);
            }
            tracing::info!(user = %user.id, session = %session.id, "signed out");
        }
        Ok(None) => {}
        Err(response) => return response,
    }
    let jar = jar.remove(Cookie::build(SESSION_COOKIE).path(state.public_path.clone()));
    match after_sign_out(&state, &form.params).await {
        Some(uri) => {
            let mut params = Vec::new();
            if let Some(s) = &form.params.state {
                params.push(("state", s.as_str()));
            }
            (jar, to_client(&uri, &params)).into_response()
        }
        None => (
            jar,
            message(
                &state,
                StatusCode::OK,
                "Signed out",
                "You are signed out of Axle.",
            ),
        )
            .into_response(),
    }
}

#[derive(Debug, Deserialize)]
pub struct SignOutForm {
    csrf: Option<String>,
    #[serde(flatten)]
    params: LogoutParams,
}

#[derive(Template)]
#[template(path = "reset.html")]
struct ResetPage {
    shell: Shell,
    heading: &'static str,
    action: String,
    csrf: String,
    /// The link's token: the form to set a new password; none: the form to ask for a link.
    token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ResetQuery {
    token: Option<String>,
}

fn reset_form(
    state: &AppState,
    jar: CookieJar,
    token: Option<String>,
    flash: Option<(FlashKind, &str)>,
    status: StatusCode,
) -> Response {
    let (jar, csrf) = state
        .csrf
        .token(jar, &state.public_path, state.secure_cookies);
    let heading = if token.is_some() {
        "Set a new password"
    } else {
        "Forgot your password?"
    };
    let mut shell = Shell::new(heading, state.assets());
    if let Some((kind, text)) = flash {
        shell = shell.with_flash(kind, text);
    }
    let page = ResetPage {
        shell,
        heading,
        action: format!("{}/reset", state.public_path),
        csrf,
        token,
    };
    (status, jar, Html::from(&page)).into_response()
}

/// The page a reset link opens (with its token), or where one is asked for.
pub async fn reset_page(
    State(state): State<AppState>,
    jar: CookieJar,
    Query(q): Query<ResetQuery>,
) -> Response {
    reset_form(&state, jar, q.token, None, StatusCode::OK)
}

#[derive(Debug, Deserialize)]
pub struct ResetForm {
    csrf: Option<String>,
    username: Option<String>,
    token: Option<String>,
    new_password: Option<String>,
    confirm_password: Option<String>,
}

/// Asks for a link (by username), or sets the new password with the link's token.
pub async fn reset(
    State(state): State<AppState>,
    jar: CookieJar,
    axum::Form(form): axum::Form<ResetForm>,
) -> Response {
    if !state.csrf.verify(&jar, form.csrf.as_deref()) {
        return forbidden_form(&state);
    }
    if let Some(username) = form.username {
        if let Err(e) = super::account::send_reset_link(&state, &username).await {
            return internal(&state, e.code());
        }
        return message(
            &state,
            StatusCode::ACCEPTED,
            "Check your e-mail",
            "If the account exists, a link to set a new password is on its way. It works for 30 minutes, once.",
        );
    }
    let (Some(token), Some(new)) = (form.token, form.new_password) else {
        return reset_form(&state, jar, None, None, StatusCode::BAD_REQUEST);
    };
    if form.confirm_password.as_deref() != Some(new.as_str()) {
        return reset_form(
            &state,
            jar,
            Some(token),
            Some((
                FlashKind::Error,
                "The password and its confirmation differ.",
            )),
            StatusCode::UNPROCESSABLE_ENTITY,
        );
    }
    match super::account::reset_with_token(&state, &token, &new).await {
        Ok(()) => message(
            &state,
            StatusCode::OK,
            "Password set",
            "Your new password works now: sign in with it.",
        ),
        Err(e) if e.status() == StatusCode::UNPROCESSABLE_ENTITY => {
            let text = e.message().to_string();
            reset_form(
                &state,
                jar,
                Some(token),
                Some((FlashKind::Error, &text)),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
        }
        Err(e) if e.status().is_client_error() => message(
            &state,
            StatusCode::BAD_REQUEST,
            "This link does not work",
            "It was used already, or it is more than 30 minutes old. Ask for a new one.",
        ),
        Err(e) => internal(&state, e.code()),
    }
}
