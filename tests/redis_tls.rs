//! `rediss://` against a `redis-server --tls-port` whose certificate a private CA (made here)
//! signed: the CA option, mutual TLS, refused certificates, and TLS whichever rustls crypto
//! provider the process has.
//!
//! This test binary compiles rustls with both the ring and the aws-lc-rs providers (see the
//! dev-dependencies), the setup in which rustls cannot choose one by itself: the layer must.
#![cfg(any(feature = "tls-rustls-ring", feature = "tls-rustls-aws-lc-rs"))]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustls::crypto::{CryptoProvider, SecureRandom};
use support::tls::{ClientCertificates, Pki, TlsRedis};
use tower_redis_cache::store::conformance;
use tower_redis_cache::{RedisStore, Store, TieredStore};

/// Stores an entry through `store` and reads it back.
async fn round_trip(store: &dyn Store, key: &str) {
    store.put(key, Bytes::from_static(b"over TLS"), Duration::from_secs(60)).await.unwrap();
    let found = store.lookup(key, &[]).await.unwrap();
    assert_eq!(found.entry.as_deref(), Some(&b"over TLS"[..]));
}

/// Counts the random numbers TLS handshakes draw from the provider it wraps.
#[derive(Debug)]
struct CountingRandom {
    inner: &'static dyn SecureRandom,
}

static RANDOM_DRAWS: AtomicUsize = AtomicUsize::new(0);

impl SecureRandom for CountingRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
        RANDOM_DRAWS.fetch_add(1, Ordering::SeqCst);
        self.inner.fill(buf)
    }
}

// First with no process provider (rustls alone would panic here: both providers are compiled
// in), then with aws-lc-rs installed as the process's provider, which the store must use.
// One test, in this order: the process provider can be installed only once.
#[tokio::test]
async fn tls_works_with_no_process_provider_and_with_the_one_the_process_installed() {
    let pki = Pki::generate();
    let server = TlsRedis::start(&pki, ClientCertificates::Optional);

    assert!(CryptoProvider::get_default().is_none(), "no provider installed yet");
    let ambiguous = std::panic::catch_unwind(rustls::ClientConfig::builder);
    assert!(ambiguous.is_err(), "rustls cannot pick between ring and aws-lc-rs by itself");
    let store = RedisStore::builder(server.url()).tls_ca_certificates(pki.ca.clone());
    let store = store.build().await.expect("TLS with the crate's own provider");
    round_trip(&store, "test:tls:own-provider").await;
    conformance::check_store(Arc::new(store)).await;

    let aws_lc_rs = rustls::crypto::aws_lc_rs::default_provider();
    let inner = aws_lc_rs.secure_random;
    let counting = CryptoProvider {
        secure_random: Box::leak(Box::new(CountingRandom { inner })),
        ..aws_lc_rs
    };
    counting.install_default().expect("the first provider installed");
    let before = RANDOM_DRAWS.load(Ordering::SeqCst);
    let store = RedisStore::builder(server.url()).tls_ca_certificates(pki.ca.clone());
    let store = store.build().await.expect("TLS with the process's provider");
    round_trip(&store, "test:tls:process-provider").await;
    assert!(
        RANDOM_DRAWS.load(Ordering::SeqCst) > before,
        "the handshake drew its randomness from the process's provider"
    );

    // The tiered store's subscriber connects with the same TLS settings.
    let tiered = TieredStore::builder(server.url())
        .redis(|redis| redis.tls_ca_certificates(pki.ca.clone()))
        .build()
        .await
        .expect("tiered store over TLS");
    round_trip(&tiered, "test:tls:tiered").await;
    assert!(tiered.l1_in_use(), "the subscriber is connected over TLS");
}

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate() {
    let pki = Pki::generate();
    let server = TlsRedis::start(&pki, ClientCertificates::Required);
    let quick = |builder: tower_redis_cache::RedisStoreBuilder| {
        builder.tls_ca_certificates(pki.ca.clone()).connection_timeout(Duration::from_secs(2))
    };

    let refused = quick(RedisStore::builder(server.url())).build().await;
    assert!(refused.is_err(), "a server that requires a client certificate refuses none");

    let store = quick(RedisStore::builder(server.url()))
        .tls_client_certificate(pki.client.certificate.clone(), pki.client.key.clone())
        .build()
        .await
        .expect("mutual TLS");
    round_trip(&store, "test:tls:mutual").await;
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused() {
    let (pki, other) = (Pki::generate(), Pki::generate());
    let server = TlsRedis::start(&pki, ClientCertificates::Optional);
    let error = RedisStore::builder(server.url())
        .tls_ca_certificates(other.ca)
        .connection_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect_err("an unknown CA");
    let message = error.to_string();
    assert!(message.contains("cannot connect to Redis"), "{message}");
    // The plain port of the same server is fine: the refusal is the certificate's.
    let plain = RedisStore::from_url(server.server.url()).await.expect("plain port");
    round_trip(&plain, "test:tls:plain").await;
}

#[tokio::test]
async fn tls_options_that_cannot_apply_fail_at_build_naming_the_option() {
    let pki = Pki::generate();
    let on_plain_url = RedisStore::builder("redis://127.0.0.1:1")
        .tls_ca_certificates(pki.ca.clone())
        .build()
        .await
        .expect_err("TLS options on a plain URL");
    assert!(on_plain_url.to_string().contains("tls_ca_certificates"), "{on_plain_url}");

    let no_certificate = RedisStore::builder("rediss://localhost:1")
        .tls_ca_certificates("not a PEM")
        .build()
        .await
        .expect_err("a CA option without a certificate");
    assert!(no_certificate.to_string().contains("tls_ca_certificates"), "{no_certificate}");

    let bad_key = RedisStore::builder("rediss://localhost:1")
        .tls_ca_certificates(pki.ca.clone())
        .tls_client_certificate(pki.client.certificate.clone(), "no key here")
        .build()
        .await
        .expect_err("a client certificate without its key");
    assert!(bad_key.to_string().contains("tls_client_certificate"), "{bad_key}");
}
