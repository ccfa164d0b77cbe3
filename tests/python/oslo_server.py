"""An unmodified-style oslo.messaging RPC server (the classic heat-engine
demo plus a few methods the interop tests need).

usage: oslo_server.py URL EXCHANGE TOPIC SERVER
Prints "ready" once serving, then one JSON line per cast received; stops
when stdin closes.
"""
import json
import socket
import sys
import threading
import time

from oslo_config import cfg
import oslo_messaging as messaging


# The threading executor runs endpoints on several threads at once, and
# print() writes the text and the newline separately: two casts in flight
# would share a line. One lock, one write per line.
_stdout_lock = threading.Lock()


def emit(obj):
    with _stdout_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


class EngineEndpoint(object):
    target = messaging.Target(version="1.2")

    def health_check(self, ctxt, seqid, host, req):
        return (seqid, socket.gethostname(), "I'm fine!")

    def add(self, ctxt, a, b):
        return a + b

    def fail(self, ctxt, message):
        raise ValueError(message)

    def get_context(self, ctxt, key):
        return ctxt.get(key)

    def sleep(self, ctxt, seconds):
        time.sleep(seconds)
        return seconds

    def record(self, ctxt, value):
        emit({"cast": value})


def main():
    url, exchange, topic, server = sys.argv[1:5]
    transport = messaging.get_rpc_transport(cfg.CONF, url=url)
    target = messaging.Target(exchange=exchange, topic=topic, server=server)
    rpc_server = messaging.get_rpc_server(
        transport, target, [EngineEndpoint()], executor="threading"
    )
    rpc_server.start()
    print("ready", flush=True)
    sys.stdin.read()
    rpc_server.stop()
    rpc_server.wait()


if __name__ == "__main__":
    main()
