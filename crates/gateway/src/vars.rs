//! `vars` expressions, APISIX's (lua-resty-expr) rule language, compiled once per snapshot.
//!
//! A rule is `[var, op, value]`, or `[var, "!", op, value]` to negate it. A list of rules
//! holds when all hold; a list may start with `"AND"`, `"OR"`, `"!AND"` or `"!OR"` and then
//! holds nested lists. Variables are nginx's: `uri`, `request_uri`, `host`, `remote_addr`,
//! `request_method`, `scheme`, `server_port`, `query_string`/`args`, `consumer_name`, `arg_<name>`,
//! `http_<header>` (lower case, `-` as `_`), `cookie_<name>` and `uri_param_<name>` (a `:name`
//! segment of the route's uri); the request body's fields: `post_arg_<name>` (a form's) and
//! `post_arg.<path>` (a form's or a JSON body's: `a.b` by keys, or a JSONPath such as
//! `messages[*].type`, whose matches `has` looks through); in the response phase `status`, `balancer_ip` and
//! `balancer_port` (the node that answered) and `upstream_addr`; and Axle's
//! `jwt_claim_<name>`, a claim of the token jwt-auth verified when it keeps the payload
//! (`store_in_ctx`). Operators: `==`, `~=`, `>`,
//! `>=`, `<`, `<=`, `~~` (regex), `~*` (regex, any case), `in`/`IN`, `has` (a list variable
//! holds the value), `ipmatch`.

use std::borrow::Cow;
use std::net::IpAddr;

use http::HeaderMap;
use regex::{Regex, RegexBuilder};
use serde_json::Value;

/// What an expression reads from a request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub host: &'a str,
    pub headers: &'a HeaderMap,
    pub remote_addr: IpAddr,
    pub scheme: &'a str,
    pub server_port: u16,
    /// The authenticated consumer's username, once an authentication plugin has run.
    pub consumer_name: Option<&'a str>,
    /// The payload of the token jwt-auth verified, when it keeps it (`store_in_ctx`).
    pub jwt_payload: Option<&'a serde_json::Map<String, Value>>,
    /// The route's `:name` segments, and where in `path` each value lies.
    pub uri_params: &'a [(std::sync::Arc<str>, std::ops::Range<usize>)],
    /// The body's fields, read when a `vars` expression asks for them.
    pub post: Option<&'a PostArgs>,
    /// In the response phase: the response's status, and the node that answered.
    pub response: Option<Response<'a>>,
}

/// A request body's fields, for `post_arg_<name>` and `post_arg.<path>`: a form's
/// (`application/x-www-form-urlencoded`; a repeated name holds a list) or a JSON document's.
#[derive(Debug, Clone, PartialEq)]
pub struct PostArgs {
    form: bool,
    fields: Value,
}

impl PostArgs {
    /// Whether a body with these headers has fields to read, by its `Content-Type`.
    pub fn readable(headers: &HeaderMap) -> bool {
        Self::kind(headers).is_some()
    }

    /// `Some(true)` for a form, `Some(false)` for JSON.
    fn kind(headers: &HeaderMap) -> Option<bool> {
        let content_type = headers.get(http::header::CONTENT_TYPE)?.to_str().ok()?;
        let content_type = content_type.to_ascii_lowercase();
        if content_type.contains("application/x-www-form-urlencoded") {
            Some(true)
        } else if content_type.contains("application/json") {
            Some(false)
        } else {
            None
        }
    }

    /// The fields of `body`; none when its type is not one read or it does not parse.
    pub fn parse(headers: &HeaderMap, body: &[u8]) -> Option<PostArgs> {
        let form = Self::kind(headers)?;
        let fields = if form {
            let mut fields = serde_json::Map::new();
            let text = String::from_utf8_lossy(body);
            for pair in text.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let value = Value::String(decode(v).into_owned());
                match fields.entry(decode(k).into_owned()) {
                    serde_json::map::Entry::Vacant(slot) => drop(slot.insert(value)),
                    serde_json::map::Entry::Occupied(mut slot) => match slot.get_mut() {
                        Value::Array(items) => items.push(value),
                        first => *first = Value::Array(vec![first.take(), value]),
                    },
                }
            }
            Value::Object(fields)
        } else {
            serde_json::from_slice(body).ok()?
        };
        Some(PostArgs { form, fields })
    }
}

/// A JSON value as a variable's text: strings as they are, other scalars and structures as
/// JSON; none for null.
fn scalar(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::String(text) => Some(Cow::Borrowed(text)),
        Value::Null => None,
        other => Some(Cow::Owned(other.to_string())),
    }
}

/// Where `post_arg.<path>` looks in the body.
#[derive(Debug, Clone)]
pub enum BodyPath {
    /// `a.b`: object keys, one after another.
    Keys(Vec<String>),
    /// A JSONPath (the path has `[`, `*` or `..`): every match.
    Query(Box<serde_json_path::JsonPath>),
}

/// What the response phase adds to a request's variables.
#[derive(Debug, Clone, Copy)]
pub struct Response<'a> {
    pub status: u16,
    /// The upstream node that answered (host, port); none when the gateway answered itself.
    pub node: Option<(&'a str, u16)>,
}

impl<'a> Request<'a> {
    /// Query argument `name`, percent-decoded.
    pub fn arg(&self, name: &str) -> Option<Cow<'a, str>> {
        let query = self.query?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k) == name).then(|| decode(v))
        })
    }

    /// Cookie `name` from the `Cookie` headers.
    pub fn cookie(&self, name: &str) -> Option<&'a str> {
        self.headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name).then_some(v)
            })
    }
}

fn decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(high), Some(low)) => {
                        out.push((high * 16 + low) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// A request variable, by its nginx name.
#[derive(Debug, Clone)]
pub enum Var {
    Uri,
    RequestUri,
    Host,
    RemoteAddr,
    Method,
    Scheme,
    ServerPort,
    QueryString,
    ConsumerName,
    JwtClaim(String),
    UriParam(String),
    Status,
    BalancerIp,
    BalancerPort,
    UpstreamAddr,
    Arg(String),
    Header(String),
    Cookie(String),
    PostArg(String),
    PostField(BodyPath),
}

impl Var {
    pub fn parse(name: &str) -> Result<Var, String> {
        Ok(match name {
            "uri" => Var::Uri,
            "request_uri" => Var::RequestUri,
            "host" => Var::Host,
            "remote_addr" => Var::RemoteAddr,
            "request_method" => Var::Method,
            "scheme" => Var::Scheme,
            "server_port" => Var::ServerPort,
            "query_string" | "args" => Var::QueryString,
            "consumer_name" => Var::ConsumerName,
            "status" => Var::Status,
            "balancer_ip" => Var::BalancerIp,
            "balancer_port" => Var::BalancerPort,
            "upstream_addr" => Var::UpstreamAddr,
            _ => {
                if let Some(path) = name.strip_prefix("post_arg.") {
                    Var::PostField(if path.contains(['[', '*']) || path.contains("..") {
                        let query = serde_json_path::JsonPath::parse(&format!("$.{path}"))
                            .map_err(|e| format!("{name:?}: {e}"))?;
                        BodyPath::Query(Box::new(query))
                    } else {
                        BodyPath::Keys(path.split('.').map(str::to_string).collect())
                    })
                } else if let Some(field) = name.strip_prefix("post_arg_") {
                    Var::PostArg(field.to_string())
                } else if let Some(claim) = name.strip_prefix("jwt_claim_") {
                    Var::JwtClaim(claim.to_string())
                } else if let Some(param) = name.strip_prefix("uri_param_") {
                    Var::UriParam(param.to_string())
                } else if let Some(arg) = name.strip_prefix("arg_") {
                    Var::Arg(arg.to_string())
                } else if let Some(header) = name.strip_prefix("http_") {
                    Var::Header(header.to_ascii_lowercase().replace('_', "-"))
                } else if let Some(cookie) = name.strip_prefix("cookie_") {
                    Var::Cookie(cookie.to_string())
                } else {
                    return Err(format!("unknown variable {name:?}"));
                }
            }
        })
    }

    pub fn read<'a>(&self, r: &Request<'a>) -> Option<Cow<'a, str>> {
        match self {
            Var::Uri => Some(Cow::Borrowed(r.path)),
            Var::RequestUri => Some(match r.query {
                Some(q) => Cow::Owned(format!("{}?{q}", r.path)),
                None => Cow::Borrowed(r.path),
            }),
            Var::Host => Some(Cow::Borrowed(r.host)),
            Var::RemoteAddr => Some(Cow::Owned(r.remote_addr.to_string())),
            Var::Method => Some(Cow::Borrowed(r.method)),
            Var::Scheme => Some(Cow::Borrowed(r.scheme)),
            Var::ServerPort => Some(Cow::Owned(r.server_port.to_string())),
            Var::QueryString => r.query.map(Cow::Borrowed),
            Var::ConsumerName => r.consumer_name.map(Cow::Borrowed),
            Var::Status => r.response.map(|a| Cow::Owned(a.status.to_string())),
            Var::BalancerIp => r.response?.node.map(|(host, _)| Cow::Borrowed(host)),
            Var::BalancerPort => r
                .response?
                .node
                .map(|(_, port)| Cow::Owned(port.to_string())),
            Var::UpstreamAddr => r
                .response?
                .node
                .map(|(host, port)| Cow::Owned(format!("{host}:{port}"))),
            Var::UriParam(name) => r
                .uri_params
                .iter()
                .find(|(n, _)| **n == **name)
                .and_then(|(_, at)| r.path.get(at.clone()))
                .map(Cow::Borrowed),
            Var::JwtClaim(name) => match r.jwt_payload?.get(name)? {
                Value::String(text) => Some(Cow::Borrowed(text)),
                Value::Null => None,
                other => Some(Cow::Owned(other.to_string())),
            },
            Var::Arg(name) => r.arg(name),
            Var::Header(name) => r
                .headers
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .map(Cow::Borrowed),
            Var::Cookie(name) => r.cookie(name).map(Cow::Borrowed),
            Var::PostArg(name) => {
                let post = r.post.filter(|post| post.form)?;
                match post.fields.get(name)? {
                    Value::Array(values) => values.first().and_then(scalar),
                    value => scalar(value),
                }
            }
            Var::PostField(BodyPath::Query(query)) => {
                let found = query.query(&r.post?.fields).all();
                (!found.is_empty())
                    .then(|| Cow::Owned(Value::from_iter(found.into_iter().cloned()).to_string()))
            }
            Var::PostField(BodyPath::Keys(keys)) => {
                let found = keys
                    .iter()
                    .try_fold(&r.post?.fields, |at, key| at.get(key))?;
                scalar(found)
            }
        }
    }

    /// A list variable's items (a JSONPath's matches, a JSON array, a repeated form field);
    /// none for a variable that is not a list.
    fn items<'a>(&self, r: &Request<'a>) -> Option<Vec<Cow<'a, str>>> {
        let Var::PostField(path) = self else {
            return None;
        };
        let fields = &r.post?.fields;
        match path {
            BodyPath::Query(query) => Some(
                query
                    .query(fields)
                    .all()
                    .into_iter()
                    .filter_map(scalar)
                    .collect(),
            ),
            BodyPath::Keys(keys) => match keys.iter().try_fold(fields, |at, key| at.get(key))? {
                Value::Array(items) => Some(items.iter().filter_map(scalar).collect()),
                _ => None,
            },
        }
    }

    /// Whether reading the variable needs the request body.
    fn reads_body(&self) -> bool {
        matches!(self, Var::PostArg(_) | Var::PostField(_))
    }
}

#[derive(Debug, Clone)]
enum Op {
    Eq(String),
    Ne(String),
    Gt(f64),
    Ge(f64),
    Lt(f64),
    Le(f64),
    Regex(Regex),
    In(Vec<String>),
    Has(String),
    IpMatch(Vec<ipnet::IpNet>),
}

#[derive(Debug, Clone)]
enum Expr {
    All(Vec<Expr>),
    Any(Vec<Expr>),
    Not(Box<Expr>),
    Rule { var: Var, op: Op },
}

/// A compiled `vars` expression.
#[derive(Debug, Clone)]
pub struct Vars(Expr);

impl Vars {
    /// Compiles `value`; the error says which rule is wrong and why.
    pub fn compile(value: &Value) -> Result<Vars, String> {
        let Value::Array(items) = value else {
            return Err("must be an array of rules".into());
        };
        list(items).map(Vars)
    }

    pub fn matches(&self, request: &Request<'_>) -> bool {
        eval(&self.0, request)
    }

    /// Whether the expression reads the request body (`post_arg_*`), so it must be read before
    /// the expression is evaluated.
    pub fn reads_body(&self) -> bool {
        fn walk(expr: &Expr) -> bool {
            match expr {
                Expr::All(subs) | Expr::Any(subs) => subs.iter().any(walk),
                Expr::Not(sub) => walk(sub),
                Expr::Rule { var, .. } => var.reads_body(),
            }
        }
        walk(&self.0)
    }
}

fn list(items: &[Value]) -> Result<Expr, String> {
    let logical = items.first().and_then(Value::as_str).and_then(|s| match s {
        "AND" => Some((false, false)),
        "OR" => Some((true, false)),
        "!AND" => Some((false, true)),
        "!OR" => Some((true, true)),
        _ => None,
    });
    match logical {
        Some((any, negate)) => {
            let mut subs = Vec::new();
            for item in &items[1..] {
                let Value::Array(inner) = item else {
                    return Err(format!("{item}: expected a nested rule list"));
                };
                subs.push(nested(inner)?);
            }
            let expr = if any {
                Expr::Any(subs)
            } else {
                Expr::All(subs)
            };
            Ok(if negate {
                Expr::Not(Box::new(expr))
            } else {
                expr
            })
        }
        None => {
            let mut rules = Vec::new();
            for item in items {
                let Value::Array(inner) = item else {
                    return Err(format!("{item}: each rule must be an array"));
                };
                rules.push(nested(inner)?);
            }
            Ok(Expr::All(rules))
        }
    }
}

/// A nested array: either a rule (`["arg_a", "==", "1"]`) or another list.
fn nested(items: &[Value]) -> Result<Expr, String> {
    match items.first() {
        Some(Value::String(s)) if !matches!(s.as_str(), "AND" | "OR" | "!AND" | "!OR") => {
            rule(items)
        }
        _ => list(items),
    }
}

fn rule(items: &[Value]) -> Result<Expr, String> {
    let shown = Value::Array(items.to_vec());
    let (name, negate, op, value) = match items {
        [Value::String(name), Value::String(op), value] => (name, false, op.as_str(), value),
        [
            Value::String(name),
            Value::String(bang),
            Value::String(op),
            value,
        ] if bang == "!" => (name, true, op.as_str(), value),
        _ => return Err(format!("{shown}: expected [var, operator, value]")),
    };
    let var = Var::parse(name).map_err(|e| format!("{shown}: {e}"))?;
    let op = operator(op, value).map_err(|e| format!("{shown}: {e}"))?;
    let expr = Expr::Rule { var, op };
    Ok(if negate {
        Expr::Not(Box::new(expr))
    } else {
        expr
    })
}

fn text(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(format!("{value} must be a string or a number")),
    }
}

fn number(value: &Value) -> Result<f64, String> {
    match value {
        Value::Number(n) => n.as_f64().ok_or_else(|| format!("{n} is not a number")),
        Value::String(s) => s.parse().map_err(|_| format!("{s:?} is not a number")),
        _ => Err(format!("{value} is not a number")),
    }
}

fn operator(op: &str, value: &Value) -> Result<Op, String> {
    Ok(match op {
        "==" => Op::Eq(text(value)?),
        "~=" => Op::Ne(text(value)?),
        ">" => Op::Gt(number(value)?),
        ">=" => Op::Ge(number(value)?),
        "<" => Op::Lt(number(value)?),
        "<=" => Op::Le(number(value)?),
        "~~" | "~*" => {
            let pattern = text(value)?;
            let regex = RegexBuilder::new(&pattern)
                .case_insensitive(op == "~*")
                .build()
                .map_err(|e| format!("invalid regex {pattern:?}: {e}"))?;
            Op::Regex(regex)
        }
        "in" | "IN" => match value {
            Value::Array(items) => Op::In(items.iter().map(text).collect::<Result<_, _>>()?),
            _ => return Err("in: the value must be an array".into()),
        },
        "has" => Op::Has(text(value)?),
        "ipmatch" => {
            let items = match value {
                Value::Array(items) => items.clone(),
                one => vec![one.clone()],
            };
            Op::IpMatch(
                items
                    .iter()
                    .map(|v| parse_cidr(&text(v)?))
                    .collect::<Result<_, _>>()?,
            )
        }
        other => return Err(format!("unknown operator {other:?}")),
    })
}

fn eval(expr: &Expr, r: &Request<'_>) -> bool {
    match expr {
        Expr::All(subs) => subs.iter().all(|e| eval(e, r)),
        Expr::Any(subs) => subs.iter().any(|e| eval(e, r)),
        Expr::Not(e) => !eval(e, r),
        Expr::Rule {
            var,
            op: Op::Has(v),
        } => var
            .items(r)
            .is_some_and(|items| items.iter().any(|i| i == v)),
        Expr::Rule { var, op } => {
            let value = var.read(r);
            let Some(value) = value.as_deref() else {
                // A missing variable only satisfies "not equal".
                return matches!(op, Op::Ne(_));
            };
            match op {
                Op::Eq(v) => value == v,
                Op::Ne(v) => value != v,
                Op::Gt(n) => value.parse::<f64>().is_ok_and(|x| x > *n),
                Op::Ge(n) => value.parse::<f64>().is_ok_and(|x| x >= *n),
                Op::Lt(n) => value.parse::<f64>().is_ok_and(|x| x < *n),
                Op::Le(n) => value.parse::<f64>().is_ok_and(|x| x <= *n),
                Op::Regex(re) => re.is_match(value),
                Op::In(set) => set.iter().any(|v| v == value),
                Op::Has(_) => false, // evaluated above, on the variable's items
                Op::IpMatch(nets) => value
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| nets.iter().any(|n| n.contains(&ip))),
            }
        }
    }
}

/// Text with nginx-style `$var` references (and `$1`… for regex captures).
#[derive(Debug, Clone)]
pub struct Template(Vec<Piece>);

#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Var(Var),
    Capture(usize),
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            let (before, after) = rest.split_at(at);
            let after = &after[1..];
            // `${name}` or `$name`.
            let (name, tail) = if let Some(inner) = after.strip_prefix('{') {
                match inner.split_once('}') {
                    Some((name, tail)) => (name, tail),
                    None => ("", after),
                }
            } else {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                after.split_at(end)
            };
            if !before.is_empty() {
                pieces.push(Piece::Text(before.to_string()));
            }
            if name.is_empty() {
                pieces.push(Piece::Text("$".into()));
                rest = after;
                continue;
            }
            pieces.push(match name.parse::<usize>() {
                Ok(n) => Piece::Capture(n),
                Err(_) => Piece::Var(Var::parse(name)?),
            });
            rest = tail;
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Template(pieces))
    }

    pub fn render(&self, vars: &Request<'_>, captures: &[Option<&str>]) -> String {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Var(var) => {
                    if let Some(v) = var.read(vars) {
                        out.push_str(&v);
                    }
                }
                Piece::Capture(n) => {
                    if let Some(Some(c)) = captures.get(*n) {
                        out.push_str(c);
                    }
                }
            }
        }
        out
    }
}

/// An IP address (as a one-address block) or a CIDR block.
pub fn parse_cidr(text: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Ok(ipnet::IpNet::from(ip));
    }
    text.parse::<ipnet::IpNet>()
        .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(vars: Value, query: Option<&str>, headers: &[(&str, &str)]) -> bool {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let request = Request {
            method: "GET",
            path: "/orders/7",
            query,
            host: "api.example.com",
            headers: &map,
            remote_addr: "10.1.2.3".parse().unwrap(),
            scheme: "http",
            server_port: 9080,
            consumer_name: None,
            jwt_payload: None,
            uri_params: &[],
            post: None,
            response: None,
        };
        Vars::compile(&vars).unwrap().matches(&request)
    }

    #[test]
    fn apisix_operators() {
        assert!(check(
            json!([["arg_name", "==", "json"]]),
            Some("name=json"),
            &[]
        ));
        assert!(!check(
            json!([["arg_name", "==", "json"]]),
            Some("name=xml"),
            &[]
        ));
        assert!(check(json!([["arg_name", "~=", "json"]]), None, &[]));
        assert!(check(json!([["arg_age", ">", 18]]), Some("age=19"), &[]));
        assert!(!check(json!([["arg_age", "<", "18"]]), Some("age=19"), &[]));
        assert!(check(
            json!([["http_x_version", "~~", "^v[0-9]+$"]]),
            None,
            &[("x-version", "v12")]
        ));
        assert!(check(json!([["uri", "~*", "^/ORDERS"]]), None, &[]));
        assert!(check(
            json!([["request_method", "IN", ["GET", "POST"]]]),
            None,
            &[]
        ));
        // `has` looks for an item of a list; a plain variable holds none (lua-resty-expr's).
        assert!(!check(json!([["host", "has", "example"]]), None, &[]));
        assert!(check(
            json!([["remote_addr", "ipmatch", ["10.0.0.0/8"]]]),
            None,
            &[]
        ));
        assert!(check(json!([["arg_a", "!", "==", "1"]]), Some("a=2"), &[]));
        assert!(check(
            json!([["cookie_ab", "==", "b"]]),
            None,
            &[("cookie", "x=1; ab=b")]
        ));
    }

    #[test]
    fn logical_lists() {
        let or = json!(["OR", ["arg_a", "==", "1"], ["arg_b", "==", "1"]]);
        assert!(check(or.clone(), Some("b=1"), &[]));
        assert!(!check(or, Some("c=1"), &[]));
        let not_and = json!(["!AND", ["arg_a", "==", "1"], ["arg_b", "==", "1"]]);
        assert!(check(not_and.clone(), Some("a=1"), &[]));
        assert!(!check(not_and, Some("a=1&b=1"), &[]));
        let nested = json!([
            ["arg_a", "==", "1"],
            ["OR", ["arg_b", "==", "1"], ["arg_c", "==", "1"]]
        ]);
        assert!(check(nested, Some("a=1&c=1"), &[]));
    }

    #[test]
    fn bad_rules_are_named() {
        for (vars, expect) in [
            (json!([["arg_a", "~~", "("]]), "invalid regex"),
            (json!([["arg_a", "=~", "1"]]), "unknown operator"),
            (json!([["nope", "==", "1"]]), "unknown variable"),
            (json!([["arg_a", "=="]]), "expected [var, operator, value]"),
            (json!({"a": 1}), "must be an array"),
        ] {
            let e = Vars::compile(&vars).unwrap_err();
            assert!(e.contains(expect), "{e}");
        }
    }

    /// Rules over a body of `content_type`.
    fn check_body(vars: Value, content_type: &str, body: &str) -> bool {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, content_type.parse().unwrap());
        let post = PostArgs::parse(&headers, body.as_bytes());
        let request = Request {
            method: "POST",
            path: "/_post",
            query: None,
            host: "",
            headers: &headers,
            remote_addr: "10.1.2.3".parse().unwrap(),
            scheme: "http",
            server_port: 9080,
            consumer_name: None,
            jwt_payload: None,
            uri_params: &[],
            post: post.as_ref(),
            response: None,
        };
        let vars = Vars::compile(&vars).unwrap();
        assert!(vars.reads_body());
        vars.matches(&request)
    }

    #[test]
    fn body_fields_as_apisix_reads_them() {
        let form = "application/x-www-form-urlencoded";
        // router-radixtree.md: a form field; only a form has `post_arg_<name>`.
        let name_is_json = json!([["post_arg_name", "==", "json"]]);
        assert!(check_body(name_is_json.clone(), form, "name=json&x=1"));
        assert!(check_body(
            name_is_json.clone(),
            "application/x-www-form-urlencoded; charset=utf-8",
            "name=json"
        ));
        assert!(!check_body(name_is_json.clone(), form, "name=xml"));
        assert!(!check_body(
            name_is_json.clone(),
            "application/json",
            r#"{"name":"json"}"#
        ));
        assert!(
            check_body(json!([["post_arg_a", "==", "x y"]]), form, "a=x+y&a=2"),
            "the first of a repeated field"
        );
        // `post_arg.<path>` on JSON: keys, nested keys, and a JSONPath whose matches `has` reads.
        let json = "application/json";
        assert!(check_body(
            json!([["post_arg.name", "==", "xyz"]]),
            json,
            r#"{"name":"xyz"}"#
        ));
        assert!(check_body(
            json!([["post_arg.model.name", "==", "openai"]]),
            json,
            r#"{"model":{"name":"openai"}}"#
        ));
        assert!(check_body(
            json!([["post_arg.n", ">", 2]]),
            json,
            r#"{"n":3}"#
        ));
        assert!(!check_body(
            json!([["post_arg.name", "==", "xyz"]]),
            json,
            "not json"
        ));
        let image = json!([["post_arg.messages[*].content[*].type", "has", "image_url"]]);
        let body = r#"{"model":"deepseek","messages":[{"role":"system","content":[
            {"text":"You are a mathematician","type":"text"},
            {"text":"You are a mathematician","type":"image_url"}]}]}"#;
        assert!(check_body(image.clone(), json, body));
        assert!(!check_body(
            image,
            json,
            &body.replace("image_url", "audio")
        ));
        assert!(check_body(
            json!([["post_arg.tags", "has", "b"]]),
            json,
            r#"{"tags":["a","b"]}"#
        ));
        assert!(
            check_body(json!([["post_arg.id", "==", "1"]]), form, "id=1"),
            "forms too"
        );
        assert!(Vars::compile(&json!([["post_arg.a[", "==", "1"]])).is_err());
        assert!(
            !Vars::compile(&json!([["arg_a", "==", "1"]]))
                .unwrap()
                .reads_body()
        );
    }

    #[test]
    fn query_decoding() {
        assert!(check(
            json!([["arg_q", "==", "a b/c"]]),
            Some("q=a+b%2Fc"),
            &[]
        ));
        assert!(check(json!([["arg_q", "==", "%"]]), Some("q=%"), &[]));
    }
}
