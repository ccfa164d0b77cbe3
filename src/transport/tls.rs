//! TLS for AMQP client connections (`amqps://`, or `ssl=true`): rustls with
//! the ring provider, configured from a URL's [`TlsOptions`], and handshake
//! failures described so the reader knows which side to fix.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};

use super::url::TlsOptions;
use crate::Error;

/// A client's TLS settings, built once per transport and used for every
/// connection (and reconnection) it makes.
pub(crate) struct ClientTls {
    /// The rustls configuration, in the form lapin's streams take.
    pub(crate) connector: lapin::tcp::RustlsConnector,
    /// The name checked against the server's certificate (and sent in SNI)
    /// instead of the URL's host.
    pub(crate) server_name: Option<String>,
    /// `verify=verify_none`: warned about at every connection.
    pub(crate) insecure: bool,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

/// The crypto provider warren's TLS uses, client and broker alike.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Certificates of a PEM file; a configuration error naming `what` and the
/// file when it cannot be read or holds none.
pub(crate) fn load_certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Error::config(format!("cannot read {what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::config(format!(
            "{what} {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn load_key(what: &str, path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| Error::config(format!("cannot read {what} {}: {e}", path.display())))
}

impl ClientTls {
    /// Reads the files `options` names and builds the rustls configuration.
    pub(crate) fn new(options: &TlsOptions) -> Result<Self, Error> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::config(format!("TLS: {e}")))?;
        let builder = if options.verify {
            let mut roots = RootCertStore::empty();
            match &options.ca_file {
                Some(path) => {
                    let (added, _ignored) =
                        roots.add_parsable_certificates(load_certs("cacertfile", path)?);
                    if added == 0 {
                        return Err(Error::config(format!(
                            "cacertfile {} holds no usable CA certificate",
                            path.display()
                        )));
                    }
                }
                None => {
                    let found = rustls_native_certs::load_native_certs();
                    roots.add_parsable_certificates(found.certs);
                    if roots.is_empty() {
                        return Err(Error::config(
                            "no system root certificates found to check the server's \
                             certificate: give its CA with cacertfile= (ssl_ca_file=)",
                        ));
                    }
                }
            }
            builder.with_root_certificates(roots)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        };
        let mut config = match (&options.cert_file, &options.key_file) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(load_certs("certfile", cert)?, load_key("keyfile", key)?)
                .map_err(|e| {
                    Error::config(format!(
                        "certfile {} and keyfile {} do not make a client identity: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?,
            _ => builder.with_no_client_auth(),
        };
        config.enable_sni = options.sni;
        Ok(ClientTls {
            connector: lapin::tcp::RustlsConnector::from(config),
            server_name: options.server_name.clone(),
            insecure: !options.verify,
        })
    }
}

/// `verify=verify_none`: any certificate is accepted (its signatures over
/// the handshake are still checked, so the handshake itself is sound).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What a failed TLS handshake with `name` means, in words that say which
/// side to fix.
pub(crate) fn describe_handshake_error(error: &std::io::Error, name: &str) -> String {
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::InvalidCertificate(cert)) => match cert {
            CertificateError::UnknownIssuer => {
                "TLS: the server's certificate is not trusted: no known authority signed it \
                 (give its CA with cacertfile=, or oslo's ssl_ca_file=)"
                    .to_owned()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "TLS: hostname mismatch: the server's certificate is not valid for {name:?} \
                     (connect by a name the certificate lists, or set server_name_indication=)"
                )
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "TLS: the server's certificate has expired".to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "TLS: the server's certificate is not valid yet (check the clocks)".to_owned()
            }
            other => format!("TLS: the server's certificate was refused: {other:?}"),
        },
        Some(rustls::Error::AlertReceived(alert)) => {
            use rustls::AlertDescription as A;
            match alert {
                A::CertificateRequired | A::HandshakeFailure => format!(
                    "TLS: the server refused the handshake ({alert:?}): it may require a \
                     client certificate (certfile= and keyfile=)"
                ),
                A::BadCertificate | A::UnknownCA | A::CertificateUnknown | A::DecryptError => {
                    format!(
                        "TLS: the server refused the client certificate ({alert:?}): \
                         is it signed by a CA the server trusts?"
                    )
                }
                other => format!("TLS: the server refused the handshake: {other:?}"),
            }
        }
        Some(rustls::Error::InvalidMessage(_))
        | Some(rustls::Error::InappropriateMessage { .. }) => {
            "TLS: the server did not answer in TLS: is this a plain AMQP port \
             (amqp://, usually 5672) rather than a TLS one (amqps://, usually 5671)?"
                .to_owned()
        }
        Some(other) => format!("TLS: handshake failed: {other}"),
        None if error.kind() == std::io::ErrorKind::UnexpectedEof => {
            "TLS: the server closed the connection during the handshake \
             (a plain AMQP port, or it refused this client)"
                .to_owned()
        }
        None => format!("TLS: handshake failed: {error}"),
    }
}
