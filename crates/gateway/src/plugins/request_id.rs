//! `request-id` (priority 12015): gives every request an id in a header (`X-Request-Id`),
//! keeping one the client sent (an empty one is replaced), passes it upstream and, by default,
//! back in the response. Algorithms: `uuid` (v4), `uuidv7` (time-ordered), `nanoid` (21
//! URL-safe characters), `ksuid` (27 base62 characters, time-ordered: Segment's K-Sortable
//! Unique IDs) and `range_id` (`length` characters from `char_set`).

use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use rand::Rng;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::Site;
use crate::runtime::phases::{Ctx, Flow, Plugin, ResponseHead};

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
    Uuidv7,
    Nanoid,
    RangeId,
    Ksuid,
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
    Uuidv7,
    Ksuid,
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
        Algorithm::Uuidv7 => Generator::Uuidv7,
        Algorithm::Ksuid => Generator::Ksuid,
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
            Generator::Uuidv7 => uuid::Uuid::now_v7().to_string(),
            Generator::Ksuid => ksuid(std::time::SystemTime::now(), rand::random()),
            Generator::Chars(chars, length) => {
                let mut rng = rand::rng();
                (0..*length)
                    .map(|_| chars[rng.random_range(0..chars.len())])
                    .collect()
            }
        }
    }
}

/// The seconds KSUID timestamps count from (2014-05-13T16:53:20Z).
const KSUID_EPOCH: u64 = 1_400_000_000;

/// A KSUID (Segment's format): 4 bytes of seconds since [`KSUID_EPOCH`] and 16 random bytes,
/// as 27 base62 digits (`0-9A-Za-z`, most significant first, zero-padded), so ids sort by time.
fn ksuid(now: std::time::SystemTime, random: [u8; 16]) -> String {
    const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let seconds = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .saturating_sub(KSUID_EPOCH) as u32;
    let mut number = [0u8; 20];
    number[..4].copy_from_slice(&seconds.to_be_bytes());
    number[4..].copy_from_slice(&random);
    // Long division by 62, one base-256 digit at a time, 27 times.
    let mut digits = [b'0'; 27];
    for slot in digits.iter_mut().rev() {
        let mut remainder = 0u32;
        for byte in number.iter_mut() {
            let value = remainder * 256 + u32::from(*byte);
            *byte = (value / 62) as u8;
            remainder = value % 62;
        }
        *slot = DIGITS[remainder as usize];
    }
    String::from_utf8_lossy(&digits).into_owned()
}

impl Plugin for RequestId {
    fn name(&self) -> &'static str {
        "request-id"
    }

    fn priority(&self) -> i32 {
        12015
    }

    fn rewrite<'a>(&'a self, ctx: &'a mut Ctx) -> Flow<'a> {
        let given = ctx.headers.get(&self.header).is_some_and(|v| !v.is_empty());
        if !given && let Ok(id) = HeaderValue::from_str(&self.generate()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Segment's own example: the KSUID of 2017-10-10T04:00:47Z (timestamp 107608047) and this
    /// payload.
    #[test]
    fn ksuids_are_segments() {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(107_608_047 + KSUID_EPOCH);
        let payload = 0xB5A1CD34B5F99D1154FB6853345C9735u128.to_be_bytes();
        assert_eq!(ksuid(at, payload), "0ujtsYcgvSTl8PAuAdqWYSMnLOv");
        let zero = ksuid(std::time::UNIX_EPOCH, [0; 16]);
        assert_eq!(
            zero, "000000000000000000000000000",
            "before the epoch: zero"
        );
        let later = ksuid(std::time::SystemTime::now(), [0; 16]);
        assert!(later > ksuid(at, [0xff; 16]), "ids sort by time");
    }
}
