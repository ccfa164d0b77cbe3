"""Builds one topology with pika and holds it (connection, channels,
consumer, an unacknowledged get) until stdin closes, so that `warren ctl`
and `rabbitmqctl` can list the same state on warren and on RabbitMQ.

Usage: ctl_state.py AMQP_URL; prints "ready" once everything is declared.
"""

import sys

import pika

url = sys.argv[1]
connection = pika.BlockingConnection(pika.URLParameters(url))
ch = connection.channel()
ch.exchange_declare("dlx", "fanout", durable=True)
ch.exchange_declare("edge", "topic", durable=True)
ch.exchange_declare("hx", "headers", arguments={"alternate-exchange": "edge"})
# Arguments in key order: RabbitMQ lists them as sent, warren sorted.
ch.queue_declare(
    "work", durable=True, arguments={"x-dead-letter-exchange": "dlx", "x-max-length": 10}
)
ch.queue_declare("temp", auto_delete=True)
ch.queue_bind("work", "edge", "results.#")
ch.queue_bind("temp", "hx", "", arguments={"k": "v", "x-match": "any"})
ch.exchange_bind("hx", "edge", "audit.*")
for body in (b"a", b"bb", b"ccc"):
    ch.basic_publish("", "work", body)
# One delivery held unacknowledged.
method, _, _ = ch.basic_get("work", auto_ack=False)
assert method is not None
ch.basic_qos(prefetch_count=5)
ch.basic_consume("temp", lambda *a: None, consumer_tag="ctag-1")
confirming = connection.channel()
confirming.confirm_delivery()
print("ready", flush=True)
sys.stdin.read()
connection.close()
