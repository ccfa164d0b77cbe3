"""kombu (the client under oslo.messaging) against an AMQP broker: topic
routing, publish with confirms, consume with acks, requeue on reject, TTL and
a 404 on a passive declare. Usage: kombu_smoke.py AMQP_URL SUFFIX"""
import sys
import time

import kombu

url, suffix = sys.argv[1], sys.argv[2]
received = []

with kombu.Connection(url, transport_options={"confirm_publish": True}) as conn:
    exchange = kombu.Exchange("kombu-topic-" + suffix, type="topic", durable=False)
    queue = kombu.Queue("kombu-q-" + suffix, exchange, routing_key="jobs.#", durable=False,
                        queue_arguments={"x-message-ttl": 60000})
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

    with conn.channel() as channel:
        missing = kombu.Queue("kombu-missing-" + suffix, channel=channel)
        try:
            missing.queue_declare(passive=True)
            raise SystemExit("expected 404 NOT_FOUND")
        except conn.channel_errors as e:
            assert getattr(e, "code", getattr(e, "reply_code", None)) == 404, e

print("kombu OK")
