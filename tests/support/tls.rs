//! A private certificate authority, made for the test, and a `redis-server` that speaks TLS with
//! a certificate it signed, on a free loopback port.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use super::redis::{free_port, RedisServer};

/// A certificate and its private key, PEM.
pub struct Identity {
    pub certificate: String,
    pub key: String,
}

/// A CA, a server identity for `localhost` and `127.0.0.1`, and a client identity, all signed
/// by the CA.
pub struct Pki {
    pub ca: String,
    pub server: Identity,
    pub client: Identity,
}

impl Pki {
    pub fn generate() -> Self {
        // Each certificate has a subject of its own: OpenSSL takes one whose issuer is its own
        // subject for self-signed.
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.distinguished_name.push(DnType::CommonName, "tower-redis-cache test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let identity = |names: &[&str]| {
            let key = KeyPair::generate().unwrap();
            let mut params =
                CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                    .unwrap();
            params.distinguished_name.push(DnType::CommonName, names[0]);
            let certificate = params.signed_by(&key, &ca).unwrap();
            Identity { certificate: certificate.pem(), key: key.serialize_pem() }
        };
        Self {
            server: identity(&["localhost", "127.0.0.1"]),
            client: identity(&["tower-redis-cache-test-client"]),
            ca: ca.pem(),
        }
    }
}

/// Whether the server asks clients for a certificate (`tls-auth-clients`).
#[derive(Clone, Copy)]
pub enum ClientCertificates {
    Optional,
    Required,
}

/// A `redis-server` with a TLS port (and its plain port, which the harness pings). Killed, and
/// its certificates removed, on drop.
pub struct TlsRedis {
    pub server: RedisServer,
    pub tls_port: u16,
    dir: PathBuf,
}

impl TlsRedis {
    pub fn start(pki: &Pki, clients: ClientCertificates) -> Self {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("trc-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path.to_str().unwrap().to_owned()
        };
        let (ca, cert, key) = (
            write("ca.pem", &pki.ca),
            write("server.pem", &pki.server.certificate),
            write("server.key", &pki.server.key),
        );
        let tls_port = free_port();
        let auth = match clients {
            ClientCertificates::Optional => "optional",
            ClientCertificates::Required => "yes",
        };
        let server = RedisServer::start_with(&[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            auth,
        ]);
        Self { server, tls_port, dir }
    }

    /// `rediss://localhost:<tls port>`.
    pub fn url(&self) -> String {
        format!("rediss://localhost:{}", self.tls_port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
