//! Route matching, compiled once per snapshot.
//!
//! Order, as APISIX's radixtree: exact uris first, then path-parameter patterns
//! (`/users/:id`), then prefixes (`/api/*`), longest first; among routes on the same uri,
//! higher `priority` first, then the order of their keys. The first candidate whose `hosts`,
//! `methods`, `remote_addrs` and `vars` all hold is the match; a candidate that fails a filter
//! lets the next one try.

use std::collections::HashMap;

use crate::FastMap;
use std::sync::Arc;

use http::Method;

use crate::resource::Timeout;
use crate::runtime::phases::Chain;
use crate::runtime::upstream::Upstream;
use crate::vars::{Request, Vars};

/// A uri as a route writes it.
#[derive(Debug, Clone, PartialEq)]
pub enum UriPattern {
    Exact(String),
    /// `/api/*` or `/api*`: everything starting with the text before the `*`.
    Prefix(String),
    /// `/users/:id/orders` (a `:name` matches one segment; a final `*` the rest).
    Params(Vec<Segment>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Literal(String),
    /// `:name`.
    Param(Arc<str>),
    Rest,
}

impl UriPattern {
    pub fn parse(uri: &str) -> UriPattern {
        if uri.split('/').any(|s| s.starts_with(':')) {
            let segments = uri
                .split('/')
                .skip(1)
                .map(|s| {
                    if let Some(name) = s.strip_prefix(':') {
                        Segment::Param(name.into())
                    } else if s.starts_with('*') {
                        Segment::Rest
                    } else {
                        Segment::Literal(s.to_string())
                    }
                })
                .collect();
            UriPattern::Params(segments)
        } else if let Some(prefix) = uri.strip_suffix('*') {
            UriPattern::Prefix(prefix.to_string())
        } else {
            UriPattern::Exact(uri.to_string())
        }
    }

    /// Whether `path` matches, the slow obvious way (the router indexes instead).
    pub fn matches(&self, path: &str) -> bool {
        match self {
            UriPattern::Exact(uri) => path == uri,
            UriPattern::Prefix(prefix) => path.starts_with(prefix.as_str()),
            UriPattern::Params(segments) => params_match(segments, path),
        }
    }
}

fn params_match(segments: &[Segment], path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let mut parts = rest.split('/');
    for segment in segments {
        match segment {
            Segment::Rest => return true,
            Segment::Literal(text) => {
                if parts.next() != Some(text.as_str()) {
                    return false;
                }
            }
            Segment::Param(_) => match parts.next() {
                Some(p) if !p.is_empty() => {}
                _ => return false,
            },
        }
    }
    parts.next().is_none()
}

/// `hosts` entries: exact names or `*.example.com` wildcards, compared without case.
#[derive(Debug, Clone)]
pub enum HostPattern {
    Exact(String),
    Suffix(String),
}

impl HostPattern {
    pub fn parse(host: &str) -> HostPattern {
        match host.strip_prefix('*') {
            Some(suffix) => HostPattern::Suffix(suffix.to_ascii_lowercase()),
            None => HostPattern::Exact(host.to_ascii_lowercase()),
        }
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => host.eq_ignore_ascii_case(h),
            HostPattern::Suffix(s) => {
                host.len() > s.len()
                    && host.as_bytes()[host.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
        }
    }
}

/// A route ready to serve.
#[derive(Debug)]
pub struct Route {
    pub id: Arc<str>,
    pub service_id: Option<Arc<str>>,
    pub uris: Vec<UriPattern>,
    pub hosts: Vec<HostPattern>,
    pub methods: Option<Vec<Method>>,
    pub remote_addrs: Vec<ipnet::IpNet>,
    pub vars: Option<Vars>,
    pub priority: i64,
    /// None: a route with plugins only (they answer).
    pub upstream: Option<Arc<Upstream>>,
    pub plugins: Chain,
    pub timeout: Option<Timeout>,
    pub enable_websocket: bool,
    /// What metrics and logs call this route.
    pub labels: Labels,
}

/// A route's name and its `uris` and `hosts` as written (in the order of `uris` and `hosts`).
#[derive(Debug, Default)]
pub struct Labels {
    pub name: Option<Arc<str>>,
    pub uris: Vec<Arc<str>>,
    pub hosts: Vec<Arc<str>>,
}

impl Route {
    /// The values of the `:name` segments of the path-parameter uri `path` matched (where each
    /// lies in `path`): `$uri_param_<name>`. Empty for a route without such a uri.
    pub fn uri_params(&self, path: &str) -> Vec<(Arc<str>, std::ops::Range<usize>)> {
        let Some(segments) = self.uris.iter().find_map(|u| match u {
            UriPattern::Params(segments) if params_match(segments, path) => Some(segments),
            _ => None,
        }) else {
            return Vec::new();
        };
        let mut at = 1; // after the leading `/`
        let mut params = Vec::new();
        for (segment, part) in segments.iter().zip(path[1..].split('/')) {
            match segment {
                Segment::Rest => break,
                Segment::Param(name) => params.push((name.clone(), at..at + part.len())),
                Segment::Literal(_) => {}
            }
            at += part.len() + 1;
        }
        params
    }

    /// The `uris` and `hosts` entries a request for `path` on `host` matched ("" when the
    /// route has none).
    pub fn matched(&self, path: &str, host: &str) -> (Arc<str>, Arc<str>) {
        let uri = self.uris.iter().position(|u| u.matches(path));
        let host = self.hosts.iter().position(|h| h.matches(host));
        let text = |texts: &[Arc<str>], at: Option<usize>| {
            at.and_then(|i| texts.get(i).cloned()).unwrap_or_default()
        };
        (text(&self.labels.uris, uri), text(&self.labels.hosts, host))
    }

    /// Everything but the uri.
    pub fn filters_match(&self, r: &Request<'_>) -> bool {
        (self.hosts.is_empty() || self.hosts.iter().any(|h| h.matches(r.host)))
            && self
                .methods
                .as_ref()
                .is_none_or(|m| m.iter().any(|m| m.as_str() == r.method))
            && (self.remote_addrs.is_empty()
                || self.remote_addrs.iter().any(|n| n.contains(&r.remote_addr)))
            && self.vars.as_ref().is_none_or(|v| v.matches(r))
    }
}

#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<Route>,
    exact: FastMap<String, Vec<usize>>,
    /// Path-parameter patterns by their literal lead: `api/v1` for `/api/v1/users/:id`.
    params: FastMap<String, Vec<(Vec<Segment>, usize)>>,
    /// Prefix length → prefix → routes; longest first.
    prefixes: Vec<(usize, FastMap<String, Vec<usize>>)>,
    /// Whether a route's `vars` read the request body (`post_arg_*`), so matching needs it.
    reads_body: bool,
}

impl Router {
    /// Indexes `routes`; their order breaks ties between equal priorities.
    pub fn new(routes: Vec<Route>) -> Router {
        let mut exact: FastMap<String, Vec<usize>> = FastMap::default();
        let mut params: FastMap<String, Vec<(Vec<Segment>, usize)>> = FastMap::default();
        let mut by_len: HashMap<usize, FastMap<String, Vec<usize>>> = HashMap::new();
        for (i, route) in routes.iter().enumerate() {
            for uri in &route.uris {
                match uri {
                    UriPattern::Exact(u) => exact.entry(u.clone()).or_default().push(i),
                    UriPattern::Prefix(p) => by_len
                        .entry(p.len())
                        .or_default()
                        .entry(p.clone())
                        .or_default()
                        .push(i),
                    UriPattern::Params(s) => {
                        let lead: Vec<&str> = s
                            .iter()
                            .map_while(|seg| match seg {
                                Segment::Literal(text) => Some(text.as_str()),
                                _ => None,
                            })
                            .collect();
                        params
                            .entry(lead.join("/"))
                            .or_default()
                            .push((s.clone(), i));
                    }
                }
            }
        }
        let order = |list: &mut Vec<usize>| {
            list.sort_by_key(|&i| (std::cmp::Reverse(routes[i].priority), i));
            list.dedup();
        };
        exact.values_mut().for_each(order);
        for map in by_len.values_mut() {
            map.values_mut().for_each(order);
        }
        for list in params.values_mut() {
            list.sort_by_key(|(_, i)| (std::cmp::Reverse(routes[*i].priority), *i));
        }
        let mut prefixes: Vec<_> = by_len.into_iter().collect();
        prefixes.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        let reads_body = routes.iter().flat_map(|r| &r.vars).any(Vars::reads_body);
        Router {
            routes,
            exact,
            params,
            prefixes,
            reads_body,
        }
    }

    /// Whether matching needs the request body's fields.
    pub fn reads_body(&self) -> bool {
        self.reads_body
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn find(&self, r: &Request<'_>) -> Option<&Route> {
        let path = r.path;
        let pick = |list: &[usize]| {
            list.iter()
                .map(|&i| &self.routes[i])
                .find(|route| route.filters_match(r))
        };
        if let Some(route) = self.exact.get(path).and_then(|l| pick(l)) {
            return Some(route);
        }
        if let Some(route) = self.find_params(r) {
            return Some(route);
        }
        for (len, map) in &self.prefixes {
            if *len > path.len() || !path.is_char_boundary(*len) {
                continue;
            }
            if let Some(route) = map.get(&path[..*len]).and_then(|l| pick(l)) {
                return Some(route);
            }
        }
        None
    }
}

impl Router {
    /// The path-parameter routes whose literal lead is a prefix of the path's segments, tried
    /// in (priority, key order), as if all of them were one ordered list.
    fn find_params(&self, r: &Request<'_>) -> Option<&Route> {
        if self.params.is_empty() {
            return None;
        }
        let rest = r.path.strip_prefix('/')?;
        let leads = std::iter::once("")
            .chain(rest.match_indices('/').map(|(at, _)| &rest[..at]))
            .chain(std::iter::once(rest));
        let mut candidates: Vec<&(Vec<Segment>, usize)> = leads
            .filter_map(|lead| self.params.get(lead))
            .flatten()
            .collect();
        if candidates.len() > 1 {
            let key = |i: usize| (std::cmp::Reverse(self.routes[i].priority), i);
            candidates.sort_by_key(|(_, i)| key(*i));
        }
        candidates
            .into_iter()
            .map(|(segments, i)| (segments, &self.routes[*i]))
            .find(|(segments, route)| params_match(segments, r.path) && route.filters_match(r))
            .map(|(_, route)| route)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const URIS: [&str; 13] = [
        "/", "/a", "/a/b", "/a/*", "/a*", "/*", "/a/:id", "/a/:id/c", "/b/*", "/a/b/*", "/:x",
        "/a/b/:id", "/:x/c",
    ];
    const PATHS: [&str; 10] = [
        "/", "/a", "/a/", "/a/b", "/a/b/c", "/ab", "/a/x/c", "/b/q", "/c", "/a/x",
    ];
    const HOSTS: [&str; 3] = ["a.com", "x.a.com", "b.com"];

    fn route(
        i: usize,
        uris: &[usize],
        priority: i64,
        host: Option<&str>,
        method: Option<&str>,
    ) -> Route {
        Route {
            id: i.to_string().into(),
            service_id: None,
            uris: uris.iter().map(|&u| UriPattern::parse(URIS[u])).collect(),
            hosts: host
                .map(|h| vec![HostPattern::parse(h)])
                .unwrap_or_default(),
            methods: method.map(|m| vec![Method::from_bytes(m.as_bytes()).unwrap()]),
            remote_addrs: Vec::new(),
            vars: None,
            priority,
            upstream: None,
            plugins: Chain::default(),
            timeout: None,
            enable_websocket: false,
            labels: Default::default(),
        }
    }

    type Rank = (u8, std::cmp::Reverse<usize>, std::cmp::Reverse<i64>, usize);

    /// The obvious matcher: every (route, uri) that matches, best by (exact, params, longest
    /// prefix), then priority, then route order.
    fn naive<'a>(routes: &'a [Route], r: &Request<'_>) -> Option<&'a Route> {
        let mut best: Option<(Rank, &Route)> = None;
        for (i, route) in routes.iter().enumerate() {
            for uri in &route.uris {
                if !uri.matches(r.path) || !route.filters_match(r) {
                    continue;
                }
                let (class, len) = match uri {
                    UriPattern::Exact(_) => (0, 0),
                    UriPattern::Params(_) => (1, 0),
                    UriPattern::Prefix(p) => (2, p.len()),
                };
                let rank = (
                    class,
                    std::cmp::Reverse(len),
                    std::cmp::Reverse(route.priority),
                    i,
                );
                if best.as_ref().is_none_or(|(b, _)| rank < *b) {
                    best = Some((rank, route));
                }
            }
        }
        best.map(|(_, r)| r)
    }

    fn arb_route() -> impl Strategy<Value = (Vec<usize>, i64, Option<usize>, Option<bool>)> {
        (
            proptest::collection::vec(0..URIS.len(), 1..3),
            -2i64..3,
            proptest::option::of(0..3usize),
            proptest::option::of(any::<bool>()),
        )
    }

    proptest! {
        #[test]
        fn router_agrees_with_the_naive_matcher(
            specs in proptest::collection::vec(arb_route(), 0..12),
            path in 0..PATHS.len(),
            host in 0..HOSTS.len(),
            post in any::<bool>(),
        ) {
            let host_patterns = ["a.com", "*.a.com", "b.com"];
            let build = || -> Vec<Route> {
                specs.iter().enumerate().map(|(i, (uris, priority, h, m))| {
                    route(i, uris, *priority, h.map(|h| host_patterns[h]),
                          m.map(|post| if post { "POST" } else { "GET" }))
                }).collect()
            };
            let headers = http::HeaderMap::new();
            let request = Request {
                method: if post { "POST" } else { "GET" },
                path: PATHS[path],
                query: None,
                host: HOSTS[host],
                headers: &headers,
                remote_addr: "127.0.0.1".parse().unwrap(),
                scheme: "http",
                server_port: 80,
                consumer_name: None,
                jwt_payload: None,
                uri_params: &[],
            post: None,
                response: None,
            };
            let reference = build();
            let router = Router::new(build());
            let expected = naive(&reference, &request).map(|r| r.id.clone());
            let found = router.find(&request).map(|r| r.id.clone());
            prop_assert_eq!(found, expected);
        }
    }

    #[test]
    fn patterns() {
        assert!(UriPattern::parse("/a/:id").matches("/a/7"));
        assert!(!UriPattern::parse("/a/:id").matches("/a/7/8"));
        assert!(!UriPattern::parse("/a/:id").matches("/a/"));
        assert!(UriPattern::parse("/a/:id/*").matches("/a/7/8/9"));
        assert!(UriPattern::parse("/a*").matches("/abc"));
        assert!(HostPattern::parse("*.a.com").matches("X.A.com"));
        assert!(!HostPattern::parse("*.a.com").matches("a.com"));
    }
}
