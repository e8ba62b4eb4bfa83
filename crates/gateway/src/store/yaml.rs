//! Standalone mode: the configuration is one `apisix.yaml` file in APISIX's format, re-read
//! when it changes. The file is read-only for the gateway (no Admin API writes it).
//!
//! ```yaml
//! routes:
//!   - id: 1
//!     uri: /hello
//!     upstream_id: 1
//! upstreams:
//!   - id: 1
//!     nodes:
//!       "127.0.0.1:1980": 1
//! #END
//! ```
//!
//! As in APISIX, the file counts only once it ends with the `#END` line, so a half-written
//! file is never applied; a file that does not parse is logged and the last good one keeps
//! serving. Items without an `id` are numbered by position (consumers are named by
//! `username`). `${{NAME}}` (or `${{NAME:=default}}`) is the environment variable `NAME`,
//! substituted in the text before it is read, as APISIX does (so `"${{PORT}}"` stays text and
//! `${{PORT}}` a number); a variable neither set nor given a default refuses the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Entry, StoreError, Update};
use crate::resource::Kind;

/// How often the file's modification time and size are looked at (APISIX: every second).
const POLL: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct YamlFile {
    path: PathBuf,
    loaded: ArcSwap<Loaded>,
}

#[derive(Debug, Default)]
struct Loaded {
    /// Bumped by every change of the file that was applied.
    revision: i64,
    config: BTreeMap<String, Value>,
}

impl YamlFile {
    pub fn new(path: PathBuf) -> Self {
        YamlFile {
            path,
            loaded: ArcSwap::default(),
        }
    }

    pub fn read_only(&self) -> StoreError {
        StoreError::ReadOnly(self.path.display().to_string())
    }

    pub fn revision(&self) -> i64 {
        self.loaded.load().revision
    }

    pub fn get(&self, key: &str) -> Option<Entry> {
        let loaded = self.loaded.load();
        loaded
            .config
            .get(key)
            .map(|value| entry(key, value, loaded.revision))
    }

    pub fn list(&self, prefix: &str) -> Vec<Entry> {
        let loaded = self.loaded.load();
        let under = loaded.config.range(prefix.to_string()..);
        under
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, value)| entry(key, value, loaded.revision))
            .collect()
    }

    /// Reports the file's configuration whenever it changes, until `shutdown`.
    pub async fn follow(&self, updates: mpsc::Sender<Update>, shutdown: CancellationToken) {
        let mut seen = None;
        loop {
            let stamp = stamp(&self.path).await;
            if stamp != seen {
                seen = stamp;
                match tokio::fs::read_to_string(&self.path)
                    .await
                    .map_err(|e| e.to_string())
                {
                    Ok(text) => match parse(&text) {
                        Ok(config) => {
                            let revision = self.loaded.load().revision + 1;
                            self.loaded.store(std::sync::Arc::new(Loaded {
                                revision,
                                config: config.clone(),
                            }));
                            if updates
                                .send(Update::Reset { revision, config })
                                .await
                                .is_err()
                            {
                                return;
                            }
                            tracing::info!(file = %self.path.display(), revision, "gateway: configuration file applied");
                        }
                        Err(e) => {
                            tracing::warn!(file = %self.path.display(), error = %e, "gateway: configuration file not applied; serving the last good one")
                        }
                    },
                    Err(e) => {
                        tracing::warn!(file = %self.path.display(), error = %e, "gateway: configuration file unreadable")
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

/// What identifies a version of the file without reading it.
async fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = tokio::fs::metadata(path).await.ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn entry(key: &str, value: &Value, revision: i64) -> Entry {
    Entry {
        key: key.to_string(),
        value: value.clone(),
        created_index: revision,
        modified_index: revision,
    }
}

/// The file's resources by key (`/apisix/routes/1`), its variables from the environment.
pub fn parse(text: &str) -> Result<BTreeMap<String, Value>, String> {
    parse_with(text, |name| std::env::var(name).ok())
}

/// `text` with each `${{NAME}}` or `${{NAME:=default}}` replaced by what `env` says of `NAME`
/// (else the default); an error names a variable with neither.
fn substitute(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    static VARIABLE: std::sync::LazyLock<Option<regex::Regex>> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"\$\{\{\s*([A-Za-z0-9_]+)(?:\s*:=\s*(.*?))?\s*\}\}").ok()
    });
    let Some(variable) = VARIABLE.as_ref() else {
        return Ok(text.to_string());
    };
    let mut missing = None;
    let replaced = variable.replace_all(text, |found: &regex::Captures<'_>| {
        let name = &found[1];
        env(name)
            .or_else(|| found.get(2).map(|d| d.as_str().to_string()))
            .unwrap_or_else(|| {
                missing.get_or_insert_with(|| name.to_string());
                String::new()
            })
    });
    match missing {
        Some(name) => Err(format!("can't find environment variable {name}")),
        None => Ok(replaced.into_owned()),
    }
}

fn parse_with(
    text: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, Value>, String> {
    if !text.lines().any(|line| line.trim_end() == "#END") {
        return Err("no #END line yet (the file is complete only once it ends with #END)".into());
    }
    let text = substitute(text, env)?;
    let document: Value = serde_yaml_ng::from_str(&text).map_err(|e| e.to_string())?;
    let sections = match document {
        Value::Object(sections) => sections,
        Value::Null => serde_json::Map::new(), // only comments
        _ => return Err("expected a mapping of resource kinds (routes, upstreams, ...)".into()),
    };
    let mut config = BTreeMap::new();
    for (section, items) in sections {
        let kind = Kind::from_segment(&section)
            .ok_or_else(|| format!("{section}: not a resource kind APISIX knows"))?;
        let Value::Array(items) = items else {
            return Err(format!("{section}: expected a list"));
        };
        for (position, item) in items.into_iter().enumerate() {
            let id = match item.get(kind.id_field()) {
                Some(Value::String(id)) => id.clone(),
                Some(Value::Number(id)) => id.to_string(),
                None => (position + 1).to_string(),
                Some(_) => {
                    return Err(format!(
                        "{section}[{position}].{}: expected a string or number",
                        kind.id_field()
                    ));
                }
            };
            if config.insert(kind.key(&id), item).is_some() {
                return Err(format!("{section}[{position}]: id {id} appears twice"));
            }
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_apisix_standalone_files() {
        let config = parse(
            "routes:\n  - uri: /hello\n    upstream_id: 1\n  - id: r2\n    uri: /two\n\
             upstreams:\n  - id: 1\n    nodes:\n      \"127.0.0.1:1980\": 1\n    type: roundrobin\n\
             consumers:\n  - username: jack\n#END\n",
        )
        .unwrap();
        let keys: Vec<&str> = config.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "/apisix/consumers/jack",
                "/apisix/routes/1",
                "/apisix/routes/r2",
                "/apisix/upstreams/1"
            ]
        );
        assert_eq!(config["/apisix/upstreams/1"]["nodes"]["127.0.0.1:1980"], 1);
    }

    /// APISIX's example: `"${{UPSTREAM_ADDR}}": 1`; a default with `:=`; one neither set nor
    /// defaulted refuses the file.
    #[test]
    fn environment_variables_are_substituted() {
        let env = |name: &str| (name == "UPSTREAM_ADDR").then(|| "127.0.0.1:1980".to_string());
        let text = "routes:\n  -\n    uri: /hello\n    priority: ${{PRIORITY:=3}}\n    upstream:\n        \
                    nodes:\n            \"${{UPSTREAM_ADDR}}\": 1\n        type: roundrobin\n#END\n";
        let config = parse_with(text, env).unwrap();
        let route = &config["/apisix/routes/1"];
        assert_eq!(route["upstream"]["nodes"]["127.0.0.1:1980"], 1);
        assert_eq!(route["priority"], 3, "a number, as the text became");
        let missing = parse_with("routes:\n  - uri: ${{NOWHERE}}\n#END\n", env).unwrap_err();
        assert!(missing.contains("NOWHERE"), "{missing}");
    }

    #[test]
    fn half_written_and_wrong_files_are_refused() {
        assert!(
            parse("routes:\n  - uri: /a\n")
                .unwrap_err()
                .contains("#END")
        );
        assert!(parse("rutes: []\n#END\n").unwrap_err().contains("rutes"));
        assert!(
            parse("routes: {}\n#END\n")
                .unwrap_err()
                .contains("expected a list")
        );
        let twice = "routes:\n  - id: 1\n    uri: /a\n  - id: 1\n    uri: /b\n#END\n";
        assert!(parse(twice).unwrap_err().contains("twice"));
        assert!(parse("#END\n").unwrap().is_empty());
    }
}
