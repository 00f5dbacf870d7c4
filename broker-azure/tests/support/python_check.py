"""Drives the broker-azure test fake with Microsoft's official Python SDKs
(azure-keyvault-secrets with azure-identity's ClientSecretCredential), to prove the fake
answers as Key Vault and Entra ID do.

usage: python_check.py PORT CA_FILE TENANT CLIENT VAULT ACTIONS_JSON
The client secret comes from $FAKE_AZURE_CLIENT_SECRET. Prints one JSON document of results.

Names under `.localhost` resolve to 127.0.0.1 here; any other name is refused, so nothing
leaves the machine.
"""
import json
import os
import socket
import sys

_real_getaddrinfo = socket.getaddrinfo


def _loopback_only(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else str(host)
    if name == "localhost" or name.endswith(".localhost") or name == "127.0.0.1":
        return _real_getaddrinfo("127.0.0.1", *args, **kwargs)
    raise OSError(f"test refuses to resolve {name!r}")


socket.getaddrinfo = _loopback_only

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError  # noqa: E402
from azure.identity import ClientSecretCredential  # noqa: E402
from azure.keyvault.secrets import SecretClient  # noqa: E402


def main():
    port, ca, tenant, client, vault, actions = sys.argv[1:7]
    secret = os.environ["FAKE_AZURE_CLIENT_SECRET"]
    credential = ClientSecretCredential(
        tenant,
        client,
        secret,
        authority=f"https://login.localhost:{port}",
        disable_instance_discovery=True,
        connection_verify=ca,
    )
    kv = SecretClient(
        vault_url=f"https://{vault}.vault.localhost:{port}",
        credential=credential,
        connection_verify=ca,
        verify_challenge_resource=True,
    )
    out = []
    for action in json.loads(actions):
        op = action["op"]
        try:
            if op == "get":
                s = kv.get_secret(action["name"], action.get("version"))
                out.append({
                    "value": s.value,
                    "version": s.properties.version,
                    "content_type": s.properties.content_type,
                    "enabled": s.properties.enabled,
                    "tags": s.properties.tags or {},
                })
            elif op == "set":
                s = kv.set_secret(
                    action["name"], action["value"],
                    content_type=action.get("content_type"), tags=action.get("tags"),
                )
                out.append({"version": s.properties.version, "value": s.value})
            elif op == "versions":
                out.append({"versions": [p.version for p in kv.list_properties_of_secret_versions(action["name"])]})
            else:
                raise SystemExit(f"unknown op {op}")
        except ResourceNotFoundError as e:
            out.append({"error": "not_found", "status": e.status_code, "code": e.error.code if e.error else None})
        except HttpResponseError as e:
            out.append({"error": "http", "status": e.status_code, "code": e.error.code if e.error else None,
                        "message": e.message.splitlines()[0] if e.message else None})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
