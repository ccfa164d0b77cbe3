"""The edge pipeline's stage written with aio-pika: what examples/aion_stage.rs
does, for the benchmark's comparison (benches/pipeline.py).

Reads JSON objects from QUEUE_ORIGIN (prefetch QUEUE_PREFETCH, default 1), adds
"processed_by_<STAGE_NAME>", publishes the result persistent with publisher
confirms to each queue of QUEUE_TO, then acknowledges. Declares nothing
(passive checks). RABBITMQ_URL names the broker.
"""
import asyncio
import json
import os
import signal
import time

import aio_pika


async def main():
    url = os.environ["RABBITMQ_URL"]
    origin = os.environ["QUEUE_ORIGIN"]
    to = [q.strip() for q in os.environ.get("QUEUE_TO", "").split(",") if q.strip()]
    name = os.environ.get("STAGE_NAME") or origin
    field = f"processed_by_{name}"
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=int(os.environ.get("QUEUE_PREFETCH") or 1))
    queue = await channel.get_queue(origin, ensure=True)
    for q in to:
        await channel.get_queue(q, ensure=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def handle(message):
        obj = json.loads(message.body)
        obj[field] = {"stage": "aio_stage", "at_ms": int(time.time() * 1000)}
        body = json.dumps(obj).encode()
        for q in to:
            await channel.default_exchange.publish(
                aio_pika.Message(
                    body,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=q,
                mandatory=True,
            )
        await message.ack()

    await queue.consume(handle)
    await stop.wait()
    await connection.close()


if __name__ == "__main__":
    asyncio.run(main())
