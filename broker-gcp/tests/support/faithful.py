"""Google's official Python clients against the test servers (drongo and the Rust test fake).

Used by broker-gcp's integration tests, two ways:
- to prove the fake faithful: the official clients (REST transport, endpoint override) must get
  the answers they expect from it (IAM Credentials, Google STS through google-auth's
  external-account flow, Secret Manager aliases, regional names and CRC32C);
- to cross-check the broker: what it wrote (rotation) is read back by the official client.

Prints one JSON document on stdout; an exception makes the test fail with its traceback.
"""

import base64
import json
import sys


def secret_manager(url):
    from google.cloud import secretmanager
    from google.oauth2.credentials import Credentials

    # A bearer token (drongo checks none; the fake, like Google, wants one).
    return secretmanager.SecretManagerServiceClient(
        credentials=Credentials(token="python-client"),
        transport="rest",
        client_options={"api_endpoint": url},
    )


def sm_read(url, name):
    response = secret_manager(url).access_secret_version(name=name)
    out = {"name": response.name, "data": base64.b64encode(response.payload.data).decode()}
    if "data_crc32c" in response.payload:
        out["crc32c"] = response.payload.data_crc32c
    return out


def sm_seed(url, project, secret, data):
    from google.cloud import secretmanager

    client = secret_manager(url)
    client.create_secret(
        parent=f"projects/{project}",
        secret_id=secret,
        secret=secretmanager.Secret(replication={"automatic": {}}),
    )
    version = client.add_secret_version(
        parent=f"projects/{project}/secrets/{secret}", payload={"data": data.encode()}
    )
    return {"name": version.name}


def sm_state(url, name):
    version = secret_manager(url).get_secret_version(name=name)
    return {"name": version.name, "state": version.state.name}


def sm_error(url, name):
    from google.api_core import exceptions

    try:
        secret_manager(url).access_secret_version(name=name)
    except exceptions.GoogleAPICallError as e:
        return {"code": e.code.name if hasattr(e.code, "name") else str(e.code), "message": e.message}
    return {"code": "OK"}


def iam(url, email, delegate):
    from google.api_core import exceptions
    from google.cloud import iam_credentials_v1
    from google.oauth2.credentials import Credentials
    from google.protobuf import duration_pb2

    # The fake, like Google, wants a bearer token.
    client = iam_credentials_v1.IAMCredentialsClient(
        credentials=Credentials(token="python-client"),
        transport="rest",
        client_options={"api_endpoint": url},
    )
    name = f"projects/-/serviceAccounts/{email}"
    access = client.generate_access_token(
        name=name,
        delegates=[f"projects/-/serviceAccounts/{delegate}"],
        scope=["https://www.googleapis.com/auth/cloud-platform"],
        lifetime=duration_pb2.Duration(seconds=600),
    )
    id_token = client.generate_id_token(
        name=name, audience="https://api.example.com", include_email=True
    )
    payload = id_token.token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    errors = {}
    for who in ["nobody@p.iam.gserviceaccount.com", "denied@p.iam.gserviceaccount.com"]:
        try:
            client.generate_access_token(
                name=f"projects/-/serviceAccounts/{who}",
                scope=["https://www.googleapis.com/auth/cloud-platform"],
            )
            errors[who] = "OK"
        except exceptions.GoogleAPICallError as e:
            errors[who] = type(e).__name__
    try:
        client.generate_access_token(
            name=name,
            scope=["https://www.googleapis.com/auth/cloud-platform"],
            lifetime=duration_pb2.Duration(seconds=7200),
        )
        errors["lifetime"] = "OK"
    except exceptions.GoogleAPICallError as e:
        errors["lifetime"] = type(e).__name__
    return {
        "access_token_prefix": access.access_token[:17],
        "expire_seconds_from_now": access.expire_time.timestamp() - __import__("time").time(),
        "id_token_audience": claims["aud"],
        "id_token_email": claims.get("email"),
        "errors": errors,
    }


def federation(sts_url, token_file, iam_url, email):
    import google.auth.transport.requests
    from google.auth import identity_pool

    info = {
        "type": "external_account",
        "audience": "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/ci/providers/github",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": f"{sts_url}/v1/token",
        "credential_source": {"file": token_file},
    }
    request = google.auth.transport.requests.Request()
    federated = identity_pool.Credentials.from_info(
        info, scopes=["https://www.googleapis.com/auth/cloud-platform"]
    )
    federated.refresh(request)
    info["service_account_impersonation_url"] = (
        f"{iam_url}/v1/projects/-/serviceAccounts/{email}:generateAccessToken"
    )
    impersonated = identity_pool.Credentials.from_info(
        info, scopes=["https://www.googleapis.com/auth/cloud-platform"]
    )
    impersonated.refresh(request)
    return {
        "federated_prefix": federated.token[:17],
        "impersonated_prefix": impersonated.token[:17],
        "impersonated_expiry": impersonated.expiry is not None,
    }


def sa_key(email):
    """A service-account key document with a fresh RSA key, and its public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    document = {
        "type": "service_account",
        "project_id": "broker-test",
        "private_key_id": "0123456789abcdef",
        "private_key": private,
        "client_email": email,
        "client_id": "1234567890",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    return {"key": document, "public": public}


def verify_jwt(public_pem, token):
    """The claims of an RS256 JWT whose signature the public key verifies."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    def b64(part):
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

    header, payload, signature = token.split(".")
    key = serialization.load_pem_public_key(public_pem.encode())
    key.verify(b64(signature), f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return {"header": json.loads(b64(header)), "claims": json.loads(b64(payload))}


def main():
    command, *args = sys.argv[1:]
    result = {
        "sm-read": sm_read,
        "sm-seed": sm_seed,
        "sm-state": sm_state,
        "sm-error": sm_error,
        "iam": iam,
        "federation": federation,
        "sa-key": sa_key,
        "verify-jwt": verify_jwt,
    }[command](*args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
