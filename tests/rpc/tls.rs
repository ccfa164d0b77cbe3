//! TLS (issue #13): `amqps://` and oslo's `ssl=true` against RabbitMQ with a
//! TLS listener (a node of the test's own, configured by the harness) and
//! against warren's broker with `tls_listen`; mutual TLS with `EXTERNAL`;
//! pika and oslo.messaging over TLS; and each way a TLS connection goes
//! wrong, with the error that says so.

#[path = "../../examples/heat/service.rs"]
#[allow(dead_code)]
mod heat;

use std::time::Duration;

use crate::common::free_port;
use crate::common::tls::{rabbitmq_with_tls, Pki};
use warren::broker::server::TlsConfig;

/// The error `warren::connect(url)` fails with, as text. A connect still
/// hanging after 60 s fails the test (the failures must not hang).
async fn connect_error(url: &str) -> String {
    match tokio::time::timeout(Duration::from_secs(60), warren::connect(url)).await {
        Err(_) => panic!("{url}: connect hung"),
        Ok(Ok(_)) => panic!("{url}: connected, but should have failed"),
        Ok(Err(e)) => {
            assert!(e.is_transport(), "{url}: not a transport error: {e}");
            e.to_string()
        }
    }
}

fn assert_says(error: &str, words: &str) {
    assert!(
        error.contains(words),
        "the error should say {words:?}, it says: {error}"
    );
}

/// What every TLS endpoint must do: `base` is `HOST:PORT` of a TLS
/// listener whose certificate `pki` made, `plain` the same broker's plain
/// AMQP port; user `guest` and the client certificate's CN may log in.
async fn tls_endpoint_checks(pki: &Pki, tls_port: u16, plain_port: u16) {
    let ca = pki.ca.display();
    let (cert, key) = (pki.client.cert.display(), pki.client.key.display());

    // amqps:// with the CA, by name and by address (both in the certificate)
    crate::common::answers(&format!(
        "amqps://guest:guest@localhost:{tls_port}/?cacertfile={ca}"
    ))
    .await;
    crate::common::answers(&format!(
        "amqps://guest:guest@127.0.0.1:{tls_port}/%2f?cacertfile={ca}"
    ))
    .await;
    // oslo's names on a rabbit:// URL
    crate::common::answers(&format!(
        "rabbit://guest:guest@localhost:{tls_port}/?ssl=true&ssl_ca_file={ca}"
    ))
    .await;
    // mutual TLS, logging in as the certificate's CN with EXTERNAL, in
    // RabbitMQ's names and in oslo's
    crate::common::answers(&format!(
        "amqps://localhost:{tls_port}/?cacertfile={ca}&certfile={cert}&keyfile={key}&auth_mechanism=external"
    ))
    .await;
    crate::common::answers(&format!(
        "rabbit://localhost:{tls_port}/?ssl=1&ssl_ca_file={ca}&ssl_cert_file={cert}&ssl_key_file={key}&rabbit_login_method=EXTERNAL"
    ))
    .await;
    // verify_none connects to a server nobody vouches for
    crate::common::answers(&format!(
        "amqps://guest:guest@localhost:{tls_port}/?verify=verify_none"
    ))
    .await;

    // an untrusted certificate: no CA given (the system's roots do not know
    // the test CA), or another CA
    let error = connect_error(&format!("amqps://guest:guest@localhost:{tls_port}/")).await;
    assert_says(&error, "certificate is not trusted");
    let error = connect_error(&format!(
        "amqps://guest:guest@localhost:{tls_port}/?cacertfile={}",
        pki.rogue_ca.display()
    ))
    .await;
    assert_says(&error, "certificate is not trusted");
    // a hostname mismatch
    let error = connect_error(&format!(
        "amqps://guest:guest@localhost:{tls_port}/?cacertfile={ca}&server_name_indication=elsewhere.example"
    ))
    .await;
    assert_says(&error, "hostname mismatch");
    assert_says(&error, "elsewhere.example");
    // a TLS client on the plain port
    let error = connect_error(&format!(
        "amqps://guest:guest@localhost:{plain_port}/?cacertfile={ca}"
    ))
    .await;
    assert_says(&error, "did not answer in TLS");
    // a plain client on the TLS port
    let error = connect_error(&format!("amqp://guest:guest@localhost:{tls_port}/")).await;
    assert_says(&error, "TLS port");
    // a client certificate from another CA. In TLS 1.3 the client's
    // handshake ends before the server has judged its certificate: when the
    // client's first write meets the closed socket, the RST can discard the
    // server's alert before it is read ("connection reset"). That race is
    // TCP's, so a few attempts are allowed; one must read the alert.
    let url = format!(
        "amqps://localhost:{tls_port}/?cacertfile={ca}&certfile={}&keyfile={}&auth_mechanism=external",
        pki.rogue_client.cert.display(),
        pki.rogue_client.key.display()
    );
    let mut error = connect_error(&url).await;
    for _ in 0..4 {
        if !error.contains("Connection reset by peer") {
            break;
        }
        error = connect_error(&url).await;
    }
    assert_says(&error, "refused the client certificate");
}

/// oslo.messaging, configured with `ssl = True` and `ssl_ca_file` as an
/// OpenStack service is, calls the Rust heat engine, which reads the same
/// settings from its `rabbit://` URL; then again with client certificates.
async fn oslo_calls_the_rust_heat_engine(pki: &Pki, tls_port: u16) {
    let ca = pki.ca.display().to_string();
    let url = format!("rabbit://guest:guest@localhost:{tls_port}/?ssl=true&ssl_ca_file={ca}");
    let connection = warren::connect(&url)
        .await
        .expect("the engine connects over TLS");
    let engine = heat::EngineServer::new(heat::HeatEngine {
        hostname: "rust-engine".into(),
    })
    .serve(&connection, "heat-engine")
    .await
    .expect("serve the engine");
    let python_url = format!("rabbit://guest:guest@localhost:{tls_port}/");
    let config_dir = pki.dir.path().display().to_string();
    let out =
        crate::common::run_python("oslo_tls_client.py", &[&python_url, &config_dir, &ca]).await;
    assert_eq!(
        out.trim(),
        r#"{"health_check": [11, "rust-engine", "I'm fine!"]}"#
    );
    // mutual TLS on the Python side (PLAIN still logs it in: oslo sends
    // the URL's credentials)
    let (cert, key) = (
        pki.client.cert.display().to_string(),
        pki.client.key.display().to_string(),
    );
    let out = crate::common::run_python(
        "oslo_tls_client.py",
        &[&python_url, &config_dir, &ca, &cert, &key],
    )
    .await;
    assert!(out.contains("I'm fine!"), "{out}");
    engine.shutdown().await.expect("engine shutdown");
    connection.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_over_tls() {
    let pki = Pki::new();
    let Some((node, tls_port)) = rabbitmq_with_tls(&pki) else {
        return;
    };
    node.ctl(&["add_user", Pki::CLIENT, "unused-password"]);
    node.ctl(&["set_permissions", "-p", "/", Pki::CLIENT, ".*", ".*", ".*"]);
    tls_endpoint_checks(&pki, tls_port, node.amqp_port).await;
    oslo_calls_the_rust_heat_engine(&pki, tls_port).await;
}

/// warren's broker with a plain and a TLS listener, checking client
/// certificates against the test CA; guest and the client certificate's
/// CN may log in.
async fn warren_broker(pki: &Pki, verify_peer: bool) -> warren::broker::BrokerHandle {
    warren::broker::Broker::builder()
        .listen(([127, 0, 0, 1], 0).into())
        .tls_listen(([127, 0, 0, 1], 0).into())
        .tls(
            TlsConfig::new(&pki.server.cert, &pki.server.key)
                .client_ca(&pki.ca)
                .verify_peer(verify_peer),
        )
        .user("guest", "guest")
        .permission("guest", "/", ".*", ".*", ".*")
        .user(Pki::CLIENT, "unused-password")
        .permission(Pki::CLIENT, "/", ".*", ".*", ".*")
        .start()
        .await
        .expect("start a broker with TLS")
}

fn port(addrs: Vec<std::net::SocketAddr>) -> u16 {
    addrs.first().expect("a listener").port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warren_broker_over_tls() {
    let pki = Pki::new();
    let broker = warren_broker(&pki, false).await;
    let tls_port = port(broker.tls_addrs());
    tls_endpoint_checks(&pki, tls_port, port(broker.local_addrs())).await;
    oslo_calls_the_rust_heat_engine(&pki, tls_port).await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warren_broker_requiring_client_certificates() {
    let pki = Pki::new();
    let broker = warren_broker(&pki, true).await;
    let tls_port = port(broker.tls_addrs());
    let ca = pki.ca.display();
    let (cert, key) = (pki.client.cert.display(), pki.client.key.display());
    let error = connect_error(&format!(
        "amqps://guest:guest@localhost:{tls_port}/?cacertfile={ca}"
    ))
    .await;
    assert_says(&error, "client certificate");
    // with one, PLAIN and EXTERNAL both log in
    crate::common::answers(&format!(
        "amqps://guest:guest@localhost:{tls_port}/?cacertfile={ca}&certfile={cert}&keyfile={key}"
    ))
    .await;
    crate::common::answers(&format!(
        "amqps://localhost:{tls_port}/?cacertfile={ca}&certfile={cert}&keyfile={key}&auth_mechanism=external"
    ))
    .await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_login_needs_a_verified_certificate_of_a_known_user() {
    let pki = Pki::new();
    // the certificate's CN is no user of this broker
    let broker = warren::broker::Broker::builder()
        .no_listen()
        .tls_listen(([127, 0, 0, 1], 0).into())
        .tls(TlsConfig::new(&pki.server.cert, &pki.server.key).client_ca(&pki.ca))
        .start()
        .await
        .expect("start");
    let tls_port = port(broker.tls_addrs());
    let ca = pki.ca.display();
    let (cert, key) = (pki.client.cert.display(), pki.client.key.display());
    let error = connect_error(&format!(
        "amqps://localhost:{tls_port}/?cacertfile={ca}&certfile={cert}&keyfile={key}&auth_mechanism=external"
    ))
    .await;
    assert_says(&error, Pki::CLIENT);
    // no certificate: EXTERNAL is not even offered
    let error = connect_error(&format!(
        "amqps://localhost:{tls_port}/?cacertfile={ca}&auth_mechanism=external"
    ))
    .await;
    assert_says(&error, "EXTERNAL");
    // EXTERNAL needs TLS at all
    let url = "amqp://localhost:5672/?auth_mechanism=external";
    assert!(warren::connect(url).await.unwrap_err().is_config());
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_over_tls_against_warren_broker() {
    let pki = Pki::new();
    let broker = warren_broker(&pki, false).await;
    let tls_port = port(broker.tls_addrs());
    let ca = pki.ca.display().to_string();
    // the warren server itself reaches the broker over TLS
    let connection = warren::connect(&format!(
        "amqps://guest:guest@localhost:{tls_port}/?cacertfile={ca}"
    ))
    .await
    .expect("connect over TLS");
    let topic = crate::common::unique("calc");
    let (records, _) = tokio::sync::mpsc::unbounded_channel();
    let _server = crate::common::calc("s1", &records)
        .builder()
        .topic(&topic)
        .serve(&connection, "s1")
        .await
        .expect("serve");
    let port = tls_port.to_string();
    let out = crate::common::run_python(
        "pika_tls_client.py",
        &["localhost", &port, &topic, "20", "22", &ca],
    )
    .await;
    assert_eq!(out.trim(), "42");
    // mutual TLS: pika logs in with EXTERNAL as the certificate's CN
    let (cert, key) = (
        pki.client.cert.display().to_string(),
        pki.client.key.display().to_string(),
    );
    let out = crate::common::run_python(
        "pika_tls_client.py",
        &["localhost", &port, &topic, "1", "2", &ca, &cert, &key],
    )
    .await;
    assert_eq!(out.trim(), "3");
    connection.close().await.expect("close");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_url_serves_tls_to_other_clients() {
    let pki = Pki::new();
    let tls_port = free_port();
    let embedded = format!(
        "embedded://?tls_listen=127.0.0.1:{tls_port}&tls_cert={}&tls_key={}",
        pki.server.cert.display(),
        pki.server.key.display()
    );
    let local = warren::connect(&embedded).await.expect("embedded");
    let topic = crate::common::unique("calc");
    let (records, _) = tokio::sync::mpsc::unbounded_channel();
    let _server = crate::common::calc("s1", &records)
        .builder()
        .topic(&topic)
        .serve(&local, "s1")
        .await
        .expect("serve in-process");
    // another client reaches the in-process server through the TLS port
    let remote = warren::connect(&format!(
        "amqps://guest:guest@localhost:{tls_port}/?cacertfile={}",
        pki.ca.display()
    ))
    .await
    .expect("connect over TLS");
    let client = crate::common::CalcClient::new(&remote)
        .topic(&topic)
        .timeout(Duration::from_secs(20));
    assert_eq!(client.add(2, 40).await.expect("call over TLS"), 42);
    remote.close().await.expect("close");
}

/// `warren broker --tls-listen …` as a process: serves TLS beside plain
/// AMQP, and SIGHUP loads new certificate files without dropping the
/// connections made with the old ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warren_broker_command_reloads_certificates_on_sighup() {
    let pki = Pki::new();
    let (cert, key) = (pki.dir.join("live.pem"), pki.dir.join("live.key"));
    std::fs::copy(&pki.server.cert, &cert).expect("copy");
    std::fs::copy(&pki.server.key, &key).expect("copy");
    let (plain_port, tls_port) = (free_port(), free_port());
    let mut broker = std::process::Command::new(crate::common::warren_bin())
        .args([
            "broker",
            "--in-memory",
            "--listen",
            &format!("127.0.0.1:{plain_port}"),
        ])
        .args(["--tls-listen", &format!("127.0.0.1:{tls_port}")])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .arg("--tls-ca")
        .arg(&pki.ca)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("run warren broker");
    let ca = pki.ca.display();
    let old_url = format!("amqps://guest:guest@localhost:{tls_port}/?cacertfile={ca}");
    let mut up = false;
    for _ in 0..600 {
        if std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "warren broker does not listen on its TLS port");
    let connection = warren::connect(&old_url).await.expect("connect over TLS");
    let topic = crate::common::unique("calc");
    let (records, _) = tokio::sync::mpsc::unbounded_channel();
    let _server = crate::common::calc("s1", &records)
        .builder()
        .topic(&topic)
        .serve(&connection, "s1")
        .await
        .expect("serve");
    let client = crate::common::CalcClient::new(&connection)
        .topic(&topic)
        .timeout(Duration::from_secs(20));
    assert_eq!(client.add(1, 1).await.expect("call"), 2);

    // new files, signed by another CA; SIGHUP
    std::fs::copy(&pki.rogue_server.cert, &cert).expect("copy");
    std::fs::copy(&pki.rogue_server.key, &key).expect("copy");
    let hup = std::process::Command::new("sh")
        .args(["-c", &format!("kill -HUP {}", broker.id())])
        .status()
        .expect("sh");
    assert!(hup.success());
    // new connections get the new certificate (a client trusting only the
    // old CA now refuses it) ...
    let new_url = format!(
        "amqps://guest:guest@localhost:{tls_port}/?cacertfile={}",
        pki.rogue_ca.display()
    );
    let mut reloaded = false;
    for _ in 0..300 {
        if warren::connect(&new_url).await.is_ok() {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reloaded, "SIGHUP did not load the new certificate");
    assert_says(&connect_error(&old_url).await, "certificate is not trusted");
    // ... and the connection made before still works
    assert_eq!(client.add(2, 2).await.expect("call after reload"), 4);
    // and the plain port serves as before
    crate::common::answers(&format!("amqp://guest:guest@127.0.0.1:{plain_port}/")).await;

    let _ = std::process::Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", broker.id())])
        .status();
    let status = broker.wait().expect("wait for warren broker");
    assert!(status.success(), "warren broker exited with {status}");
}
