"""Another AMQP client for the interop test: pika, publishing and answering as a foreign client does.

    amqp_peer.py publish URL TOPIC ID:PAYLOAD [ID:PAYLOAD ...]
    amqp_peer.py publish-odd-headers URL TOPIC
    amqp_peer.py bind URL QUEUE TOPIC
    amqp_peer.py get URL QUEUE
    amqp_peer.py count URL QUEUE
    amqp_peer.py delete URL QUEUE
    amqp_peer.py request URL TOPIC BODY
    amqp_peer.py respond URL TOPIC

`publish` sends each message, persistent and confirmed, to anybus's events exchange with TOPIC
as routing key; ID is the AMQP `message-id` as it is, or `-` for a message without one.
`publish-odd-headers` sends one message whose headers anybus has no plain form for: a nested
table, decimals and a void value. `bind` declares a durable QUEUE bound to the events exchange
by TOPIC, as earlier versions of anybus declared a group's queue; `get` waits for one message in
QUEUE and prints its properties and body as JSON; `count` prints how many messages QUEUE holds;
`delete` deletes it.

`request` and `respond` are AMQP RPC as the RabbitMQ tutorial writes it. `request` publishes BODY
to TOPIC with `reply_to` naming its own exclusive callback queue and a fresh `correlation_id`,
waits for the answer, and prints it as JSON. `respond` binds a queue of its own to TOPIC, prints
`ready`, answers one request by publishing `{"doubled": 2 * n}` to the default exchange with the
request's `reply_to` as routing key and its `correlation_id`, and prints the request as JSON.
Both give up after PATIENCE seconds.
"""
import decimal
import json
import sys
import uuid

import pika

EVENTS_EXCHANGE = "anybus"
PATIENCE = 30


def connect(url):
    connection = pika.BlockingConnection(pika.URLParameters(url))
    return connection, connection.channel()


def text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def described(properties, body):
    return {
        "content_type": properties.content_type,
        "content_encoding": properties.content_encoding,
        "correlation_id": properties.correlation_id,
        "reply_to": properties.reply_to,
        "message_id": properties.message_id,
        "headers": {k: text(v) for k, v in (properties.headers or {}).items()},
        "body": body.decode("utf-8", "replace"),
    }


def publish(url, topic, *messages):
    connection, channel = connect(url)
    channel.confirm_delivery()
    for message in messages:
        message_id, payload = message.split(":", 1)
        properties = pika.BasicProperties(
            delivery_mode=2, message_id=None if message_id == "-" else message_id)
        # Raises if the broker does not confirm, or returns the message as unroutable.
        channel.basic_publish(EVENTS_EXCHANGE, topic, payload.encode(), properties, mandatory=True)
    connection.close()


def publish_odd_headers(url, topic):
    connection, channel = connect(url)
    channel.confirm_delivery()
    headers = {
        "nested": {"a": 1, "b": "x", "list": [1, "two"], "inner": {"none": None}},
        "price": decimal.Decimal("1.50"),
        "debt": decimal.Decimal("-2.5"),
        "nothing": None,
        "plain": "yes",
    }
    properties = pika.BasicProperties(delivery_mode=2, message_id="odd-1", headers=headers)
    channel.basic_publish(EVENTS_EXCHANGE, topic, b"odd", properties, mandatory=True)
    connection.close()


def bind(url, queue, topic):
    connection, channel = connect(url)
    channel.queue_declare(queue, durable=True)
    channel.queue_bind(queue, EVENTS_EXCHANGE, routing_key=topic)
    connection.close()


def get(url, queue):
    connection, channel = connect(url)
    for method, properties, body in channel.consume(queue, inactivity_timeout=PATIENCE):
        if method is None:
            sys.exit(f"nothing arrived in {queue} within {PATIENCE}s")
        channel.basic_ack(method.delivery_tag)
        print(json.dumps(described(properties, body)))
        break
    channel.cancel()
    connection.close()


def count(url, queue):
    connection, channel = connect(url)
    print(channel.queue_declare(queue, passive=True).method.message_count)
    connection.close()


def delete(url, queue):
    connection, channel = connect(url)
    channel.queue_delete(queue)
    connection.close()


def request(url, topic, body):
    connection, channel = connect(url)
    callback = channel.queue_declare("", exclusive=True).method.queue
    correlation_id = str(uuid.uuid4())
    channel.confirm_delivery()
    properties = pika.BasicProperties(
        reply_to=callback, correlation_id=correlation_id, content_type="application/json")
    channel.basic_publish(EVENTS_EXCHANGE, topic, body.encode(), properties, mandatory=True)
    answer = {"sent_correlation_id": correlation_id, "timeout": True}
    for method, properties, reply in channel.consume(
            callback, auto_ack=True, inactivity_timeout=PATIENCE):
        if method is None:
            break
        if properties.correlation_id == correlation_id:
            answer.update(described(properties, reply), timeout=False)
            break
    channel.cancel()
    connection.close()
    print(json.dumps(answer))


def respond(url, topic):
    connection, channel = connect(url)
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, EVENTS_EXCHANGE, routing_key=topic)
    channel.confirm_delivery()
    print("ready", flush=True)
    for method, properties, body in channel.consume(queue, inactivity_timeout=PATIENCE):
        if method is None:
            sys.exit(f"no request arrived on {topic} within {PATIENCE}s")
        seen = described(properties, body)
        if properties.reply_to:
            answer = json.dumps({"doubled": 2 * json.loads(body)["n"]}).encode()
            channel.basic_publish(
                "", properties.reply_to, answer,
                pika.BasicProperties(
                    correlation_id=properties.correlation_id, content_type="application/json"))
        channel.basic_ack(method.delivery_tag)
        print(json.dumps(seen), flush=True)
        break
    channel.cancel()
    connection.close()


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {
        "publish": publish,
        "publish-odd-headers": publish_odd_headers,
        "bind": bind,
        "get": get,
        "count": count,
        "delete": delete,
        "request": request,
        "respond": respond,
    }[command](*args)
