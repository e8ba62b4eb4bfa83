//! Test support (feature `testing`): filling in Axle's sign-in form as a browser would, for
//! the tests of identity and of everything that signs users in through it.

// Test support fails the test loudly when the page is not what it should be.
#![allow(clippy::expect_used, clippy::unwrap_used)]

/// Every hidden field of a page's forms, unescaped.
pub fn hidden_fields(html: &str) -> Vec<(String, String)> {
    let attribute = |tag: &str, name: &str| {
        let value = tag.split(&format!("{name}=\"")).nth(1)?.split('"').next()?;
        Some(unescape(value))
    };
    html.split("<input type=\"hidden\" ")
        .skip(1)
        .filter_map(|tag| Some((attribute(tag, "name")?, attribute(tag, "value")?)))
        .collect()
}

fn unescape(s: &str) -> String {
    s.replace("&#x2f;", "/")
        .replace("&#47;", "/")
        .replace("&#x3d;", "=")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&quot;", "\"")
        .replace("&#34;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Opens `authorize_url` in `browser` (which keeps cookies and does not follow redirects),
/// fills in the sign-in form and posts it to `action`; answers the form's response.
pub async fn submit_sign_in(
    browser: &reqwest::Client,
    authorize_url: &str,
    action: &str,
    username: &str,
    password: &str,
) -> reqwest::Response {
    let page = browser.get(authorize_url).send().await.unwrap();
    assert_eq!(page.status(), 200, "the sign-in page");
    let mut form = hidden_fields(&page.text().await.unwrap());
    form.push(("username".into(), username.into()));
    form.push(("password".into(), password.into()));
    browser.post(action).form(&form).send().await.unwrap()
}
