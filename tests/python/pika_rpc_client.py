"""A plain AMQP RPC client in the RabbitMQ tutorial's style (reply_to +
correlation_id), calling a warren server with pika.

usage: pika_rpc_client.py URL TOPIC A B [--no-content-type]
Prints the result of add(A, B) as JSON on stdout.
"""
import json
import sys
import uuid

import pika


def main():
    url, topic, a, b = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    with_content_type = "--no-content-type" not in sys.argv
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    reply_queue = channel.queue_declare(queue="", exclusive=True).method.queue
    correlation_id = str(uuid.uuid4())
    replies = []

    def on_reply(ch, method, props, body):
        if props.correlation_id == correlation_id:
            replies.append(body)

    channel.basic_consume(queue=reply_queue, on_message_callback=on_reply, auto_ack=True)
    body = json.dumps({"method": "add", "args": {"a": a, "b": b}})
    channel.basic_publish(
        exchange="",
        routing_key=topic,
        properties=pika.BasicProperties(
            reply_to=reply_queue,
            correlation_id=correlation_id,
            content_type="application/json" if with_content_type else None,
        ),
        body=body,
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
    print(json.dumps(message["result"]))
    connection.close()


if __name__ == "__main__":
    main()
