//! The agent's client of a Confidential Containers KBS (trustee), protocol
//! 0.4.0 (RCAR): `auth` → challenge → `attest` with the guest's evidence,
//! the challenge nonce and an ephemeral P-256 key bound into its report
//! data, and the initdata document → token (session cookie) → `resource`
//! answers as JWE to that key, decrypted here. Plaintext exists only in
//! guest memory.
//!
//! - [`evidence`]: report-data binding and the evidence of each TEE
//!   (sample, SEV-SNP report, TDX quote);
//!   [`jwe`]: the JWE answers. Resource URIs are
//!   [`cocoon_protocol::resource`]'s.
//!
//! The connection is whatever [`Connect`] gives (a vsock stream to the
//! host's relay in the guest, TCP in tests); for an https KBS, [`tls`]
//! wraps it, ending TLS in the guest.

pub mod evidence;
pub mod jwe;
pub mod tls;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use p256::SecretKey;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

pub use cocoon_protocol::resource::ResourceUri;

/// The KBS protocol version this client speaks.
pub const PROTOCOL_VERSION: &str = "0.4.0";
/// Longest answer read from the KBS (a resource is at most this large).
const MAX_BODY: usize = 4 << 20;
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A byte stream to the KBS.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// A connection being opened.
pub type Connecting<'a> =
    Pin<Box<dyn Future<Output = std::io::Result<Box<dyn Stream>>> + Send + 'a>>;

/// Opens a new connection to the KBS.
pub trait Connect: Send + Sync {
    /// One new connection.
    fn connect(&self) -> Connecting<'_>;
}

/// What went wrong talking to the KBS.
#[derive(Debug, thiserror::Error)]
pub enum KbsError {
    /// The KBS cannot be reached.
    #[error("cannot reach the KBS at {host}: {source}")]
    Unreachable {
        /// The KBS host as named in the URL.
        host: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// HTTP failed on an open connection.
    #[error("HTTP to the KBS failed during {step}: {message}")]
    Http {
        /// `auth`, `attest`, `resource`.
        step: &'static str,
        /// What hyper said.
        message: String,
    },
    /// The KBS refused (status and its error document).
    #[error("the KBS refused {step} with HTTP {status}: {detail}")]
    Refused {
        /// `auth`, `attest`, `resource`.
        step: &'static str,
        /// HTTP status.
        status: u16,
        /// The KBS's `detail` (or body).
        detail: String,
    },
    /// TLS to an https KBS cannot be set up (its certificate, its name).
    #[error("TLS to the KBS: {0}")]
    Tls(String),
    /// The KBS answered 200 with something that is not what the protocol says.
    #[error("the KBS answered {step} with an unexpected body")]
    Garbage {
        /// `auth`, `attest`, `resource`.
        step: &'static str,
        /// What is wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The resource answer does not decrypt.
    #[error(transparent)]
    Jwe(#[from] jwe::JweError),
    /// The guest's evidence cannot be produced.
    #[error("cannot produce the guest's evidence: {0}")]
    Evidence(String),
}

/// An attested session with the KBS: the cookie and the key resources are
/// encrypted to. One session serves many resources.
pub struct Session {
    cookie: String,
    key: SecretKey,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

/// A KBS client over `C`.
pub struct Client<C> {
    connect: C,
    /// `host[:port]` for the Host header and messages.
    host: String,
}

/// The evidence of the guest's TEE for `report_data`.
pub type EvidenceFn = dyn Fn(&[u8; 48]) -> Result<Value, KbsError> + Send + Sync;

impl<C: Connect> Client<C> {
    /// A client of the KBS at `host` (as in its URL) reached through
    /// `connect`.
    pub fn new(connect: C, host: &str) -> Self {
        Self {
            connect,
            host: host.to_string(),
        }
    }

    async fn send(
        &self,
        step: &'static str,
        method: Method,
        path: &str,
        cookie: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Option<String>, Bytes), KbsError> {
        let io = self
            .connect
            .connect()
            .await
            .map_err(|source| KbsError::Unreachable {
                host: self.host.clone(),
                source,
            })?;
        let http = |e: hyper::Error| KbsError::Http {
            step,
            message: e.to_string(),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(http)?;
        let driver = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host);
        if let Some(c) = cookie {
            req = req.header("cookie", format!("kbs-session-id={c}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| KbsError::Http {
                step,
                message: e.to_string(),
            })?;
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(req))
            .await
            .map_err(|_| KbsError::Http {
                step,
                message: format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()),
            })?
            .map_err(http)?;
        let status = resp.status();
        let cookie = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| {
                v.split(';')
                    .next()?
                    .trim()
                    .strip_prefix("kbs-session-id=")
                    .map(str::to_string)
            });
        let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| KbsError::Http {
                step,
                message: e.to_string(),
            })?
            .to_bytes();
        driver.abort();
        if !status.is_success() {
            let detail = serde_json::from_slice::<kbs_types::ErrorInformation>(&body)
                .map(|e| e.detail)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(200).collect());
            return Err(KbsError::Refused {
                step,
                status: status.as_u16(),
                detail,
            });
        }
        Ok((status, cookie, body))
    }

    /// Authenticates and attests: the session resources are fetched in.
    pub async fn attest(
        &self,
        tee: &str,
        evidence: &EvidenceFn,
        initdata: Option<&str>,
    ) -> Result<Session, KbsError> {
        let garbage = |step, e: serde_json::Error| KbsError::Garbage {
            step,
            source: Box::new(e),
        };
        let auth = serde_json::json!({
            "version": PROTOCOL_VERSION,
            "tee": tee,
            "extra-params": {"supported-hash-algorithms": ["sha384"]},
        });
        let (_, cookie, body) = self
            .send(
                "auth",
                Method::POST,
                "/kbs/v0/auth",
                None,
                Some(auth.to_string().into_bytes()),
            )
            .await?;
        let challenge: kbs_types::Challenge =
            serde_json::from_slice(&body).map_err(|e| garbage("auth", e))?;
        let cookie = cookie.ok_or_else(|| KbsError::Garbage {
            step: "auth",
            source: "no kbs-session-id cookie".into(),
        })?;
        let key = SecretKey::random(&mut rand_core::OsRng);
        let jwk = jwe::public_jwk(&key);
        let rd = evidence::report_data(&challenge.nonce, &jwk, "");
        let attestation = serde_json::json!({
            "init-data": initdata.map(|body| serde_json::json!({"format": "toml", "body": body})),
            "runtime-data": {"nonce": challenge.nonce, "tee-pubkey": jwk},
            "tee-evidence": {"primary_evidence": evidence(&rd)?, "additional_evidence": ""},
        });
        let (_, again, body) = self
            .send(
                "attest",
                Method::POST,
                "/kbs/v0/attest",
                Some(&cookie),
                Some(attestation.to_string().into_bytes()),
            )
            .await?;
        #[derive(serde::Deserialize)]
        struct Token {
            #[allow(dead_code)]
            token: String,
        }
        serde_json::from_slice::<Token>(&body).map_err(|e| garbage("attest", e))?;
        Ok(Session {
            cookie: again.unwrap_or(cookie),
            key,
        })
    }

    /// Fetches and decrypts one resource in `session`.
    pub async fn resource(
        &self,
        session: &Session,
        uri: &ResourceUri,
    ) -> Result<Vec<u8>, KbsError> {
        let (_, _, body) = self
            .send(
                "resource",
                Method::GET,
                &uri.path(),
                Some(&session.cookie),
                None,
            )
            .await?;
        let jwe: Value = serde_json::from_slice(&body).map_err(|e| KbsError::Garbage {
            step: "resource",
            source: Box::new(e),
        })?;
        Ok(jwe::decrypt(&jwe, &session.key)?)
    }

    /// Attests once and fetches every resource of `uris`, in order; after
    /// a transient failure (unreachable, a broken connection, a 5xx) the
    /// whole exchange is tried again, three attempts in all, with growing
    /// waits ([`RETRY_DELAYS`]).
    pub async fn fetch(
        &self,
        tee: &str,
        evidence: &EvidenceFn,
        initdata: Option<&str>,
        uris: &[&ResourceUri],
    ) -> Result<Vec<Vec<u8>>, KbsError> {
        let mut attempt = 0;
        loop {
            let fetched: Result<Vec<Vec<u8>>, KbsError> = async {
                let session = self.attest(tee, evidence, initdata).await?;
                let mut out = Vec::with_capacity(uris.len());
                for uri in uris {
                    out.push(self.resource(&session, uri).await?);
                }
                Ok(out)
            }
            .await;
            match fetched {
                Err(e) if attempt < RETRY_DELAYS.len() && e.is_transient() => {
                    eprintln!("cocoon-agent: {e}; trying again");
                    tokio::time::sleep(RETRY_DELAYS[attempt]).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// The waits before the second and third attempt at the KBS.
pub const RETRY_DELAYS: [Duration; 2] = [Duration::from_millis(250), Duration::from_secs(1)];

impl KbsError {
    /// Whether another attempt may succeed (a refusal or garbage will not).
    pub fn is_transient(&self) -> bool {
        match self {
            KbsError::Unreachable { .. } | KbsError::Http { .. } => true,
            KbsError::Refused { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests;
