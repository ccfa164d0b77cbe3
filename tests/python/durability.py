"""pika against a broker that is crashed and restarted (tests/hardening/durability.rs).
Runs unchanged on warren's broker and on RabbitMQ; every name carries SUFFIX.

Usage:
  durability.py publish AMQP_URL SUFFIX COUNT BODY_BYTES
      Declares the durable direct exchange `dx.SUFFIX`, the durable queue
      `dq.SUFFIX` bound to it with key `k`, and the transient queue `tq.SUFFIX`;
      then publishes COUNT persistent messages (ids 0, 1, ...; bodies of
      BODY_BYTES, the id first, a header) with publisher confirms, one at a time, printing
      "ok ID" once each is confirmed and "nack ID" when the broker refuses one
      (it is published again). "blocked REASON" / "unblocked" when the broker
      blocks or unblocks the connection. Ends with "done", or "closed" when the
      connection dies (the broker was killed: the caller's doing).
  check AMQP_URL SUFFIX
      Prints "id ID REDELIVERED" for every message in `dq.SUFFIX` (taken and
      acked), "transient gone" or "transient present" for `tq.SUFFIX`, then
      publishes a probe through `dx.SUFFIX` and prints "routed yes" when it
      reaches `dq.SUFFIX` again ("routed no" otherwise); deletes what it used.
"""
import sys

import pika
import pika.exceptions


def params(url):
    p = pika.URLParameters(url)
    p.blocked_connection_timeout = None
    p.heartbeat = 0
    return p


def say(line):
    print(line, flush=True)


def publish(url, suffix, count, body_bytes):
    # An event-driven connection: a BlockingConnection reports connection.blocked
    # only once the publish it is waiting in returns, i.e. after the unblock.
    state = {"i": 0, "ch": None, "ended": False}
    props = pika.BasicProperties(delivery_mode=2, headers={"origin": "durability"})

    def send():
        i = state["i"]
        if i >= count:
            say("done")
            state["ended"] = True
            conn.close()
            return
        head = b"%d " % i
        body = head + b"x" * max(0, body_bytes - len(head))
        state["ch"].basic_publish("dx." + suffix, "k", body, props)

    def on_confirm(frame):
        if isinstance(frame.method, pika.spec.Basic.Ack):
            say("ok %d" % state["i"])
            state["i"] += 1
            send()
        else:
            say("nack %d" % state["i"])
            conn.ioloop.call_later(0.1, send)

    def on_channel(ch):
        state["ch"] = ch
        steps = [
            lambda k: ch.exchange_declare("dx." + suffix, "direct", durable=True, callback=k),
            lambda k: ch.queue_declare("dq." + suffix, durable=True, callback=k),
            lambda k: ch.queue_declare("tq." + suffix, durable=False, callback=k),
            lambda k: ch.queue_bind("dq." + suffix, "dx." + suffix, "k", callback=k),
            lambda k: ch.confirm_delivery(on_confirm, callback=k),
        ]

        def step(_frame=None):
            if steps:
                steps.pop(0)(step)
            else:
                send()
        step()

    def on_closed(_conn, _reason):
        if not state["ended"]:
            say("closed")
        conn.ioloop.stop()

    def on_open_error(_conn, err):
        say("closed")
        conn.ioloop.stop()

    conn = pika.SelectConnection(
        params(url),
        on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
        on_open_error_callback=on_open_error,
        on_close_callback=on_closed)
    conn.add_on_connection_blocked_callback(
        lambda _c, frame: say("blocked %s" % frame.method.reason))
    conn.add_on_connection_unblocked_callback(lambda _c, _f: say("unblocked"))
    conn.ioloop.start()


def check(url, suffix):
    conn = pika.BlockingConnection(params(url))
    ch = conn.channel()
    while True:
        method, _props, body = ch.basic_get("dq." + suffix, auto_ack=False)
        if method is None:
            break
        say("id %s %s" % (body.split(b" ", 1)[0].decode(), method.redelivered))
        ch.basic_ack(method.delivery_tag)
    try:
        ch.queue_declare("tq." + suffix, passive=True)
        say("transient present")
    except pika.exceptions.ChannelClosedByBroker:
        say("transient gone")
        ch = conn.channel()
    ch.basic_publish("dx." + suffix, "k", b"probe", pika.BasicProperties(delivery_mode=2))
    got = None
    for _ in range(100):
        method, _props, body = ch.basic_get("dq." + suffix, auto_ack=True)
        if method is not None:
            got = body
            break
        conn.sleep(0.05)
    say("routed %s" % ("yes" if got == b"probe" else "no"))
    ch.queue_delete("dq." + suffix)
    ch.queue_delete("tq." + suffix)
    ch.exchange_delete("dx." + suffix)
    conn.close()


def main():
    mode = sys.argv[1]
    if mode == "publish":
        publish(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    elif mode == "check":
        check(sys.argv[2], sys.argv[3])
    else:
        sys.exit("unknown mode %s" % mode)


if __name__ == "__main__":
    main()
