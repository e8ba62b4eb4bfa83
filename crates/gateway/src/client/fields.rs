//! A response's header fields, kept apart by where they came from until something needs them
//! in one map: what request plugins `set` (rate-limit quotas), the header `map` of a reply
//! (or of the response plugins' work), and the node's header `lines` as they came. Where two
//! name the same field, `set` wins over `map`, and `map` over `lines` — as if each had been
//! inserted into the one before. An HTTP/1.1 client gets them written as they are; response
//! plugins and hyper's server get the map.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::http1::Lines;

#[derive(Debug, Default)]
pub struct Fields {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub map: HeaderMap,
    pub lines: Lines,
}

impl Fields {
    pub fn of(map: HeaderMap) -> Fields {
        Fields {
            map,
            ..Fields::default()
        }
    }

    /// All of them in the map.
    pub fn merged(&mut self) -> &mut HeaderMap {
        std::mem::take(&mut self.lines).merge_into(&mut self.map);
        for (name, value) in self.set.drain(..) {
            self.map.insert(name, value);
        }
        &mut self.map
    }

    pub fn into_map(mut self) -> HeaderMap {
        self.merged();
        self.map
    }

    /// Each field as it goes on the wire (name, value), those another replaces left out.
    pub fn each(&self, mut write: impl FnMut(&[u8], &[u8])) {
        let named =
            |name: &[u8], other: &HeaderName| other.as_str().as_bytes().eq_ignore_ascii_case(name);
        for (at, (name, value)) in self.set.iter().enumerate() {
            if !self.set[at + 1..].iter().any(|(later, _)| later == name) {
                write(name.as_str().as_bytes(), value.as_bytes());
            }
        }
        for (name, value) in &self.map {
            if !self.set.iter().any(|(set, _)| set == name) {
                write(name.as_str().as_bytes(), value.as_bytes());
            }
        }
        for (name, value) in self.lines.iter() {
            let replaced = self.set.iter().any(|(set, _)| named(name, set))
                || self.map.keys().any(|key| named(name, key));
            if !replaced {
                write(name, value);
            }
        }
    }

    /// Their size on the wire (`name: value\r\n` each).
    pub fn size(&self) -> usize {
        let mut size = 0;
        self.each(|name, value| size += name.len() + value.len() + 4);
        size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(fields: &Fields) -> Vec<String> {
        let mut lines = Vec::new();
        fields.each(|name, value| {
            lines.push(format!(
                "{}: {}",
                String::from_utf8_lossy(name),
                String::from_utf8_lossy(value)
            ))
        });
        lines
    }

    #[test]
    fn the_newest_of_same_named_fields_wins_written_or_merged() {
        let mut map = HeaderMap::new();
        map.insert("server", HeaderValue::from_static("axle"));
        let limit = |n: &'static str| {
            (
                HeaderName::from_static("x-ratelimit-limit"),
                HeaderValue::from_static(n),
            )
        };
        let fields = || Fields {
            // Two limit-count plugins (a global rule's and the route's): the later one's.
            set: vec![limit("1"), limit("5")],
            map: map.clone(),
            lines: Lines::of_head(
                "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-RateLimit-Limit: 9\r\nServer: up\r\n\
                 Set-Cookie: b=2\r\nContent-Length: 0\r\n\r\n",
            ),
        };
        assert_eq!(
            written(&fields()),
            [
                "x-ratelimit-limit: 5",
                "server: axle",
                "Set-Cookie: a=1",
                "Set-Cookie: b=2"
            ]
        );
        // Each line with its CRLF.
        assert_eq!(fields().size(), written(&fields()).concat().len() + 4 * 2);
        let merged = fields().into_map();
        assert_eq!(merged.len(), 4);
        assert_eq!(merged["x-ratelimit-limit"], "5");
        assert_eq!(merged["server"], "axle");
        assert_eq!(merged.get_all("set-cookie").iter().count(), 2);
    }
}
