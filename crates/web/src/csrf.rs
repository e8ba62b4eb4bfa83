//! Cross-site request forgery protection for forms: a token bound to a cookie.
//!
//! The browser holds a random `axle_csrf` cookie (HttpOnly, SameSite=Lax); each form carries
//! the HMAC of that cookie under the server's key. A forged form from another site cannot read
//! the cookie, so it cannot produce the token; a token taken from another browser does not
//! match this browser's cookie. The key is shared by every instance of a service (it comes
//! from its database), so any instance accepts a form another rendered.

use axum_extra::extract::CookieJar;
use axum_extra::extract::cookie::{Cookie, SameSite};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use ring::hmac;

pub const COOKIE: &str = "axle_csrf";
/// The form field carrying the token.
pub const FIELD: &str = "csrf";

#[derive(Clone)]
pub struct CsrfKey(hmac::Key);

impl std::fmt::Debug for CsrfKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CsrfKey(..)")
    }
}

impl CsrfKey {
    pub fn new(secret: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    fn token_for(&self, cookie: &str) -> String {
        URL_SAFE_NO_PAD.encode(hmac::sign(&self.0, cookie.as_bytes()))
    }

    /// The token for this browser's forms, setting its cookie when it has none. `path`: the
    /// cookie's path (where the forms post).
    pub fn token(&self, jar: CookieJar, path: &str, secure: bool) -> (CookieJar, String) {
        if let Some(cookie) = jar.get(COOKIE) {
            let token = self.token_for(cookie.value());
            return (jar, token);
        }
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let value = URL_SAFE_NO_PAD.encode(bytes);
        let token = self.token_for(&value);
        let cookie = Cookie::build((COOKIE, value))
            .path(path.to_string())
            .http_only(true)
            .secure(secure)
            .same_site(SameSite::Lax)
            .build();
        (jar.add(cookie), token)
    }

    /// Whether a form's `token` belongs to this browser's cookie.
    pub fn verify(&self, jar: &CookieJar, token: Option<&str>) -> bool {
        let (Some(cookie), Some(token)) = (jar.get(COOKIE), token) else {
            return false;
        };
        let Ok(tag) = URL_SAFE_NO_PAD.decode(token) else {
            return false;
        };
        hmac::verify(&self.0, cookie.value().as_bytes(), &tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_with_its_own_cookie_only() {
        let key = CsrfKey::new(b"0123456789abcdef0123456789abcdef");
        let (mine, token) = key.token(CookieJar::new(), "/", false);
        assert!(key.verify(&mine, Some(&token)));
        let (theirs, their_token) = key.token(CookieJar::new(), "/", false);
        assert!(
            !key.verify(&mine, Some(&their_token)),
            "another browser's token"
        );
        assert!(!key.verify(&theirs, Some(&token)));
        assert!(!key.verify(&mine, None));
        assert!(!key.verify(&CookieJar::new(), Some(&token)), "no cookie");
        let other_key = CsrfKey::new(b"another key, another server.....");
        assert!(!other_key.verify(&mine, Some(&token)));
        // The same browser keeps its token across forms.
        let (_, again) = key.token(mine.clone(), "/", false);
        assert_eq!(again, token);
    }
}
