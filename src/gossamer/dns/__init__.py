"""Mesh DNS: the proxy answers for services (their virtual IPs) and forwards the rest.

`wire` reads and writes DNS messages (sans-IO), `names` says which names are services
and computes their addresses, `server` serves UDP and TCP with a lookup it is given.
"""
