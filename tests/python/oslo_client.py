"""An oslo.messaging RPC client (the classic heat-api demo plus every
scenario the interop tests check) calling a server of the given target.

usage: oslo_client.py URL EXCHANGE TOPIC SERVER
Prints one JSON object: scenario name -> outcome.
"""
import json
import sys

from oslo_config import cfg
import oslo_messaging as messaging


def outcome(fn):
    try:
        return {"result": fn()}
    except messaging.MessagingTimeout:
        return {"error": "MessagingTimeout"}
    except messaging.RemoteError as e:
        return {"error": "RemoteError", "exc_type": e.exc_type, "value": e.value}
    except Exception as e:  # a rebuilt builtin exception
        bases = [c.__name__ for c in type(e).__mro__]
        return {"error": bases[1] if type(e).__name__.endswith("_Remote") else bases[0],
                "message": str(e)}


def main():
    url, exchange, topic, server = sys.argv[1:5]
    transport = messaging.get_rpc_transport(cfg.CONF, url=url)
    target = messaging.Target(exchange=exchange, topic=topic, version="1.0")
    client = messaging.get_rpc_client(transport, target, timeout=20)
    traced = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    ctxt = {"request_id": "req-6d1f", "user_id": "u1", "project_id": "p1", "is_admin": False}
    out = {
        "health_check": outcome(lambda: client.call({}, "health_check", seqid=7, host="heat-api", req="How are you?")),
        "add": outcome(lambda: client.call({}, "add", a=20, b=22)),
        "to_server": outcome(lambda: client.prepare(server=server).call({}, "add", a=1, b=2)),
        "fail": outcome(lambda: client.call({}, "fail", message="boom")),
        "no_such_method": outcome(lambda: client.call({}, "nope")),
        "private_method": outcome(lambda: client.call({}, "_add", a=1, b=2)),
        "unsupported_version": outcome(lambda: client.prepare(version="2.0").call({}, "add", a=1, b=2)),
        "wrong_namespace": outcome(lambda: client.prepare(namespace="other").call({}, "add", a=1, b=2)),
        "context": outcome(lambda: client.call(ctxt, "get_context", key="user_id")),
        "context_is_admin": outcome(lambda: client.call(ctxt, "get_context", key="is_admin")),
        "traceparent": outcome(lambda: client.call(traced, "get_context", key="traceparent")),
        "call_monitor": outcome(lambda: client.prepare(call_monitor_timeout=1).call({}, "sleep", seconds=2.5)),
        "cast": outcome(lambda: client.cast({}, "record", value=5)),
        "fanout": outcome(lambda: client.prepare(fanout=True).cast({}, "record", value=6)),
        "timeout": outcome(lambda: client.prepare(topic=topic + "-nobody", timeout=1).call({}, "add", a=1, b=2)),
    }
    print(json.dumps(out), flush=True)
    transport.cleanup()


if __name__ == "__main__":
    main()
