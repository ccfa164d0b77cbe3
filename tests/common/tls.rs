//! TLS fixtures: a certificate authority with server and client
//! certificates made at run time (rcgen), and a RabbitMQ node of the test's
//! own with a TLS listener (see `super::rabbit`).

use std::path::PathBuf;

use super::free_port;
use super::rabbit::{write_shared as write, RabbitNode, TempDir};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A certificate and its key, as PEM files.
pub struct Identity {
    /// The certificate chain (the leaf only: the CA is the trust anchor).
    pub cert: PathBuf,
    /// The private key (PKCS#8).
    pub key: PathBuf,
}

/// A test PKI in a temporary directory: a CA, a server certificate for
/// `localhost` and `127.0.0.1`, a client certificate whose CN is
/// [`Pki::CLIENT`], and a second, unrelated CA with a server certificate of
/// its own (a certificate nobody trusts).
pub struct Pki {
    /// Where the files are.
    pub dir: TempDir,
    /// The CA's certificate (PEM).
    pub ca: PathBuf,
    /// The server's certificate and key, signed by the CA.
    pub server: Identity,
    /// A client certificate with CN [`Pki::CLIENT`], signed by the CA.
    pub client: Identity,
    /// A client certificate signed by the other CA (the server refuses it).
    pub rogue_client: Identity,
    /// A server certificate for `localhost`, signed by the other CA.
    pub rogue_server: Identity,
    /// The other CA's certificate.
    pub rogue_ca: PathBuf,
}

impl Pki {
    /// The client certificate's common name: the user name `EXTERNAL` logs in as.
    pub const CLIENT: &'static str = "warren-tls-client";

    /// Makes the CA and the certificates.
    pub fn new() -> Pki {
        let dir = TempDir::new("warren-pki");
        let (ca_pem, ca) = authority("warren test CA");
        let (rogue_ca_pem, rogue) = authority("some other CA");
        let ca_path = dir.join("ca.pem");
        write(&ca_path, &ca_pem);
        let rogue_ca = dir.join("rogue-ca.pem");
        write(&rogue_ca, &rogue_ca_pem);
        let server = leaf(&dir, "server", &ca, "localhost", true);
        let client = leaf(&dir, "client", &ca, Pki::CLIENT, false);
        let rogue_client = leaf(&dir, "rogue-client", &rogue, Pki::CLIENT, false);
        let rogue_server = leaf(&dir, "rogue-server", &rogue, "localhost", true);
        Pki {
            dir,
            ca: ca_path,
            server,
            client,
            rogue_client,
            rogue_server,
            rogue_ca,
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

fn authority(name: &str) -> (String, CertifiedIssuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("CA key");
    let ca = CertifiedIssuer::self_signed(params, key).expect("self-signed CA");
    (ca.pem(), ca)
}

fn leaf(
    dir: &TempDir,
    file: &str,
    ca: &CertifiedIssuer<'static, KeyPair>,
    common_name: &str,
    server: bool,
) -> Identity {
    let names: Vec<String> = if server {
        vec!["localhost".into(), "127.0.0.1".into()]
    } else {
        Vec::new()
    };
    let mut params = CertificateParams::new(names).expect("certificate parameters");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, ca).expect("sign");
    let identity = Identity {
        cert: dir.join(&format!("{file}.pem")),
        key: dir.join(&format!("{file}.key")),
    };
    write(&identity.cert, &cert.pem());
    write(&identity.key, &key.serialize_pem());
    identity
}

/// A RabbitMQ node with a TLS listener using `pki`'s server certificate,
/// checking client certificates against its CA (`verify_peer`, but not
/// requiring one), with the `EXTERNAL` mechanism (CN as user name) beside
/// PLAIN and AMQPLAIN. Returns the node and its TLS port.
pub fn rabbitmq_with_tls(pki: &Pki) -> Option<(RabbitNode, u16)> {
    let tls_port = free_port();
    let config = format!(
        "listeners.ssl.default = {tls_port}\n\
         ssl_options.cacertfile = {ca}\n\
         ssl_options.certfile = {cert}\n\
         ssl_options.keyfile = {key}\n\
         ssl_options.verify = verify_peer\n\
         ssl_options.fail_if_no_peer_cert = false\n\
         auth_mechanisms.1 = PLAIN\n\
         auth_mechanisms.2 = AMQPLAIN\n\
         auth_mechanisms.3 = EXTERNAL\n\
         ssl_cert_login_from = common_name\n",
        ca = pki.ca.display(),
        cert = pki.server.cert.display(),
        key = pki.server.key.display(),
    );
    let node = RabbitNode::start("warren-tls", &config, &["rabbitmq_auth_mechanism_ssl"])?;
    Some((node, tls_port))
}
