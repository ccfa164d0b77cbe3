//! TLS fixtures: a certificate authority with server and client
//! certificates made at run time (rcgen), and RabbitMQ nodes of a test's own
//! beside the system one (a TLS listener needs a configuration file, and a
//! cluster test needs several nodes).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A directory of the test's own under the system's temporary directory,
/// readable and writable by the `rabbitmq` user too (Debian's
/// `rabbitmq-server`, run as root, runs the node as `rabbitmq`); removed on
/// drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty directory.
    pub fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(super::unique(prefix));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        share(&dir, 0o777);
        TempDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `name` inside it.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn share(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("set permissions");
}

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents).expect("write a test file");
    // Keys too: the test's own throw-away keys, read by a node running as
    // another user.
    share(path, 0o644);
}

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

/// A free TCP port on loopback (free when asked; good enough for a test).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A RabbitMQ node of the test's own, beside the system one: its own name,
/// ports, data, logs and configuration in a temporary directory; stopped
/// and removed on drop.
pub struct RabbitNode {
    /// The node's name (`NAME@localhost`), for `rabbitmqctl -n`.
    pub name: String,
    /// Its plain AMQP port.
    pub amqp_port: u16,
    dir: TempDir,
}

impl RabbitNode {
    /// Starts a node named `name@localhost` listening for AMQP on a free
    /// port, with `config` appended to its `rabbitmq.conf` (sysctl format:
    /// TLS listeners, auth mechanisms) and `plugins` enabled. `None`, after
    /// printing why, when RabbitMQ cannot be started here (not installed,
    /// not allowed to run it): the caller skips.
    pub fn start(name: &str, config: &str, plugins: &[&str]) -> Option<RabbitNode> {
        let dir = TempDir::new("warren-rabbit");
        let node = format!("{}@localhost", super::unique(name));
        let amqp_port = free_port();
        let dist_port = free_port();
        let conf = dir.join("rabbitmq.conf");
        write(
            &conf,
            &format!("listeners.tcp.default = {amqp_port}\nloopback_users = none\n{config}\n"),
        );
        let plugins_file = dir.join("enabled_plugins");
        write(&plugins_file, &format!("[{}].\n", plugins.join(",")));
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub)).expect("create node directories");
            share(&dir.join(sub), 0o777);
        }
        let started = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_PORT", amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", &conf)
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", &plugins_file)
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("node.pid"))
            .status();
        match started {
            Ok(status) if status.success() => {}
            other => {
                println!("SKIP: cannot start a RabbitMQ node of the test's own: {other:?}");
                return None;
            }
        }
        let node = RabbitNode {
            name: node,
            amqp_port,
            dir,
        };
        // `-detached` returns before the node registers with epmd, and
        // `await_startup` fails at once on a node it cannot reach yet.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let out = node.ctl_output(&["await_startup", "--timeout", "60"]);
            match out {
                Ok(out) if out.status.success() => return Some(node),
                Ok(out) if std::time::Instant::now() >= deadline => {
                    println!(
                        "SKIP: RabbitMQ node {} did not start within 120 s: {}\n{}",
                        node.name,
                        String::from_utf8_lossy(&out.stderr),
                        node.log_tail()
                    );
                    return None;
                }
                Err(e) => {
                    println!("SKIP: cannot run rabbitmqctl: {e}");
                    return None;
                }
                Ok(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    fn ctl_output(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        Command::new("rabbitmqctl")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
    }

    /// Runs `rabbitmqctl -n NODE args`, returning its standard output.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self.ctl_output(args).expect("rabbitmqctl runs");
        assert!(
            out.status.success(),
            "rabbitmqctl -n {} {args:?} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The end of the node's log files, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut tail = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.join("log")) {
            for entry in entries.flatten() {
                if let Ok(text) = std::fs::read_to_string(entry.path()) {
                    let start = text.len().saturating_sub(4000);
                    let start = (start..text.len())
                        .find(|&i| text.is_char_boundary(i))
                        .unwrap_or(text.len());
                    tail.push_str(&format!(
                        "== {}\n{}",
                        entry.path().display(),
                        &text[start..]
                    ));
                }
            }
        }
        tail
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        let _ = self.ctl_output(&["stop"]);
    }
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
