//! Consumers as the data plane sees them: who a credential belongs to, and the plugins that
//! follow a consumer onto every route it calls.
//!
//! A client is identified by an authentication plugin's credential, configured on the
//! consumer itself (`plugins`) or under `/consumers/{username}/credentials/{id}`. Credentials
//! are indexed per plugin by their identifying field (key-auth's `key`, basic-auth's
//! `username`), so finding the consumer for a request is one hash lookup.

use std::collections::HashMap;

use crate::FastMap;
use std::sync::Arc;

use serde_json::Value;

use crate::resource::{self, Invalid, Kind, Plugins};
use crate::runtime::phases::{Chain, PluginFactory, Prepared};

#[derive(Debug)]
pub struct Consumer {
    pub username: String,
    pub group_id: Option<String>,
    /// `labels.custom_id`, sent upstream as `X-Consumer-Custom-Id`.
    pub custom_id: Option<String>,
    /// The consumer's plugins over its group's, authentication plugins left out.
    pub plugins: Chain,
}

#[derive(Debug)]
pub struct Credential {
    pub consumer: Arc<Consumer>,
    /// The credential's id; None for one configured on the consumer itself.
    pub id: Option<Arc<str>>,
    /// The authentication plugin's consumer-side configuration.
    pub config: Value,
    /// What the plugin compiled from it (jwt-auth's keys).
    pub prepared: Prepared,
}

#[derive(Debug, Default)]
pub struct Consumers {
    by_name: FastMap<String, Arc<Consumer>>,
    /// Plugin name → identity → credential.
    credentials: FastMap<String, FastMap<String, Credential>>,
}

/// Reports a document left out of the snapshot.
pub type Skip<'a> = &'a dyn Fn(Kind, &str, Invalid);

impl Consumers {
    /// Compiles consumer groups, consumers and credentials (each as `(id, document)`); a
    /// document that does not compile is reported to `skip` and left out.
    pub fn compile(
        groups: &[(&str, &Value)],
        consumers: &[(&str, &Value)],
        credentials: &[(&str, &Value)],
        metadata: &HashMap<String, Value>,
        plugins: &dyn PluginFactory,
        skip: Skip<'_>,
    ) -> Consumers {
        let mut group_plugins: HashMap<&str, Plugins> = HashMap::new();
        for (id, value) in groups {
            match resource::parse::<resource::PluginSet>(value) {
                Ok(group) => {
                    group_plugins.insert(id, group.plugins);
                }
                Err(e) => skip(Kind::ConsumerGroups, id, e),
            }
        }
        let mut compiled = Consumers::default();
        let empty = Plugins::new();
        for (id, value) in consumers {
            let built = resource::parse::<resource::Consumer>(value).and_then(|c| {
                let group = match &c.group_id {
                    Some(gid) => Some(group_plugins.get(gid.0.as_str()).ok_or_else(|| {
                        Invalid(format!("consumer group [{}] does not exist", gid.0))
                    })?),
                    None => None,
                };
                let own = c.plugins.as_ref().unwrap_or(&empty);
                let group_key = c
                    .group_id
                    .as_ref()
                    .map(|g| Kind::ConsumerGroups.key(&g.0))
                    .unwrap_or_default();
                let consumer = Arc::new(Consumer {
                    username: c.username.clone(),
                    group_id: c.group_id.as_ref().map(|g| g.0.clone()),
                    custom_id: c.labels.as_ref().and_then(|l| l.get("custom_id")).cloned(),
                    plugins: Chain::build(
                        plugins,
                        &[
                            (&group_key, group.unwrap_or(&empty)),
                            (&Kind::Consumers.key(id), own),
                        ],
                        true,
                        metadata,
                    )?,
                });
                Ok((consumer, own.clone()))
            });
            match built {
                Ok((consumer, own)) => {
                    compiled.add_credentials(plugins, &consumer, None, &own);
                    compiled.by_name.insert(consumer.username.clone(), consumer);
                }
                Err(e) => skip(Kind::Consumers, id, e),
            }
        }
        for (id, value) in credentials {
            let added = resource::parse::<resource::Credential>(value).and_then(|c| {
                let (username, cid) = id.split_once("/credentials/").unwrap_or((id, id));
                let consumer = compiled
                    .get(username)
                    .ok_or_else(|| Invalid(format!("consumer [{username}] does not exist")))?;
                compiled.add_credentials(plugins, &consumer, Some(Arc::from(cid)), &c.plugins);
                Ok(())
            });
            if let Err(e) = added {
                skip(Kind::Credentials, id, e);
            }
        }
        compiled
    }

    fn add_credentials(
        &mut self,
        plugins: &dyn PluginFactory,
        consumer: &Arc<Consumer>,
        id: Option<Arc<str>>,
        on: &Plugins,
    ) {
        for (plugin, config) in on {
            let Some(field) = plugins.identity_field(plugin) else {
                continue;
            };
            let config = &*resource::with_secrets(config);
            let Some(identity) = config.get(field).and_then(Value::as_str) else {
                continue;
            };
            let prepared = match plugins.prepare(plugin, config) {
                Ok(prepared) => prepared,
                Err(e) => {
                    tracing::warn!(plugin, consumer = consumer.username, error = %e.0, "credential left out");
                    continue;
                }
            };
            let index = self.credentials.entry(plugin.clone()).or_default();
            if index.contains_key(identity) {
                tracing::warn!(
                    plugin,
                    consumer = consumer.username,
                    "a credential with the same {field} belongs to another consumer; left out"
                );
                continue;
            }
            index.insert(
                identity.to_string(),
                Credential {
                    consumer: consumer.clone(),
                    id: id.clone(),
                    config: config.clone(),
                    prepared,
                },
            );
        }
    }

    pub fn get(&self, username: &str) -> Option<Arc<Consumer>> {
        self.by_name.get(username).cloned()
    }

    /// The credential of `plugin` whose identifying field is `identity`.
    pub fn find(&self, plugin: &str, identity: &str) -> Option<&Credential> {
        self.credentials.get(plugin)?.get(identity)
    }
}
