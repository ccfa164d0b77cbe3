"""An oslo.messaging client calling heat-engine's health_check over TLS,
configured the way an OpenStack service is: [oslo_messaging_rabbit]
ssl = True, ssl_ca_file (and, for mutual TLS, ssl_cert_file and
ssl_key_file) in a configuration file.

usage: oslo_tls_client.py URL CONFIG_DIR CA_FILE [CERT_FILE KEY_FILE]
Prints one JSON object: {"health_check": [seqid, host, answer]}.
"""
import json
import os
import sys

from oslo_config import cfg
import oslo_messaging as messaging


def main():
    url, config_dir, ca = sys.argv[1:4]
    lines = ["[oslo_messaging_rabbit]", "ssl = True", "ssl_ca_file = " + ca]
    if len(sys.argv) > 5:
        lines += ["ssl_cert_file = " + sys.argv[4], "ssl_key_file = " + sys.argv[5]]
    config = os.path.join(config_dir, "heat-api-%d.conf" % os.getpid())
    with open(config, "w") as f:
        f.write("\n".join(lines) + "\n")
    cfg.CONF(["--config-file", config], project="heat")
    transport = messaging.get_rpc_transport(cfg.CONF, url=url)
    target = messaging.Target(exchange="heat", topic="engine", version="1.0")
    client = messaging.get_rpc_client(transport, target, timeout=30)
    answer = client.call({}, "health_check", seqid=11, host="heat-api", req="How are you?")
    print(json.dumps({"health_check": answer}), flush=True)
    transport.cleanup()


if __name__ == "__main__":
    main()
