//! Transport URLs: `amqp://`, `amqps://` (TLS), oslo's `rabbit://` (several
//! hosts for fail-over; TLS with `ssl=true`) and `embedded://`.
//!
//! ```text
//! amqp://user:pass@host:5672/vhost
//! amqps://user:pass@host:5671/vhost?cacertfile=/etc/ssl/ca.pem
//! rabbit://user:pass@host1:5672,user:pass@host2:5672/vhost?amqp_durable_queues=true
//! rabbit://user:pass@host:5671/vhost?ssl=true&ssl_ca_file=/etc/ssl/ca.pem
//! embedded://
//! ```
//!
//! TLS options take RabbitMQ's URI names (`cacertfile`, `certfile`,
//! `keyfile`, `verify=verify_peer|verify_none`, `server_name_indication`)
//! or oslo.messaging's (`ssl`, `ssl_ca_file`, `ssl_cert_file`,
//! `ssl_key_file`), on either scheme; see [`TlsOptions`].

use std::str::FromStr;

use crate::Error;

/// Which kind of broker a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `amqp://`: any AMQP 0-9-1 server; warren's MessagePack codec by default.
    Amqp,
    /// `rabbit://`: oslo.messaging's URL form; oslo's JSON codec by default.
    Rabbit,
    /// `embedded://` (or no URL at all): the broker inside this process.
    Embedded,
}

/// The AMQP port, and the AMQP-over-TLS port (IANA's `amqps`).
const AMQP_PORT: u16 = 5672;
const AMQPS_PORT: u16 = 5671;

/// How a client connection is secured, read from a URL by
/// [`TransportUrl::tls`]. The default checks the server against the
/// system's roots and presents no client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file of the certificate authorities to trust (`cacertfile`,
    /// `ssl_ca_file`); the system's roots when `None`.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM file of the client's certificate chain (`certfile`,
    /// `ssl_cert_file`), presented when the server asks for one.
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM file of the client's private key (`keyfile`, `ssl_key_file`).
    pub key_file: Option<std::path::PathBuf>,
    /// Whether the server's certificate is checked (`verify=verify_peer`,
    /// the default) or not (`verify=verify_none`: anyone on the path can
    /// impersonate the server; warren logs a warning at every connection).
    pub verify: bool,
    /// The name sent in SNI and checked against the server's certificate
    /// (`server_name_indication=NAME`), instead of the URL's host;
    /// `server_name_indication=disable` sends no SNI (the certificate is
    /// still checked against the URL's host).
    pub server_name: Option<String>,
    /// Whether SNI is sent (`false` with `server_name_indication=disable`).
    pub sni: bool,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            ca_file: None,
            cert_file: None,
            key_file: None,
            verify: true,
            server_name: None,
            sni: true,
        }
    }
}

/// One broker address of a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// User name, still percent-encoded.
    pub user: String,
    /// Password, still percent-encoded.
    pub password: String,
    /// Host name or address (IPv6 in brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

/// A parsed transport URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportUrl {
    /// The scheme.
    pub scheme: Scheme,
    /// Broker addresses in fail-over order (empty for `embedded://`).
    pub hosts: Vec<Host>,
    /// The virtual host, still percent-encoded (`%2f` for `/`).
    pub vhost: String,
    /// `?key=value` options, in order.
    pub options: Vec<(String, String)>,
    /// TLS: `amqps://`, or `ssl=true` (oslo.messaging's option).
    pub tls: bool,
}

impl TransportUrl {
    /// The embedded broker.
    pub fn embedded() -> Self {
        TransportUrl {
            scheme: Scheme::Embedded,
            hosts: Vec::new(),
            vhost: "%2f".into(),
            options: Vec::new(),
            tls: false,
        }
    }

    /// The TLS settings when the URL asks for TLS (`amqps://`, or `ssl=true`
    /// on `rabbit://`), `None` otherwise. TLS options on a URL without
    /// TLS are a configuration error rather than silently plain text.
    pub fn tls(&self) -> Result<Option<TlsOptions>, Error> {
        let path = |rabbitmq: &str, oslo: &str| {
            self.path_option(rabbitmq)
                .or_else(|| self.path_option(oslo))
        };
        let ca_file = path("cacertfile", "ssl_ca_file");
        let cert_file = path("certfile", "ssl_cert_file");
        let key_file = path("keyfile", "ssl_key_file");
        let verify = match self.option("verify") {
            None | Some("verify_peer") => true,
            Some("verify_none") => false,
            Some(other) => {
                return Err(Error::config(format!(
                    "verify={other} is not supported (use verify_peer or verify_none)"
                )))
            }
        };
        let (server_name, sni) = match self.option("server_name_indication") {
            None | Some("") => (None, true),
            Some("disable") => (None, false),
            Some(name) => (Some(percent_decode(name)), true),
        };
        if !self.tls {
            let given = [
                "cacertfile",
                "certfile",
                "keyfile",
                "verify",
                "server_name_indication",
                "ssl_ca_file",
                "ssl_cert_file",
                "ssl_key_file",
            ]
            .into_iter()
            .find(|k| self.option(k).is_some());
            return match given {
                Some(key) => Err(Error::config(format!(
                    "option {key} is a TLS option but the URL does not ask for TLS \
                     (use amqps://, or ssl=true on rabbit://)"
                ))),
                None => Ok(None),
            };
        }
        if cert_file.is_some() != key_file.is_some() {
            return Err(Error::config(
                "a client certificate needs both certfile and keyfile \
                 (ssl_cert_file and ssl_key_file)",
            ));
        }
        Ok(Some(TlsOptions {
            ca_file,
            cert_file,
            key_file,
            verify,
            server_name,
            sni,
        }))
    }

    /// An option's value (`?key=value`), the last one if repeated.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// An option naming a file or directory, `%XX` escapes decoded (a path
    /// with `&`, `=`, `#` or spaces must be escaped in a URL); `None` when
    /// absent or empty.
    pub fn path_option(&self, key: &str) -> Option<std::path::PathBuf> {
        self.option(key)
            .filter(|p| !p.is_empty())
            .map(|p| std::path::PathBuf::from(percent_decode(p)))
    }

    /// A boolean option (`true`/`false`/`1`/`0`/`yes`/`no`).
    pub fn flag(&self, key: &str) -> Result<bool, Error> {
        match self.option(key).map(str::to_ascii_lowercase).as_deref() {
            None => Ok(false),
            Some("true" | "1" | "yes" | "on") => Ok(true),
            Some("false" | "0" | "no" | "off") => Ok(false),
            Some(other) => Err(Error::config(format!(
                "option {key}={other} is not a boolean"
            ))),
        }
    }

    /// How long one host gets to connect (TCP, AMQP handshake, channels)
    /// before the next is tried: `connection_timeout` in milliseconds, as in
    /// RabbitMQ's URI spec, or kombu's `connect_timeout` in seconds (which
    /// `rabbit://` URLs written for oslo.messaging may carry); `None` when
    /// neither is given.
    pub fn connection_timeout(&self) -> Result<Option<std::time::Duration>, Error> {
        let invalid = |key: &str, value: &str| {
            Error::config(format!("option {key}={value} is not a positive number"))
        };
        let timeout = if let Some(ms) = self.option("connection_timeout") {
            let ms: u64 = ms.parse().map_err(|_| invalid("connection_timeout", ms))?;
            std::time::Duration::from_millis(ms)
        } else if let Some(secs) = self.option("connect_timeout") {
            let parsed: f64 = secs.parse().map_err(|_| invalid("connect_timeout", secs))?;
            // Bounded before conversion: `from_secs_f64` panics on
            // non-finite or huge values.
            if !parsed.is_finite() || parsed <= 0.0 || parsed > 86_400.0 {
                return Err(invalid("connect_timeout", secs));
            }
            std::time::Duration::from_secs_f64(parsed)
        } else {
            return Ok(None);
        };
        if timeout.is_zero() {
            return Err(Error::config("connection_timeout must be positive"));
        }
        Ok(Some(timeout))
    }

    /// One `amqp://` (or, with TLS, `amqps://`) URI per host, in fail-over
    /// order, as lapin reads them (`rabbit_login_method`, oslo's name, and
    /// `auth_mechanism`, RabbitMQ's, become lapin's `auth_mechanism`).
    /// `EXTERNAL` (the client certificate's name is the user name) needs TLS.
    pub fn amqp_uris(&self) -> Result<Vec<String>, Error> {
        let query = match self
            .option("auth_mechanism")
            .or_else(|| self.option("rabbit_login_method"))
        {
            None => String::new(),
            Some(m) if m.eq_ignore_ascii_case("AMQPLAIN") => "?auth_mechanism=amqplain".to_owned(),
            Some(m) if m.eq_ignore_ascii_case("PLAIN") => "?auth_mechanism=plain".to_owned(),
            Some(m) if m.eq_ignore_ascii_case("EXTERNAL") => {
                if !self.tls {
                    return Err(Error::config(
                        "the EXTERNAL login method takes the user from a TLS client \
                         certificate: use amqps:// (or ssl=true) with certfile and keyfile",
                    ));
                }
                "?auth_mechanism=external".to_owned()
            }
            Some(other) => {
                return Err(Error::config(format!(
                    "login method {other} is not supported (use PLAIN, AMQPLAIN or EXTERNAL)"
                )))
            }
        };
        let scheme = if self.tls { "amqps" } else { "amqp" };
        Ok(self
            .hosts
            .iter()
            .map(|h| {
                format!(
                    "{scheme}://{}:{}@{}:{}/{}{query}",
                    h.user, h.password, h.host, h.port, self.vhost
                )
            })
            .collect())
    }
}

impl FromStr for TransportUrl {
    type Err = Error;

    fn from_str(url: &str) -> Result<Self, Error> {
        let url = url.trim();
        if url.is_empty() {
            return Ok(TransportUrl::embedded());
        }
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| Error::config(format!("transport URL {url:?} has no scheme")))?;
        let (scheme, amqps) = match scheme.to_ascii_lowercase().as_str() {
            "amqp" => (Scheme::Amqp, false),
            "amqps" => (Scheme::Amqp, true),
            "rabbit" | "kombu+amqp" => (Scheme::Rabbit, false),
            "kombu+amqps" => (Scheme::Rabbit, true),
            "embedded" => (Scheme::Embedded, false),
            other => {
                return Err(Error::config(format!(
                    "unsupported transport scheme {other:?} \
                     (use amqp://, amqps://, rabbit:// or embedded://)"
                )))
            }
        };
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((authority, path)) => (authority, path),
            None => (rest, ""),
        };
        let options = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|kv| !kv.is_empty())
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (kv.to_owned(), String::new()),
            })
            .collect();
        let mut url = TransportUrl {
            scheme,
            hosts: Vec::new(),
            vhost: String::new(),
            options,
            tls: amqps,
        };
        if scheme != Scheme::Embedded {
            url.tls = amqps || url.flag("ssl")?;
        }
        let default_port = if url.tls { AMQPS_PORT } else { AMQP_PORT };
        url.vhost = if path.is_empty() {
            "%2f".to_owned()
        } else {
            path.to_owned()
        };
        url.hosts = if scheme == Scheme::Embedded {
            Vec::new()
        } else if authority.is_empty() {
            vec![parse_host("", default_port)?]
        } else {
            authority
                .split(',')
                .map(|h| parse_host(h, default_port))
                .collect::<Result<_, _>>()?
        };
        Ok(url)
    }
}

/// The URL without passwords (every host's), for logs and reports:
/// `rabbit://a:secret@h1,b:secret@h2/v` → `rabbit://a@h1,b@h2/v`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let hosts: Vec<String> = authority
        .split(',')
        .map(|host| match host.rsplit_once('@') {
            Some((credentials, address)) => {
                let user = credentials.split(':').next().unwrap_or("");
                format!("{user}@{address}")
            }
            None => host.to_owned(),
        })
        .collect();
    format!("{scheme}://{}{tail}", hosts.join(","))
}

/// `%XX` escapes decoded (file names and host names in options); an
/// invalid escape is kept as written.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|&b| (b as char).to_digit(16));
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_host(spec: &str, default_port: u16) -> Result<Host, Error> {
    let (credentials, address) = match spec.rsplit_once('@') {
        Some((c, a)) => (Some(c), a),
        None => (None, spec),
    };
    let (user, password) = match credentials {
        Some(c) => match c.split_once(':') {
            Some((u, p)) => (u.to_owned(), p.to_owned()),
            None => (c.to_owned(), String::new()),
        },
        None => ("guest".to_owned(), "guest".to_owned()),
    };
    let (host, port) = if let Some(v6) = address.strip_prefix('[') {
        let (inside, after) = v6
            .split_once(']')
            .ok_or_else(|| Error::config(format!("unclosed IPv6 bracket in {address:?}")))?;
        (format!("[{inside}]"), after.strip_prefix(':'))
    } else {
        match address.split_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (address.to_owned(), None),
        }
    };
    let port = match port {
        Some(p) => p
            .parse()
            .map_err(|_| Error::config(format!("invalid port {p:?} in transport URL")))?,
        None => default_port,
    };
    let host = if host.is_empty() {
        "localhost".to_owned()
    } else {
        host
    };
    Ok(Host {
        user,
        password,
        host,
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rabbit_url_with_several_hosts_keeps_fail_over_order() {
        let url: TransportUrl = "rabbit://a:b@h1:5673,c:d@h2/heat?amqp_durable_queues=true"
            .parse()
            .unwrap();
        assert_eq!(url.scheme, Scheme::Rabbit);
        assert_eq!(
            url.amqp_uris().unwrap(),
            vec!["amqp://a:b@h1:5673/heat", "amqp://c:d@h2:5672/heat"]
        );
        assert!(url.flag("amqp_durable_queues").unwrap());
        assert!(!url.flag("rabbit_quorum_queue").unwrap());
    }

    #[test]
    fn path_options_are_percent_decoded() {
        let url: TransportUrl = "embedded://?data_dir=/tmp/a%20b&tls_cert=/k/x%26y.pem&tls_key="
            .parse()
            .unwrap();
        assert_eq!(
            url.path_option("data_dir"),
            Some(std::path::PathBuf::from("/tmp/a b"))
        );
        assert_eq!(
            url.path_option("tls_cert"),
            Some(std::path::PathBuf::from("/k/x&y.pem"))
        );
        assert_eq!(url.path_option("tls_key"), None, "empty is absent");
        assert_eq!(url.path_option("tls_ca"), None);
    }

    #[test]
    fn bare_rabbit_url_means_guest_on_localhost() {
        let url: TransportUrl = "rabbit://".parse().unwrap();
        assert_eq!(
            url.amqp_uris().unwrap(),
            vec!["amqp://guest:guest@localhost:5672/%2f"]
        );
        let url: TransportUrl = "rabbit://h/?rabbit_login_method=AMQPLAIN".parse().unwrap();
        assert_eq!(
            url.amqp_uris().unwrap(),
            vec!["amqp://guest:guest@h:5672/%2f?auth_mechanism=amqplain"]
        );
        let url: TransportUrl = "rabbit://h/?rabbit_login_method=KERBEROS".parse().unwrap();
        assert!(url.amqp_uris().unwrap_err().is_config());
    }

    #[test]
    fn ipv6_hosts_and_empty_url() {
        let url: TransportUrl = "amqp://u:p@[::1]:5999/%2f".parse().unwrap();
        assert_eq!(url.amqp_uris().unwrap(), vec!["amqp://u:p@[::1]:5999/%2f"]);
        assert_eq!("".parse::<TransportUrl>().unwrap().scheme, Scheme::Embedded);
    }

    #[test]
    fn connection_timeout_in_ms_or_kombu_seconds() {
        use std::time::Duration;
        let timeout = |url: &str| url.parse::<TransportUrl>().unwrap().connection_timeout();
        assert_eq!(timeout("amqp://h/").unwrap(), None);
        assert_eq!(
            timeout("amqp://h/?connection_timeout=250").unwrap(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            timeout("rabbit://h/?connect_timeout=1.5").unwrap(),
            Some(Duration::from_millis(1500))
        );
        for bad in ["0", "-1", "soon", "inf", "NaN", "1e300"] {
            assert!(timeout(&format!("rabbit://h/?connect_timeout={bad}"))
                .unwrap_err()
                .is_config());
        }
        assert!(timeout("amqp://h/?connection_timeout=0")
            .unwrap_err()
            .is_config());
    }

    #[test]
    fn tls_urls_rabbitmq_and_oslo_names() {
        let url: TransportUrl =
            "amqps://u:p@h/v?cacertfile=/ca.pem&certfile=/c%20d.pem&keyfile=/k.pem&auth_mechanism=external"
                .parse()
                .unwrap();
        assert!(url.tls);
        assert_eq!(
            url.amqp_uris().unwrap(),
            vec!["amqps://u:p@h:5671/v?auth_mechanism=external"]
        );
        let tls = url.tls().unwrap().unwrap();
        assert_eq!(tls.ca_file.unwrap(), std::path::Path::new("/ca.pem"));
        assert_eq!(tls.cert_file.unwrap(), std::path::Path::new("/c d.pem"));
        assert!(tls.verify && tls.sni && tls.server_name.is_none());

        let url: TransportUrl =
            "rabbit://u:p@h1,u:p@h2:5999/v?ssl=true&ssl_ca_file=/ca.pem&rabbit_login_method=EXTERNAL"
                .parse()
                .unwrap();
        assert_eq!(
            url.amqp_uris().unwrap(),
            vec![
                "amqps://u:p@h1:5671/v?auth_mechanism=external",
                "amqps://u:p@h2:5999/v?auth_mechanism=external"
            ]
        );
        assert_eq!(
            url.tls().unwrap().unwrap().ca_file.unwrap(),
            std::path::Path::new("/ca.pem")
        );

        let url: TransportUrl = "amqps://h?verify=verify_none&server_name_indication=disable"
            .parse()
            .unwrap();
        let tls = url.tls().unwrap().unwrap();
        assert!(!tls.verify && !tls.sni);
        let url: TransportUrl = "amqps://h?server_name_indication=broker.example"
            .parse()
            .unwrap();
        assert_eq!(
            url.tls().unwrap().unwrap().server_name.as_deref(),
            Some("broker.example")
        );

        let plain: TransportUrl = "amqp://h/".parse().unwrap();
        assert_eq!(plain.tls().unwrap(), None);
        assert_eq!(plain.hosts[0].port, 5672);
        for bad in [
            "amqp://h/?cacertfile=/ca.pem",
            "rabbit://h/?ssl_ca_file=/ca.pem",
            "amqps://h/?verify=maybe",
            "amqps://h/?certfile=/c.pem",
        ] {
            let url: TransportUrl = bad.parse().unwrap();
            assert!(url.tls().unwrap_err().is_config(), "{bad}");
        }
        let url: TransportUrl = "amqp://h/?auth_mechanism=external".parse().unwrap();
        assert!(url.amqp_uris().unwrap_err().is_config());
        assert!("rabbit://h/?ssl=perhaps"
            .parse::<TransportUrl>()
            .unwrap_err()
            .is_config());
    }

    #[test]
    fn redact_hides_every_password() {
        assert_eq!(
            redact("rabbit://a:s1@h1:5672,b:s2@h2/heat?x=1"),
            "rabbit://a@h1:5672,b@h2/heat?x=1"
        );
        assert_eq!(redact("amqp://h/%2f"), "amqp://h/%2f");
        assert_eq!(redact(""), "");
    }

    #[test]
    fn bad_urls_are_config_errors() {
        for bad in ["nope", "http://x", "amqp://h:notaport/", "amqp://[::1/"] {
            assert!(
                bad.parse::<TransportUrl>().unwrap_err().is_config(),
                "{bad}"
            );
        }
        let url: TransportUrl = "amqp://h/?amqp_durable_queues=maybe".parse().unwrap();
        assert!(url.flag("amqp_durable_queues").unwrap_err().is_config());
    }
}
