//! TLS to an `https://` KBS, ending in the guest: the byte stream (the
//! host's relay) carries only ciphertext, and the only trusted roots are
//! the CA certificates the measured initdata names — the host can neither
//! read the exchange nor stand in for the KBS.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use super::{Connect, Connecting, KbsError, Stream};

/// A connection through `C`, then TLS with roots from the initdata.
pub struct Tls<C> {
    inner: C,
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl<C: Connect> Tls<C> {
    /// TLS to `host` (a DNS name or an IP address, as in the KBS URL) over
    /// `inner`, trusting only the certificates of `ca_pem`.
    pub fn new(inner: C, host: &str, ca_pem: &str) -> Result<Self, KbsError> {
        let bad = |m: String| KbsError::Tls(m);
        let mut roots = rustls::RootCertStore::empty();
        let mut n = 0;
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let cert =
                cert.map_err(|e| bad(format!("the initdata's KBS certificate is not PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| bad(format!("the initdata's KBS certificate is not usable: {e}")))?;
            n += 1;
        }
        if n == 0 {
            return Err(bad(
                "the initdata's KBS certificate holds no PEM CERTIFICATE block".into(),
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| bad(format!("{host:?} is not a DNS name or IP address for TLS")))?;
        Ok(Self {
            inner,
            config: Arc::new(config),
            name,
        })
    }
}

impl<C: Connect> Connect for Tls<C> {
    fn connect(&self) -> Connecting<'_> {
        Box::pin(async move {
            let stream = self.inner.connect().await?;
            let tls = tokio_rustls::TlsConnector::from(self.config.clone())
                .connect(self.name.clone(), stream)
                .await
                .map_err(|e| std::io::Error::other(format!("TLS: {e}")))?;
            Ok(Box::new(tls) as Box<dyn Stream>)
        })
    }
}
