"""pika over TLS: a plain AMQP RPC client in the RabbitMQ tutorial's style
(reply_to + correlation_id) calling a warren server's add(a, b), with the
server's CA and, for mutual TLS, a client certificate logging in with
EXTERNAL.

usage: pika_tls_client.py HOST PORT TOPIC A B CA_FILE [CERT_FILE KEY_FILE]
Prints the result as JSON on stdout.
"""
import json
import ssl
import sys
import uuid

import pika


def main():
    host, port, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    a, b, ca = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    context = ssl.create_default_context(cafile=ca)
    credentials = pika.PlainCredentials("guest", "guest")
    if len(sys.argv) > 8:
        context.load_cert_chain(sys.argv[7], sys.argv[8])
        credentials = pika.credentials.ExternalCredentials()
    parameters = pika.ConnectionParameters(
        host=host,
        port=port,
        credentials=credentials,
        ssl_options=pika.SSLOptions(context, server_hostname=host),
    )
    connection = pika.BlockingConnection(parameters)
    channel = connection.channel()
    reply_queue = channel.queue_declare(queue="", exclusive=True).method.queue
    correlation_id = str(uuid.uuid4())
    replies = []

    def on_reply(ch, method, props, body):
        if props.correlation_id == correlation_id:
            replies.append(body)

    channel.basic_consume(queue=reply_queue, on_message_callback=on_reply, auto_ack=True)
    channel.basic_publish(
        exchange="",
        routing_key=topic,
        properties=pika.BasicProperties(
            reply_to=reply_queue,
            correlation_id=correlation_id,
            content_type="application/json",
        ),
        body=json.dumps({"method": "add", "args": {"a": a, "b": b}}),
    )
    deadline = 30
    while not replies and deadline > 0:
        connection.process_data_events(time_limit=1)
        deadline -= 1
    if not replies:
        print("no reply", file=sys.stderr)
        sys.exit(1)
    envelope = json.loads(replies[0])
    message = json.loads(envelope["oslo.message"]) if "oslo.message" in envelope else envelope
    if message.get("failure"):
        print("failure: " + message["failure"], file=sys.stderr)
        sys.exit(1)
    print(json.dumps(message["result"]), flush=True)
    connection.close()


if __name__ == "__main__":
    main()
