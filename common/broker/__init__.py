"""The message broker interface: RabbitMQ in multi-host mode, an in-process queue standalone.

Both implementations offer the same topology, named from a prefix (default `solstice`):
- `<prefix>.runs`: run requests (a priority queue; default-branch pushes first);
- `<prefix>.jobs.<label>`: job requests, one queue per `runs_on` label;
- `<prefix>.events`: a topic exchange of job events, routing keys `job.<state>`;
- `<prefix>.logs`: a transient topic exchange of live log lines, routing key `<job_id>`;
- `<prefix>.dead`: the dead-letter queue, each message with an `x-solstice-reason` header.
A publish returns only once the broker confirmed it (persistent delivery).
"""
from common.broker.base import Broker, Delivery, Handler, Subscription

__all__ = ["Broker", "Delivery", "Handler", "Subscription"]
