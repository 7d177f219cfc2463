"""Another Kafka client for the interop test: Confluent's Python client (librdkafka wheel).

    kafka_peer.py produce BOOTSTRAP TOPIC KEY PAYLOAD [NAME=HEX ...]
    kafka_peer.py consume BOOTSTRAP TOPIC GROUP COUNT

`consume` prints one JSON object per message: key, value and headers as hex strings.
"""
import json
import sys

from confluent_kafka import Consumer, Producer


def produce(bootstrap, topic, key, payload, *headers):
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    pairs = [(h.split("=", 1)[0], bytes.fromhex(h.split("=", 1)[1])) for h in headers]
    failures = []
    producer.produce(topic, key=key.encode(), value=payload.encode(), headers=pairs,
                     on_delivery=lambda err, _msg: err and failures.append(err))
    if producer.flush(30) != 0 or failures:
        sys.exit(f"delivery failed: {failures}")


def consume(bootstrap, topic, group, count):
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        # Tansu waits the whole fetch wait even when data is there (KAFKA_BROKER.md).
        "fetch.wait.max.ms": 10,
    })
    consumer.subscribe([topic])
    seen = 0
    while seen < int(count):
        msg = consumer.poll(30)
        if msg is None:
            sys.exit("no message within 30 s")
        if msg.error():
            sys.exit(f"consume failed: {msg.error()}")
        print(json.dumps({
            "key": (msg.key() or b"").hex(),
            "value": (msg.value() or b"").hex(),
            "headers": [[k, (v or b"").hex()] for k, v in (msg.headers() or [])],
        }), flush=True)
        seen += 1
    consumer.close()


if __name__ == "__main__":
    {"produce": produce, "consume": consume}[sys.argv[1]](*sys.argv[2:])
