"""A GetEvents client that is not Vigil's: Python grpcio stubs generated
from Vigil's .proto files. Prints one JSON object per received event whose
arguments match the marker, then exits after `count` of them."""

import json
import sys

import grpc
from google.protobuf.json_format import MessageToDict

sys.path.insert(0, sys.argv[1])  # generated stubs
from tetragon import events_pb2, sensors_pb2_grpc  # noqa: E402

address, marker, count = sys.argv[2], sys.argv[3], int(sys.argv[4])
# grpc-core sends the socket path as :authority for unix: targets, which
# is not a valid HTTP/2 authority; name the host as Go clients do.
channel = grpc.insecure_channel(address, options=[("grpc.default_authority", "localhost")])
stub = sensors_pb2_grpc.FineGuidanceSensorsStub(channel)
request = events_pb2.GetEventsRequest(
    allow_list=[events_pb2.Filter(arguments_regex=[marker])]
)
responses = stub.GetEvents(request, timeout=30)
# The server's headers come once it has registered the subscription.
responses.initial_metadata()
print("subscribed", flush=True)
seen = 0
for response in responses:
    print(json.dumps(MessageToDict(response, preserving_proto_field_name=True)), flush=True)
    seen += 1
    if seen >= count:
        break
