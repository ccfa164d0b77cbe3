//! TLS listeners (`amqps`): the server's certificate and key, and
//! optionally a CA whose client certificates are checked (and then log in
//! with `EXTERNAL`, the certificate's common name as the user name). The
//! files are read at start and again on
//! [`BrokerHandle::reload_tls`](crate::BrokerHandle::reload_tls) (SIGHUP
//! in `warren broker`); connections keep the configuration they started
//! with.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};

/// A TLS listener's files: the server's certificate chain and key (PEM),
/// and optionally the CA of client certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    cert: PathBuf,
    key: PathBuf,
    ca: Option<PathBuf>,
    verify_peer: bool,
}

/// A TLS configuration that cannot be used: the message names the file and
/// what is wrong with it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(String);

impl TlsConfig {
    /// The server's certificate chain (PEM, leaf first) and private key
    /// (PEM: PKCS#8, PKCS#1 or SEC1).
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        TlsConfig {
            cert: cert.into(),
            key: key.into(),
            ca: None,
            verify_peer: false,
        }
    }

    /// Asks clients for a certificate and checks one that is presented
    /// against the CA certificates of this PEM file; a client with a valid
    /// one may log in with `EXTERNAL` as its common name (RabbitMQ's
    /// `ssl_options.cacertfile` with `verify_peer`). Clients without one
    /// still connect, unless [`verify_peer`](Self::verify_peer).
    pub fn client_ca(mut self, ca: impl Into<PathBuf>) -> Self {
        self.ca = Some(ca.into());
        self
    }

    /// Refuses clients that present no valid certificate (RabbitMQ's
    /// `fail_if_no_peer_cert = true`); needs [`client_ca`](Self::client_ca).
    pub fn verify_peer(mut self, required: bool) -> Self {
        self.verify_peer = required;
        self
    }

    /// Reads the files and builds the rustls configuration.
    pub(crate) fn load(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?;
        let builder = match &self.ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                let (added, _) = roots.add_parsable_certificates(certs("CA", ca)?);
                if added == 0 {
                    return Err(TlsError(format!(
                        "CA file {} holds no usable certificate",
                        ca.display()
                    )));
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if self.verify_peer {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| TlsError(format!("CA file {}: {e}", ca.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
            None if self.verify_peer => {
                return Err(TlsError(
                    "verifying client certificates needs the CA that signs them".into(),
                ))
            }
            None => builder.with_no_client_auth(),
        };
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| TlsError(format!("cannot read key file {}: {e}", self.key.display())))?;
        let config = builder
            .with_single_cert(certs("certificate", &self.cert)?, key)
            .map_err(|e| {
                TlsError(format!(
                    "certificate {} and key {} do not go together: {e}",
                    self.cert.display(),
                    self.key.display()
                ))
            })?;
        Ok(Arc::new(config))
    }
}

fn certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError(format!("cannot read {what} file {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "{what} file {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// The configuration TLS listeners accept with, swapped by
/// [`reload`](Self::reload).
#[derive(Debug)]
pub(crate) struct TlsAcceptor {
    files: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsAcceptor {
    pub(crate) fn new(files: TlsConfig) -> Result<Self, TlsError> {
        let current = RwLock::new(files.load()?);
        Ok(TlsAcceptor { files, current })
    }

    /// Reads the files again; new connections use them, established ones
    /// keep theirs. On error the previous configuration stays.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let fresh = self.files.load()?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        tokio_rustls::TlsAcceptor::from(config)
    }
}

/// The common name (CN) of a DER certificate's subject: the user name
/// `EXTERNAL` logs in as (RabbitMQ's `ssl_cert_login_from = common_name`).
/// `None` if there is none or the certificate does not parse.
pub(crate) fn common_name(cert: &[u8]) -> Option<String> {
    // Certificate ::= SEQUENCE { tbsCertificate, ... }
    let (certificate, _) = der(cert, 0x30)?;
    let (mut tbs, _) = der(certificate, 0x30)?;
    // [0] EXPLICIT version, optional
    if tbs.first() == Some(&0xa0) {
        tbs = der(tbs, 0xa0)?.1;
    }
    let (_serial, rest) = der(tbs, 0x02)?;
    let (_signature, rest) = der(rest, 0x30)?;
    let (_issuer, rest) = der(rest, 0x30)?;
    let (_validity, rest) = der(rest, 0x30)?;
    let (mut subject, _) = der(rest, 0x30)?;
    let mut found = None;
    // Name ::= SEQUENCE OF SET OF AttributeTypeAndValue; the last CN wins
    // (the most specific, as RabbitMQ reads it).
    while !subject.is_empty() {
        let (mut set, rest) = der(subject, 0x31)?;
        subject = rest;
        while !set.is_empty() {
            let (attribute, rest) = der(set, 0x30)?;
            set = rest;
            let (oid, value) = der(attribute, 0x06)?;
            if oid == [0x55, 0x04, 0x03] {
                let (tag, text) = (value.first()?, der_any(value)?);
                // UTF8String, PrintableString, IA5String, T61String
                if matches!(tag, 0x0c | 0x13 | 0x16 | 0x14) {
                    found = Some(String::from_utf8(text.to_vec()).ok()?);
                }
            }
        }
    }
    found
}

/// The contents of the DER element at the start of `input` if its tag is
/// `tag`, and what follows it.
fn der(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *input.first()? != tag {
        return None;
    }
    let (len, header) = der_length(input.get(1..)?)?;
    let start = 1 + header;
    let end = start.checked_add(len)?;
    Some((input.get(start..end)?, input.get(end..)?))
}

/// The contents of the DER element at the start of `input`, whatever its tag.
fn der_any(input: &[u8]) -> Option<&[u8]> {
    der(input, *input.first()?).map(|(contents, _)| contents)
}

/// A DER length: its value and how many bytes it took.
fn der_length(input: &[u8]) -> Option<(usize, usize)> {
    let first = *input.first()?;
    if first < 0x80 {
        return Some((usize::from(first), 1));
    }
    let count = usize::from(first & 0x7f);
    if count == 0 || count > 4 {
        return None;
    }
    let mut len = 0usize;
    for b in input.get(1..1 + count)? {
        len = (len << 8) | usize::from(*b);
    }
    Some((len, 1 + count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_and_garbage() {
        assert_eq!(der_length(&[0x05]), Some((5, 1)));
        assert_eq!(der_length(&[0x81, 0x80]), Some((128, 2)));
        assert_eq!(der_length(&[0x82, 0x01, 0x00]), Some((256, 3)));
        assert_eq!(der_length(&[0x80]), None);
        assert_eq!(der_length(&[0x85, 1, 2, 3, 4, 5]), None);
        assert_eq!(der(&[0x30, 0x05, 1, 2], 0x30), None);
        for garbage in [
            &[][..],
            &[0x30],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x31, 0],
        ] {
            assert_eq!(common_name(garbage), None);
        }
    }
}
