//! `request-id` (priority 12015): gives every request an id in a header (`X-Request-Id`),
//! keeping one the client sent, passes it upstream and, by default, back in the response.
//! Algorithms: `uuid` (v4), `nanoid` (21 URL-safe characters) and `range_id` (`length`
//! characters from `char_set`).

use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use rand::Rng;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::{Ctx, Flow, Plugin, ResponseHead, Site};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    #[serde(default = "default_header")]
    header_name: String,
    #[serde(default = "yes")]
    include_in_response: bool,
    #[serde(default)]
    algorithm: Algorithm,
    range_id: Option<RangeId>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Algorithm {
    #[default]
    Uuid,
    Nanoid,
    RangeId,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RangeId {
    #[serde(default = "default_char_set")]
    char_set: String,
    #[serde(default = "default_length")]
    length: usize,
}

fn default_header() -> String {
    "X-Request-Id".into()
}

fn yes() -> bool {
    true
}

fn default_char_set() -> String {
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789".into()
}

fn default_length() -> usize {
    16
}

const NANOID_ALPHABET: &str = "_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

#[derive(Debug)]
enum Generator {
    Uuid,
    /// Random characters from the set.
    Chars(Vec<char>, usize),
}

#[derive(Debug)]
struct RequestId {
    header: HeaderName,
    include_in_response: bool,
    generator: Generator,
}

pub(super) fn build(config: &Value, _site: &Site) -> Result<Arc<dyn Plugin>, String> {
    let c: Config = crate::resource::parse(config).map_err(|e| e.0)?;
    let header = HeaderName::from_bytes(c.header_name.as_bytes())
        .map_err(|_| format!("header_name: {:?} is not a header name", c.header_name))?;
    let generator = match c.algorithm {
        Algorithm::Uuid => Generator::Uuid,
        Algorithm::Nanoid => Generator::Chars(NANOID_ALPHABET.chars().collect(), 21),
        Algorithm::RangeId => {
            let range = c.range_id.unwrap_or(RangeId {
                char_set: default_char_set(),
                length: default_length(),
            });
            let chars: Vec<char> = range.char_set.chars().collect();
            let printable = chars.iter().all(|c| c.is_ascii_graphic());
            if chars.len() < 6 || !printable {
                return Err("range_id.char_set: at least 6 printable ASCII characters".into());
            }
            if range.length == 0 || range.length > 128 {
                return Err("range_id.length: 1 to 128 expected".into());
            }
            Generator::Chars(chars, range.length)
        }
    };
    Ok(Arc::new(RequestId {
        header,
        include_in_response: c.include_in_response,
        generator,
    }))
}

impl RequestId {
    fn generate(&self) -> String {
        match &self.generator {
            Generator::Uuid => uuid::Uuid::new_v4().to_string(),
            Generator::Chars(chars, length) => {
                let mut rng = rand::rng();
                (0..*length)
                    .map(|_| chars[rng.random_range(0..chars.len())])
                    .collect()
            }
        }
    }
}

impl Plugin for RequestId {
    fn name(&self) -> &'static str {
        "request-id"
    }

    fn priority(&self) -> i32 {
        12015
    }

    fn rewrite<'a>(&'a self, ctx: &'a mut Ctx) -> Flow<'a> {
        if !ctx.headers.contains_key(&self.header)
            && let Ok(id) = HeaderValue::from_str(&self.generate())
        {
            ctx.headers.insert(self.header.clone(), id);
        }
        Flow::Next
    }

    fn response(&self, ctx: &Ctx, head: &mut ResponseHead) {
        if self.include_in_response
            && let Some(id) = ctx.headers.get(&self.header)
        {
            head.headers().insert(self.header.clone(), id.clone());
        }
    }
}
