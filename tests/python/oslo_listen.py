"""oslo.messaging's notification listener: prints each notification as a
JSON line until COUNT have arrived.

usage: oslo_listen.py URL EXCHANGE TOPIC COUNT
Prints "ready" once listening.
"""
import json
import sys
import threading

from oslo_config import cfg
import oslo_messaging as messaging


# The threading executor handles the priorities' queues on several threads,
# and print() writes the text and the newline separately: two notifications
# at once would share a line. One lock, one write per line.
_stdout_lock = threading.Lock()


def emit(obj):
    with _stdout_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


class Endpoint(object):
    def __init__(self, count, done):
        self.left = count
        self.done = done

    def _record(self, priority, ctxt, publisher_id, event_type, payload, metadata):
        emit({"priority": priority, "publisher_id": publisher_id,
              "event_type": event_type, "payload": payload,
              "user_id": ctxt.get("user_id")})
        with _stdout_lock:
            self.left -= 1
            if self.left <= 0:
                self.done.set()
        return messaging.NotificationResult.HANDLED

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        return self._record("info", ctxt, publisher_id, event_type, payload, metadata)

    def error(self, ctxt, publisher_id, event_type, payload, metadata):
        return self._record("error", ctxt, publisher_id, event_type, payload, metadata)


def main():
    url, exchange, topic, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    transport = messaging.get_notification_transport(cfg.CONF, url=url)
    done = threading.Event()
    targets = [messaging.Target(topic=topic, exchange=exchange)]
    listener = messaging.get_notification_listener(
        transport, targets, [Endpoint(count, done)], executor="threading")
    listener.start()
    print("ready", flush=True)
    done.wait(60)
    listener.stop()
    listener.wait()


if __name__ == "__main__":
    main()
