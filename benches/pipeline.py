"""A three-stage pipeline's end-to-end throughput and latency: warren's
`aion_stage` against the same stage written with aio-pika
(tests/python/aio_stage.py), on any broker.

usage: python benches/pipeline.py URL {warren|aio-pika} [--stages 3]
           [--prefetch 1] [--messages 5000] [--rate 200] [--latency-messages 2000]
           [--stage-bin target/release/examples/aion_stage]

Queues q0 -> q1 -> ... -> qN (durable, declared here as an operator would),
one stage process per hop (prefetch 1 unless --prefetch, which also lets
a stage process that many at once; persistent, confirmed, ack after send), a pika producer into q0 and a pika consumer on qN:

- throughput: MESSAGES published unconfirmed as fast as pika goes; msg/s is
  MESSAGES over first publish to last arrival (the stages are the
  bottleneck);
- latency: LATENCY_MESSAGES published at RATE msg/s (below capacity);
  end-to-end latency is arrival time minus the publish time in the body.

Prints one JSON object. Needs pika and aio-pika (tests/python/requirements.txt).
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pika

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


class Sink(threading.Thread):
    """Consumes the last queue, recording (arrival, sent_at, phase)."""

    def __init__(self, url, queue):
        super().__init__(daemon=True)
        self.url, self.queue = url, queue
        self.arrivals = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.stop = False

    def run(self):
        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        channel = connection.channel()
        channel.basic_qos(prefetch_count=500)

        def on_message(ch, method, props, body):
            now = time.time()
            obj = json.loads(body)
            with self.lock:
                self.arrivals.append((now, obj["sent_at"], obj["phase"]))
            ch.basic_ack(method.delivery_tag)

        channel.basic_consume(self.queue, on_message)
        self.ready.set()
        while not self.stop:
            connection.process_data_events(time_limit=0.1)
        connection.close()

    def count(self, phase):
        with self.lock:
            return sum(1 for a in self.arrivals if a[2] == phase)

    def phase(self, name):
        with self.lock:
            return [a for a in self.arrivals if a[2] == name]


def wait_for(predicate, limit, what):
    deadline = time.time() + limit
    while not predicate():
        if time.time() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.05)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("impl", choices=["warren", "aio-pika"])
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--prefetch", type=int, default=1)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--latency-messages", type=int, default=2000)
    parser.add_argument(
        "--stage-bin", default=os.path.join(REPO, "target/release/examples/aion_stage")
    )
    args = parser.parse_args()

    run = uuid.uuid4().hex[:8]
    queues = [f"bench-{run}-q{i}" for i in range(args.stages + 1)]
    connection = pika.BlockingConnection(pika.URLParameters(args.url))
    channel = connection.channel()
    for q in queues:
        channel.queue_declare(q, durable=True)

    stages = []
    for i in range(args.stages):
        env = dict(os.environ)
        env.pop("TRANSPORT_URL", None)
        env.update(
            RABBITMQ_URL=args.url,
            QUEUE_ORIGIN=queues[i],
            QUEUE_TO=queues[i + 1],
            STAGE_NAME=f"s{i}",
            QUEUE_PREFETCH=str(args.prefetch),
            RUST_LOG="warn",
        )
        if args.impl == "warren":
            command = [args.stage_bin]
        else:
            command = [sys.executable, os.path.join(REPO, "tests/python/aio_stage.py")]
        stages.append(subprocess.Popen(command, env=env))

    def consumers(q):
        return channel.queue_declare(q, passive=True).method.consumer_count

    try:
        for q in queues[:-1]:
            wait_for(lambda: consumers(q) > 0, 60, f"a stage on {q}")
        sink = Sink(args.url, queues[-1])
        sink.start()
        sink.ready.wait(30)
        props = pika.BasicProperties(content_type="application/json", delivery_mode=2)

        def message(i, phase):
            return json.dumps(
                {"id": i, "phase": phase, "sent_at": time.time(), "source": "bench"}
            )

        # Throughput: as fast as the producer goes, unconfirmed.
        start = time.time()
        for i in range(args.messages):
            channel.basic_publish("", queues[0], message(i, "throughput"), props)
        published = time.time()
        wait_for(lambda: sink.count("throughput") >= args.messages, 600, "the throughput phase")
        arrivals = sink.phase("throughput")
        last = max(a[0] for a in arrivals)
        throughput = args.messages / (last - start)
        saturated = sorted(a[0] - a[1] for a in arrivals)

        # Latency at a fixed rate, each publish at its intended time.
        period = 1.0 / args.rate
        begin = time.time()
        for i in range(args.latency_messages):
            due = begin + i * period
            pause = due - time.time()
            if pause > 0:
                time.sleep(pause)
            channel.basic_publish("", queues[0], message(i, "latency"), props)
            connection.process_data_events(time_limit=0)
        wait_for(
            lambda: sink.count("latency") >= args.latency_messages, 600, "the latency phase"
        )
        latencies = sorted(a[0] - a[1] for a in sink.phase("latency"))
        sink.stop = True
        ms = lambda v: None if v is None else round(v * 1000.0, 2)
        print(
            json.dumps(
                {
                    "impl": args.impl,
                    "url": args.url.split("@")[-1],
                    "stages": args.stages,
                    "prefetch": args.prefetch,
                    "messages": args.messages,
                    "publish_msg_per_s": round(args.messages / (published - start), 1),
                    "throughput_msg_per_s": round(throughput, 1),
                    "saturated_p50_ms": ms(percentile(saturated, 50)),
                    "saturated_p99_ms": ms(percentile(saturated, 99)),
                    "rate": args.rate,
                    "latency_messages": args.latency_messages,
                    "p50_ms": ms(percentile(latencies, 50)),
                    "p99_ms": ms(percentile(latencies, 99)),
                    "max_ms": ms(latencies[-1] if latencies else None),
                }
            )
        )
    finally:
        for stage in stages:
            stage.send_signal(signal.SIGTERM)
        for stage in stages:
            try:
                stage.wait(30)
            except subprocess.TimeoutExpired:
                stage.kill()
        for q in queues:
            channel.queue_delete(q)
        connection.close()


if __name__ == "__main__":
    main()
