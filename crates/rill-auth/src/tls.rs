//! rustls configurations (ring): the coordinator's server, which asks for a
//! daemon certificate but lets token holders in without one, and clients
//! that trust the coordinator only if its chain ends at the CA they pinned
//! by fingerprint, checked before any secret is sent.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::{AuthError, ClusterCa, Fingerprint, Issued};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn setup(e: impl std::fmt::Display) -> AuthError {
    AuthError::Tls(rustls::Error::General(e.to_string()))
}

/// The coordinator's TLS: `server` is its certificate. A client may present
/// a certificate signed by `ca` (a daemon) or none (the CLI, a daemon
/// enrolling with its token); which routes need which is the server's call.
pub fn server_config(ca: &ClusterCa, server: &Issued) -> Result<Arc<ServerConfig>, AuthError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert().clone())?;
    let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(setup)?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)?
        .with_client_cert_verifier(clients)
        .with_single_cert(server.chain.clone(), server.key.clone_key())?;
    Ok(Arc::new(config))
}

/// A client that trusts a server whose chain ends at the CA with
/// fingerprint `pin` and names the address it was reached by; it presents
/// `identity` (a daemon's certificate) if given.
pub fn client_config(pin: Fingerprint, identity: Option<&Issued>) -> Result<Arc<ClientConfig>, AuthError> {
    let verifier = Arc::new(PinnedCa { pin, provider: provider() });
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match identity {
        Some(id) => builder.with_client_auth_cert(id.chain.clone(), id.key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Trusts the chain the server sends if it contains the pinned CA and the
/// server's certificate verifies against it (signature, validity, name).
#[derive(Debug)]
struct PinnedCa {
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates.iter().find(|c| Fingerprint::of(c) == self.pin) else {
            let sent: Vec<String> = intermediates.iter().map(|c| Fingerprint::of(c).to_string()).collect();
            return Err(rustls::Error::General(format!(
                "the server's certificate is not from the pinned cluster CA {} (it sent {}): \
                 another coordinator, or someone in between",
                self.pin,
                if sent.is_empty() { "no CA".to_owned() } else { sent.join(", ") }
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let webpki =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        webpki.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)?;
        // And it is the coordinator's: no other certificate of the CA has this name.
        let coordinator =
            ServerName::try_from(crate::ca::COORDINATOR_NAME).map_err(|e| rustls::Error::General(e.to_string()))?;
        webpki.verify_server_cert(end_entity, &[], &coordinator, ocsp_response, now).map_err(|_| {
            rustls::Error::General(format!(
                "the server's certificate is from the pinned cluster CA but is not a coordinator's (no {})",
                crate::ca::COORDINATOR_NAME
            ))
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A TLS handshake over a socket pair: `Ok(the byte the server got)`.
    fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>, name: &str) -> Result<u8, String> {
        let (a, b) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
        // (Bounded: a client that gives up without an alert ends the wait.)
        a.set_read_timeout(Some(std::time::Duration::from_secs(5))).map_err(|e| e.to_string())?;
        let server_thread = std::thread::spawn(move || {
            let mut conn = rustls::ServerConnection::new(server).map_err(|e| e.to_string())?;
            let mut a = a;
            let mut tls = rustls::Stream::new(&mut conn, &mut a);
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).map_err(|e| e.to_string())?;
            Ok::<u8, String>(byte[0])
        });
        let name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
        let mut conn = rustls::ClientConnection::new(client, name).map_err(|e| e.to_string())?;
        let mut b = b;
        let mut tls = rustls::Stream::new(&mut conn, &mut b);
        let sent = tls.write_all(&[42]).and_then(|()| tls.flush()).map_err(|e| e.to_string());
        let got = server_thread.join().map_err(|_| "server panicked".to_owned())?;
        // The server may close first once it has the byte; when it has not,
        // the client's error says why (it is the side that checks the pin).
        let got = got.map_err(|server| sent.err().unwrap_or(server));
        drop(b);
        got
    }

    #[test]
    fn a_client_pinned_on_the_ca_connects_and_a_wrong_pin_or_name_is_refused() {
        let ca = ClusterCa::generate().unwrap();
        let server = ca.issue_server(&["127.0.0.1".into(), "localhost".into()]).unwrap();
        let config = server_config(&ca, &server).unwrap();
        let right = client_config(ca.fingerprint(), None).unwrap();
        assert_eq!(handshake(config.clone(), right.clone(), "127.0.0.1"), Ok(42));
        assert_eq!(handshake(config.clone(), right.clone(), "localhost"), Ok(42));
        let err = handshake(config.clone(), right, "10.1.2.3").unwrap_err();
        assert!(err.to_lowercase().contains("not valid for name") || err.contains("NotValidForName"), "{err}");

        let other = ClusterCa::generate().unwrap();
        let wrong = client_config(other.fingerprint(), None).unwrap();
        let err = handshake(config, wrong, "127.0.0.1").unwrap_err();
        assert!(err.contains("not from the pinned cluster CA") && err.contains(&ca.fingerprint().to_string()), "{err}");
    }

    #[test]
    fn a_certificate_of_the_pinned_ca_that_is_not_the_coordinators_is_refused() {
        // E.g. one a daemon got for its address: same CA, right name, but
        // not the coordinator's reserved name.
        let ca = ClusterCa::generate().unwrap();
        let other = ca.issue_server_for(&["127.0.0.1".into()]).unwrap();
        let client = client_config(ca.fingerprint(), None).unwrap();
        let err = handshake(server_config(&ca, &other).unwrap(), client, "127.0.0.1").unwrap_err();
        assert!(err.contains("is not a coordinator's"), "{err}");
    }

    #[test]
    fn a_server_signed_by_another_ca_that_sends_the_pinned_one_is_refused() {
        // Someone in between holds the real CA's certificate (it is public)
        // but not its key: its own certificate does not verify against it.
        let ca = ClusterCa::generate().unwrap();
        let impostor = ClusterCa::generate().unwrap();
        let mut forged = impostor.issue_server(&["127.0.0.1".into()]).unwrap();
        forged.chain[1] = ca.cert().clone();
        let config = server_config(&impostor, &forged).unwrap();
        let client = client_config(ca.fingerprint(), None).unwrap();
        assert!(handshake(config, client, "127.0.0.1").is_err());
    }
}
