"""The edge pipeline's producer: publishes JSON objects into a queue with
pika, persistent, with publisher confirms, as the platforms' services do.

usage: pika_json_producer.py URL QUEUE COUNT [--pad BYTES]
       pika_json_producer.py URL QUEUE --raw BODY [--content-type TYPE]

Each object is {"id": i, "source": "pika", "sent_at": <unix seconds>,
"pad": "x" * BYTES}; --raw sends BODY as it is (bad input). Prints the
number of messages the broker confirmed.
"""
import json
import sys
import time

import pika


def main():
    url, queue = sys.argv[1], sys.argv[2]
    args = sys.argv[3:]
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()
    if args[0] == "--raw":
        body = args[1].encode()
        content_type = "application/json"
        if "--content-type" in args:
            content_type = args[args.index("--content-type") + 1]
        properties = pika.BasicProperties(content_type=content_type, delivery_mode=2)
        channel.basic_publish("", queue, body, properties, mandatory=True)
        print(1)
        connection.close()
        return
    count = int(args[0])
    pad = 0
    if "--pad" in args:
        pad = int(args[args.index("--pad") + 1])
    properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)
    for i in range(count):
        body = json.dumps(
            {"id": i, "source": "pika", "sent_at": time.time(), "pad": "x" * pad}
        )
        channel.basic_publish("", queue, body, properties, mandatory=True)
    print(count)
    connection.close()


if __name__ == "__main__":
    main()
