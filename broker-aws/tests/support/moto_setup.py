"""Sets up a fresh moto server for the broker-aws tests, then switches IAM enforcement on.

Usage: python moto_setup.py ENDPOINT_URL  -> prints a JSON object with the fixtures.

Everything here is fake: moto accepts any keys until enforcement is switched on, and the keys
it issues afterwards are random test values.
"""
import json
import sys
import urllib.request

import boto3

ENDPOINT = sys.argv[1]
REGION = "us-east-1"
ACCOUNT = "123456789012"


def client(service, **kw):
    return boto3.client(
        service,
        endpoint_url=ENDPOINT,
        region_name=kw.pop("region", REGION),
        aws_access_key_id=kw.pop("key", "testing"),
        aws_secret_access_key=kw.pop("secret", "testing"),
        **kw,
    )


def main():
    out = {"account": ACCOUNT, "region": REGION}
    iam = client("iam")
    sm = client("secretsmanager")
    sm_eu = client("secretsmanager", region="eu-west-1")

    # Secrets. Values are random per run: the tests read them back from this output.
    import secrets as rnd

    values = {
        "string": "canary-aws-string-" + rnd.token_hex(12),
        "token": "canary-aws-field-" + rnd.token_hex(12),
        "binary": bytes([0, 255, 1, 254]) + rnd.token_bytes(12),
        "previous": "canary-aws-previous-" + rnd.token_hex(12),
        "eu": "canary-aws-eu-" + rnd.token_hex(12),
    }
    sm.create_secret(Name="staging/plain", SecretString=values["previous"])
    put = sm.put_secret_value(SecretId="staging/plain", SecretString=values["string"])
    out["plain_current_version"] = put["VersionId"]
    sm.create_secret(
        Name="staging/api",
        SecretString=json.dumps({"token": values["token"], "nested": {"port": 5432}}),
    )
    sm.create_secret(Name="staging/blob", SecretBinary=values["binary"])
    sm.create_secret(Name="staging/rotate", SecretString=json.dumps({"password": "old-" + rnd.token_hex(8), "user": "app"}))
    created = sm_eu.create_secret(Name="eu/only", SecretString=values["eu"])
    out["eu_arn"] = created["ARN"]
    out["values"] = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in values.items()}

    # The broker's identity: may assume `agent-deploy`, may read staging/* secrets.
    iam.create_user(UserName="broker")
    iam.put_user_policy(
        UserName="broker",
        PolicyName="broker",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"},
                    {"Effect": "Allow", "Action": "sts:GetCallerIdentity", "Resource": "*"},
                    {
                        "Effect": "Allow",
                        "Action": ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret",
                                   "secretsmanager:PutSecretValue", "secretsmanager:UpdateSecretVersionStage",
                                   "secretsmanager:GetRandomPassword"],
                        "Resource": "*",
                    },
                ],
            }
        ),
    )
    key = iam.create_access_key(UserName="broker")["AccessKey"]
    out["broker_key"] = {"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}

    # A second identity whose policy denies GetSecretValue.
    iam.create_user(UserName="denied")
    iam.put_user_policy(
        UserName="denied",
        PolicyName="denied",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Action": "*", "Resource": "*"},
                    {"Effect": "Deny", "Action": "secretsmanager:GetSecretValue", "Resource": "*"},
                ],
            }
        ),
    )
    key = iam.create_access_key(UserName="denied")["AccessKey"]
    out["denied_key"] = {"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}

    trust = lambda principal: json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"AWS": principal}, "Action": "sts:AssumeRole"}
            ],
        }
    )
    # A role the broker may assume; its own policy allows GetCallerIdentity and reading secrets.
    role = iam.create_role(
        RoleName="agent-deploy",
        AssumeRolePolicyDocument=trust(f"arn:aws:iam::{ACCOUNT}:user/broker"),
        MaxSessionDuration=43200,
    )["Role"]
    iam.put_role_policy(
        RoleName="agent-deploy",
        PolicyName="deploy",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Action": ["sts:GetCallerIdentity", "secretsmanager:GetSecretValue"], "Resource": "*"}
                ],
            }
        ),
    )
    out["deploy_role"] = role["Arn"]
    # A role whose trust policy names someone else.
    role = iam.create_role(
        RoleName="someone-else",
        AssumeRolePolicyDocument=trust(f"arn:aws:iam::{ACCOUNT}:user/nobody"),
    )["Role"]
    out["refusing_role"] = role["Arn"]
    # A role whose identity policy denies GetSecretValue.
    role = iam.create_role(
        RoleName="no-secrets",
        AssumeRolePolicyDocument=trust(f"arn:aws:iam::{ACCOUNT}:user/broker"),
    )["Role"]
    iam.put_role_policy(
        RoleName="no-secrets",
        PolicyName="no-secrets",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Action": "*", "Resource": "*"},
                    {"Effect": "Deny", "Action": "secretsmanager:GetSecretValue", "Resource": "*"},
                ],
            }
        ),
    )
    out["no_secrets_role"] = role["Arn"]

    # From here on, every request is authenticated and authorised against IAM.
    req = urllib.request.Request(ENDPOINT + "/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(req).read()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
