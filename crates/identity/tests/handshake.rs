//! Real TLS 1.3 handshakes over loopback TCP between mesh identities (tokio-rustls on both ends).
#![allow(clippy::unwrap_used)]

use nodus_identity::tls::{
    client_config, peer_identity, server_config, server_name_for, IdentityResolver, TrustBundle,
};
use nodus_identity::{CertificateAuthority, SpiffeId, WorkloadCertificate, WorkloadKey};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const DAY: Duration = Duration::from_secs(86_400);

fn id(namespace: &str, account: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", namespace, account)
}

fn issue(ca: &CertificateAuthority, identity: SpiffeId) -> WorkloadCertificate {
    let key = WorkloadKey::generate(identity.clone()).unwrap();
    key.with_certificate(&ca.sign(&key.csr_pem().unwrap(), &identity, DAY).unwrap()).unwrap()
}

struct Outcome {
    /// What the server learnt of the client.
    client_identity: Option<SpiffeId>,
    /// The negotiated key exchange group, from the client side.
    group: Option<rustls::NamedGroup>,
    version: Option<rustls::ProtocolVersion>,
}

/// One handshake and a byte each way; `Err` carries whichever side's error came first.
async fn handshake(
    client: &WorkloadCertificate,
    client_bundle: &TrustBundle,
    expect_server: SpiffeId,
    server: &WorkloadCertificate,
    server_bundle: &TrustBundle,
) -> Result<Outcome, String> {
    let resolver = Arc::new(IdentityResolver::default());
    resolver.insert(server).unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server_config(resolver, server_bundle).unwrap()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.map_err(|e| format!("server: {e}"))?;
        let identity = peer_identity(tls.get_ref().1);
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| format!("server read: {e}"))?;
        tls.write_all(&byte).await.map_err(|e| format!("server write: {e}"))?;
        tls.shutdown().await.ok();
        Ok::<_, String>(identity)
    });
    let connector = TlsConnector::from(Arc::new(client_config(client, client_bundle, expect_server.clone()).unwrap()));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let client_result = async {
        let mut tls = connector
            .connect(server_name_for(&expect_server).unwrap(), tcp)
            .await
            .map_err(|e| format!("client: {e}"))?;
        let (group, version) = {
            let connection = tls.get_ref().1;
            (connection.negotiated_key_exchange_group().map(|g| g.name()), connection.protocol_version())
        };
        tls.write_all(b"x").await.map_err(|e| format!("client write: {e}"))?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| format!("client read: {e}"))?;
        Ok::<_, String>((group, version))
    }
    .await;
    let server_result = server_task.await.unwrap();
    let (group, version) = client_result?;
    let client_identity = server_result?;
    Ok(Outcome { client_identity, group, version })
}

#[tokio::test]
async fn mesh_handshake_authenticates_both_sides_with_post_quantum_key_exchange() {
    let ca = CertificateAuthority::generate("cluster.local", 365 * DAY).unwrap();
    let bundle = TrustBundle::from_pem(ca.certificate_pem()).unwrap();
    let client = issue(&ca, id("demo", "client"));
    let server = issue(&ca, id("demo", "web"));
    let outcome = handshake(&client, &bundle, id("demo", "web"), &server, &bundle).await.unwrap();
    assert_eq!(outcome.client_identity, Some(id("demo", "client")), "the server learns who called");
    assert_eq!(outcome.group, Some(rustls::NamedGroup::X25519MLKEM768), "hybrid post-quantum key exchange");
    assert_eq!(outcome.version, Some(rustls::ProtocolVersion::TLSv1_3));
}

#[tokio::test]
async fn handshakes_fail_for_unknown_ca_expired_certificate_and_wrong_identity() {
    let ca = CertificateAuthority::generate("cluster.local", 365 * DAY).unwrap();
    let stranger = CertificateAuthority::generate("cluster.local", 365 * DAY).unwrap();
    let bundle = TrustBundle::from_pem(ca.certificate_pem()).unwrap();
    let client = issue(&ca, id("demo", "client"));
    let server = issue(&ca, id("demo", "web"));

    let foreign_server = issue(&stranger, id("demo", "web"));
    let error = handshake(&client, &bundle, id("demo", "web"), &foreign_server, &bundle).await.err().unwrap();
    assert!(error.contains("client: invalid peer certificate: UnknownIssuer"), "server from an unknown CA: {error}");

    let foreign_client = issue(&stranger, id("demo", "client"));
    let error = handshake(&foreign_client, &bundle, id("demo", "web"), &server, &bundle).await.err().unwrap();
    // TLS 1.3: the client finishes first and hears the server's refusal as an alert.
    assert!(error.contains("UnknownCA"), "the server refuses a client from an unknown CA: {error}");

    let key = WorkloadKey::generate(id("demo", "web")).unwrap();
    let now = SystemTime::now();
    let expired = ca.sign_valid(&key.csr_pem().unwrap(), &id("demo", "web"), now - 2 * DAY, now - DAY).unwrap();
    let expired = key.with_certificate(&expired).unwrap();
    let error = handshake(&client, &bundle, id("demo", "web"), &expired, &bundle).await.err().unwrap();
    assert!(error.contains("expired") || error.contains("Expired"), "expired server certificate: {error}");

    let error = handshake(
        &client,
        &bundle,
        id("demo", "api"),
        &{
            // The resolver serves by SNI, so a server holding only web's certificate under api's
            // name is what a mismatch looks like from the client.
            let key = WorkloadKey::generate(id("demo", "api")).unwrap();
            let wrong = ca.sign(&key.csr_pem().unwrap(), &id("demo", "web"), DAY).unwrap();
            WorkloadCertificate { identity: id("demo", "api"), ..key.with_certificate(&wrong).unwrap() }
        },
        &bundle,
    )
    .await
    .err()
    .unwrap();
    assert!(
        error.contains("ApplicationVerificationFailure") || error.contains("application verification"),
        "SPIFFE ID mismatch: {error}"
    );
}

#[tokio::test]
async fn the_ca_signs_the_identity_it_decides_not_the_one_asked_for() {
    let ca = CertificateAuthority::generate("cluster.local", 365 * DAY).unwrap();
    let key = WorkloadKey::generate(id("kube-system", "admin")).unwrap();
    let signed = ca.sign(&key.csr_pem().unwrap(), &id("demo", "client"), DAY).unwrap();
    let certificate = key.with_certificate(&signed).unwrap();
    assert_eq!(nodus_identity::tls::identity_of(&certificate.chain[0]), Some(id("demo", "client")));
    // A CA restored from its stored PEM keeps issuing certificates its bundle verifies.
    let restored = CertificateAuthority::from_pem(ca.certificate_pem(), ca.key_pem()).unwrap();
    let bundle = TrustBundle::from_pem(ca.certificate_pem()).unwrap();
    let server = issue(&restored, id("demo", "web"));
    handshake(&certificate, &bundle, id("demo", "web"), &server, &bundle).await.unwrap();
}

#[tokio::test]
async fn a_bundle_with_old_and_new_roots_bridges_a_trust_anchor_rotation() {
    let old = CertificateAuthority::generate("cluster.local", 365 * DAY).unwrap();
    let new = CertificateAuthority::generate("cluster.local", 365 * DAY).unwrap();
    let both = TrustBundle::from_pem(&format!("{}{}", old.certificate_pem(), new.certificate_pem())).unwrap();
    let old_only = TrustBundle::from_pem(old.certificate_pem()).unwrap();
    let client = issue(&old, id("demo", "client"));
    let server = issue(&new, id("demo", "web"));
    handshake(&client, &both, id("demo", "web"), &server, &both)
        .await
        .expect("old and new certificates meet mid-rotation");
    assert!(
        handshake(&client, &old_only, id("demo", "web"), &server, &old_only).await.is_err(),
        "without the new root they do not"
    );
    // Proxies tell which certificates to re-issue by their issuer.
    let (old_root, new_root) = (&old_only.roots()[0], &both.roots()[1]);
    assert!(nodus_identity::tls::issued_by(&client.chain[0], old_root));
    assert!(!nodus_identity::tls::issued_by(&client.chain[0], new_root));
    assert!(nodus_identity::tls::issued_by(&server.chain[0], new_root));
}
