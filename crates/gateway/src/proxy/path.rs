//! The request path as routes match it and as the upstream receives it: normalized once, as
//! RFC 3986 §6.2.2 says, so that no spelling of a path reaches a route's upstream without
//! passing that route's plugins (`/public/../private/x` is `/private/x`, and so is
//! `/public/%2e%2e/private/x`).
//!
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, and the hex
//!   digits of the other escapes upper-cased (`%2f` → `%2F`);
//! - runs of `/` are one (nginx's `merge_slashes`, which APISIX matches with);
//! - `.` and `..` segments are resolved (§5.2.4); `..` never climbs above the root.
//!
//! An escaped separator (`%2F`, `%5C`) stays data, as it is for an API whose ids hold slashes;
//! but a segment that would be a `.` or `..` for a server that decodes it
//! (`/public/..%2Fprivate`) is refused: that path means one thing here and another there. So
//! is a `%` that does not start an escape (as nginx refuses it), which a decoding server
//! might read together with what follows.

use std::borrow::Cow;

/// A path refused: a malformed escape, or a dot segment behind an escaped separator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid;

/// `path` normalized; borrowed when it already is (the common case costs one scan).
pub fn normalize(path: &str) -> Result<Cow<'_, str>, Invalid> {
    if is_normal(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    let mut segments: Vec<&str> = Vec::new();
    let mut parts = decoded.split('/').peekable();
    let mut trailing = false;
    while let Some(segment) = parts.next() {
        let last = parts.peek().is_none();
        match segment {
            "" => {
                trailing = last;
                continue;
            }
            "." => {}
            ".." => {
                segments.pop();
            }
            _ => {
                if hides_a_dot_segment(segment) {
                    return Err(Invalid);
                }
                segments.push(segment);
                trailing = false;
                continue;
            }
        }
        // A dot segment at the end leaves a directory: `/a/b/..` is `/a/`.
        trailing = last;
    }
    let mut normal = String::with_capacity(decoded.len());
    for segment in &segments {
        normal.push('/');
        normal.push_str(segment);
    }
    if trailing || segments.is_empty() {
        normal.push('/');
    }
    Ok(Cow::Owned(normal))
}

/// No escapes, no empty segment, no segment starting with a dot: nothing to do.
fn is_normal(path: &[u8]) -> bool {
    let mut previous = 0u8;
    for &b in path {
        if b == b'%' || (previous == b'/' && (b == b'/' || b == b'.')) || b == b'\\' {
            return false;
        }
        previous = b;
    }
    path.first() == Some(&b'/')
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Escapes of unreserved characters decoded, the others' hex upper-cased; a `%` that starts no
/// escape is refused.
fn decode_unreserved(path: &str) -> Result<String, Invalid> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let b = bytes[at];
        if b == b'%' {
            let (Some(high), Some(low)) = (
                bytes.get(at + 1).copied().and_then(hex),
                bytes.get(at + 2).copied().and_then(hex),
            ) else {
                return Err(Invalid);
            };
            let decoded = high << 4 | low;
            if is_unreserved(decoded) {
                out.push(decoded as char);
            } else {
                out.push('%');
                out.push(bytes[at + 1].to_ascii_uppercase() as char);
                out.push(bytes[at + 2].to_ascii_uppercase() as char);
            }
            at += 3;
            continue;
        }
        // The path is ASCII: the http crate takes no other target.
        out.push(b as char);
        at += 1;
    }
    Ok(out)
}

/// Whether `segment`, split where a server decoding `%2F` or `%5C` (or taking `\` as `/`)
/// would split it, holds a `.` or `..` part.
fn hides_a_dot_segment(segment: &str) -> bool {
    if !(segment.contains('%') || segment.contains('\\')) {
        return false;
    }
    segment
        .replace("%2F", "/")
        .replace("%5C", "/")
        .replace('\\', "/")
        .split('/')
        .any(|part| part == "." || part == "..")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn normal(path: &str) -> String {
        normalize(path).unwrap().into_owned()
    }

    #[test]
    fn dot_segments_and_their_escapes_are_resolved() {
        for (path, expected) in [
            ("/private/x", "/private/x"),
            ("/public/../private/x", "/private/x"),
            ("/public/%2e%2e/private/x", "/private/x"),
            ("/public/%2E%2E/private/x", "/private/x"),
            ("/public/.%2e/private/x", "/private/x"),
            ("/./private/./x", "/private/x"),
            ("/../../private/x", "/private/x"),
            ("//private//x", "/private/x"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/", "/a/b/"),
            ("/", "/"),
            ("/..", "/"),
            ("/%7Euser/%61pi", "/~user/api"),
            ("/files/a%2fb", "/files/a%2Fb"),
            ("/q/%20%3F", "/q/%20%3F"),
            ("/a..b/.c/c.", "/a..b/.c/c."),
        ] {
            assert_eq!(normal(path), expected, "{path}");
        }
    }

    #[test]
    fn malformed_escapes_and_hidden_dot_segments_are_refused() {
        for path in [
            "/public/..%2Fprivate/x",
            "/public/..%2fprivate/x",
            "/public%2F..%2Fprivate",
            "/public/%2E%2E%5Cprivate",
            "/public/..\\private",
            "/bad/%zz",
            "/bad/%4",
            "/x/%2%65%2e/private",
        ] {
            assert_eq!(normalize(path), Err(Invalid), "{path}");
        }
        assert_eq!(
            normal("/files/a%2F..b"),
            "/files/a%2F..b",
            "not a dot segment"
        );
    }

    #[test]
    fn normal_paths_are_borrowed() {
        assert!(matches!(
            normalize("/api/vehicle/v1?x"),
            Ok(Cow::Borrowed(_))
        ));
        assert!(matches!(normalize("/a.b/c"), Ok(Cow::Borrowed(_))));
    }

    proptest! {
        /// Whatever the path, its normal form starts at the root, holds no dot or empty
        /// segment, and is its own normal form.
        #[test]
        fn normal_forms_are_normal(path in "(/|[a-z]|\\.|%2[eE]|%2[fF]|%41|%|\\\\){0,16}") {
            let path = format!("/{path}");
            if let Ok(normal) = normalize(&path) {
                prop_assert!(normal.starts_with('/'));
                prop_assert!(!normal.contains("//"));
                prop_assert!(!normal.split('/').any(|s| s == "." || s == ".."));
                prop_assert_eq!(normalize(&normal).map(|n| n.into_owned()), Ok(normal.to_string()));
            }
        }
    }
}
