"""pika doing the broker spec's rows (tests/broker/spec.rs): one @feature
function per row that lists pika, named as the row, each with its own
assertions. Runs unchanged on warren's embedded broker and on RabbitMQ (the
reference): every queue and exchange name carries SUFFIX, so runs on a shared
RabbitMQ never collide, and each feature deletes what it declared.

Usage: pika_spec.py AMQP_URL SUFFIX [FEATURE ...]

Prints "ok <feature>" per passed feature, then "pika OK"; a failed feature
prints "FAILED <feature>" and its traceback, the others still run, and the
run ends with "pika FAILED: ..." and exit status 1.
"""
import signal
import sys
import time
import traceback

import pika
from pika.exceptions import (
    AMQPConnectionError,
    ChannelClosedByBroker,
    NackError,
    ProbableAccessDeniedError,
    ProbableAuthenticationError,
    UnroutableError,
)

URL, SUFFIX = sys.argv[1], sys.argv[2]
ONLY = set(sys.argv[3:])
# Per-feature hang guard, in seconds (the Rust test has an overall one).
FEATURE_TIMEOUT = 30
FEATURES = []


def feature(fn):
    FEATURES.append(fn)
    return fn


class Names:
    """Suffixed names for one feature, remembered for clean-up."""

    def __init__(self, feature_name):
        self.prefix = "pika-" + feature_name.replace("_", "-")
        self.queues, self.exchanges = [], []

    def q(self, tag):
        name = "%s-%s-%s" % (self.prefix, tag, SUFFIX)
        self.queues.append(name)
        return name

    def x(self, tag):
        name = "%s-x-%s-%s" % (self.prefix, tag, SUFFIX)
        self.exchanges.append(name)
        return name

    def clean(self):
        conn = connect()
        try:
            for kind, names in (("queue", self.queues), ("exchange", self.exchanges)):
                for name in names:
                    ch = conn.channel()
                    try:
                        if kind == "queue":
                            ch.queue_delete(name)
                        else:
                            ch.exchange_delete(name)
                        ch.close()
                    except ChannelClosedByBroker:
                        pass  # exclusive to a gone connection, or never declared
        finally:
            conn.close()


def connect(url=URL):
    return pika.BlockingConnection(pika.URLParameters(url))


def get_all(ch, queue):
    """Bodies ready in `queue`, taken with basic.get (auto-ack)."""
    out = []
    while True:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append(body)


def wait_get(ch, queue, timeout=5.0, auto_ack=True):
    """basic.get until a message arrives (for asynchronous dead-lettering)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        method, props, body = ch.basic_get(queue, auto_ack=auto_ack)
        if method is not None:
            return method, props, body
        time.sleep(0.05)
    raise AssertionError("nothing arrived in %s within %ss" % (queue, timeout))


def eventually(probe, expected, timeout=5.0):
    """Polls `probe()` until it returns `expected`."""
    deadline = time.time() + timeout
    while True:
        got = probe()
        if got == expected:
            return
        assert time.time() < deadline, "still %r, expected %r" % (got, expected)
        time.sleep(0.02)


def expect_channel_error(code, fn, *args, **kwargs):
    """Runs `fn`; the broker must close the channel with `code`."""
    try:
        fn(*args, **kwargs)
    except ChannelClosedByBroker as e:
        assert e.reply_code == code, "expected %d, got %r" % (code, e)
        return e
    raise AssertionError("expected channel.close %d from %s" % (code, fn.__name__))


def publish_sync(ch, *args, **kwargs):
    """basic.publish, then a round trip: pika does not wait on a publish, so
    this is what surfaces a channel.close the publish caused."""
    ch.basic_publish(*args, **kwargs)
    ch.queue_declare("", exclusive=True)


def confirmed_channel(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    return ch


def publish(ch, exchange, key, body, **props):
    ch.basic_publish(exchange, key, body, pika.BasicProperties(**props))


# --- routing ---------------------------------------------------------------


@feature
def direct_routing(conn, n):
    ch = confirmed_channel(conn)
    x = n.x("d")
    ch.exchange_declare(x, "direct")
    qa, qb, qa2 = n.q("a"), n.q("b"), n.q("a2")
    for q, key in ((qa, "a"), (qb, "b"), (qa2, "a")):
        ch.queue_declare(q)
        ch.queue_bind(q, x, routing_key=key)
    publish(ch, x, "a", b"to-a")
    publish(ch, x, "b", b"to-b")
    publish(ch, x, "c", b"nowhere")
    assert get_all(ch, qa) == [b"to-a"]
    assert get_all(ch, qa2) == [b"to-a"]
    assert get_all(ch, qb) == [b"to-b"]
    # The default exchange routes by queue name.
    publish(ch, "", qb, b"default")
    assert get_all(ch, qb) == [b"default"]
    # Unbinding stops the routing.
    ch.queue_unbind(qa, x, routing_key="a")
    publish(ch, x, "a", b"again")
    assert get_all(ch, qa) == []
    assert get_all(ch, qa2) == [b"again"]


@feature
def fanout_routing(conn, n):
    ch = confirmed_channel(conn)
    x = n.x("f")
    ch.exchange_declare(x, "fanout")
    q1, q2 = n.q("1"), n.q("2")
    ch.queue_declare(q1)
    ch.queue_declare(q2)
    ch.queue_bind(q1, x, routing_key="ignored")
    ch.queue_bind(q2, x)
    publish(ch, x, "any.key", b"m1")
    publish(ch, x, "", b"m2")
    assert get_all(ch, q1) == [b"m1", b"m2"]
    assert get_all(ch, q2) == [b"m1", b"m2"]


@feature
def topic_routing(conn, n):
    ch = confirmed_channel(conn)
    x = n.x("t")
    ch.exchange_declare(x, "topic")
    patterns = ["a.*", "a.#", "#", "*.b.*", "#.z", "a.b.c", "*"]
    queues = {}
    for i, pattern in enumerate(patterns):
        q = n.q(str(i))
        ch.queue_declare(q)
        ch.queue_bind(q, x, routing_key=pattern)
        queues[pattern] = q
    keys = ["a", "a.b", "a.b.c", "x.b.y", "x.y.z", "z", "a.x.y.z", ""]
    for key in keys:
        publish(ch, x, key, key.encode())
    expected = {
        "a.*": ["a.b"],
        "a.#": ["a", "a.b", "a.b.c", "a.x.y.z"],
        "#": keys,
        "*.b.*": ["a.b.c", "x.b.y"],
        "#.z": ["x.y.z", "z", "a.x.y.z"],
        "a.b.c": ["a.b.c"],
        "*": ["a", "z"],
    }
    for pattern, q in queues.items():
        got = [b.decode() for b in get_all(ch, q)]
        assert got == expected[pattern], (pattern, got)


@feature
def headers_routing(conn, n):
    ch = confirmed_channel(conn)
    x = n.x("h")
    ch.exchange_declare(x, "headers")
    q_all, q_any = n.q("all"), n.q("any")
    ch.queue_declare(q_all)
    ch.queue_declare(q_any)
    ch.queue_bind(q_all, x, arguments={"x-match": "all", "format": "pdf", "type": "report"})
    ch.queue_bind(q_any, x, arguments={"x-match": "any", "format": "pdf", "type": "report"})
    cases = [
        ("both", {"format": "pdf", "type": "report"}),
        ("both+extra", {"format": "pdf", "type": "report", "other": "x"}),
        ("format", {"format": "pdf"}),
        ("wrong-type", {"format": "pdf", "type": "log"}),
        ("neither", {"format": "zip"}),
        ("none", None),
    ]
    for body, headers in cases:
        publish(ch, x, "key-ignored", body.encode(), headers=headers)
    assert get_all(ch, q_all) == [b"both", b"both+extra"]
    assert get_all(ch, q_any) == [b"both", b"both+extra", b"format", b"wrong-type"]
    # x- headers count only with the -with-x modes; an empty binding matches all.
    modes = {}
    for mode in ("all", "any", "all-with-x", "any-with-x", None):
        q = n.q(mode or "no-args")
        ch.queue_declare(q)
        args = {"x-match": mode, "x-kind": "a", "b": "2"} if mode else {}
        ch.queue_bind(q, x, arguments=args)
        modes[mode] = q
    for body, headers in (("x+b", {"x-kind": "a", "b": "2"}), ("b", {"b": "2"}),
                          ("x", {"x-kind": "a"}), ("none", None)):
        publish(ch, x, "", body.encode(), headers=headers)
    got = {mode: [b.decode() for b in get_all(ch, q)] for mode, q in modes.items()}
    assert got == {"all": ["x+b", "b"], "any": ["x+b", "b"], "all-with-x": ["x+b"],
                   "any-with-x": ["x+b", "b", "x"], None: ["x+b", "b", "x", "none"]}, got
    e = expect_channel_error(406, conn.channel().queue_bind, q_all, x,
                             arguments={"x-match": "some", "a": "b"})
    assert "Invalid x-match field value" in e.reply_text, e


@feature
def exchange_to_exchange_binding(conn, n):
    ch = confirmed_channel(conn)
    src, dst = n.x("src"), n.x("dst")
    ch.exchange_declare(src, "topic")
    ch.exchange_declare(dst, "fanout")
    q = n.q("q")
    ch.queue_declare(q)
    ch.queue_bind(q, dst)
    ch.exchange_bind(destination=dst, source=src, routing_key="a.#")
    publish(ch, src, "a.b", b"through")
    publish(ch, src, "b.a", b"filtered")
    assert get_all(ch, q) == [b"through"]
    ch.exchange_unbind(destination=dst, source=src, routing_key="a.#")
    publish(ch, src, "a.b", b"unbound")
    assert get_all(ch, q) == []


# --- acknowledgements ------------------------------------------------------


@feature
def ack_nack_reject_requeue(conn, n):
    ch = confirmed_channel(conn)
    q = n.q("q")
    ch.queue_declare(q)
    publish(ch, "", q, b"m")
    method, _, body = ch.basic_get(q)
    assert body == b"m" and not method.redelivered
    ch.basic_nack(method.delivery_tag, requeue=True)
    method, _, body = ch.basic_get(q)
    assert body == b"m" and method.redelivered, method
    ch.basic_reject(method.delivery_tag, requeue=True)
    method, _, body = ch.basic_get(q)
    assert body == b"m" and method.redelivered, method
    ch.basic_reject(method.delivery_tag, requeue=False)
    assert ch.basic_get(q)[0] is None, "reject without requeue drops the message"
    # nack multiple without requeue drops them all; ack removes.
    for body in (b"1", b"2", b"3"):
        publish(ch, "", q, body)
    tags = [ch.basic_get(q)[0].delivery_tag for _ in range(3)]
    ch.basic_nack(tags[1], multiple=True, requeue=False)
    ch.basic_ack(tags[2])
    assert ch.basic_get(q)[0] is None
    # Unacked messages come back, redelivered, when their channel closes.
    publish(ch, "", q, b"unacked")
    ch2 = conn.channel()
    method, _, _ = ch2.basic_get(q)
    assert not method.redelivered
    ch2.close()
    method, _, body = wait_get(ch, q)
    assert body == b"unacked" and method.redelivered


@feature
def consume_and_ack(conn, n):
    ch = confirmed_channel(conn)
    q = n.q("q")
    ch.queue_declare(q)
    publish(ch, "", q, b"hello")
    for method, _props, body in ch.consume(q, inactivity_timeout=5):
        assert method is not None, "timed out"
        assert body == b"hello" and method.routing_key == q, (method, body)
        assert not method.redelivered, method
        ch.basic_ack(method.delivery_tag)
        break
    ok = ch.queue_declare(q, passive=True).method
    assert (ok.message_count, ok.consumer_count) == (0, 1), ok
    ch.cancel()


@feature
def consumer_redelivery(conn, n):
    ch = confirmed_channel(conn)
    q = n.q("q")
    ch.queue_declare(q)
    publish(ch, "", q, b"m")
    seen = []
    for method, _props, body in ch.consume(q, inactivity_timeout=5):
        assert method is not None, "timed out"
        seen.append((body, method.redelivered))
        if len(seen) == 1:
            ch.basic_reject(method.delivery_tag, requeue=True)
        else:
            ch.basic_ack(method.delivery_tag)
            break
    ch.cancel()
    assert seen == [(b"m", False), (b"m", True)], seen


@feature
def prefetch(conn, n):
    ch = confirmed_channel(conn)
    q = n.q("q")
    ch.queue_declare(q)
    for i in range(5):
        publish(ch, "", q, str(i).encode())
    ch.basic_qos(prefetch_count=2)
    got = []
    for method, _props, body in ch.consume(q, inactivity_timeout=1):
        if method is None:
            break
        got.append((method.delivery_tag, body))
    assert [b for _, b in got] == [b"0", b"1"], got
    eventually(lambda: ch.queue_declare(q, passive=True).method.message_count, 3)
    ch.basic_ack(got[0][0])
    more = []
    for method, _props, body in ch.consume(q, inactivity_timeout=1):
        if method is None:
            break
        more.append((method.delivery_tag, body))
    assert [b for _, b in more] == [b"2"], more
    ch.basic_ack(more[0][0], multiple=True)
    for method, _props, body in ch.consume(q, inactivity_timeout=1):
        if method is None:
            break
        more.append((method.delivery_tag, body))
    assert [b for _, b in more] == [b"2", b"3", b"4"], more
    ch.cancel()


# --- publishing ------------------------------------------------------------


@feature
def publisher_confirms(conn, n):
    ch = confirmed_channel(conn)
    q = n.q("q")
    ch.queue_declare(q)
    for i in range(20):
        publish(ch, "", q, str(i).encode())  # raises unless acked
    # An unroutable message without mandatory is still confirmed.
    publish(ch, "", "no-such-queue-" + SUFFIX, b"dropped")
    assert ch.queue_declare(q, passive=True).method.message_count == 20


@feature
def mandatory_returns(conn, n):
    ch = confirmed_channel(conn)
    x = n.x("x")
    ch.exchange_declare(x, "direct")
    try:
        ch.basic_publish(x, "nobody", b"lost", pika.BasicProperties(message_id="m1"),
                         mandatory=True)
        raise AssertionError("expected basic.return")
    except UnroutableError as e:
        assert len(e.messages) == 1, e.messages
        ret = e.messages[0]
        assert ret.method.reply_code == 312, ret.method
        assert ret.method.reply_text == "NO_ROUTE", ret.method
        assert ret.method.exchange == x and ret.method.routing_key == "nobody"
        assert ret.body == b"lost" and ret.properties.message_id == "m1"
    # Without confirms the return arrives through the callback.
    ch2 = conn.channel()
    returned = []
    ch2.add_on_return_callback(lambda _ch, method, props, body: returned.append((method, body)))
    ch2.basic_publish("", "no-such-queue-" + SUFFIX, b"back", mandatory=True)
    deadline = time.time() + 5
    while not returned and time.time() < deadline:
        conn.process_data_events(time_limit=0.1)
    assert len(returned) == 1 and returned[0][1] == b"back", returned
    assert returned[0][0].reply_code == 312


# --- queue arguments -------------------------------------------------------


@feature
def message_ttl(conn, n):
    ch = confirmed_channel(conn)
    per_queue, plain = n.q("per-queue"), n.q("plain")
    ch.queue_declare(per_queue, arguments={"x-message-ttl": 200})
    ch.queue_declare(plain)
    publish(ch, "", per_queue, b"short")
    publish(ch, "", plain, b"short", expiration="200")
    publish(ch, "", plain, b"long", expiration="60000")
    assert ch.queue_declare(per_queue, passive=True).method.message_count == 1
    time.sleep(0.6)
    assert get_all(ch, per_queue) == []
    method, props, body = ch.basic_get(plain, auto_ack=True)
    assert body == b"long" and props.expiration == "60000", (body, props)
    assert ch.basic_get(plain)[0] is None
    # expiration "0" expires at once unless a consumer takes it at once.
    publish(ch, "", plain, b"zero", expiration="0")
    time.sleep(0.1)
    assert get_all(ch, plain) == []


def death(props):
    deaths = props.headers["x-death"]
    assert isinstance(deaths, list), deaths
    return deaths


@feature
def dead_lettering(conn, n):
    ch = confirmed_channel(conn)
    dlx = n.x("dlx")
    ch.exchange_declare(dlx, "fanout")
    dead = n.q("dead")
    ch.queue_declare(dead)
    ch.queue_bind(dead, dlx)
    work, timed = n.q("work"), n.q("ttl")
    ch.queue_declare(work, arguments={"x-dead-letter-exchange": dlx})
    ch.queue_declare(timed, arguments={"x-dead-letter-exchange": dlx, "x-message-ttl": 100})
    # Rejected.
    publish(ch, "", work, b"rejected", headers={"app": "kept"})
    method, _, _ = ch.basic_get(work)
    ch.basic_reject(method.delivery_tag, requeue=False)
    method, props, body = wait_get(ch, dead)
    assert body == b"rejected"
    assert method.exchange == dlx and method.routing_key == work, method
    assert props.headers["app"] == "kept"
    (d,) = death(props)
    assert d["reason"] == "rejected", d
    assert d["count"] == 1, d
    assert d["queue"] == work, d
    assert d["exchange"] == "", d
    assert d["routing-keys"] == [work], d
    assert "time" in d, d
    assert props.headers["x-first-death-reason"] == "rejected"
    assert props.headers["x-first-death-queue"] == work
    assert props.headers["x-first-death-exchange"] == ""
    # Expired (per-queue TTL).
    publish(ch, "", timed, b"expired")
    method, props, body = wait_get(ch, dead)
    assert body == b"expired"
    (d,) = death(props)
    assert (d["reason"], d["count"], d["queue"], d["routing-keys"]) == \
        ("expired", 1, timed, [timed]), d
    # Expired (per-message expiration): the property moves into x-death.
    publish(ch, "", work, b"msg-ttl", expiration="50")
    method, props, body = wait_get(ch, dead)
    assert body == b"msg-ttl"
    assert props.expiration is None, props
    (d,) = death(props)
    assert d["reason"] == "expired" and d["original-expiration"] == "50", d


@feature
def dead_letter_routing_key_and_count(conn, n):
    ch = confirmed_channel(conn)
    x = n.x("direct")
    ch.exchange_declare(x, "direct")
    q, target = n.q("loop"), n.q("target")
    # Rejected messages come back to the same queue: x-death counts them.
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": "",
                                   "x-dead-letter-routing-key": q})
    ch.queue_bind(q, x, routing_key="orig")
    publish(ch, x, "orig", b"m", headers={"k": 1})
    for expected in (1, 2, 3):
        method, props, body = wait_get(ch, q, auto_ack=False)
        if expected > 1:
            (d,) = death(props)
            assert d["count"] == expected - 1, d
            assert d["exchange"] == x and d["routing-keys"] == ["orig"], d
            assert method.exchange == "" and method.routing_key == q
        ch.basic_reject(method.delivery_tag, requeue=False)
    ch.queue_purge(q)
    # x-dead-letter-routing-key replaces the routing key.
    ch.queue_declare(target)
    src = n.q("src")
    ch.queue_declare(src, arguments={"x-dead-letter-exchange": x,
                                     "x-dead-letter-routing-key": "to-target"})
    ch.queue_bind(target, x, routing_key="to-target")
    publish(ch, "", src, b"rk")
    method, _, _ = ch.basic_get(src)
    ch.basic_nack(method.delivery_tag, requeue=False)
    method, props, body = wait_get(ch, target)
    assert body == b"rk" and method.routing_key == "to-target", method
    (d,) = death(props)
    assert d["queue"] == src and d["routing-keys"] == [src], d


@feature
def max_length(conn, n):
    ch = confirmed_channel(conn)
    head, reject = n.q("drop-head"), n.q("reject")
    ch.queue_declare(head, arguments={"x-max-length": 2})
    ch.queue_declare(reject, arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
    for body in (b"1", b"2", b"3"):
        publish(ch, "", head, body)
    assert get_all(ch, head) == [b"2", b"3"]
    publish(ch, "", reject, b"1")
    publish(ch, "", reject, b"2")
    try:
        publish(ch, "", reject, b"3")
        raise AssertionError("expected a publisher nack")
    except NackError:
        pass
    assert get_all(ch, reject) == [b"1", b"2"]
    # Room again: accepted.
    publish(ch, "", reject, b"4")
    assert get_all(ch, reject) == [b"4"]
    # Dropped heads are dead-lettered with reason maxlen.
    dlx_q, capped = n.q("dlx"), n.q("capped")
    ch.queue_declare(dlx_q)
    ch.queue_declare(capped, arguments={"x-max-length": 1, "x-dead-letter-exchange": "",
                                        "x-dead-letter-routing-key": dlx_q})
    publish(ch, "", capped, b"old")
    publish(ch, "", capped, b"new")
    method, props, body = wait_get(ch, dlx_q)
    assert body == b"old"
    (d,) = death(props)
    assert d["reason"] == "maxlen" and d["queue"] == capped, d
    assert get_all(ch, capped) == [b"new"]


@feature
def max_priority(conn, n):
    ch = confirmed_channel(conn)
    q = n.q("q")
    ch.queue_declare(q, arguments={"x-max-priority": 10})
    for body, priority in ((b"p1", 1), (b"p5", 5), (b"none", None), (b"p9", 9),
                           (b"p5b", 5), (b"p200", 200)):
        publish(ch, "", q, body, priority=priority)
    # Above the maximum counts as the maximum (10 > 9); no priority as 0.
    got = get_all(ch, q)
    assert got == [b"p200", b"p9", b"p5", b"p5b", b"p1", b"none"], got


# --- exclusivity and lifetimes ---------------------------------------------


@feature
def exclusive_queue(conn, n):
    ch = conn.channel()
    q = n.q("q")
    ch.queue_declare(q, exclusive=True)
    server_named = ch.queue_declare("", exclusive=True).method.queue
    assert server_named.startswith("amq.gen-"), server_named
    other = connect()
    try:
        expect_channel_error(405, other.channel().queue_declare, q, passive=True)
        expect_channel_error(405, other.channel().queue_declare, q)
        expect_channel_error(405, other.channel().basic_consume, q, lambda *a: None)
        expect_channel_error(405, other.channel().queue_purge, q)
        expect_channel_error(405, other.channel().queue_delete, q)
        # The owner closing its connection deletes the queue.
        conn.close()
        deadline = time.time() + 5
        while True:
            try:
                other.channel().queue_declare(q, passive=True)
            except ChannelClosedByBroker as e:
                assert e.reply_code == 404, e
                break
            assert time.time() < deadline, "exclusive queue outlived its connection"
            time.sleep(0.05)
    finally:
        other.close()


@feature
def auto_delete_queue(conn, n):
    ch = conn.channel()
    q = n.q("q")
    ch.queue_declare(q, auto_delete=True)
    # Never consumed from: it stays.
    assert ch.queue_declare(q, passive=True).method.consumer_count == 0
    t1 = ch.basic_consume(q, lambda *a: None)
    t2 = ch.basic_consume(q, lambda *a: None)
    eventually(lambda: ch.queue_declare(q, passive=True).method.consumer_count, 2)
    ch.basic_cancel(t1)
    eventually(lambda: ch.queue_declare(q, passive=True).method.consumer_count, 1)
    ch.basic_cancel(t2)
    deadline = time.time() + 5
    while True:
        probe = conn.channel()
        try:
            probe.queue_declare(q, passive=True)
        except ChannelClosedByBroker as e:
            assert e.reply_code == 404, e
            break
        probe.close()
        assert time.time() < deadline, "auto-delete queue outlived its last consumer"
        time.sleep(0.05)


# --- errors with their codes -----------------------------------------------


@feature
def passive_declare_missing_is_404(conn, n):
    e = expect_channel_error(404, conn.channel().queue_declare, n.q("missing"), passive=True)
    assert "NOT_FOUND" in e.reply_text, e
    expect_channel_error(404, conn.channel().exchange_declare, n.x("missing"), passive=True)


@feature
def redeclare_with_other_flags_is_406(conn, n):
    q, x = n.q("q"), n.x("x")
    ch = conn.channel()
    ch.queue_declare(q)
    ch.queue_declare(q)  # same flags: fine
    e = expect_channel_error(406, conn.channel().queue_declare, q, durable=True)
    assert "PRECONDITION_FAILED" in e.reply_text and "durable" in e.reply_text, e
    expect_channel_error(406, conn.channel().queue_declare, q,
                         arguments={"x-message-ttl": 1000})
    ch = conn.channel()
    ch.exchange_declare(x, "direct")
    expect_channel_error(406, conn.channel().exchange_declare, x, "fanout")
    expect_channel_error(406, conn.channel().exchange_declare, x, "direct", durable=True)
    # Of an exchange's arguments, alternate-exchange must match.
    e = expect_channel_error(406, conn.channel().exchange_declare, x, "direct",
                             arguments={"alternate-exchange": "ae"})
    assert "inequivalent arg 'alternate-exchange'" in e.reply_text, e
    ax = n.x("with-ae")
    conn.channel().exchange_declare(ax, "direct", arguments={"alternate-exchange": "ae"})
    conn.channel().exchange_declare(ax, "direct", arguments={"alternate-exchange": "ae"})
    expect_channel_error(406, conn.channel().exchange_declare, ax, "direct")
    # An unknown exchange type is a connection error.
    try:
        conn.channel().exchange_declare(n.x("odd"), "no-such-type")
        raise AssertionError("expected connection.close 503")
    except pika.exceptions.ConnectionClosedByBroker as e:
        assert e.reply_code == 503, e


@feature
def unknown_delivery_tag_is_406(conn, n):
    ch = conn.channel()
    ch.basic_ack(999)
    e = expect_channel_error(406, ch.queue_declare, "", exclusive=True)
    assert "unknown delivery tag 999" in e.reply_text, e


@feature
def publish_to_missing_exchange_is_404(conn, n):
    ch = conn.channel()
    ch.basic_publish(n.x("missing"), "k", b"x")
    e = expect_channel_error(404, ch.queue_declare, "", exclusive=True)
    assert "NOT_FOUND" in e.reply_text, e
    # The connection survives a channel error.
    assert conn.channel().queue_declare("", exclusive=True).method.queue


@feature
def reserved_names_are_403(conn, n):
    expect_channel_error(403, conn.channel().queue_declare, "amq.custom-" + SUFFIX)
    expect_channel_error(403, conn.channel().exchange_declare, "amq.custom-" + SUFFIX, "direct")


# --- basic.get, purge, delete ----------------------------------------------


@feature
def basic_get_and_get_empty(conn, n):
    ch = confirmed_channel(conn)
    q = n.q("q")
    ch.queue_declare(q)
    assert ch.basic_get(q) == (None, None, None)
    for body in (b"a", b"b", b"c"):
        publish(ch, "", q, body, content_type="text/plain", headers={"n": 1})
    method, props, body = ch.basic_get(q, auto_ack=True)
    assert body == b"a" and method.message_count == 2, method
    assert method.exchange == "" and method.routing_key == q
    assert props.content_type == "text/plain" and props.headers == {"n": 1}, props
    method, _, _ = ch.basic_get(q, auto_ack=False)
    assert method.message_count == 1
    ch.basic_ack(method.delivery_tag)
    assert ch.queue_declare(q, passive=True).method.message_count == 1


@feature
def purge_counts(conn, n):
    ch = confirmed_channel(conn)
    q = n.q("q")
    ch.queue_declare(q)
    for i in range(5):
        publish(ch, "", q, str(i).encode())
    unacked, _, _ = ch.basic_get(q)  # unacked messages are not purged
    purged = ch.queue_purge(q).method.message_count
    assert purged == 4, purged
    purged = ch.queue_purge(q).method.message_count
    assert purged == 0, purged
    ch.basic_reject(unacked.delivery_tag, requeue=True)
    # RabbitMQ answers the count (a priority call to the queue) before it
    # has applied a requeue sent just before: poll.
    eventually(lambda: ch.queue_declare(q, passive=True).method.message_count, 1)


@feature
def queue_delete_if_empty_if_unused(conn, n):
    ch = confirmed_channel(conn)
    q = n.q("q")
    ch.queue_declare(q)
    publish(ch, "", q, b"m")
    e = expect_channel_error(406, conn.channel().queue_delete, q, if_empty=True)
    assert "not empty" in e.reply_text, e
    consumer = conn.channel()
    consumer.basic_qos(prefetch_count=1)
    consumer.basic_consume(q, lambda *a: None)
    e = expect_channel_error(406, conn.channel().queue_delete, q, if_unused=True)
    assert "in use" in e.reply_text, e
    consumer.close()
    ch = conn.channel()
    assert ch.queue_delete(q, if_unused=True).method.message_count == 1
    expect_channel_error(404, conn.channel().queue_declare, q, passive=True)
    # Deleting a missing queue is fine.
    assert conn.channel().queue_delete(q).method.message_count == 0


# --- transactions ----------------------------------------------------------


@feature
def transactions(conn, n):
    q = n.q("q")
    watcher = conn.channel()
    watcher.queue_declare(q)
    ch = conn.channel()
    ch.tx_select()
    publish(ch, "", q, b"rolled-back")
    ch.tx_rollback()
    publish(ch, "", q, b"1")
    publish(ch, "", q, b"2")
    assert watcher.queue_declare(q, passive=True).method.message_count == 0
    ch.tx_commit()
    eventually(lambda: watcher.queue_declare(q, passive=True).method.message_count, 2)
    # Acks wait for the commit too.
    method, _, _ = ch.basic_get(q)
    ch.basic_ack(method.delivery_tag)
    ch.tx_commit()
    assert get_all(watcher, q) == [b"2"]
    # Commit without select is a channel error.
    e = expect_channel_error(406, conn.channel().tx_commit)
    assert "PRECONDITION_FAILED" in e.reply_text, e


@feature
def acks_in_a_transaction_take_their_deliveries(conn, n):
    # As on RabbitMQ: an ack in a transaction takes its delivery at once,
    # so acking it again is 406 (and a transaction cannot grow by repeating
    # one); a rollback gives it back; a channel closed mid-transaction
    # requeues it, as uncommitted.
    q = n.q("q")
    watcher = conn.channel()
    watcher.queue_declare(q)
    for body in (b"a", b"b"):
        publish(watcher, "", q, body)
    eventually(lambda: watcher.queue_declare(q, passive=True).method.message_count, 2)
    ch = conn.channel()
    ch.tx_select()
    first, _, _ = ch.basic_get(q)
    ch.basic_ack(first.delivery_tag)
    ch.basic_ack(delivery_tag=0, multiple=True)
    ch.basic_ack(delivery_tag=0, multiple=True)
    try:
        ch.basic_ack(first.delivery_tag)
        ch.basic_qos(prefetch_count=0)
        raise AssertionError("a second ack of one delivery was accepted")
    except ChannelClosedByBroker as e:
        assert e.reply_code == 406 and "unknown delivery tag" in e.reply_text, e
    # The closed channel's transaction never committed: both are back.
    eventually(lambda: watcher.queue_declare(q, passive=True).method.message_count, 2)
    ch = conn.channel()
    ch.tx_select()
    first, _, _ = ch.basic_get(q)
    ch.basic_ack(first.delivery_tag)
    ch.tx_rollback()
    ch.basic_ack(first.delivery_tag)
    ch.tx_commit()
    eventually(lambda: watcher.queue_declare(q, passive=True).method.message_count, 1)
    ch.close()
    assert get_all(watcher, q) == [b"b"]


@feature
def tx_commit_with_a_refused_message_fails(conn, n):
    # A queue that refuses publishes when full: of the two committed
    # messages it takes one, and the commit says so rather than commit-ok.
    q = n.q("full")
    watcher = conn.channel()
    watcher.queue_declare(q, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch = conn.channel()
    ch.tx_select()
    publish(ch, "", q, b"1")
    publish(ch, "", q, b"2")
    e = expect_channel_error(406, ch.tx_commit)
    assert "partial tx completion" in e.reply_text, e
    assert get_all(watcher, q) == [b"1"]


# --- direct reply-to -------------------------------------------------------


@feature
def direct_reply_to(conn, n):
    requests = n.q("requests")
    server_conn = connect()
    try:
        server = server_conn.channel()
        server.queue_declare(requests)
        client = conn.channel()
        replies = []
        client.basic_consume("amq.rabbitmq.reply-to",
                             lambda _ch, m, p, body: replies.append((m, p, body)),
                             auto_ack=True)
        client.basic_publish("", requests, b"ping",
                             pika.BasicProperties(reply_to="amq.rabbitmq.reply-to",
                                                  correlation_id="c1"))
        method, props, body = wait_get(server, requests)
        assert body == b"ping"
        assert props.reply_to.startswith("amq.rabbitmq.reply-to."), props.reply_to
        server.basic_publish("", props.reply_to, b"pong",
                             pika.BasicProperties(correlation_id=props.correlation_id))
        deadline = time.time() + 5
        while not replies and time.time() < deadline:
            conn.process_data_events(time_limit=0.1)
        assert len(replies) == 1, replies
        m, p, body = replies[0]
        assert body == b"pong" and p.correlation_id == "c1"
        assert m.routing_key == props.reply_to, m
        # The pseudo-queue and a live reply address declare (passive or not)
        # with no messages and one consumer; a gone one is 404.
        for name, passive in (("amq.rabbitmq.reply-to", True),
                              ("amq.rabbitmq.reply-to", False),
                              (props.reply_to, True)):
            ok = server_conn.channel().queue_declare(name, passive=passive).method
            assert (ok.queue, ok.message_count, ok.consumer_count) == (name, 0, 1), ok
        expect_channel_error(404, server_conn.channel().queue_declare,
                             "amq.rabbitmq.reply-to.no-such-channel", passive=True)
        client.close()
        deadline = time.time() + 5
        while True:
            try:
                server_conn.channel().queue_declare(props.reply_to, passive=True)
            except ChannelClosedByBroker as e:
                assert e.reply_code == 404, e
                break
            assert time.time() < deadline, "reply address outlived its channel"
            time.sleep(0.05)
    finally:
        server_conn.close()
    # Publishing with the pseudo-queue as reply_to needs the consumer first.
    e = expect_channel_error(
        406, publish_sync, conn.channel(), "", requests, b"x",
        pika.BasicProperties(reply_to="amq.rabbitmq.reply-to"))
    assert "fast reply consumer does not exist" in e.reply_text, e
    # The reply consumer must be no-ack.
    e = expect_channel_error(406, conn.channel().basic_consume, "amq.rabbitmq.reply-to",
                             lambda *a: None, auto_ack=False)
    assert "reply consumer cannot acknowledge" in e.reply_text, e


# --- more of RabbitMQ's rules ----------------------------------------------


@feature
def properties_round_trip(conn, n):
    import datetime
    import decimal

    ch = confirmed_channel(conn)
    q = n.q("q")
    ch.queue_declare(q)
    headers = {
        "str": "text", "int": 7, "negative": -3, "long": 2 ** 40,
        "true": True, "false": False, "bytes": b"\x00\xffraw", "none": None,
        "table": {"nested": {"deep": 1}, "list": [1, "two"]},
        "array": [1, "a", [2, 3], {"k": "v"}],
        "decimal": decimal.Decimal("3.14"),
        "time": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    }
    props = pika.BasicProperties(
        content_type="application/json", content_encoding="utf-8", headers=headers,
        delivery_mode=2, priority=3, correlation_id="corr", reply_to="replies",
        expiration="60000", message_id="mid", timestamp=1700000000, type="kind",
        user_id="guest", app_id="app", cluster_id="cluster")
    big = bytes(range(256)) * 4096  # 1 MiB: many body frames
    for body in (b"", b"small", big):
        ch.basic_publish("", q, body, props)
    for body in (b"", b"small", big):
        method, got, got_body = ch.basic_get(q, auto_ack=True)
        assert got_body == body, (len(got_body), len(body))
        for field in ("content_type", "content_encoding", "delivery_mode", "priority",
                      "correlation_id", "reply_to", "expiration", "message_id",
                      "timestamp", "type", "user_id", "app_id", "cluster_id"):
            assert getattr(got, field) == getattr(props, field), (field, got)
        assert got.headers == headers, got.headers


@feature
def user_id_must_match_is_406(conn, n):
    ch = conn.channel()
    e = expect_channel_error(406, publish_sync, ch, "", "q-" + SUFFIX, b"x",
                             pika.BasicProperties(user_id="mallory"))
    assert "user_id property set to 'mallory' but authenticated user was 'guest'" \
        in e.reply_text, e


@feature
def exclusive_consumer_is_403(conn, n):
    ch = conn.channel()
    q = n.q("q")
    ch.queue_declare(q)
    ch.basic_consume(q, lambda *a: None, exclusive=True)
    e = expect_channel_error(403, conn.channel().basic_consume, q, lambda *a: None)
    assert "ACCESS_REFUSED" in e.reply_text, e
    ch2 = conn.channel()
    q2 = n.q("shared")
    ch2.queue_declare(q2)
    ch2.basic_consume(q2, lambda *a: None)
    expect_channel_error(403, conn.channel().basic_consume, q2, lambda *a: None,
                         exclusive=True)


@feature
def consume_from_missing_queue_is_404(conn, n):
    expect_channel_error(404, conn.channel().basic_consume, n.q("missing"), lambda *a: None)
    expect_channel_error(404, conn.channel().basic_get, n.q("missing"))


@feature
def recover_redelivers(conn, n):
    ch = confirmed_channel(conn)
    q = n.q("q")
    ch.queue_declare(q)
    publish(ch, "", q, b"m")
    method, _, _ = ch.basic_get(q)
    assert not method.redelivered
    ch.basic_recover(requeue=True)
    method, _, body = wait_get(ch, q, auto_ack=False)
    assert body == b"m" and method.redelivered
    ch.basic_ack(method.delivery_tag)
    assert ch.basic_get(q)[0] is None
    # Redelivering to the same consumer (requeue=false) is not implemented.
    try:
        ch.basic_recover(requeue=False)
        raise AssertionError("expected connection.close 540")
    except pika.exceptions.ConnectionClosedByBroker as e:
        assert e.reply_code == 540, e


@feature
def ack_multiple_and_requeue_order(conn, n):
    ch = confirmed_channel(conn)
    q = n.q("q")
    ch.queue_declare(q)
    for body in (b"1", b"2", b"3", b"4"):
        publish(ch, "", q, body)
    tags = [ch.basic_get(q)[0].delivery_tag for _ in range(3)]
    # nack multiple with requeue puts them back in their original order.
    ch.basic_nack(tags[2], multiple=True, requeue=True)
    got = []
    for _ in range(4):
        method, _, body = ch.basic_get(q)
        got.append((body, method.redelivered))
        last = method.delivery_tag
    assert got == [(b"1", True), (b"2", True), (b"3", True), (b"4", False)], got
    # Tag 0 with multiple acknowledges everything outstanding.
    ch.basic_ack(0, multiple=True)
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    # Acking a tag twice is an unknown tag the second time.
    publish(ch, "", q, b"5")
    method, _, _ = ch.basic_get(q)
    assert method.delivery_tag > last
    ch.basic_ack(method.delivery_tag)
    ch.basic_ack(method.delivery_tag)
    expect_channel_error(406, ch.queue_declare, "", exclusive=True)


@feature
def tx_and_confirm_do_not_mix(conn, n):
    ch = conn.channel()
    ch.tx_select()
    e = expect_channel_error(406, ch.confirm_delivery)
    assert "PRECONDITION_FAILED" in e.reply_text, e
    ch = conn.channel()
    ch.confirm_delivery()
    expect_channel_error(406, ch.tx_select)


@feature
def internal_exchange(conn, n):
    ch = confirmed_channel(conn)
    front, inner = n.x("front"), n.x("inner")
    ch.exchange_declare(front, "fanout")
    ch.exchange_declare(inner, "fanout", internal=True)
    q = n.q("q")
    ch.queue_declare(q)
    ch.queue_bind(q, inner)
    ch.exchange_bind(inner, front)
    publish(ch, front, "", b"via-front")
    assert get_all(ch, q) == [b"via-front"]
    e = expect_channel_error(403, publish_sync, conn.channel(), inner, "", b"direct")
    assert "internal" in e.reply_text, e


@feature
def alternate_exchange(conn, n):
    ch = confirmed_channel(conn)
    main, ae = n.x("main"), n.x("ae")
    ch.exchange_declare(ae, "fanout")
    ch.exchange_declare(main, "direct", arguments={"alternate-exchange": ae})
    routed, unrouted = n.q("routed"), n.q("unrouted")
    ch.queue_declare(routed)
    ch.queue_declare(unrouted)
    ch.queue_bind(routed, main, routing_key="known")
    ch.queue_bind(unrouted, ae)
    publish(ch, main, "known", b"k")
    # Routed by the alternate exchange: no basic.return even when mandatory.
    ch.basic_publish(main, "unknown", b"u", mandatory=True)
    assert get_all(ch, routed) == [b"k"]
    method, _, body = ch.basic_get(unrouted, auto_ack=True)
    assert body == b"u" and method.exchange == main and method.routing_key == "unknown"


@feature
def auto_delete_exchange(conn, n):
    ch = conn.channel()
    x = n.x("x")
    ch.exchange_declare(x, "fanout", auto_delete=True)
    q1, q2 = n.q("1"), n.q("2")
    ch.queue_declare(q1)
    ch.queue_declare(q2)
    ch.queue_bind(q1, x)
    ch.queue_bind(q2, x)
    ch.queue_unbind(q1, x)
    ch.exchange_declare(x, "fanout", auto_delete=True, passive=True)
    ch.queue_delete(q2)  # the last binding goes with its queue
    expect_channel_error(404, conn.channel().exchange_declare, x, passive=True)


@feature
def exchange_delete_if_unused(conn, n):
    ch = conn.channel()
    x = n.x("x")
    ch.exchange_declare(x, "direct")
    q = n.q("q")
    ch.queue_declare(q)
    ch.queue_bind(q, x, routing_key="k")
    expect_channel_error(406, conn.channel().exchange_delete, x, if_unused=True)
    ch = conn.channel()
    ch.queue_unbind(q, x, routing_key="k")
    ch.exchange_delete(x, if_unused=True)
    expect_channel_error(404, conn.channel().exchange_declare, x, passive=True)


@feature
def binding_errors(conn, n):
    ch = conn.channel()
    q, x = n.q("q"), n.x("x")
    ch.queue_declare(q)
    ch.exchange_declare(x, "direct")
    expect_channel_error(404, conn.channel().queue_bind, q, n.x("missing"), "k")
    expect_channel_error(404, conn.channel().queue_bind, n.q("missing"), x, "k")
    expect_channel_error(404, conn.channel().exchange_bind, x, n.x("missing"), "k")
    expect_channel_error(404, conn.channel().exchange_bind, n.x("missing"), x, "k")
    # Unbinding what is not there is fine, even with a missing queue or exchange.
    ch = conn.channel()
    ch.queue_unbind(q, x, "never-bound")
    ch.queue_unbind(n.q("missing"), x, "k")
    ch.queue_unbind(q, n.x("missing"), "k")
    ch.exchange_unbind(x, n.x("missing"), "k")
    ch.exchange_unbind(n.x("missing"), x, "k")
    # The default exchange takes no bindings.
    expect_channel_error(403, conn.channel().queue_bind, q, "", "k")
    # Nor can the predeclared exchanges be deleted or redeclared differently.
    for name, kind in (("amq.direct", "direct"), ("amq.fanout", "fanout"),
                       ("amq.topic", "topic"), ("amq.headers", "headers"),
                       ("amq.match", "headers")):
        conn.channel().exchange_declare(name, kind, durable=True, passive=True)
    expect_channel_error(403, conn.channel().exchange_delete, "amq.direct")


@feature
def queue_expires(conn, n):
    ch = conn.channel()
    q = n.q("q")
    ch.queue_declare(q, arguments={"x-expires": 300})
    time.sleep(1.2)
    expect_channel_error(404, conn.channel().queue_declare, q, passive=True)


@feature
def quorum_queue_delivery_limit(conn, n):
    # A quorum queue is durable, counts each delivery in x-delivery-count, and
    # dead-letters a message given back more often than x-delivery-limit.
    ch = confirmed_channel(conn)
    dlx = n.x("qdlx")
    ch.exchange_declare(dlx, "fanout")
    dead = n.q("qdead")
    ch.queue_declare(dead)
    ch.queue_bind(dead, dlx)
    expect_channel_error(406, conn.channel().queue_declare, n.q("transient"),
                         durable=False, arguments={"x-queue-type": "quorum"})
    q = n.q("quorum")
    ch.queue_declare(q, durable=True, arguments={
        "x-queue-type": "quorum", "x-delivery-limit": 2, "x-dead-letter-exchange": dlx})
    publish(ch, "", q, b"poison", delivery_mode=2)
    seen = []
    for _ in range(3):
        method, props, _body = wait_get(ch, q, auto_ack=False)
        seen.append((method.redelivered, props.headers["x-delivery-count"]))
        ch.basic_nack(method.delivery_tag, requeue=True)
    assert seen == [(False, 0), (True, 1), (True, 2)], seen
    method, props, body = wait_get(ch, dead)
    assert body == b"poison"
    (d,) = death(props)
    assert (d["reason"], d["queue"], d["count"]) == ("delivery_limit", q, 1), d
    assert "x-delivery-count" not in props.headers, props.headers
    assert ch.basic_get(q)[0] is None


@feature
def invalid_queue_arguments_are_406(conn, n):
    ten_years = 315360000000  # RabbitMQ's longest TTL and expiry, in ms
    for args in ({"x-message-ttl": "soon"}, {"x-message-ttl": -1},
                 {"x-message-ttl": ten_years + 1}, {"x-expires": ten_years + 1},
                 {"x-max-length": -1}, {"x-overflow": "explode"},
                 {"x-expires": 0}, {"x-dead-letter-exchange": 5},
                 {"x-max-priority": 256}, {"x-max-priority": -1},
                 {"x-dead-letter-routing-key": "needs-a-dlx"}):
        e = expect_channel_error(406, conn.channel().queue_declare, n.q("bad"),
                                 arguments=args)
        (arg,) = args
        assert "arg '%s'" % arg in e.reply_text, e
    for args in ({"x-max-priority": 255}, {"x-message-ttl": ten_years},
                 {"x-expires": ten_years}, {"x-max-length": 0}):
        ch = conn.channel()
        ch.queue_declare("", exclusive=True, arguments=args)
        ch.close()


@feature
def reject_publish_dlx_and_max_length_bytes(conn, n):
    ch = confirmed_channel(conn)
    dead, q, by_bytes = n.q("dead"), n.q("q"), n.q("bytes")
    ch.queue_declare(dead)
    ch.queue_declare(q, arguments={"x-max-length": 1, "x-overflow": "reject-publish-dlx",
                                   "x-dead-letter-exchange": "",
                                   "x-dead-letter-routing-key": dead})
    publish(ch, "", q, b"kept")
    try:
        publish(ch, "", q, b"refused")
        raise AssertionError("expected a publisher nack")
    except NackError:
        pass
    method, props, body = wait_get(ch, dead)
    assert body == b"refused"
    (d,) = death(props)
    assert d["reason"] == "maxlen" and d["queue"] == q, d
    assert get_all(ch, q) == [b"kept"]
    # x-max-length-bytes counts body bytes; drop-head makes room.
    ch.queue_declare(by_bytes, arguments={"x-max-length-bytes": 10})
    for body in (b"12345", b"67890", b"abc"):
        publish(ch, "", by_bytes, body)
    assert get_all(ch, by_bytes) == [b"67890", b"abc"]


@feature
def expired_dead_letter_cycles_are_dropped(conn, n):
    ch = confirmed_channel(conn)
    q = n.q("q")
    ch.queue_declare(q, arguments={"x-message-ttl": 50, "x-dead-letter-exchange": "",
                                   "x-dead-letter-routing-key": q})
    publish(ch, "", q, b"cycle")
    time.sleep(0.5)
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    assert get_all(ch, q) == []


@feature
def deleting_a_queue_cancels_consumers(conn, n):
    ch = conn.channel()
    q = n.q("q")
    ch.queue_declare(q)
    cancelled = []
    tag = ch.basic_consume(q, lambda *a: None)
    ch.add_on_cancel_callback(lambda method: cancelled.append(method.method.consumer_tag))
    conn.channel().queue_delete(q)
    deadline = time.time() + 5
    while not cancelled and time.time() < deadline:
        conn.process_data_events(time_limit=0.1)
    assert cancelled == [tag], cancelled


@feature
def duplicate_consumer_tag_is_530(conn, n):
    ch = conn.channel()
    q = n.q("q")
    ch.queue_declare(q, exclusive=True)
    ch.basic_consume(q, lambda *a: None, consumer_tag="same")
    try:
        ch.basic_consume(q, lambda *a: None, consumer_tag="same")
        ch.queue_declare("", exclusive=True)
        raise AssertionError("expected connection.close 530")
    except pika.exceptions.ConnectionClosedByBroker as e:
        assert e.reply_code == 530, e
    except pika.exceptions.DuplicateConsumerTag:
        # pika refuses locally; send it through another channel's view instead.
        raw = conn.channel()
        raw.basic_consume(q, lambda *a: None, consumer_tag="same")
        try:
            raw.basic_consume(q, lambda *a: None, consumer_tag="same")
            raise AssertionError("pika sent the duplicate")
        except pika.exceptions.DuplicateConsumerTag:
            pass


@feature
def invalid_expiration_is_406(conn, n):
    q = n.q("q")
    ch = confirmed_channel(conn)
    ch.queue_declare(q)
    for value in ("+60000", "-0", "315360000000"):
        publish(ch, "", q, value.encode(), expiration=value)
    assert get_all(ch, q) == [b"+60000", b"315360000000"]  # "-0" is 0: gone
    for value, why in (("soon", "no_integer"), ("", "no_integer"), ("-1", "value_negative"),
                       ("1.5", "leftover_string"), ("315360000001", "value_too_large")):
        e = expect_channel_error(406, publish_sync, conn.channel(), "", q, b"x",
                                 pika.BasicProperties(expiration=value))
        assert "invalid expiration '%s'" % value in e.reply_text and why in e.reply_text, e


@feature
def oversized_frame_is_501(conn, n):
    ch = conn.channel()
    q = n.q("q")
    ch.queue_declare(q)
    # Headers bigger than frame_max (131072) make one oversized header frame.
    headers = {"k%d" % i: "v" * 200 for i in range(1000)}
    try:
        ch.basic_publish("", q, b"x", pika.BasicProperties(headers=headers))
        ch.queue_declare("", exclusive=True)
        raise AssertionError("expected connection.close 501")
    except pika.exceptions.ConnectionClosedByBroker as e:
        assert e.reply_code == 501, e


# --- connections -----------------------------------------------------------


@feature
def wrong_password_is_refused(conn, n):
    bad = URL.replace("guest:guest", "guest:not-the-password")
    assert bad != URL, "the URL must carry guest:guest"
    try:
        connect(bad).close()
        raise AssertionError("expected an authentication failure")
    except ProbableAuthenticationError as e:
        assert "403" in str(e) and "ACCESS_REFUSED" in str(e), e


@feature
def missing_vhost_is_refused(conn, n):
    base = URL.rsplit("/", 1)[0]
    try:
        connect(base + "/no-such-vhost-" + SUFFIX).close()
        raise AssertionError("expected access to the vhost to be refused")
    except ProbableAccessDeniedError as e:
        assert "530" in str(e) and "NOT_ALLOWED" in str(e), e
    except AMQPConnectionError as e:
        raise AssertionError("expected 530 NOT_ALLOWED, got %r" % (e,))


# --- runner ----------------------------------------------------------------


class FeatureTimeout(Exception):
    pass


def on_alarm(_signum, _frame):
    raise FeatureTimeout("feature took longer than %ds" % FEATURE_TIMEOUT)


def main():
    signal.signal(signal.SIGALRM, on_alarm)
    failed = []
    for fn in FEATURES:
        if ONLY and fn.__name__ not in ONLY:
            continue
        names = Names(fn.__name__)
        signal.alarm(FEATURE_TIMEOUT)
        try:
            conn = connect()
            try:
                fn(conn, names)
            finally:
                if conn.is_open:
                    conn.close()
            names.clean()
            signal.alarm(0)
            print("ok", fn.__name__, flush=True)
        except Exception:  # report every feature, not just the first failure
            signal.alarm(0)
            failed.append(fn.__name__)
            print("FAILED", fn.__name__, flush=True)
            traceback.print_exc(file=sys.stdout)
            sys.stdout.flush()
            try:
                names.clean()
            except Exception:
                pass
    if failed:
        print("pika FAILED:", " ".join(failed), flush=True)
        sys.exit(1)
    print("pika OK", flush=True)


if __name__ == "__main__":
    main()
