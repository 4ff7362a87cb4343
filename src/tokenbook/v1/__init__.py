"""Generated from protos/tokenbook/v1 by `make protos` (grpcio-tools). Do not edit."""
