#!/usr/bin/env bash
# Make sure what the tests need is on this machine and running: PostgreSQL and RabbitMQ
# (started if down), and the Debian packages the VM tests use.
set -euo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432; }
if ! pg_up; then
    echo "services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
    for _ in $(seq 1 30); do pg_up && break; sleep 1; done
fi
pg_up || { echo "services: PostgreSQL is not answering on 127.0.0.1:5432" >&2; exit 1; }

rabbit_listening() { timeout 5 bash -c '</dev/tcp/127.0.0.1/5672' 2>/dev/null; }
# Up means answering the AMQP protocol header, not just accepting TCP: a wedged broker accepts
# connections and never answers, and every test would then hang until its timeout.
rabbit_up() {
    timeout 10 python3 -c 'import socket; s = socket.create_connection(("127.0.0.1", 5672), 5); s.settimeout(8); s.sendall(b"AMQP\x00\x00\x09\x01"); assert s.recv(8)' 2>/dev/null
}
if rabbit_listening && ! rabbit_up; then
    echo "services: RabbitMQ accepts connections but does not answer; restarting it"
    timeout 60 rabbitmqctl stop >/dev/null 2>&1 || pkill -9 -f 'beam.smp.*rabbit' || true
    for _ in $(seq 1 30); do rabbit_listening || break; sleep 1; done
fi
if ! rabbit_up; then
    echo "services: starting RabbitMQ"
    rabbitmq-server -detached
    for _ in $(seq 1 60); do rabbit_up && break; sleep 1; done
fi
rabbit_up || { echo "services: RabbitMQ is not answering on 127.0.0.1:5672" >&2; exit 1; }
echo "services: PostgreSQL and RabbitMQ are up"
