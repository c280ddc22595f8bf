//! A daemon's side of enrollment: its key pair (made once, kept in its
//! cache directory), the certificate the coordinator signed for it, and the
//! CA it enrolled with. Files: `daemon.key`, `daemon.pem`,
//! `ca.fingerprint`, all 0600 in a 0700 directory.

use std::path::Path;

use rcgen::{KeyPair, PublicKeyData};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::{AuthError, Fingerprint, Issued, files};

pub const DAEMON_KEY: &str = "daemon.key";
pub const DAEMON_CERT: &str = "daemon.pem";
pub const CA_PIN: &str = "ca.fingerprint";

/// The daemon's key pair.
pub struct DaemonKey {
    pem: String,
    public: Vec<u8>,
}

impl DaemonKey {
    /// The key in `dir`, made (and stored) if there is none.
    pub fn load_or_create(dir: &Path) -> Result<Self, AuthError> {
        let path = dir.join(DAEMON_KEY);
        let pair = if path.exists() {
            let pem = files::read_private(&path)?;
            KeyPair::from_pem(&pem)
                .map_err(|e| AuthError::BadFile { path: path.clone(), what: format!("not a key: {e}") })?
        } else {
            files::private_dir(dir)?;
            let pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            files::write_private(&path, pair.serialize_pem().as_bytes())?;
            pair
        };
        Ok(Self { pem: pair.serialize_pem(), public: pair.der_bytes().to_vec() })
    }

    /// A key that lives only in memory: the daemon's data-plane key, made
    /// anew by each daemon process.
    pub fn ephemeral() -> Result<Self, AuthError> {
        let pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        Ok(Self { pem: pair.serialize_pem(), public: pair.der_bytes().to_vec() })
    }

    /// The private key, PEM (PKCS#8), as Zenoh's TLS configuration takes it.
    pub fn private_pem(&self) -> &str {
        &self.pem
    }

    /// The public key as the coordinator signs it: an uncompressed P-256
    /// point, in hex.
    pub fn public_hex(&self) -> String {
        crate::hex(&self.public)
    }

    /// What `rill token list` shows for the key.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.public)
    }

    /// Proof that this daemon holds the key it enrolls: a signature over the
    /// token's name, the machine id and the cluster's CA fingerprint (hex).
    /// Without it, anyone with the token and the (public) key could enroll.
    pub fn prove(&self, token: &str, machine_id: &str, ca: &Fingerprint) -> Result<String, AuthError> {
        use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
        let PrivateKeyDer::Pkcs8(der) = self.private()? else {
            return Err(AuthError::Tls(rustls::Error::General("the daemon key is not PKCS#8".into())));
        };
        let rng = ring::rand::SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der.secret_pkcs8_der(), &rng)
            .map_err(|e| AuthError::Tls(rustls::Error::General(format!("the daemon key: {e}"))))?;
        let signature =
            pair.sign(&rng, proof_message(token, machine_id, ca).as_bytes()).map_err(|_| AuthError::Random)?;
        Ok(crate::hex(signature.as_ref()))
    }

    fn private(&self) -> Result<PrivateKeyDer<'static>, AuthError> {
        PrivateKeyDer::from_pem_slice(self.pem.as_bytes())
            .map_err(|e| AuthError::Tls(rustls::Error::General(format!("the daemon key: {e}"))))
    }
}

/// The fingerprint of a public key sent as hex, if it is a P-256 point.
pub fn key_fingerprint(public_hex: &str) -> Result<(Vec<u8>, Fingerprint), AuthError> {
    let raw = crate::unhex(public_hex).ok_or(AuthError::BadPublicKey(0))?;
    if raw.len() != 65 || raw[0] != 4 {
        return Err(AuthError::BadPublicKey(raw.len()));
    }
    let fingerprint = Fingerprint::of(&raw);
    Ok((raw, fingerprint))
}

fn proof_message(token: &str, machine_id: &str, ca: &Fingerprint) -> String {
    format!("rill enrollment\n{token}\n{machine_id}\n{ca}")
}

/// Whether `proof` (hex) was made by the key `public_key` (a raw P-256
/// point) for this token, machine and cluster.
pub fn proof_holds(public_key: &[u8], proof: &str, token: &str, machine_id: &str, ca: &Fingerprint) -> bool {
    use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
    let Some(signature) = crate::unhex(proof) else { return false };
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, public_key)
        .verify(proof_message(token, machine_id, ca).as_bytes(), &signature)
        .is_ok()
}

/// The fingerprint of a PEM certificate.
pub fn cert_fingerprint(pem: &str) -> Result<Fingerprint, AuthError> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| AuthError::Tls(rustls::Error::General(format!("not a certificate: {e}"))))?;
    Ok(Fingerprint::of(&der))
}

/// Keeps the certificate the coordinator signed, and the CA it came from.
pub fn save_certificate(dir: &Path, cert_pem: &str, ca: Fingerprint) -> Result<(), AuthError> {
    cert_fingerprint(cert_pem)?;
    files::private_dir(dir)?;
    files::write_private(&dir.join(CA_PIN), format!("{ca}\n").as_bytes())?;
    files::write_private(&dir.join(DAEMON_CERT), cert_pem.as_bytes())
}

/// The enrolled identity in `dir`: the certificate with its key, and the
/// CA to pin. `None` if this daemon has not enrolled there.
pub fn load_enrolled(dir: &Path) -> Result<Option<(Issued, Fingerprint)>, AuthError> {
    let (cert_path, pin_path) = (dir.join(DAEMON_CERT), dir.join(CA_PIN));
    if !cert_path.exists() || !pin_path.exists() || !dir.join(DAEMON_KEY).exists() {
        return Ok(None);
    }
    let key = DaemonKey::load_or_create(dir)?;
    let cert_pem = files::read_private(&cert_path)?;
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| AuthError::BadFile { path: cert_path.clone(), what: format!("not a certificate: {e}") })?;
    let pin: Fingerprint = files::read_private(&pin_path)?.trim().parse()?;
    Ok(Some((Issued { chain: vec![cert], key: key.private()?, cert_pem }, pin)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemon_keeps_its_key_and_the_certificate_signed_for_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("identity");
        let key = DaemonKey::load_or_create(&dir).unwrap();
        assert_eq!(DaemonKey::load_or_create(&dir).unwrap().public_hex(), key.public_hex(), "made once");
        assert!(load_enrolled(&dir).unwrap().is_none());
        let ca = crate::ClusterCa::generate().unwrap();
        let (raw, fingerprint) = key_fingerprint(&key.public_hex()).unwrap();
        assert_eq!(fingerprint, key.fingerprint());
        let pem = ca.sign_daemon("edge-1", &raw).unwrap();
        save_certificate(&dir, &pem, ca.fingerprint()).unwrap();
        let (issued, pin) = load_enrolled(&dir).unwrap().expect("enrolled");
        assert_eq!(pin, ca.fingerprint());
        assert_eq!(Fingerprint::of(&issued.chain[0]), cert_fingerprint(&pem).unwrap());
        assert!(key_fingerprint("04abcd").is_err());
        let proof = key.prove("edge", "edge-1", &ca.fingerprint()).unwrap();
        assert!(proof_holds(&raw, &proof, "edge", "edge-1", &ca.fingerprint()));
        assert!(!proof_holds(&raw, &proof, "edge", "edge-2", &ca.fingerprint()), "for another machine");
        let (other, _) = key_fingerprint(&DaemonKey::ephemeral().unwrap().public_hex()).unwrap();
        assert!(!proof_holds(&other, &proof, "edge", "edge-1", &ca.fingerprint()), "another key");
    }
}
