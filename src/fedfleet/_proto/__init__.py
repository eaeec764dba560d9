"""Generated protobuf and gRPC code (``*_pb2.py``, ``*_pb2.pyi``, ``*_pb2_grpc.py``) and the
``.proto`` files it comes from, in a package of its own so that importing it runs nothing else;
regenerate with the command at the top of each ``.proto``."""
