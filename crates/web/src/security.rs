//! The headers every page answers with: a Content-Security-Policy allowing only this site's
//! own scripts and styles (so injected markup cannot run), no framing (clickjacking), no
//! MIME sniffing, and a Referrer-Policy that keeps URLs (with their codes and states) on the
//! site.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

/// The policy of a page whose forms post back to this site only.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; \
    form-action 'self'";

/// The same policy, letting forms (and the redirects that answer them) also go to `origins`.
pub fn csp_with_form_targets<'a>(origins: impl IntoIterator<Item = &'a str>) -> String {
    let mut csp = CSP.to_string();
    for origin in origins {
        if origin
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
        {
            csp.push(' ');
            csp.push_str(origin);
        }
    }
    csp
}

/// Middleware: adds the security headers to every response (a page that set its own CSP keeps
/// it).
pub async fn headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(CSP));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}
