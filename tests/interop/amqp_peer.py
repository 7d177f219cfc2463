"""Another AMQP client for the interop test: pika, publishing as a foreign producer does.

    amqp_peer.py publish URL TOPIC ID:PAYLOAD [ID:PAYLOAD ...]
    amqp_peer.py bind URL QUEUE TOPIC
    amqp_peer.py count URL QUEUE
    amqp_peer.py delete URL QUEUE

`publish` sends each message, persistent and confirmed, to anybus's events exchange with TOPIC
as routing key; ID is the AMQP `message-id` as it is, or `-` for a message without one. `bind`
declares a durable QUEUE bound to the events exchange by TOPIC, as earlier versions of anybus
declared a group's queue; `count` prints how many messages QUEUE holds; `delete` deletes it.
"""
import sys

import pika


def publish(url, topic, *messages):
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()
    for message in messages:
        message_id, payload = message.split(":", 1)
        properties = pika.BasicProperties(
            delivery_mode=2, message_id=None if message_id == "-" else message_id)
        # Raises if the broker does not confirm, or returns the message as unroutable.
        channel.basic_publish("anybus", topic, payload.encode(), properties, mandatory=True)
    connection.close()


def bind(url, queue, topic):
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.queue_declare(queue, durable=True)
    channel.queue_bind(queue, "anybus", routing_key=topic)
    connection.close()


def count(url, queue):
    connection = pika.BlockingConnection(pika.URLParameters(url))
    print(connection.channel().queue_declare(queue, passive=True).method.message_count)
    connection.close()


def delete(url, queue):
    connection = pika.BlockingConnection(pika.URLParameters(url))
    connection.channel().queue_delete(queue)
    connection.close()


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"publish": publish, "bind": bind, "count": count, "delete": delete}[command](*args)
