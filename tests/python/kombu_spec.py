"""kombu (the AMQP client under oslo.messaging) doing the broker spec's rows
(tests/broker/spec.rs): one @feature function per row that lists kombu,
named as the row. Runs unchanged on warren's embedded broker and on RabbitMQ
(the reference): every name carries SUFFIX, and each feature deletes what it
declared.

Usage: kombu_spec.py AMQP_URL SUFFIX [FEATURE ...]

Prints "ok <feature>" per passed feature, then "kombu OK"; a failed feature
prints "FAILED <feature>" and its traceback, the others still run, and the
run ends with "kombu FAILED: ..." and exit status 1.
"""
import signal
import sys
import time
import traceback

import amqp
import kombu

URL, SUFFIX = sys.argv[1], sys.argv[2]
ONLY = set(sys.argv[3:])
# Per-feature hang guard, in seconds (the Rust test has an overall one).
FEATURE_TIMEOUT = 30
FEATURES = []


def feature(fn):
    FEATURES.append(fn)
    return fn


DECLARED = []  # names this feature used, deleted after it


def name(kind):
    full = "kombu-%s-%s" % (kind, SUFFIX)
    DECLARED.append(full)
    return full


def clean_up():
    """Deletes the feature's queues and exchanges (a name may be either)."""
    with connect() as conn:
        for full in DECLARED:
            for delete in ("queue_delete", "exchange_delete"):
                channel = conn.channel()
                try:
                    getattr(channel, delete)(full)
                    channel.close()
                except conn.channel_errors:
                    pass
    DECLARED.clear()


def connect(**options):
    return kombu.Connection(URL, transport_options={"confirm_publish": True, **options})


def code_of(e):
    return getattr(e, "reply_code", None) or getattr(e, "code", None)


def drain(channel, queue):
    """Bodies ready in `queue` (basic.get, auto-ack)."""
    bound = queue(channel)
    out = []
    while True:
        message = bound.get(no_ack=True)
        if message is None:
            return out
        out.append(message.payload)


def wait_get(channel, queue, timeout=5.0):
    bound = queue(channel)
    deadline = time.time() + timeout
    while time.time() < deadline:
        message = bound.get(no_ack=False)
        if message is not None:
            return message
        time.sleep(0.05)
    raise AssertionError("nothing arrived in %s" % queue.name)


def drain_events_until(conn, done, timeout):
    deadline = time.time() + timeout
    while not done() and time.time() < deadline:
        try:
            conn.drain_events(timeout=0.2)
        except TimeoutError:
            pass


def message_count(channel, queue):
    return queue(channel).queue_declare(passive=True).message_count


def eventually(probe, expected, timeout=5.0):
    """Polls `probe()` until it returns `expected`."""
    deadline = time.time() + timeout
    while True:
        got = probe()
        if got == expected:
            return
        assert time.time() < deadline, "still %r, expected %r" % (got, expected)
        time.sleep(0.02)


def expect_channel_error(conn, code, fn):
    """Runs `fn`; the broker must close the channel with `code`."""
    try:
        fn()
    except conn.channel_errors as e:
        assert code_of(e) == code, "expected %d, got %r" % (code, e)
        return
    raise AssertionError("expected channel.close %d" % code)


# --- routing ---------------------------------------------------------------


@feature
def direct_routing(conn):
    with conn.channel() as channel:
        direct = kombu.Exchange(name("direct"), type="direct", durable=False, auto_delete=True)
        qa = kombu.Queue(name("d-a"), direct, routing_key="a", durable=False, auto_delete=True)
        qb = kombu.Queue(name("d-b"), direct, routing_key="b", durable=False, auto_delete=True)
        for q in (qa, qb):
            q(channel).declare()
        producer = kombu.Producer(channel, serializer="json")
        producer.publish("to-a", exchange=direct, routing_key="a")
        producer.publish("to-b", exchange=direct, routing_key="b")
        producer.publish("to-c", exchange=direct, routing_key="c")
        producer.publish("default", exchange="", routing_key=qb.name)
        assert drain(channel, qa) == ["to-a"]
        assert drain(channel, qb) == ["to-b", "default"]


@feature
def fanout_routing(conn):
    with conn.channel() as channel:
        fanout = kombu.Exchange(name("fanout"), type="fanout", durable=False, auto_delete=True)
        qf1 = kombu.Queue(name("f-1"), fanout, durable=False, auto_delete=True)
        qf2 = kombu.Queue(name("f-2"), fanout, routing_key="ignored", durable=False,
                          auto_delete=True)
        for q in (qf1, qf2):
            q(channel).declare()
        producer = kombu.Producer(channel, serializer="json")
        producer.publish("all", exchange=fanout, routing_key="whatever")
        assert drain(channel, qf1) == ["all"] and drain(channel, qf2) == ["all"]


@feature
def topic_routing(conn):
    exchange = kombu.Exchange(name("topic"), type="topic", durable=False, auto_delete=True)
    queue = kombu.Queue(name("topic-q"), exchange, routing_key="jobs.#", durable=False,
                        auto_delete=True)
    single = kombu.Queue(name("topic-single"), exchange, routing_key="jobs.*",
                         durable=False, auto_delete=True)
    with conn.channel() as channel:
        for q in (queue, single):
            q(channel).declare()
        producer = kombu.Producer(channel, exchange=exchange, serializer="json")
        producer.publish({"n": 1}, routing_key="jobs.a")
        producer.publish({"n": 2}, routing_key="jobs.b.c")
        producer.publish({"n": 3}, routing_key="other")  # not bound: dropped
        assert drain(channel, queue) == [{"n": 1}, {"n": 2}]
        assert drain(channel, single) == [{"n": 1}]


@feature
def headers_routing(conn):
    with conn.channel() as channel:
        headers = kombu.Exchange(name("headers"), type="headers", durable=False,
                                 auto_delete=True)
        qany = kombu.Queue(name("h-any"), headers, durable=False, auto_delete=True,
                           binding_arguments={"x-match": "any", "kind": "pdf", "size": "big"})
        qall = kombu.Queue(name("h-all"), headers, durable=False, auto_delete=True,
                           binding_arguments={"x-match": "all", "kind": "pdf", "size": "big"})
        for q in (qany, qall):
            q(channel).declare()
        producer = kombu.Producer(channel, serializer="json")
        producer.publish("pdf", exchange=headers, headers={"kind": "pdf"})
        producer.publish("big-pdf", exchange=headers, headers={"kind": "pdf", "size": "big"})
        producer.publish("txt", exchange=headers, headers={"kind": "txt"})
        assert drain(channel, qany) == ["pdf", "big-pdf"]
        assert drain(channel, qall) == ["big-pdf"]


# --- consuming and acknowledgements ----------------------------------------


@feature
def consume_and_ack(conn):
    queue = kombu.Queue(name("consumed"), durable=False, auto_delete=False)
    with conn.channel() as channel:
        queue(channel).declare()
        producer = kombu.Producer(channel, serializer="json")
        producer.publish({"n": 1}, routing_key=queue.name)
        received = []

        def on_message(body, message):
            received.append((body, message.delivery_info.get("routing_key"),
                             message.delivery_info.get("redelivered")))
            message.ack()

        with kombu.Consumer(channel, queues=[queue], callbacks=[on_message], accept=["json"]):
            drain_events_until(conn, lambda: received, 10)
        assert received == [({"n": 1}, queue.name, False)], received
        assert message_count(channel, queue) == 0


@feature
def ack_nack_reject_requeue(conn):
    queue = kombu.Queue(name("requeue"), durable=False, auto_delete=False)
    with conn.channel() as channel:
        queue(channel).declare()
        producer = kombu.Producer(channel, serializer="json")
        producer.publish({"n": 1}, routing_key=queue.name)
        producer.publish({"n": 2}, routing_key=queue.name)
        received = []

        def on_message(body, message):
            redelivered = message.delivery_info.get("redelivered")
            received.append((body["n"], redelivered))
            if body["n"] == 1 and not redelivered:
                message.requeue()  # basic.reject with requeue
            elif body["n"] == 2:
                message.reject()  # basic.reject without requeue: dropped
            else:
                message.ack()

        with kombu.Consumer(channel, queues=[queue], callbacks=[on_message], accept=["json"]):
            drain_events_until(conn, lambda: len(received) >= 3, 20)
        assert sorted(received) == [(1, False), (1, True), (2, False)], received
        assert drain(channel, queue) == []


@feature
def prefetch(conn):
    queue = kombu.Queue(name("prefetch"), durable=False, auto_delete=True)
    with conn.channel() as channel:
        producer = kombu.Producer(channel, serializer="json")
        queue(channel).declare()
        for i in range(3):
            producer.publish(i, routing_key=queue.name)
        got = []
        consumer = kombu.Consumer(channel, queues=[queue], accept=["json"],
                                  callbacks=[lambda body, message: got.append(message)])
        consumer.qos(prefetch_count=1)
        with consumer:
            deadline = time.time() + 2
            while time.time() < deadline:
                try:
                    conn.drain_events(timeout=0.2)
                except TimeoutError:
                    pass
            assert [m.payload for m in got] == [0], [m.payload for m in got]
            got[0].ack()
            drain_events_until(conn, lambda: len(got) >= 2, 5)
            assert [m.payload for m in got] == [0, 1], [m.payload for m in got]
            got[1].ack()


# --- publishing ------------------------------------------------------------


@feature
def publisher_confirms(conn):
    queue = kombu.Queue(name("confirmed"), durable=False, auto_delete=False)
    with conn.channel() as channel:
        queue(channel).declare()
        producer = kombu.Producer(channel, serializer="json")
        for i in range(20):
            producer.publish(i, routing_key=queue.name)  # raises unless acked
        assert message_count(channel, queue) == 20


@feature
def mandatory_returns(conn):
    returned = []
    with conn.channel() as channel:
        producer = kombu.Producer(channel, serializer="json",
                                  on_return=lambda *a: returned.append(a))
        producer.publish("lost", routing_key=name("nowhere"), mandatory=True)
        drain_events_until(conn, lambda: returned, 5)
        assert len(returned) == 1, returned
        exc = returned[0][0]
        assert code_of(exc) == 312, exc


# --- queue arguments -------------------------------------------------------


@feature
def dead_lettering(conn):
    dlx = kombu.Exchange(name("dlx"), type="fanout", durable=False, auto_delete=True)
    dead = kombu.Queue(name("dead"), dlx, durable=False, auto_delete=True)
    work = kombu.Queue(name("work"), durable=False, auto_delete=True,
                       queue_arguments={"x-dead-letter-exchange": dlx.name})
    timed = kombu.Queue(name("timed"), durable=False, auto_delete=True,
                        queue_arguments={"x-dead-letter-exchange": dlx.name,
                                         "x-message-ttl": 100})
    with conn.channel() as channel:
        for q in (dead, work, timed):
            q(channel).declare()
        producer = kombu.Producer(channel, serializer="json")
        producer.publish("rejected", routing_key=work.name)
        wait_get(channel, work).reject()
        message = wait_get(channel, dead)
        (death,) = message.headers["x-death"]
        assert message.payload == "rejected"
        assert (death["reason"], death["queue"], death["count"]) == \
            ("rejected", work.name, 1), death
        message.ack()
        producer.publish("expired", routing_key=timed.name)
        message = wait_get(channel, dead)
        (death,) = message.headers["x-death"]
        assert message.payload == "expired" and death["reason"] == "expired", death
        message.ack()


@feature
def max_length(conn):
    full = kombu.Queue(name("full"), durable=False, auto_delete=True,
                       queue_arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    head = kombu.Queue(name("head"), durable=False, auto_delete=True,
                       queue_arguments={"x-max-length": 1})
    with conn.channel() as channel:
        full(channel).declare()
        head(channel).declare()
        producer = kombu.Producer(channel, serializer="json")
        producer.publish("first", routing_key=full.name)
        try:
            producer.publish("second", routing_key=full.name)
            raise AssertionError("expected a publisher nack")
        except amqp.exceptions.MessageNacked:
            pass
        assert drain(channel, full) == ["first"]
        producer.publish("old", routing_key=head.name)
        producer.publish("new", routing_key=head.name)
        assert drain(channel, head) == ["new"]


@feature
def message_ttl(conn):
    per_queue = kombu.Queue(name("per-queue"), durable=False, auto_delete=False,
                            queue_arguments={"x-message-ttl": 100})
    plain = kombu.Queue(name("plain"), durable=False, auto_delete=False)
    with conn.channel() as channel:
        per_queue(channel).declare()
        plain(channel).declare()
        producer = kombu.Producer(channel, serializer="json")
        producer.publish("short", routing_key=per_queue.name)
        producer.publish("old", routing_key=plain.name, expiration=0.05)
        producer.publish("keep", routing_key=plain.name, expiration=600)
        eventually(lambda: message_count(channel, per_queue), 0)
        eventually(lambda: message_count(channel, plain), 1)
        assert drain(channel, per_queue) == []
        assert drain(channel, plain) == ["keep"]


# --- lifetimes and errors --------------------------------------------------


@feature
def exclusive_queue(conn):
    owned = kombu.Queue(name("owned"), exclusive=True, durable=False)
    with conn.channel() as channel:
        owned(channel).declare()
        with connect() as other, other.channel() as foreign:
            try:
                owned(foreign).queue_declare(passive=True)
                raise AssertionError("expected 405 RESOURCE_LOCKED")
            except other.channel_errors as e:
                assert code_of(e) == 405, e


@feature
def passive_declare_missing_is_404(conn):
    with conn.channel() as channel:
        missing = kombu.Queue(name("missing"), channel=channel)
        try:
            missing.queue_declare(passive=True)
            raise AssertionError("expected 404 NOT_FOUND")
        except conn.channel_errors as e:
            assert code_of(e) == 404, e


@feature
def redeclare_with_other_flags_is_406(conn):
    q = name("q")
    with conn.channel() as channel:
        kombu.Queue(q, durable=False, auto_delete=False)(channel).declare()
    with conn.channel() as channel:
        expect_channel_error(
            conn, 406, lambda: kombu.Queue(q, durable=True, auto_delete=False)(channel).declare())
    x = name("x")
    with conn.channel() as channel:
        kombu.Exchange(x, type="direct", durable=False)(channel).declare()
    with conn.channel() as channel:
        expect_channel_error(
            conn, 406, lambda: kombu.Exchange(x, type="fanout", durable=False)(channel).declare())


@feature
def reserved_names_are_403(conn):
    reserved = "amq.custom-" + SUFFIX
    with conn.channel() as channel:
        expect_channel_error(
            conn, 403, lambda: kombu.Queue(reserved, durable=False)(channel).declare())
    # kombu's Exchange.declare skips amq. names: ask the channel itself.
    with conn.channel() as channel:
        expect_channel_error(
            conn, 403,
            lambda: channel.exchange_declare(reserved, "direct", durable=False,
                                             auto_delete=False))


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
        signal.alarm(FEATURE_TIMEOUT)
        try:
            with connect() as conn:
                fn(conn)
            clean_up()
            signal.alarm(0)
            print("ok", fn.__name__, flush=True)
        except Exception:  # report every feature, not just the first failure
            signal.alarm(0)
            failed.append(fn.__name__)
            print("FAILED", fn.__name__, flush=True)
            traceback.print_exc(file=sys.stdout)
            sys.stdout.flush()
            try:
                clean_up()
            except Exception:
                pass
            DECLARED.clear()
    if failed:
        print("kombu FAILED:", " ".join(failed), flush=True)
        sys.exit(1)
    print("kombu OK", flush=True)


if __name__ == "__main__":
    main()
