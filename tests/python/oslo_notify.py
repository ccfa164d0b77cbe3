"""oslo.messaging's notifier: sends one notification per priority given.

usage: oslo_notify.py URL EXCHANGE TOPIC PRIORITY...
"""
import sys

from oslo_config import cfg
import oslo_messaging as messaging


def main():
    url, exchange, topic = sys.argv[1:4]
    messaging.set_transport_defaults(control_exchange=exchange)
    transport = messaging.get_notification_transport(cfg.CONF, url=url)
    notifier = messaging.Notifier(transport, publisher_id="compute.host1",
                                  driver="messagingv2", topics=[topic])
    ctxt = {"user_id": "u1", "request_id": "req-1"}
    for priority in sys.argv[4:]:
        getattr(notifier, priority)(ctxt, "compute.instance.create.end",
                                    {"id": 1, "priority": priority})
    transport.cleanup()


if __name__ == "__main__":
    main()
