//! The TLS wrapper: arbitrary records (the corpus starts from real ClientHellos) into
//! a server session of the wrapped http service, cut into arbitrary reads, with EOF or
//! the handshake timer at the end. Asserts: no panic, and every byte out is whole TLS
//! records (an alert, a ServerHello flight), never a partial one.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use multiclient::service::http::{Http, HttpOptions};
use multiclient::service::tls::Tls;
use multiclient::service::{ConnInfo, Harness, Service};
use multiclient_fuzz::{reads, wire};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A fixed self-signed ECDSA P-256 certificate for `localhost`, made for fuzzing only.
fn config() -> Arc<ServerConfig> {
    static CONFIG: OnceLock<Arc<ServerConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let cert = CertificateDer::from_pem_slice(include_bytes!("../tls/cert.pem")).unwrap();
            let key = PrivateKeyDer::from_pem_slice(include_bytes!("../tls/key.pem")).unwrap();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut c = ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert], key)
                .unwrap();
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(c)
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let [mode, seed, bytes @ ..] = data else {
        return;
    };
    let tls = Tls::new(
        Http::new(HttpOptions::default()),
        config(),
        Duration::from_secs(10),
    );
    let mut h = Harness::new(tls.session(&ConnInfo::test(1)));
    for r in reads(*seed, bytes) {
        h.feed(r);
    }
    if mode & 1 != 0 {
        let t = h.now + Duration::from_secs(60);
        h.advance_to(t);
    }
    h.eof();
    if let Err(e) = wire::tls_records(&h.take_output()) {
        panic!("{e}\ninput: {bytes:?}");
    }
});
