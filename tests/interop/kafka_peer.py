"""Another Kafka client for the interop test: Confluent's Python client (librdkafka wheel).

    kafka_peer.py produce BOOTSTRAP TOPIC KEY PAYLOAD [NAME=HEX ...]
    kafka_peer.py produce-raw-names BOOTSTRAP TOPIC KEY PAYLOAD [NAMEHEX=HEX ...]
    kafka_peer.py consume BOOTSTRAP TOPIC GROUP COUNT

`consume` prints one JSON object per message: key, value and headers as hex strings.
`produce-raw-names` takes header names as hex too, so that a name can be any bytes.
"""
import ctypes
import glob
import json
import os
import sys

import confluent_kafka
from confluent_kafka import Consumer, Producer


def produce(bootstrap, topic, key, payload, *headers):
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    pairs = [(h.split("=", 1)[0], bytes.fromhex(h.split("=", 1)[1])) for h in headers]
    failures = []
    producer.produce(topic, key=key.encode(), value=payload.encode(), headers=pairs,
                     on_delivery=lambda err, _msg: err and failures.append(err))
    if producer.flush(30) != 0 or failures:
        sys.exit(f"delivery failed: {failures}")


class _Mem(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_void_p), ("size", ctypes.c_size_t)]


class _Header(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("val", ctypes.c_void_p), ("size", ctypes.c_ssize_t)]


class _Value(ctypes.Union):
    _fields_ = [("cstr", ctypes.c_char_p), ("i", ctypes.c_int), ("mem", _Mem),
                ("header", _Header), ("_pad", ctypes.c_char * 64)]


class _Vu(ctypes.Structure):
    """librdkafka's rd_kafka_vu_t: one argument of rd_kafka_produceva()."""
    _fields_ = [("vtype", ctypes.c_int), ("u", _Value)]


# rd_kafka_vtype_t values, and RD_KAFKA_MSG_F_COPY.
_TOPIC, _VALUE, _KEY, _MSGFLAGS, _HEADER = 1, 4, 5, 7, 9
_F_COPY = 0x2


def _librdkafka():
    """The librdkafka that confluent-kafka's wheel bundles (auditwheel puts it beside the
    package), or the system's."""
    package = os.path.dirname(confluent_kafka.__file__)
    for path in glob.glob(os.path.join(os.path.dirname(package), "confluent_kafka.libs",
                                       "librdkafka*.so*")):
        return ctypes.CDLL(path)
    return ctypes.CDLL("librdkafka.so.1")


def produce_raw_names(bootstrap, topic, key, payload, *headers):
    """Like `produce`, with header names given as hex. confluent-kafka's produce() takes header
    names as str only (it encodes them as UTF-8), so a name that is not UTF-8, which the Kafka
    protocol allows, goes through the librdkafka that confluent-kafka bundles."""
    lib = _librdkafka()
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_set.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p,
                                      ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_produceva.restype = ctypes.c_void_p
    lib.rd_kafka_produceva.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Vu), ctypes.c_size_t]
    lib.rd_kafka_error_string.restype = ctypes.c_char_p
    lib.rd_kafka_error_string.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_flush.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_err2str.restype = ctypes.c_char_p
    lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
    # The delivery report: rd_kafka_message_t starts with its error code.
    report = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int), ctypes.c_void_p)
    lib.rd_kafka_conf_set_dr_msg_cb.argtypes = [ctypes.c_void_p, report]
    errors = []
    on_report = report(lambda _rk, message, _opaque: errors.append(message[0]))

    errstr = ctypes.create_string_buffer(512)
    conf = lib.rd_kafka_conf_new()
    for name, value in (("bootstrap.servers", bootstrap), ("acks", "all")):
        if lib.rd_kafka_conf_set(conf, name.encode(), value.encode(), errstr, 512) != 0:
            sys.exit(f"config {name}: {errstr.value.decode()}")
    lib.rd_kafka_conf_set_dr_msg_cb(conf, on_report)
    rk = lib.rd_kafka_new(0, conf, errstr, 512)
    if not rk:
        sys.exit(f"no producer: {errstr.value.decode()}")

    pairs = [(bytes.fromhex(h.split("=", 1)[0]), bytes.fromhex(h.split("=", 1)[1]))
             for h in headers]
    keep = [topic.encode(), key.encode(), payload.encode()] + [b for pair in pairs for b in pair]
    args = (_Vu * (4 + len(pairs)))()
    args[0].vtype, args[0].u.cstr = _TOPIC, keep[0]
    args[1].vtype, args[1].u.mem = _KEY, _Mem(ctypes.cast(keep[1], ctypes.c_void_p), len(keep[1]))
    args[2].vtype, args[2].u.mem = _VALUE, _Mem(ctypes.cast(keep[2], ctypes.c_void_p),
                                                len(keep[2]))
    args[3].vtype, args[3].u.i = _MSGFLAGS, _F_COPY
    for i, (name, value) in enumerate(pairs):
        args[4 + i].vtype = _HEADER
        args[4 + i].u.header = _Header(name, ctypes.cast(value, ctypes.c_void_p), len(value))
    error = lib.rd_kafka_produceva(rk, args, len(args))
    if error:
        sys.exit(f"produce failed: {lib.rd_kafka_error_string(error).decode()}")
    left = lib.rd_kafka_flush(rk, 30000)
    lib.rd_kafka_destroy(rk)
    if left != 0 or errors != [0]:
        sys.exit(f"delivery failed: flush {left}, reports {errors}")


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
    {"produce": produce, "produce-raw-names": produce_raw_names,
     "consume": consume}[sys.argv[1]](*sys.argv[2:])
