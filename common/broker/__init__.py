"""The message broker interface: RabbitMQ in multi-host mode, an in-process queue standalone.

Both implementations offer the same topology, named from a prefix (default `solstice`):
- `<prefix>.runs`: run requests (a priority queue; default-branch pushes first);
- `<prefix>.jobs.<label>`: job requests, one queue per `runs_on` label;
- `<prefix>.events`: a topic exchange of job events, routing keys `job.<state>`, consumed
  through named queues `<prefix>.events.<name>`;
- `<prefix>.logs`: a transient topic exchange of live log lines, routing key `<job_id>`;
- `<prefix>.dead`: the dead-letter queue, each message with an `x-solstice-reason` header.
A publish returns only once the broker confirmed it (persistent delivery).

`open_broker(url)` picks the implementation: RabbitMQ for an `amqp://` URL, the in-process
broker for none.
"""
from common.broker.base import (
    MAX_PRIORITY,
    REASON_HEADER,
    SOURCE_HEADER,
    Broker,
    BrokerError,
    Delivery,
    Handler,
    LogHandler,
    Subscription,
)
from common.broker.memory import MemoryBroker

__all__ = ["MAX_PRIORITY", "REASON_HEADER", "SOURCE_HEADER", "Broker", "BrokerError", "Delivery",
           "Handler", "LogHandler", "MemoryBroker", "Subscription", "open_broker"]


def open_broker(url: str | None, prefix: str = "solstice") -> Broker:
    """The broker for `url` (unconnected): `AmqpBroker` for amqp(s)://, else `MemoryBroker`."""
    if not url:
        return MemoryBroker(prefix)
    if not url.startswith(("amqp://", "amqps://")):
        raise BrokerError(f"unsupported broker URL scheme in {url.split('://', 1)[0]}://...",
                          hint="use amqp://user:password@host:5672/vhost, or no URL for standalone")
    # Imported here: aio-pika is only loaded in multi-host mode.
    from common.broker.amqp import AmqpBroker

    return AmqpBroker(url, prefix)
