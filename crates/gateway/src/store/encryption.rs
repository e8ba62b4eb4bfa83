//! APISIX's `data_encryption` at the etcd store's edge, so an etcd that APISIX writes reads
//! the same here, and what Axle writes APISIX reads: the fields APISIX's plugins list as
//! `encrypt_fields` (key-auth's `key`, basic-auth's `password`, jwt-auth's `secret`, the limits'
//! `redis_password`) and SSL private keys are kept in etcd encrypted — AES-CBC with the
//! keyring's first key as key and IV (AES-128 for a 16-byte key, AES-256 for a 32-byte one),
//! base64 — and decrypted with whichever key of the keyring opens them. A value that none
//! opens is left as it is (written before encryption was on, as APISIX leaves it).

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;

use crate::resource::{self, Kind};

/// The plugin fields APISIX encrypts (its plugins' `encrypt_fields`), for the plugins Axle runs.
const ENCRYPTED: [(&str, &str); 7] = [
    ("key-auth", "key"),
    ("basic-auth", "password"),
    ("jwt-auth", "secret"),
    ("limit-count", "redis_password"),
    ("limit-count", "sentinel_password"),
    ("limit-req", "redis_password"),
    ("limit-conn", "redis_password"),
];

/// The keys of `data_encryption.keyring`, the first encrypting, and whether plugin fields are
/// encrypted (`enable_encrypt_fields`; SSL private keys are, whenever there is a key).
#[derive(Debug, Clone)]
pub struct Keyring {
    keys: Vec<Vec<u8>>,
    fields: bool,
}

impl Keyring {
    /// The keyring from its keys (16 or 32 bytes of text each); an error names a wrong one.
    pub fn new(keys: &[String], fields: bool) -> Result<Keyring, String> {
        for key in keys {
            if !matches!(key.len(), 16 | 32) {
                return Err(format!(
                    "keyring: {} bytes is not an AES-128 or AES-256 key (16 or 32 bytes)",
                    key.len()
                ));
            }
        }
        let keys = keys.iter().map(|k| k.as_bytes().to_vec()).collect();
        Ok(Keyring { keys, fields })
    }

    /// `text` encrypted with the first key (as it is, with an empty keyring).
    pub fn encrypt(&self, text: &str) -> String {
        let Some(key) = self.keys.first() else {
            return text.to_string();
        };
        let sealed = match key.len() {
            16 => cbc::Encryptor::<aes::Aes128>::new_from_slices(key, key)
                .map(|c| c.encrypt_padded_vec_mut::<Pkcs7>(text.as_bytes())),
            _ => cbc::Encryptor::<aes::Aes256>::new_from_slices(key, &key[..16])
                .map(|c| c.encrypt_padded_vec_mut::<Pkcs7>(text.as_bytes())),
        };
        sealed.map_or_else(|_| text.to_string(), |sealed| B64.encode(sealed))
    }

    /// `text` decrypted by the first key that opens it; none when none does.
    pub fn decrypt(&self, text: &str) -> Option<String> {
        let sealed = B64.decode(text).ok()?;
        self.keys.iter().find_map(|key| {
            let opened = match key.len() {
                16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(key, key)
                    .ok()?
                    .decrypt_padded_vec_mut::<Pkcs7>(&sealed),
                _ => cbc::Decryptor::<aes::Aes256>::new_from_slices(key, &key[..16])
                    .ok()?
                    .decrypt_padded_vec_mut::<Pkcs7>(&sealed),
            };
            String::from_utf8(opened.ok()?).ok()
        })
    }

    /// The document at `key` as etcd keeps it: its encrypted fields encrypted.
    pub fn seal(&self, key: &str, value: &mut Value) {
        self.walk(key, value, &|text| Some(self.encrypt(text)), true);
    }

    /// The document at `key` as read from etcd: its encrypted fields decrypted where the keyring
    /// opens them.
    pub fn open(&self, key: &str, value: &mut Value) {
        self.walk(key, value, &|text| self.decrypt(text), false);
    }

    /// Applies `change` to each field of the document at `key` that APISIX encrypts. An SSL's
    /// private keys are sealed only in their PEM form and opened only when not in it.
    fn walk(
        &self,
        key: &str,
        value: &mut Value,
        change: &dyn Fn(&str) -> Option<String>,
        sealing: bool,
    ) {
        let Some((kind, _)) = resource::parse_key(key) else {
            return;
        };
        let apply = |slot: &mut Value| {
            if let Value::String(text) = slot
                && let Some(changed) = change(text)
            {
                *text = changed;
            }
        };
        if kind == Kind::Ssls {
            let pem = |v: &Value| v.as_str().is_some_and(|t| t.starts_with("---"));
            let apply_unless_done = |slot: &mut Value| {
                if pem(slot) == sealing {
                    apply(slot);
                }
            };
            if let Some(slot) = value.get_mut("key") {
                apply_unless_done(slot);
            }
            for slot in value
                .get_mut("keys")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                apply_unless_done(slot);
            }
            return;
        }
        let Some(plugins) = value.get_mut("plugins").and_then(Value::as_object_mut) else {
            return;
        };
        if !self.fields {
            return;
        }
        for (plugin, field) in ENCRYPTED {
            if let Some(slot) = plugins.get_mut(plugin).and_then(|c| c.get_mut(field)) {
                apply(slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn apisix_default() -> Keyring {
        Keyring::new(
            &["qeddd145sfvddff3".into(), "edd1c9f0985e76a2".into()],
            true,
        )
        .unwrap()
    }

    /// The ciphertexts APISIX's own tests (t/node/data_encrypt.t) find in etcd for these values
    /// under the keyring `edd1c9f0985e76a2`.
    #[test]
    fn values_are_sealed_and_opened_as_apisix_does() {
        let keyring = Keyring::new(&["edd1c9f0985e76a2".into()], true).unwrap();
        assert_eq!(keyring.encrypt("bar"), "77+NmbYqNfN+oLm0aX5akg==");
        assert_eq!(
            keyring.decrypt("vU/ZHVJw7b0XscDJ1Fhtig==").as_deref(),
            Some("auth-two")
        );
        // APISIX's default keyring: the first key seals, either opens.
        assert_eq!(
            apisix_default()
                .decrypt("77+NmbYqNfN+oLm0aX5akg==")
                .as_deref(),
            Some("bar")
        );
        assert_eq!(apisix_default().decrypt("not sealed"), None);
        let roundtrip = apisix_default().encrypt("jack-key");
        assert_eq!(
            apisix_default().decrypt(&roundtrip).as_deref(),
            Some("jack-key")
        );
        assert!(Keyring::new(&["short".into()], true).is_err());
    }

    #[test]
    fn only_the_fields_apisix_encrypts_are_touched() {
        let keyring = apisix_default();
        let mut consumer = json!({"username": "jack", "plugins": {
            "key-auth": {"key": "jack-key"}, "basic-auth": {"username": "jack", "password": "p"}}});
        let plain = consumer.clone();
        keyring.seal("/apisix/consumers/jack", &mut consumer);
        assert_ne!(consumer["plugins"]["key-auth"]["key"], "jack-key");
        assert_eq!(consumer["plugins"]["basic-auth"]["username"], "jack");
        keyring.open("/apisix/consumers/jack", &mut consumer);
        assert_eq!(consumer, plain);

        let mut ssl =
            json!({"cert": "-----BEGIN CERTIFICATE-----", "key": "-----BEGIN PRIVATE KEY-----x"});
        keyring.seal("/apisix/ssls/1", &mut ssl);
        assert!(!ssl["key"].as_str().unwrap().starts_with("---"));
        assert_eq!(ssl["cert"], "-----BEGIN CERTIFICATE-----");
        keyring.open("/apisix/ssls/1", &mut ssl);
        assert_eq!(ssl["key"], "-----BEGIN PRIVATE KEY-----x");

        // enable_encrypt_fields off: plugin fields stay plain, private keys are still sealed.
        let keys = ["edd1c9f0985e76a2".to_string()];
        let unfielded = Keyring::new(&keys, false).unwrap();
        unfielded.seal("/apisix/consumers/jack", &mut consumer);
        assert_eq!(consumer, plain);
        unfielded.seal("/apisix/ssls/1", &mut ssl);
        assert!(!ssl["key"].as_str().unwrap().starts_with("---"));
    }
}
