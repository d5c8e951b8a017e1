"""`libra-edge serve`: the guard as a local moderation service (HTTP on loopback by default).

The web stack (Starlette, uvicorn) is imported only inside this package and only by
`libra_edge.serve.app`; `schema`, `auth`, `metrics` and `jobs` are plain Python.
"""
