//! The cluster CA: made once by the coordinator in its state directory, it
//! signs the coordinator's server certificate (for the names it serves) and
//! each enrolled daemon's certificate (for its key, named after its machine).
//! Clients trust it by its fingerprint, not by any system store.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::{AuthError, Fingerprint, files};

/// The CA certificate's file in the state directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA key's file (0600).
pub const CA_KEY: &str = "ca.key";

/// A certificate and its key, as rustls wants them: the chain is the
/// certificate then the CA's.
pub struct Issued {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub cert_pem: String,
}

impl Clone for Issued {
    fn clone(&self) -> Self {
        Self { chain: self.chain.clone(), key: self.key.clone_key(), cert_pem: self.cert_pem.clone() }
    }
}

/// The name every coordinator certificate carries and clients require, on
/// top of the address they dialled. No other certificate of the cluster
/// has it, so no daemon's certificate can pass for the coordinator's.
pub const COORDINATOR_NAME: &str = "coordinator.rill";

/// Which CA: the cluster's (the coordinator's certificate, daemon
/// enrollment) or the data plane's (daemons' links to each other). Kept
/// apart so that no certificate of one opens the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaKind {
    Cluster,
    DataPlane,
}

impl CaKind {
    fn common_name(self) -> &'static str {
        match self {
            CaKind::Cluster => "rill cluster CA",
            CaKind::DataPlane => "rill data-plane CA",
        }
    }

    /// Its files in the state directory.
    pub fn files(self) -> (&'static str, &'static str) {
        match self {
            CaKind::Cluster => (CA_CERT, CA_KEY),
            CaKind::DataPlane => ("data-ca.pem", "data-ca.key"),
        }
    }
}

pub struct ClusterCa {
    kind: CaKind,
    key_pem: String,
    cert: CertificateDer<'static>,
    cert_pem: String,
}

/// The CA's parameters; the same every time, so an issuer can be rebuilt
/// from the stored key alone.
fn ca_params(kind: CaKind) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, kind.common_name());
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

fn leaf_params(common_name: &str, names: &[String]) -> Result<CertificateParams, AuthError> {
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// A daemon's public key: an uncompressed P-256 point.
struct DaemonKey<'a>(&'a [u8]);

impl rcgen::PublicKeyData for DaemonKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl ClusterCa {
    /// A new cluster CA (not stored).
    pub fn generate() -> Result<Self, AuthError> {
        Self::generate_kind(CaKind::Cluster)
    }

    pub fn generate_kind(kind: CaKind) -> Result<Self, AuthError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = ca_params(kind).self_signed(&key)?;
        Ok(Self { kind, key_pem: key.serialize_pem(), cert: cert.der().clone(), cert_pem: cert.pem() })
    }

    /// The cluster CA stored in `dir`, made and stored (0600, dir 0700) if
    /// there is none. Also says whether it was made now.
    pub fn load_or_create(dir: &Path) -> Result<(Self, bool), AuthError> {
        Self::load_or_create_kind(dir, CaKind::Cluster)
    }

    pub fn load_or_create_kind(dir: &Path, kind: CaKind) -> Result<(Self, bool), AuthError> {
        let (cert_file, key_file) = kind.files();
        let (cert_path, key_path) = (dir.join(cert_file), dir.join(key_file));
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Ok((Self::load(kind, &cert_path, &key_path)?, false)),
            (false, false) => {
                files::private_dir(dir)?;
                let ca = Self::generate_kind(kind)?;
                // The key first: a certificate without its key is the one state we refuse.
                files::write_private(&key_path, ca.key_pem.as_bytes())?;
                files::write_private(&cert_path, ca.cert_pem.as_bytes())?;
                Ok((ca, true))
            }
            (true, false) => Err(missing(&key_path, &cert_path)),
            (false, true) => Err(missing(&cert_path, &key_path)),
        }
    }

    fn load(kind: CaKind, cert_path: &Path, key_path: &Path) -> Result<Self, AuthError> {
        let key_pem = files::read_private(key_path)?;
        KeyPair::from_pem(&key_pem)
            .map_err(|e| AuthError::BadFile { path: key_path.to_owned(), what: format!("not a key: {e}") })?;
        let cert_pem = files::read_private(cert_path)?;
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| AuthError::BadFile { path: cert_path.to_owned(), what: format!("not a certificate: {e}") })?;
        Ok(Self { kind, key_pem, cert, cert_pem })
    }

    /// The fingerprint of the CA stored in `dir` (what a client on the
    /// coordinator's machine pins without being told).
    pub fn fingerprint_in(dir: &Path) -> Result<Fingerprint, AuthError> {
        let path = dir.join(CA_CERT);
        let pem = std::fs::read_to_string(&path).map_err(|source| AuthError::File { path: path.clone(), source })?;
        let cert = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| AuthError::BadFile { path, what: format!("not a certificate: {e}") })?;
        Ok(Fingerprint::of(&cert))
    }

    /// What clients pin.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert)
    }

    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, AuthError> {
        Ok(Issuer::new(ca_params(self.kind), KeyPair::from_pem(&self.key_pem)?))
    }

    /// A server certificate (with a new key) for the coordinator, valid for
    /// `names` (IP addresses and DNS names it is reached by) and
    /// [`COORDINATOR_NAME`].
    pub fn issue_server(&self, names: &[String]) -> Result<Issued, AuthError> {
        let mut names = names.to_vec();
        names.push(COORDINATOR_NAME.to_owned());
        self.issue_server_for(&names)
    }

    /// A server certificate for exactly `names` (tests: one that is not
    /// the coordinator's).
    pub(crate) fn issue_server_for(&self, names: &[String]) -> Result<Issued, AuthError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = leaf_params("rill coordinator", names)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(Issued {
            chain: vec![cert.der().clone(), self.cert.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            cert_pem: cert.pem(),
        })
    }

    /// A certificate for an enrolled daemon's key (an uncompressed P-256
    /// point), named after its machine: a client certificate only, for its
    /// connections to the coordinator (the data plane has its own CA).
    pub fn sign_daemon(&self, machine_id: &str, public_key: &[u8]) -> Result<String, AuthError> {
        if public_key.len() != 65 || public_key[0] != 4 {
            return Err(AuthError::BadPublicKey(public_key.len()));
        }
        let mut params = leaf_params(machine_id, &[format!("{machine_id}.daemon.rill")])?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        Ok(params.signed_by(&DaemonKey(public_key), &self.issuer()?)?.pem())
    }
}

/// How long a data-plane certificate is valid. Each registration gets a
/// new one; a daemon connected without a break for longer has its data
/// links closed at expiry (Zenoh's `close_link_on_expiration`) and must
/// be restarted.
pub const DATA_CERT_DAYS: i64 = 365;

/// The civil date (year, month, day) of a day count since 1970-01-01
/// (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month, day)
}

impl ClusterCa {
    /// A certificate for a daemon's data-plane key (an uncompressed P-256
    /// point), named `name` (its machine id) and valid for `ip`, the
    /// address its peers dial; both client and server, as links are mutual.
    /// Valid from yesterday (clocks differ) for [`DATA_CERT_DAYS`].
    pub fn sign_data_plane(
        &self,
        name: &str,
        public_key: &[u8],
        ip: Option<std::net::IpAddr>,
    ) -> Result<String, AuthError> {
        if public_key.len() != 65 || public_key[0] != 4 {
            return Err(AuthError::BadPublicKey(public_key.len()));
        }
        let mut names = vec![format!("{name}.daemon.rill")];
        names.extend(ip.map(|ip| ip.to_string()));
        let mut params = leaf_params(name, &names)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
        let today = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| (d.as_secs() / 86_400) as i64);
        let ((y0, m0, d0), (y1, m1, d1)) = (civil(today - 1), civil(today + DATA_CERT_DAYS));
        params.not_before = rcgen::date_time_ymd(y0, m0, d0);
        params.not_after = rcgen::date_time_ymd(y1, m1, d1);
        Ok(params.signed_by(&DaemonKey(public_key), &self.issuer()?)?.pem())
    }
}

fn missing(absent: &Path, present: &Path) -> AuthError {
    AuthError::BadFile {
        path: PathBuf::from(absent),
        what: format!(
            "missing while {} exists: restore it, or remove both to make a new cluster CA",
            present.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_made_once_kept_private_and_loaded_again() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let (ca, created) = ClusterCa::load_or_create(&dir).unwrap();
        assert!(created);
        let (again, created) = ClusterCa::load_or_create(&dir).unwrap();
        assert!(!created);
        assert_eq!(again.fingerprint(), ca.fingerprint());
        use std::os::unix::fs::PermissionsExt;
        for file in [CA_CERT, CA_KEY] {
            assert_eq!(std::fs::metadata(dir.join(file)).unwrap().permissions().mode() & 0o777, 0o600, "{file}");
        }
        std::fs::remove_file(dir.join(CA_KEY)).unwrap();
        let err = ClusterCa::load_or_create(&dir).err().unwrap().to_string();
        assert!(err.contains("ca.key: missing while") && err.contains("remove both"), "{err}");
    }

    #[test]
    fn civil_dates_are_right() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        assert_eq!(civil(20_513), (2026, 3, 1));
        assert_eq!(civil(-1), (1969, 12, 31));
    }

    #[test]
    fn server_and_daemon_certificates_are_signed_by_the_ca() {
        let ca = ClusterCa::generate().unwrap();
        let server = ca.issue_server(&["127.0.0.1".into(), "localhost".into()]).unwrap();
        assert_eq!(server.chain.len(), 2);
        assert_eq!(Fingerprint::of(&server.chain[1]), ca.fingerprint());
        let daemon_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        use rcgen::PublicKeyData;
        let pem = ca.sign_daemon("edge-1", daemon_key.der_bytes()).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(matches!(ca.sign_daemon("edge-1", &[4; 10]), Err(AuthError::BadPublicKey(10))));
    }
}
