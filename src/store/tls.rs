//! TLS for `rediss://` URLs: the crate builds the rustls configuration itself.
//!
//! `fred` would build it with `ClientConfig::builder()`, which panics when rustls has both the
//! ring and the aws-lc-rs providers compiled in and the process installed neither as its
//! default: any other dependency turning on the second provider would break the connection.
//! Here the process's default provider is used when there is one, and the one this crate's
//! features name otherwise, so TLS works whichever the process has.

use fred::prelude::Config;

use crate::store::StoreError;

/// Where the server's certificate is checked against, and the client's own certificate.
#[derive(Clone, Default)]
pub(super) struct TlsSettings {
    /// PEM certificate authorities to trust instead of the system's.
    pub(super) ca_certificates: Option<Vec<u8>>,
    /// PEM certificate chain and private key for mutual TLS.
    pub(super) client_certificate: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsSettings {
    fn is_set(&self) -> bool {
        self.ca_certificates.is_some() || self.client_certificate.is_some()
    }
}

// Only the lengths are shown: a private key has no place in logs.
impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("ca_certificates", &self.ca_certificates.as_ref().map(Vec::len))
            .field("client_certificate", &self.client_certificate.is_some())
            .finish()
    }
}

/// The `fred` configuration for `url`, with the TLS this crate builds for TLS URLs.
pub(super) fn fred_config(url: &str, settings: &TlsSettings) -> Result<Config, StoreError> {
    let (url, uses_tls) = split_tls_scheme(url);
    if !uses_tls && settings.is_set() {
        return Err(StoreError::msg(
            "options `tls_ca_certificates`, `tls_client_certificate`: the URL does not use TLS \
             (use `rediss://`)",
        ));
    }
    let config =
        Config::from_url(&url).map_err(|e| StoreError::from_source("invalid Redis URL", e))?;
    if !uses_tls {
        return Ok(config);
    }
    #[cfg(any(feature = "tls-rustls-ring", feature = "tls-rustls-aws-lc-rs"))]
    return Ok(Config { tls: Some(rustls_config::client_config(settings)?.into()), ..config });
    // Without a TLS feature `fred` would connect in plain text.
    #[cfg(not(any(feature = "tls-rustls-ring", feature = "tls-rustls-aws-lc-rs")))]
    Err(StoreError::msg(
        "a TLS URL (`rediss://`) needs a TLS feature of tower-redis-cache: `tls-rustls-ring` \
         or `tls-rustls-aws-lc-rs`",
    ))
}

/// The URL with its TLS scheme (`rediss`, `rediss-cluster`, `valkeys-sentinel`, ...) turned into
/// the plain one, and whether it had one: `fred` then parses it without building TLS itself.
fn split_tls_scheme(url: &str) -> (String, bool) {
    for (tls, plain) in [("rediss", "redis"), ("valkeys", "valkey")] {
        if let Some(rest) = url.strip_prefix(tls) {
            if rest.starts_with(':') || rest.starts_with('-') {
                return (format!("{plain}{rest}"), true);
            }
        }
    }
    (url.to_owned(), false)
}

#[cfg(any(feature = "tls-rustls-ring", feature = "tls-rustls-aws-lc-rs"))]
mod rustls_config {
    use std::sync::Arc;

    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use rustls::{ClientConfig, RootCertStore};

    use super::TlsSettings;
    use crate::store::StoreError;

    /// The client configuration: the process's provider, the roots, the client certificate.
    pub(super) fn client_config(settings: &TlsSettings) -> Result<ClientConfig, StoreError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::from_source("TLS: the crypto provider", e))?
            .with_root_certificates(roots(settings.ca_certificates.as_deref())?);
        match &settings.client_certificate {
            None => Ok(builder.with_no_client_auth()),
            Some((chain, key)) => {
                let chain = certificates(chain, "option `tls_client_certificate`")?;
                let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
                    StoreError::from_source("option `tls_client_certificate`: the private key", e)
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| StoreError::from_source("option `tls_client_certificate`", e))
            }
        }
    }

    /// The process's default provider when it installed one; else the one this crate's
    /// features compiled in (ring first).
    fn provider() -> Arc<CryptoProvider> {
        if let Some(provider) = CryptoProvider::get_default() {
            return Arc::clone(provider);
        }
        #[cfg(feature = "tls-rustls-ring")]
        return Arc::new(rustls::crypto::ring::default_provider());
        #[cfg(not(feature = "tls-rustls-ring"))]
        return Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    }

    /// The given authorities, or the system's when none are given.
    fn roots(ca_certificates: Option<&[u8]>) -> Result<RootCertStore, StoreError> {
        let mut roots = RootCertStore::empty();
        match ca_certificates {
            Some(pem) => {
                for certificate in certificates(pem, "option `tls_ca_certificates`")? {
                    roots
                        .add(certificate)
                        .map_err(|e| StoreError::from_source("option `tls_ca_certificates`", e))?;
                }
            }
            None => {
                // Unreadable system certificates are skipped, as long as some remain.
                let system = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(system.certs);
                if roots.is_empty() {
                    return Err(StoreError::msg(
                        "TLS: no system CA certificates found; give the server's CA with \
                         `tls_ca_certificates`",
                    ));
                }
            }
        }
        Ok(roots)
    }

    /// Every certificate in a PEM, at least one; errors start with `option`.
    fn certificates(
        pem: &[u8],
        option: &'static str,
    ) -> Result<Vec<CertificateDer<'static>>, StoreError> {
        let certificates = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::from_source(option, e))?;
        if certificates.is_empty() {
            return Err(StoreError::msg(format!("{option}: no PEM certificate in it")));
        }
        Ok(certificates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_schemes_become_plain_ones() {
        for (url, plain, tls) in [
            ("rediss://h:6380/0", "redis://h:6380/0", true),
            ("rediss-cluster://h:7000", "redis-cluster://h:7000", true),
            ("rediss-sentinel://h:26379", "redis-sentinel://h:26379", true),
            ("valkeys://h", "valkey://h", true),
            ("redis://h", "redis://h", false),
            ("redis+unix:///tmp/r.sock", "redis+unix:///tmp/r.sock", false),
            ("redisses://h", "redisses://h", false),
        ] {
            assert_eq!(split_tls_scheme(url), (plain.to_owned(), tls), "{url}");
        }
    }
}
