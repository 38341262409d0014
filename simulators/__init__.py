"""Local stand-ins for cardflow's outside providers (card issuer, KYC, FX rates,
Tron chain, bank transfers, notification channels), served over HTTP on
loopback with fault injection, so the demo and the tests exercise real
network calls."""
