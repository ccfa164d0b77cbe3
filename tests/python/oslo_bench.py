"""oslo.messaging's own RPC speed, for BENCHMARKS.md: a server and a client
in one process (threading executor), `health_check` calls for SECONDS with
THREADS callers.

usage: oslo_bench.py URL SECONDS THREADS
"""
import sys
import threading
import time
import uuid

from oslo_config import cfg
import oslo_messaging as messaging


class Endpoint(object):
    def health_check(self, ctxt, seqid, host, req):
        return (seqid, "bench", "I'm fine!")


def main():
    url, seconds, threads = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    topic = "oslo_bench_" + uuid.uuid4().hex[:8]
    transport = messaging.get_rpc_transport(cfg.CONF, url=url)
    server = messaging.get_rpc_server(
        transport, messaging.Target(topic=topic, server="s1", exchange="bench"),
        [Endpoint()], executor="threading")
    server.start()
    client = messaging.get_rpc_client(
        transport, messaging.Target(topic=topic, exchange="bench"), timeout=30)
    client.call({}, "health_check", seqid=0, host="warm", req="up")
    latencies = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def caller():
        mine = []
        while time.monotonic() < deadline:
            t = time.monotonic()
            client.call({}, "health_check", seqid=1, host="bench", req="How are you?")
            mine.append(time.monotonic() - t)
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=caller) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    latencies.sort()
    n = len(latencies)
    print("oslo.messaging threads=%d calls=%d calls/s=%.0f p50_us=%.0f p99_us=%.0f" % (
        threads, n, n / seconds, latencies[n // 2] * 1e6, latencies[min(n - 1, n * 99 // 100)] * 1e6))
    server.stop()
    server.wait()
    transport.cleanup()


if __name__ == "__main__":
    main()
