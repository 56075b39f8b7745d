//! The KBS client against a real trustee KBS (`COCOON_KBS_BIN`, or
//! `build/kbs/kbs` from `make deps`) on loopback: attestation with the
//! sample TEE, resources decrypted in the guest's memory, one session for
//! several resources, and what the KBS refuses. Skipped with a reason when
//! no KBS binary is available.

use base64::Engine;

use super::*;

#[path = "../../../../tests/src/kbs.rs"]
mod harness;
use harness::{b64url, kbs_binary, Kbs};

/// Connects over TCP (the guest uses a vsock stream instead).
struct Tcp(String);

impl Connect for Tcp {
    fn connect(&self) -> Connecting<'_> {
        Box::pin(async move {
            let s = tokio::net::TcpStream::connect(&self.0).await?;
            Ok(Box::new(s) as Box<dyn Stream>)
        })
    }
}

fn sample_evidence(rd: &[u8; 48]) -> Result<Value, KbsError> {
    Ok(evidence::sample(rd))
}

const INITDATA: &str = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n";

#[tokio::test]
async fn resources_come_from_a_real_trustee_kbs() {
    let Some(bin) = kbs_binary(std::path::Path::new(env!("CARGO_MANIFEST_DIR"))) else {
        eprintln!("SKIP resources_come_from_a_real_trustee_kbs: no KBS binary (set COCOON_KBS_BIN, or `make deps` unpacks trustee's kbs into build/kbs)");
        return;
    };
    let kbs = Kbs::start(&bin);
    let secret = b"model key \x00\xff bytes".to_vec();
    kbs.allow_sample_and_store("default/key/test", &secret);
    kbs.allow_sample_and_store("default/key/second", b"two");
    let client = Client::new(Tcp(kbs.addr.clone()), &kbs.addr);

    let session = client
        .attest("sample", &sample_evidence, Some(INITDATA))
        .await
        .unwrap();
    let uri: ResourceUri = "kbs:///default/key/test".parse().unwrap();
    assert_eq!(client.resource(&session, &uri).await.unwrap(), secret);
    // One session serves several resources.
    let two: ResourceUri = "kbs:///default/key/second".parse().unwrap();
    assert_eq!(client.resource(&session, &two).await.unwrap(), b"two");

    // A resource that does not exist: refused, with the KBS's detail.
    let missing: ResourceUri = "kbs:///default/key/nope".parse().unwrap();
    let e = client.resource(&session, &missing).await.unwrap_err();
    assert!(
        matches!(
            e,
            KbsError::Refused {
                step: "resource",
                ..
            }
        ),
        "{e}"
    );

    // Evidence bound to another key: the KBS refuses the attestation.
    let wrong = |_: &[u8; 48]| Ok(evidence::sample(&[7u8; 48]));
    let e = client.attest("sample", &wrong, None).await.unwrap_err();
    assert!(matches!(e, KbsError::Refused { step: "attest", .. }), "{e}");

    // Another protocol version: refused at auth.
    let e = client
        .send(
            "auth",
            Method::POST,
            "/kbs/v0/auth",
            None,
            Some(br#"{"version":"0.1.0","tee":"sample","extra-params":""}"#.to_vec()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, KbsError::Refused { step: "auth", status: 401, detail } if detail.contains("Version")),
        "{e}"
    );

    // The JWE as the KBS sent it: altered, it does not decrypt; another
    // algorithm is refused before any key is used.
    let (_, _, body) = client
        .send(
            "resource",
            Method::GET,
            &uri.path(),
            Some(&session.cookie),
            None,
        )
        .await
        .unwrap();
    let jwe: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(jwe::decrypt(&jwe, &session.key).unwrap(), secret);
    let mut tampered = jwe.clone();
    let mut tag = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jwe["tag"].as_str().unwrap())
        .unwrap();
    tag[0] ^= 1;
    tampered["tag"] = b64url(&tag).into();
    assert!(matches!(
        jwe::decrypt(&tampered, &session.key),
        Err(jwe::JweError::Decrypt(_))
    ));
    let mut none = jwe.clone();
    none["protected"] = b64url(br#"{"alg":"none","enc":"A256GCM"}"#).into();
    assert!(matches!(
        jwe::decrypt(&none, &session.key),
        Err(jwe::JweError::Algorithm { field: "alg", .. })
    ));
    let other = SecretKey::random(&mut rand_core::OsRng);
    assert!(jwe::decrypt(&jwe, &other).is_err());
    assert!(matches!(
        jwe::decrypt(&serde_json::json!({"protected": 1}), &session.key),
        Err(jwe::JweError::Format(_))
    ));
}

#[tokio::test]
async fn an_unreachable_kbs_is_named() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let client = Client::new(Tcp(addr.clone()), &addr);
    let e = client
        .attest("sample", &sample_evidence, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, KbsError::Unreachable { host, .. } if *host == addr),
        "{e}"
    );
}

/// A server that answers every request with 200 and `body`.
async fn garbage_server(body: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let resp = format!(
                "HTTP/1.1 200 OK\r\nset-cookie: kbs-session-id=abc\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        }
    });
    addr
}

#[tokio::test]
async fn a_kbs_answering_garbage_is_an_error() {
    let addr = garbage_server("<html>hello</html>").await;
    let client = Client::new(Tcp(addr.clone()), &addr);
    let e = client
        .attest("sample", &sample_evidence, None)
        .await
        .unwrap_err();
    assert!(matches!(e, KbsError::Garbage { step: "auth", .. }), "{e}");
}

/// Refuses the first `failures` connections, then connects over TCP.
struct Flaky {
    addr: String,
    failures: std::sync::atomic::AtomicUsize,
}

impl Connect for Flaky {
    fn connect(&self) -> Connecting<'_> {
        Box::pin(async move {
            use std::sync::atomic::Ordering;
            if self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
            }
            let s = tokio::net::TcpStream::connect(&self.addr).await?;
            Ok(Box::new(s) as Box<dyn Stream>)
        })
    }
}

#[tokio::test]
async fn a_kbs_that_is_briefly_unreachable_is_tried_again_then_given_up() {
    let Some(bin) = kbs_binary(std::path::Path::new(env!("CARGO_MANIFEST_DIR"))) else {
        eprintln!("SKIP a_kbs_that_is_briefly_unreachable_is_tried_again_then_given_up: no KBS binary (set COCOON_KBS_BIN, or `make deps` unpacks trustee's kbs into build/kbs)");
        return;
    };
    let kbs = Kbs::start(&bin);
    kbs.allow_sample_and_store("default/key/retry", b"after two refusals");
    let uri: ResourceUri = "kbs:///default/key/retry".parse().unwrap();
    let flaky = |failures: usize| {
        Client::new(
            Flaky {
                addr: kbs.addr.clone(),
                failures: failures.into(),
            },
            &kbs.addr,
        )
    };
    // Two refused connections, then the KBS: the third attempt succeeds.
    let started = std::time::Instant::now();
    let got = flaky(2)
        .fetch("sample", &sample_evidence, Some(INITDATA), &[&uri])
        .await
        .unwrap();
    assert_eq!(got, vec![b"after two refusals".to_vec()]);
    assert!(started.elapsed() >= RETRY_DELAYS[0] + RETRY_DELAYS[1]);
    // Three refusals: given up after three attempts, naming the cause.
    let e = flaky(3)
        .fetch("sample", &sample_evidence, Some(INITDATA), &[&uri])
        .await
        .unwrap_err();
    assert!(matches!(e, KbsError::Unreachable { .. }), "{e}");
    // A refusal by the KBS is not transient: no second attempt.
    let missing: ResourceUri = "kbs:///default/key/none".parse().unwrap();
    let started = std::time::Instant::now();
    let e = flaky(0)
        .fetch("sample", &sample_evidence, Some(INITDATA), &[&missing])
        .await
        .unwrap_err();
    assert!(matches!(e, KbsError::Refused { .. }), "{e}");
    assert!(started.elapsed() < RETRY_DELAYS[0]);
}

/// An https KBS: TLS ends in the guest, trusting only the initdata's CA;
/// another CA, or a name the certificate does not hold, is refused.
#[tokio::test]
async fn an_https_kbs_is_trusted_only_with_the_initdata_ca() {
    let Some(bin) = kbs_binary(std::path::Path::new(env!("CARGO_MANIFEST_DIR"))) else {
        eprintln!("SKIP an_https_kbs_is_trusted_only_with_the_initdata_ca: no KBS binary (set COCOON_KBS_BIN, or `make deps` unpacks trustee's kbs into build/kbs)");
        return;
    };
    let kbs = Kbs::start_tls(&bin);
    kbs.allow_sample_and_store("default/key/tls", b"over tls");
    let ca = kbs.cert_pem.clone().unwrap();
    let uri: ResourceUri = "kbs:///default/key/tls".parse().unwrap();
    let client = Client::new(
        tls::Tls::new(Tcp(kbs.addr.clone()), "127.0.0.1", &ca).unwrap(),
        &kbs.addr,
    );
    let got = client
        .fetch("sample", &sample_evidence, Some(INITDATA), &[&uri])
        .await
        .unwrap();
    assert_eq!(got, vec![b"over tls".to_vec()]);
    // Plain HTTP to a TLS port gets nowhere.
    let e = Client::new(Tcp(kbs.addr.clone()), &kbs.addr)
        .attest("sample", &sample_evidence, None)
        .await
        .unwrap_err();
    assert!(!matches!(e, KbsError::Refused { .. }), "{e}");
    // Another CA (the host standing in for the KBS): refused.
    let other = Kbs::start_tls(&bin);
    let e = Client::new(
        tls::Tls::new(
            Tcp(kbs.addr.clone()),
            "127.0.0.1",
            other.cert_pem.as_deref().unwrap(),
        )
        .unwrap(),
        &kbs.addr,
    )
    .attest("sample", &sample_evidence, None)
    .await
    .unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
    // A name the certificate does not hold.
    let e = Client::new(
        tls::Tls::new(Tcp(kbs.addr.clone()), "kbs.example", &ca).unwrap(),
        &kbs.addr,
    )
    .attest("sample", &sample_evidence, None)
    .await
    .unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
    // Certificates that are not PEM.
    for bad in [
        "",
        "not a certificate",
        "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
    ] {
        let e = tls::Tls::new(Tcp(kbs.addr.clone()), "127.0.0.1", bad)
            .err()
            .unwrap();
        assert!(matches!(e, KbsError::Tls(_)), "{e}");
    }
}
