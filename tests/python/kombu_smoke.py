"""kombu (the client under oslo.messaging) against an AMQP broker, one
function per feature: topic, direct, fanout and headers routing, publish with
confirms, consume with acks and prefetch, requeue on reject, TTL,
dead-lettering with x-death, reject-publish nacks, mandatory returns, an
exclusive queue's 405 and a passive declare's 404. Every name carries SUFFIX.

Usage: kombu_smoke.py AMQP_URL SUFFIX

Prints "ok <feature>" per passed feature, then "kombu OK".
"""
import sys
import time
import traceback

import amqp
import kombu

url, suffix = sys.argv[1], sys.argv[2]
FEATURES = []


def feature(fn):
    FEATURES.append(fn)
    return fn


DECLARED = []  # names this feature used, deleted after it


def name(kind):
    full = "kombu-%s-%s" % (kind, suffix)
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
    return kombu.Connection(url, transport_options={"confirm_publish": True, **options})


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


@feature
def topic_routing_and_requeue(conn):
    received = []
    exchange = kombu.Exchange(name("topic"), type="topic", durable=False, auto_delete=True)
    queue = kombu.Queue(name("topic-q"), exchange, routing_key="jobs.#", durable=False,
                        auto_delete=True, queue_arguments={"x-message-ttl": 60000})
    with conn.channel() as channel:
        producer = kombu.Producer(channel, exchange=exchange, serializer="json")
        producer.publish({"n": 1}, routing_key="jobs.a", declare=[queue])
        producer.publish({"n": 2}, routing_key="jobs.b.c")
        producer.publish({"n": 3}, routing_key="other")  # not bound: dropped

        rejected = []

        def on_message(body, message):
            if body["n"] == 1 and not rejected:
                rejected.append(body)
                message.requeue()
                return
            received.append((body["n"], message.delivery_info.get("redelivered")))
            message.ack()

        with kombu.Consumer(channel, queues=[queue], callbacks=[on_message], accept=["json"]):
            deadline = time.time() + 20
            while len(received) < 2 and time.time() < deadline:
                try:
                    conn.drain_events(timeout=1)
                except TimeoutError:
                    pass
        assert sorted(received) == [(1, True), (2, False)], received


@feature
def direct_fanout_headers_routing(conn):
    with conn.channel() as channel:
        direct = kombu.Exchange(name("direct"), type="direct", durable=False, auto_delete=True)
        fanout = kombu.Exchange(name("fanout"), type="fanout", durable=False, auto_delete=True)
        headers = kombu.Exchange(name("headers"), type="headers", durable=False,
                                 auto_delete=True)
        qa = kombu.Queue(name("d-a"), direct, routing_key="a", durable=False, auto_delete=True)
        qf1 = kombu.Queue(name("f-1"), fanout, durable=False, auto_delete=True)
        qf2 = kombu.Queue(name("f-2"), fanout, durable=False, auto_delete=True)
        qh = kombu.Queue(name("h"), headers, durable=False, auto_delete=True,
                         binding_arguments={"x-match": "any", "kind": "pdf", "size": "big"})
        for q in (qa, qf1, qf2, qh):
            q(channel).declare()
        producer = kombu.Producer(channel, serializer="json")
        producer.publish("to-a", exchange=direct, routing_key="a")
        producer.publish("to-b", exchange=direct, routing_key="b")
        producer.publish("all", exchange=fanout, routing_key="ignored")
        producer.publish("pdf", exchange=headers, headers={"kind": "pdf"})
        producer.publish("txt", exchange=headers, headers={"kind": "txt"})
        assert drain(channel, qa) == ["to-a"]
        assert drain(channel, qf1) == ["all"] and drain(channel, qf2) == ["all"]
        assert drain(channel, qh) == ["pdf"]


@feature
def prefetch_bounds_deliveries(conn):
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
            deadline = time.time() + 5
            while len(got) < 2 and time.time() < deadline:
                try:
                    conn.drain_events(timeout=0.2)
                except TimeoutError:
                    pass
            assert [m.payload for m in got] == [0, 1], [m.payload for m in got]
            got[1].ack()


@feature
def ttl_and_dead_lettering(conn):
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
def confirms_nacks_and_returns(conn):
    full = kombu.Queue(name("full"), durable=False, auto_delete=True,
                       queue_arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    returned = []
    with conn.channel() as channel:
        full(channel).declare()
        producer = kombu.Producer(channel, serializer="json",
                                  on_return=lambda *a: returned.append(a))
        producer.publish("first", routing_key=full.name)
        try:
            producer.publish("second", routing_key=full.name)
            raise AssertionError("expected a publisher nack")
        except amqp.exceptions.MessageNacked:
            pass
        assert drain(channel, full) == ["first"]
        producer.publish("lost", routing_key=name("nowhere"), mandatory=True)
        deadline = time.time() + 5
        while not returned and time.time() < deadline:
            try:
                conn.drain_events(timeout=0.2)
            except TimeoutError:
                pass
        assert len(returned) == 1, returned
        exc = returned[0][0]
        assert code_of(exc) == 312, exc


@feature
def channel_errors_have_their_codes(conn):
    with conn.channel() as channel:
        missing = kombu.Queue(name("missing"), channel=channel)
        try:
            missing.queue_declare(passive=True)
            raise AssertionError("expected 404 NOT_FOUND")
        except conn.channel_errors as e:
            assert code_of(e) == 404, e
    owned = kombu.Queue(name("owned"), exclusive=True, durable=False)
    with conn.channel() as channel:
        owned(channel).declare()
        with connect() as other, other.channel() as foreign:
            try:
                owned(foreign).queue_declare(passive=True)
                raise AssertionError("expected 405 RESOURCE_LOCKED")
            except other.channel_errors as e:
                assert code_of(e) == 405, e


def main():
    failed = []
    for fn in FEATURES:
        try:
            with connect() as conn:
                fn(conn)
            clean_up()
            print("ok", fn.__name__, flush=True)
        except Exception:
            failed.append(fn.__name__)
            print("FAILED", fn.__name__, flush=True)
            traceback.print_exc(file=sys.stdout)
            sys.stdout.flush()
    if failed:
        print("kombu FAILED:", " ".join(failed), flush=True)
        sys.exit(1)
    print("kombu OK", flush=True)


if __name__ == "__main__":
    main()
