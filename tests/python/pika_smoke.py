"""pika smoke test against the warren broker. Usage: pika_smoke.py AMQP_URL"""
import sys
import pika

params = pika.URLParameters(sys.argv[1])
conn = pika.BlockingConnection(params)
ch = conn.channel()
q = ch.queue_declare(queue="", exclusive=True).method.queue
assert q.startswith("amq.gen-"), q
ch.confirm_delivery()
ch.exchange_declare("pika-topic", exchange_type="topic")
ch.queue_bind(q, "pika-topic", routing_key="a.#")
ch.basic_publish("pika-topic", "a.b.c", b"hello", pika.BasicProperties(correlation_id="c1"))
try:
    ch.basic_publish("pika-topic", "zzz", b"lost", mandatory=True)
    raise SystemExit("expected UnroutableError")
except pika.exceptions.UnroutableError:
    pass
method, props, body = None, None, None
for _ in range(100):
    method, props, body = ch.basic_get(q, auto_ack=False)
    if method:
        break
assert body == b"hello", body
assert props.correlation_id == "c1"
ch.basic_nack(method.delivery_tag, requeue=True)
method, props, body = ch.basic_get(q, auto_ack=True)
assert method.redelivered and body == b"hello"
# passive declare of a missing queue closes the channel with 404
try:
    ch.queue_declare("missing-queue", passive=True)
    raise SystemExit("expected 404")
except pika.exceptions.ChannelClosedByBroker as e:
    assert e.reply_code == 404, e
ch = conn.channel()
ch.basic_qos(prefetch_count=1)
ch.queue_declare("pika-work")
for i in range(3):
    ch.basic_publish("", "pika-work", str(i).encode())
got = []
for method, props, body in ch.consume("pika-work", inactivity_timeout=5):
    assert method is not None, "timed out"
    got.append(body)
    ch.basic_ack(method.delivery_tag)
    if len(got) == 3:
        break
ch.cancel()
assert got == [b"0", b"1", b"2"], got
conn.close()
# wrong password
bad = pika.URLParameters(sys.argv[1].replace("guest:guest", "guest:nope"))
try:
    pika.BlockingConnection(bad)
    raise SystemExit("expected auth failure")
except pika.exceptions.ProbableAuthenticationError:
    pass
except pika.exceptions.AMQPConnectionError:
    pass
print("pika OK")
