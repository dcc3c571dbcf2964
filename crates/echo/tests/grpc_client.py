"""An independent gRPC client (Python grpcio) for the Nodus echo service.

Compiles proto/echo.proto with grpc_tools at run time, calls one method, and prints the
response as JSON. Usage: grpc_client.py PROTO_DIR TARGET METHOD MESSAGE
"""
import importlib
import json
import os
import sys
import tempfile

from grpc_tools import protoc
import grpc


def main() -> int:
    proto_dir, target, method, message = sys.argv[1:5]
    out = tempfile.mkdtemp(prefix="nodus-echo-py-")
    status = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}", "echo.proto"])
    if status != 0:
        print(f"protoc failed with {status}", file=sys.stderr)
        return 2
    sys.path.insert(0, out)
    echo_pb2 = importlib.import_module("echo_pb2")
    echo_pb2_grpc = importlib.import_module("echo_pb2_grpc")
    with grpc.insecure_channel(target) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        response = getattr(stub, method)(
            echo_pb2.EchoRequest(message=message), metadata=[("x-client", os.environ.get("NODUS_GRPC_CLIENT_NAME", "grpcio"))], timeout=10
        )
    ctx = response.context
    print(json.dumps({
        "message": response.message,
        "pod": ctx.pod,
        "namespace": ctx.namespace,
        "full_method": ctx.full_method,
        "protocol": ctx.protocol,
        "remote_addr": ctx.remote_addr,
        "headers": {h.name: h.value for h in ctx.headers},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
