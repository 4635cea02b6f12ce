//! TLS for the fabric: every node presents a self-signed certificate made from its
//! ed25519 node key, and a peer is accepted only if that key is the [`NodeId`] the
//! caller expected (taken from the signed node record), never because of which
//! address answered.
//!
//! The certificate is only a carrier for the public key: we do not check names,
//! chains or validity dates. What proves the identity is the TLS 1.3
//! CertificateVerify signature, which we still check with
//! [`rustls::crypto::verify_tls13_signature`] against the key in the certificate.
//!
//! Only the ring crypto provider is used, and it is passed explicitly to every
//! builder so nothing depends on a process-wide default.

use std::sync::{Arc, Mutex, OnceLock};

use ed25519_dalek::pkcs8::DecodePublicKey;
use ed25519_dalek::VerifyingKey;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::identity::NodeIdentity;
use crate::topology::NodeId;

/// The ALPN every fabric connection negotiates; a peer speaking anything else is
/// refused during the handshake.
pub const ALPN: &[u8] = b"fabric/1";

/// The TLS server name we send. It carries no meaning: identity is the key.
pub const SERVER_NAME: &str = "fabric-node";

/// Why TLS material could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The node key could not be exported as PKCS#8, or the generated certificate
    /// does not carry it.
    #[error("node key cannot be used for TLS: {0}")]
    Key(String),
    /// rcgen refused the certificate parameters or the key.
    #[error("building the node certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the configuration: the protocol versions, the certificate or the key.
    #[error("building the TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// quinn cannot run QUIC on the rustls configuration (no usable initial cipher suite).
    #[error("TLS configuration is not usable for QUIC: {0}")]
    Quic(String),
}

/// A peer answered at an endpoint with a different key than the node record says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "peer at {endpoint} presented node id {presented}, but the signed node record expects \
     {expected}; refusing the connection"
)]
pub struct IdentityMismatch {
    /// The node id the signed node record names.
    pub expected: NodeId,
    /// The node id of the key the peer's certificate carries.
    pub presented: NodeId,
    /// Where we dialled: an address, or a relay description.
    pub endpoint: String,
}

/// Marker error inside rustls so logs on both sides say what went wrong.
#[derive(Debug, thiserror::Error)]
#[error("certificate key {presented} is not the expected node id {expected}")]
struct NodeIdMismatchError {
    expected: NodeId,
    presented: NodeId,
}

#[derive(Debug, thiserror::Error)]
#[error("certificate key is not an ed25519 public key")]
struct NotEd25519;

/// The process-independent crypto provider: ring, always.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn signature_algorithms() -> WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
}

/// The node's certificate and key in the forms rustls wants.
#[derive(Debug)]
pub struct TlsIdentity {
    node_id: NodeId,
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        Self {
            node_id: self.node_id,
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl TlsIdentity {
    /// Self-signs a certificate whose SubjectPublicKeyInfo is the node key.
    pub fn new(identity: &NodeIdentity) -> Result<Self, TlsError> {
        let der = identity
            .pkcs8_der()
            .map_err(|e| TlsError::Key(e.to_string()))?;
        let pkcs8 = PrivatePkcs8KeyDer::from(der);
        let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)?;
        let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, identity.node_id().to_string());
        let cert = params.self_signed(&key_pair)?;
        let node_id = identity.node_id();
        // Belt and braces: the certificate must carry exactly our key.
        let carried = node_id_from_cert(cert.der()).map_err(|e| TlsError::Key(e.to_string()))?;
        if carried != node_id {
            return Err(TlsError::Key(
                "generated certificate does not carry the node key".into(),
            ));
        }
        Ok(Self {
            node_id,
            cert: cert.der().clone(),
            key: pkcs8,
        })
    }

    /// The node id of the key this certificate binds.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The self-signed certificate (DER) presented during handshakes.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }
}

/// Extracts the ed25519 key from a certificate's SubjectPublicKeyInfo.
pub fn node_id_from_cert(cert: &CertificateDer<'_>) -> Result<NodeId, rustls::Error> {
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let spki = ee.subject_public_key_info();
    let key = VerifyingKey::from_public_key_der(spki.as_ref()).map_err(|_| {
        rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
            NotEd25519,
        ))))
    })?;
    Ok(NodeId(key.to_bytes()))
}

/// The verified NodeId of the peer of an established connection.
pub fn peer_node_id(conn: &quinn::Connection) -> Option<NodeId> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    node_id_from_cert(certs.first()?).ok()
}

/// Where the client verifier records what a mismatching peer presented, so the
/// transport can return a typed [`IdentityMismatch`] instead of a TLS alert string.
pub type MismatchSlot = Arc<Mutex<Option<NodeId>>>;

/// Client-side verifier pinned to the NodeId the caller expects at this dial.
#[derive(Debug)]
struct ExpectedNodeVerifier {
    expected: NodeId,
    presented_on_mismatch: MismatchSlot,
}

impl ServerCertVerifier for ExpectedNodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            ));
        }
        let presented = node_id_from_cert(end_entity)?;
        if presented != self.expected {
            if let Ok(mut slot) = self.presented_on_mismatch.lock() {
                *slot = Some(presented);
            }
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(NodeIdMismatchError {
                    expected: self.expected,
                    presented,
                })),
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // QUIC is TLS 1.3 only; a TLS 1.2 signature here means something is wrong.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &signature_algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Server-side verifier: any node may connect, but it must prove an ed25519 key;
/// that key becomes the connection's verified peer NodeId.
#[derive(Debug)]
struct NodeClientVerifier;

impl ClientCertVerifier for NodeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            ));
        }
        node_id_from_cert(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &signature_algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// QUIC server crypto: our certificate, mandatory client certificates.
pub fn server_crypto(id: &TlsIdentity) -> Result<Arc<QuicServerConfig>, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(NodeClientVerifier))
        .with_single_cert(
            vec![id.cert.clone()],
            PrivateKeyDer::Pkcs8(id.key.clone_key()),
        )?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    Ok(Arc::new(quic))
}

/// QUIC client crypto for one dial: presents our certificate and accepts only
/// `expected`. The returned slot is filled with the presented NodeId on mismatch.
pub fn client_crypto(
    id: &TlsIdentity,
    expected: NodeId,
) -> Result<(Arc<QuicClientConfig>, MismatchSlot), TlsError> {
    let slot: MismatchSlot = Arc::new(Mutex::new(None));
    let verifier = ExpectedNodeVerifier {
        expected,
        presented_on_mismatch: slot.clone(),
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(
            vec![id.cert.clone()],
            PrivateKeyDer::Pkcs8(id.key.clone_key()),
        )?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    Ok((Arc::new(quic), slot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_carries_the_node_key() {
        let id = NodeIdentity::generate();
        let tls = TlsIdentity::new(&id).expect("tls identity");
        assert_eq!(
            node_id_from_cert(tls.certificate()).expect("parse"),
            id.node_id()
        );
    }

    #[test]
    fn garbage_certificate_is_bad_encoding() {
        let err = node_id_from_cert(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]))
            .expect_err("garbage");
        assert!(matches!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::BadEncoding)
        ));
    }

    #[test]
    fn verifier_rejects_other_key_and_records_it() {
        let expected = NodeIdentity::generate().node_id();
        let other = NodeIdentity::generate();
        let other_tls = TlsIdentity::new(&other).expect("tls");
        let slot: MismatchSlot = Arc::new(Mutex::new(None));
        let v = ExpectedNodeVerifier {
            expected,
            presented_on_mismatch: slot.clone(),
        };
        let name = ServerName::try_from(SERVER_NAME).expect("name");
        assert!(v
            .verify_server_cert(other_tls.certificate(), &[], &name, &[], UnixTime::now())
            .is_err());
        assert_eq!(*slot.lock().expect("lock"), Some(other.node_id()));
    }

    #[test]
    fn configs_build_with_the_explicit_ring_provider() {
        let tls = TlsIdentity::new(&NodeIdentity::generate()).expect("tls");
        server_crypto(&tls).expect("server");
        client_crypto(&tls, NodeIdentity::generate().node_id()).expect("client");
    }
}
