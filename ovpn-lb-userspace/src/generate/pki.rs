//! The gateways' TLS identities: one self-signed certificate and key per
//! gateway, made here. No CA: each OpenVPN accepts exactly the other
//! gateway's certificate, named by its SHA-256 fingerprint
//! (`peer-fingerprint`), which replaces the deprecated static keys.

use std::{fmt::Write as _, io::Read as _};

use rcgen::{CertificateParams, DnType, KeyPair};
use sha2::{Digest as _, Sha256};

/// A certificate, its private key (both PEM) and the certificate's fingerprint.
#[derive(Clone, Debug)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    /// SHA-256 of the DER certificate, as OpenVPN writes it: `AB:CD:...`.
    pub fingerprint: String,
}

impl Identity {
    /// A fresh ECDSA P-256 key and a certificate for `name`, signed by itself.
    ///
    /// # Errors
    /// If the key or the certificate cannot be made.
    pub fn generate(name: &str) -> Result<Self, rcgen::Error> {
        let mut params = CertificateParams::new(vec![name.to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            fingerprint: fingerprint(cert.der()),
        })
    }
}

/// SHA-256 of `der`, colon-separated upper-case hex.
#[must_use]
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .fold(String::new(), |mut text, byte| {
            if !text.is_empty() {
                text.push(':');
            }
            let _ = write!(text, "{byte:02X}");
            text
        })
}

/// A random password for the management interface: 24 bytes from the
/// kernel's generator, in hex.
///
/// # Errors
/// If `/dev/urandom` cannot be read.
pub fn password() -> std::io::Result<String> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().fold(String::new(), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_is_the_sha256_of_the_certificate() {
        assert_eq!(
            fingerprint(b"abc"),
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }

    #[test]
    fn identities_are_fresh_pem_pairs() {
        let a = Identity::generate("gateway-a").unwrap();
        let b = Identity::generate("gateway-a").unwrap();
        assert!(a.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(a.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(a.fingerprint.len(), 32 * 3 - 1);
        assert_ne!(a.fingerprint, b.fingerprint, "every call makes a new key");
        let p = password().unwrap();
        assert_eq!(p.len(), 48);
        assert_ne!(p, password().unwrap());
    }
}
