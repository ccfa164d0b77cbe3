"""pika against a broker that is crashed and restarted (tests/hardening/durability.rs).
Runs unchanged on warren's broker and on RabbitMQ; every name carries SUFFIX.

Usage:
  durability.py publish AMQP_URL SUFFIX COUNT BODY_BYTES
      Declares the durable direct exchange `dx.SUFFIX`, the durable queue
      `dq.SUFFIX` bound to it with key `k`, and the transient queue `tq.SUFFIX`;
      then publishes COUNT persistent messages (ids 0, 1, ...; bodies of
      BODY_BYTES, the id first) with publisher confirms, one at a time, printing
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
    conn = pika.BlockingConnection(params(url))
    conn.add_on_connection_blocked_callback(
        lambda _c, frame: say("blocked %s" % frame.method.reason))
    conn.add_on_connection_unblocked_callback(lambda _c, _f: say("unblocked"))
    ch = conn.channel()
    ch.exchange_declare("dx." + suffix, "direct", durable=True)
    ch.queue_declare("dq." + suffix, durable=True)
    ch.queue_declare("tq." + suffix, durable=False)
    ch.queue_bind("dq." + suffix, "dx." + suffix, "k")
    ch.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2, headers={"origin": "durability"})
    try:
        i = 0
        while i < count:
            head = b"%d " % i
            body = head + b"x" * max(0, body_bytes - len(head))
            try:
                ch.basic_publish("dx." + suffix, "k", body, props, mandatory=True)
            except pika.exceptions.NackError:
                say("nack %d" % i)
                conn.sleep(0.1)
                continue
            say("ok %d" % i)
            i += 1
        say("done")
        conn.close()
    except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError,
            pika.exceptions.StreamLostError, ConnectionError, OSError):
        say("closed")


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
