//! TLS for NBD (`NBD_OPT_STARTTLS`), with rustls: an X.509 certificate and key (PEM), and
//! optionally a CA whose certificates clients must present.
//!
//! Pre-shared keys (qemu's `tls-creds-psk`, nbdkit's `--tls-psk`) are not offered: rustls
//! has no TLS 1.3 external PSK support (rustls/rustls#174), and the one crypto library in
//! this project's tree is rustls. docs/serve.md shows how to make a certificate instead.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct TlsOptions {
    /// The server's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Clients must present a certificate signed by one of these CAs (PEM).
    pub client_ca: Option<PathBuf>,
}

fn certs(p: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(p)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| Error::local(p, format!("cannot read certificates (PEM): {e}")))?;
    if certs.is_empty() {
        return Err(Error::local(p, "holds no certificate (PEM)"));
    }
    Ok(certs)
}

/// The server configuration: TLS 1.2 and 1.3 (the protocol requires 1.2), ring's algorithms.
pub(crate) fn server_config(o: &TlsOptions) -> Result<Arc<rustls::ServerConfig>> {
    let chain = certs(&o.cert)?;
    let key = PrivateKeyDer::from_pem_file(&o.key)
        .map_err(|e| Error::local(&o.key, format!("cannot read the private key (PEM): {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Usage(format!("TLS: {e}")))?;
    let builder = match &o.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| Error::local(ca, format!("not a usable CA certificate: {e}")))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| Error::local(ca, format!("cannot verify clients with it: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, key).map_err(|e| {
        Error::local(
            &o.key,
            format!("does not go with the certificate {}: {e}", o.cert.display()),
        )
    })?;
    Ok(Arc::new(config))
}
