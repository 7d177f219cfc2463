"""Another AMQP client for the interop test: pika, publishing as a foreign producer does.

    amqp_peer.py publish URL TOPIC ID:PAYLOAD [ID:PAYLOAD ...]

Publishes each message, persistent and confirmed, to anybus's events exchange with TOPIC as
routing key; ID is the AMQP `message-id` as it is, or `-` for a message without one.
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


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"publish": publish}[command](*args)
