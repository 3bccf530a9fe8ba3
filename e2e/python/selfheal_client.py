"""A selfheal gRPC client as an integrator writes one: Python, with stubs that grpcio-tools made
from proto/ (not selfheal's build), over TLS. The e2e test `grpc_tls.rs` runs it.

    selfheal_client.py STUBS CA CERT KEY COMMAND ARGS...

STUBS is where `python -m grpc_tools.protoc --python_out --grpc_python_out` wrote the modules; CA
the service certificates' CA; CERT and KEY a client certificate ("-" for none). Each command
prints one JSON object on stdout; a gRPC error is printed as {"error": CODE, "details": ...} with
exit code 0, so the test reads refusals as answers.

    health ADDR                 grpc.health.v1.Health/Check ("" and the named service)
    reflect ADDR SERVICE        reflection: the services listed, and SERVICE's methods
    ingest ADDR TOKEN SERVICE   selfheal.v1.Gateway/Ingest of one HighCPU alert for SERVICE
    incidents ADDR TOKEN        selfheal.v1.Gateway/ListIncidents
    remediations ADDR TOKEN     selfheal.v1.Remediations/List
    plaintext ADDR              Health/Check without TLS (a TLS server must refuse it)
"""

import json
import sys
import time


def main() -> None:
    stubs, ca, cert, key, command, *args = sys.argv[1:]
    sys.path.insert(0, stubs)
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    def channel(addr: str) -> grpc.Channel:
        with open(ca, "rb") as f:
            roots = f.read()
        identity = {}
        if cert != "-":
            with open(cert, "rb") as f:
                identity["certificate_chain"] = f.read()
            with open(key, "rb") as f:
                identity["private_key"] = f.read()
        credentials = grpc.ssl_channel_credentials(root_certificates=roots, **identity)
        return grpc.secure_channel(addr, credentials)

    def bearer(token: str):
        return [("authorization", f"Bearer {token}")]

    try:
        if command == "health":
            addr = args[0]
            stub = health_pb2_grpc.HealthStub(channel(addr))
            statuses = {}
            for service in ["", *args[1:]]:
                answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                statuses[service] = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
            print(json.dumps({"statuses": statuses}))
        elif command == "reflect":
            addr, service = args
            from google.protobuf.descriptor_pool import DescriptorPool
            from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
                ProtoReflectionDescriptorDatabase,
            )

            database = ProtoReflectionDescriptorDatabase(channel(addr))
            pool = DescriptorPool(database)
            described = pool.FindServiceByName(service)
            print(
                json.dumps(
                    {
                        "services": sorted(database.get_services()),
                        "methods": sorted(m.name for m in described.methods),
                    }
                )
            )
        elif command == "ingest":
            addr, token, service = args
            from google.protobuf.timestamp_pb2 import Timestamp
            from selfheal.v1 import events_pb2, gateway_pb2, gateway_pb2_grpc

            starts = Timestamp()
            starts.FromSeconds(int(time.time()) - 60)
            alert = events_pb2.Alert(
                status="firing",
                labels={
                    "alertname": "HighCPU",
                    "service": service,
                    "severity": "critical",
                    "auto_heal": "true",
                },
                annotations={"summary": f"{service} is CPU-bound"},
                starts_at=starts,
                generator_url="http://prometheus.example/graph",
            )
            stub = gateway_pb2_grpc.GatewayStub(channel(addr))
            answer = stub.Ingest(
                gateway_pb2.IngestRequest(alerts=[alert], source="python"),
                metadata=bearer(token),
                timeout=10,
            )
            print(json.dumps({"alerts": [{"key": a.incident_key, "outcome": a.outcome} for a in answer.alerts]}))
        elif command == "incidents":
            addr, token = args
            from selfheal.v1 import gateway_pb2, gateway_pb2_grpc

            stub = gateway_pb2_grpc.GatewayStub(channel(addr))
            answer = stub.ListIncidents(gateway_pb2.ListIncidentsRequest(), metadata=bearer(token), timeout=10)
            print(json.dumps({"incidents": [i.key for i in answer.incidents]}))
        elif command == "remediations":
            addr, token = args
            from selfheal.v1 import remediations_pb2, remediations_pb2_grpc

            stub = remediations_pb2_grpc.RemediationsStub(channel(addr))
            answer = stub.List(remediations_pb2.ListRemediationsRequest(), metadata=bearer(token), timeout=10)
            print(
                json.dumps(
                    {
                        "remediations": [
                            {"incident": r.incident_key, "service": r.service, "to": r.to_value}
                            for r in answer.remediations
                        ]
                    }
                )
            )
        elif command == "plaintext":
            (addr,) = args
            stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(addr))
            answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            print(json.dumps({"status": health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)}))
        else:
            sys.exit(f"unknown command {command!r}")
    except grpc.RpcError as error:
        print(json.dumps({"error": error.code().name, "details": error.details()}))


if __name__ == "__main__":
    main()
