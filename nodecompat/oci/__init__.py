"""OCI registry client: resolve images, find and fetch compatibility artifacts, attach them.

One job per module: mediatypes (the constants), errors (RegistryError codes), reference and platform
(parsing), auth (credential sources), transport (HTTP, budget, retries, auth handshake), manifest
(defensive descriptor parsing), repository (distribution API calls with content verification),
discovery (fetch_compat_spec), cache (SpecCache), attach (attach_spec, list_artifacts).
"""
