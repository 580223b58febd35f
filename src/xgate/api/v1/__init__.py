"""Generated from protos/xgate/api/v1 by scripts/protos.sh: do not edit the *_pb2 modules."""
