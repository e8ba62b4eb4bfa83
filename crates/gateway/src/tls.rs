//! TLS both ways, on rustls with the *ring* provider: the certificates the data plane presents
//! (APISIX `ssls`, chosen by the client's SNI) and the client side of `https` upstreams and
//! health checks.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
    SupportedProtocolVersion,
};

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// A PEM certificate chain and the PEM private key of its first certificate, checked to match.
pub fn certified_key(cert: &str, key: &str) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cert: not a PEM certificate ({e})"))?;
    if chain.is_empty() {
        return Err("cert: no PEM certificate found".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
        .map_err(|e| format!("key: not a PEM private key ({e})"))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => "key: does not belong to the certificate".into(),
        e => format!("cert or key: {e}"),
    })
}

/// The server certificates of one snapshot by SNI: exact names, then `*.suffix` wildcards,
/// the longest suffix first (`*.example.com` covers `a.example.com` and `a.b.example.com`, as
/// in APISIX).
#[derive(Default)]
pub struct Certificates {
    exact: HashMap<String, Arc<ServerConfig>>,
    wildcard: HashMap<String, Arc<ServerConfig>>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("exact", &self.exact.keys())
            .field("wildcard", &self.wildcard.keys())
            .finish()
    }
}

impl Certificates {
    /// Whether no server name has a certificate (TLS handshakes all fail).
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }

    /// Serves `keys` (the first one the client can verify) for `snis` over `versions`; names
    /// are lower-cased, as lookups are.
    pub fn insert(
        &mut self,
        snis: &[String],
        keys: Vec<CertifiedKey>,
        versions: &[&'static SupportedProtocolVersion],
    ) -> Result<(), String> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(FirstUsable(
                keys.into_iter().map(Arc::new).collect(),
            )));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let config = Arc::new(config);
        for sni in snis {
            let sni = sni.to_ascii_lowercase();
            match sni.strip_prefix("*.") {
                Some(suffix) => self.wildcard.insert(suffix.to_string(), config.clone()),
                None => self.exact.insert(sni, config.clone()),
            };
        }
        Ok(())
    }

    /// The configuration for a client asking for `sni`.
    pub fn find(&self, sni: &str) -> Option<Arc<ServerConfig>> {
        let sni = sni.to_ascii_lowercase();
        if let Some(config) = self.exact.get(&sni) {
            return Some(config.clone());
        }
        let mut rest = sni.as_str();
        while let Some((_, suffix)) = rest.split_once('.') {
            if let Some(config) = self.wildcard.get(suffix) {
                return Some(config.clone());
            }
            rest = suffix;
        }
        None
    }
}

/// Of several certificates (RSA and ECDSA, say), the first whose key can sign with a scheme
/// the client offers; the first one when none can.
#[derive(Debug)]
struct FirstUsable(Vec<Arc<CertifiedKey>>);

impl ResolvesServerCert for FirstUsable {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let offered = hello.signature_schemes();
        self.0
            .iter()
            .find(|k| k.key.choose_scheme(offered).is_some())
            .or(self.0.first())
            .cloned()
    }
}

/// The client side of an `https` upstream or health check. With `verify`, the server's
/// certificate must chain to the system's roots and name the server; without it (APISIX's
/// default for upstreams, like nginx's `proxy_ssl_verify off`) any certificate is taken, the
/// handshake's signatures still checked. `client` is presented when the server asks for one.
pub fn client_config(
    verify: bool,
    client: Option<CertifiedKey>,
) -> Result<Arc<ClientConfig>, String> {
    // Without a client certificate, one configuration of each kind serves every upstream, so
    // pooled connections outlive recompiles.
    static SHARED: [OnceLock<Arc<ClientConfig>>; 2] = [OnceLock::new(), OnceLock::new()];
    if client.is_none() {
        if let Some(config) = SHARED[verify as usize].get() {
            return Ok(config.clone());
        }
        let config = build_client_config(verify, None)?;
        return Ok(SHARED[verify as usize].get_or_init(|| config).clone());
    }
    build_client_config(verify, client)
}

fn build_client_config(
    verify: bool,
    client: Option<CertifiedKey>,
) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if verify {
        builder.with_root_certificates(system_roots())
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
    };
    let mut config = match client {
        Some(key) => builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(key))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The name a client connection presents and verifies: an IP address or a DNS name.
pub fn server_name(host: &str) -> Option<ServerName<'static>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).ok()
}

/// The system's trusted roots, read once (`SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured).
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "tls: a system root certificate could not be read");
            }
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, ignored, "tls: system roots loaded");
            Arc::new(roots)
        })
        .clone()
}

/// Takes any server certificate; still checks that the server holds its key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::generate_simple_self_signed(names).unwrap();
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    }

    #[test]
    fn a_key_must_belong_to_its_certificate() {
        let (cert, key) = self_signed(&["a.test"]);
        let (_, other_key) = self_signed(&["b.test"]);
        assert!(certified_key(&cert, &key).is_ok());
        let err = certified_key(&cert, &other_key).unwrap_err();
        assert!(err.contains("does not belong"), "{err}");
        let err = certified_key("not pem", &key).unwrap_err();
        assert!(err.starts_with("cert:"), "{err}");
        let err = certified_key(&cert, "not pem").unwrap_err();
        assert!(err.starts_with("key:"), "{err}");
    }

    #[test]
    fn names_match_exactly_then_by_the_longest_wildcard() {
        let (cert, key) = self_signed(&["x"]);
        let mut certs = Certificates::default();
        for sni in ["API.test.com", "*.test.com", "*.b.test.com"] {
            let key = certified_key(&cert, &key).unwrap();
            certs
                .insert(&[sni.into()], vec![key], rustls::DEFAULT_VERSIONS)
                .unwrap();
        }
        let exact = certs.find("api.test.com").unwrap();
        let wide = certs.find("www.test.com").unwrap();
        let narrow = certs.find("a.b.test.com").unwrap();
        assert!(!Arc::ptr_eq(&exact, &wide));
        assert!(!Arc::ptr_eq(&wide, &narrow));
        assert!(Arc::ptr_eq(&certs.find("x.y.test.com").unwrap(), &wide));
        assert!(certs.find("test.com").is_none());
        assert!(certs.find("other.com").is_none());
    }
}
