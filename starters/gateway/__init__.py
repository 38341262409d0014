"""The gateway: one ASGI app through which providers and upstream systems reach cardflow.

POST /webhooks/{provider}        signed provider events -> workflow signals/updates
POST /v1/...                     start a process (Idempotency-Key -> workflow id)
GET  /v1/processes/{workflow_id} read a process's status
GET  /openapi.json               the upstream API's contract
"""
