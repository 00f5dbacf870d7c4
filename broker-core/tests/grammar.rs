//! The reference grammar: every accepted form, malformed references with their exact
//! messages, and the `parse(display(r)) == r` round trip.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use broker_core::grammar::{Operation, QueryKeys, SchemeGrammar, Shape, TargetError};
use broker_core::{
    BackendContext, Badge, Capabilities, CredentialProvider, ErrorKind, ProviderDescriptor,
    Reference, Registry, Result,
};
use proptest::prelude::*;

/// Every form the product accepts: (input, scheme, target, canonical display).
const ACCEPTED: &[(&str, &str, &str, &str)] = &[
    (
        "env:STAGING_API_TOKEN",
        "env",
        "STAGING_API_TOKEN",
        "env:STAGING_API_TOKEN",
    ),
    ("env:_x1", "env", "_x1", "env:_x1"),
    (
        "sops:secrets.enc.yaml#api_token",
        "sops",
        "secrets.enc.yaml",
        "sops:secrets.enc.yaml#api_token",
    ),
    (
        "sops:secrets.enc.yaml",
        "sops",
        "secrets.enc.yaml",
        "sops:secrets.enc.yaml",
    ),
    (
        "sops:conf/app.enc.json#db.password",
        "sops",
        "conf/app.enc.json",
        "sops:conf/app.enc.json#db.password",
    ),
    (
        "sops:app.yaml#a.list[0]",
        "sops",
        "app.yaml",
        "sops:app.yaml#a.list[0]",
    ),
    (
        r#"sops:app.yaml#["a.b"]["c"]"#,
        "sops",
        "app.yaml",
        r#"sops:app.yaml#["a.b"]["c"]"#,
    ),
    (
        "sops:app.enc?format=dotenv#TOKEN",
        "sops",
        "app.enc",
        "sops:app.enc?format=dotenv#TOKEN",
    ),
    (
        "sops:/etc/broker/s.yaml#/a/b",
        "sops",
        "/etc/broker/s.yaml",
        "sops:/etc/broker/s.yaml#/a/b",
    ),
    (
        "age:secrets/db.age",
        "age",
        "secrets/db.age",
        "age:secrets/db.age",
    ),
    (
        "agenix:db-password.age",
        "agenix",
        "db-password.age",
        "agenix:db-password.age",
    ),
    (
        "age:~/keys/token.age",
        "age",
        "~/keys/token.age",
        "age:~/keys/token.age",
    ),
    (
        "vault:secret/data/staging#token",
        "vault",
        "secret/data/staging",
        "vault:secret/data/staging#token",
    ),
    (
        "vault:secret/staging#token",
        "vault",
        "secret/staging",
        "vault:secret/staging#token",
    ),
    (
        "vault:kv/app?version=3#url",
        "vault",
        "kv/app",
        "vault:kv/app?version=3#url",
    ),
    (
        "vault:auth/token/create?policies=ci",
        "vault",
        "auth/token/create",
        "vault:auth/token/create?policies=ci",
    ),
    (
        "vault:auth/token/create?policies=a,b&num_uses=2",
        "vault",
        "auth/token/create",
        "vault:auth/token/create?policies=a,b&num_uses=2",
    ),
    (
        "vault:pki/issue/web?common_name=a.example",
        "vault",
        "pki/issue/web",
        "vault:pki/issue/web?common_name=a.example",
    ),
    (
        "vault:database/creds/readonly",
        "vault",
        "database/creds/readonly",
        "vault:database/creds/readonly",
    ),
    (
        "aws-sm://staging/api#token",
        "aws-sm",
        "staging/api",
        "aws-sm://staging/api#token",
    ),
    (
        "aws-sm://staging/api",
        "aws-sm",
        "staging/api",
        "aws-sm://staging/api",
    ),
    (
        "aws-sm://staging/api#token?version-stage=AWSPREVIOUS",
        "aws-sm",
        "staging/api",
        "aws-sm://staging/api?version-stage=AWSPREVIOUS#token",
    ),
    (
        "aws-sm://staging/api?version-id=a1b2&region=eu-west-1#a.b",
        "aws-sm",
        "staging/api",
        "aws-sm://staging/api?version-id=a1b2&region=eu-west-1#a.b",
    ),
    (
        "aws-sm://arn:aws:secretsmanager:us-east-1:123456789012:secret:staging/api-AbCdEf#token",
        "aws-sm",
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:staging/api-AbCdEf",
        "aws-sm://arn:aws:secretsmanager:us-east-1:123456789012:secret:staging/api-AbCdEf#token",
    ),
    (
        "aws-sts://arn:aws:iam::123456789012:role/agent-deploy",
        "aws-sts",
        "arn:aws:iam::123456789012:role/agent-deploy",
        "aws-sts://arn:aws:iam::123456789012:role/agent-deploy",
    ),
    (
        "aws-sts://arn:aws:iam::123456789012:role/service/ci-runner?external-id=x1",
        "aws-sts",
        "arn:aws:iam::123456789012:role/service/ci-runner",
        "aws-sts://arn:aws:iam::123456789012:role/service/ci-runner?external-id=x1",
    ),
    (
        "gcp-sm://my-project/sa-key",
        "gcp-sm",
        "my-project/sa-key",
        "gcp-sm://my-project/sa-key",
    ),
    (
        "gcp-sm://my-project/sa-key/3",
        "gcp-sm",
        "my-project/sa-key/3",
        "gcp-sm://my-project/sa-key/3",
    ),
    (
        "gcp-sm://my-project/sa-key/latest#client_email",
        "gcp-sm",
        "my-project/sa-key/latest",
        "gcp-sm://my-project/sa-key/latest#client_email",
    ),
    (
        "gcp-sm://123456789012/token",
        "gcp-sm",
        "123456789012/token",
        "gcp-sm://123456789012/token",
    ),
    (
        "gcp-iam://deployer@my-project.iam.gserviceaccount.com",
        "gcp-iam",
        "deployer@my-project.iam.gserviceaccount.com",
        "gcp-iam://deployer@my-project.iam.gserviceaccount.com",
    ),
    (
        "gcp-iam://deployer@my-project.iam.gserviceaccount.com?id-token=true&audience=https://api.example.com",
        "gcp-iam",
        "deployer@my-project.iam.gserviceaccount.com",
        "gcp-iam://deployer@my-project.iam.gserviceaccount.com?id-token=true&audience=https://api.example.com",
    ),
    (
        "gcp-sm://my-project/sa-key/prod#client_email?location=europe-west1",
        "gcp-sm",
        "my-project/sa-key/prod",
        "gcp-sm://my-project/sa-key/prod?location=europe-west1#client_email",
    ),
    (
        "azurekv://my-vault/STAGING-TOKEN",
        "azurekv",
        "my-vault/STAGING-TOKEN",
        "azurekv://my-vault/STAGING-TOKEN",
    ),
    (
        "azurekv://my-vault/STAGING-TOKEN/0123456789abcdef0123456789abcdef",
        "azurekv",
        "my-vault/STAGING-TOKEN/0123456789abcdef0123456789abcdef",
        "azurekv://my-vault/STAGING-TOKEN/0123456789abcdef0123456789abcdef",
    ),
    (
        "azurekv://my-vault/db-config#password",
        "azurekv",
        "my-vault/db-config",
        "azurekv://my-vault/db-config#password",
    ),
    (
        "azure-token://00000000-0000-0000-0000-000000000000/11111111-1111-1111-1111-111111111111",
        "azure-token",
        "00000000-0000-0000-0000-000000000000/11111111-1111-1111-1111-111111111111",
        "azure-token://00000000-0000-0000-0000-000000000000/11111111-1111-1111-1111-111111111111",
    ),
    (
        "azure-token://contoso.onmicrosoft.com/11111111-1111-1111-1111-111111111111?scope=https://vault.azure.net/.default",
        "azure-token",
        "contoso.onmicrosoft.com/11111111-1111-1111-1111-111111111111",
        "azure-token://contoso.onmicrosoft.com/11111111-1111-1111-1111-111111111111?scope=https://vault.azure.net/.default",
    ),
];

#[test]
fn accepted_forms() {
    for (input, scheme, target, display) in ACCEPTED {
        let r: Reference = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(r.scheme(), *scheme, "{input}");
        assert_eq!(r.target(), *target, "{input}");
        assert_eq!(r.to_string(), *display, "{input}");
        assert_eq!(display.parse::<Reference>().unwrap(), r, "{input}");
    }
}

#[test]
fn every_known_scheme_has_an_accepted_form() {
    for k in broker_core::grammar::KNOWN {
        assert!(
            ACCEPTED.iter().any(|(_, s, _, _)| *s == k.grammar.scheme),
            "no accepted form for {}",
            k.grammar.scheme
        );
    }
}

/// Malformed references and the exact message each gets.
const MALFORMED: &[(&str, &str)] = &[
    ("", "invalid reference `` at column 1: empty reference"),
    (
        "env",
        "invalid reference `env` at column 1: missing scheme: expected SCHEME:TARGET such as env:NAME or vault:secret/app#key",
    ),
    (
        "vualt:secret/app",
        "invalid reference `vualt:secret/app` at column 1: unknown scheme `vualt`; did you mean `vault`?",
    ),
    (
        "VAULT:secret/app",
        "invalid reference `VAULT:secret/app` at column 1: `V` is not allowed in a scheme (lowercase letters, digits, `-`)",
    ),
    (
        ":foo",
        "invalid reference `:foo` at column 1: empty scheme before `:`",
    ),
    (
        "env:",
        "invalid reference `env:` at column 5: missing target after `env:`: write env:NAME",
    ),
    (
        "env:1ABC",
        "invalid reference `env:1ABC` at column 5: `1` is not allowed in a variable name (letters, digits, `_`; not starting with a digit)",
    ),
    (
        "env:A-B",
        "invalid reference `env:A-B` at column 6: `-` is not allowed in a variable name (letters, digits, `_`; not starting with a digit)",
    ),
    (
        "env://NAME",
        "invalid reference `env://NAME` at column 5: `env` references take no `//`: write env:NAME",
    ),
    (
        "env:NAME#field",
        "invalid reference `env:NAME#field` at column 9: `env` references take no `#field`",
    ),
    (
        "env:NAME?x=1",
        "invalid reference `env:NAME?x=1` at column 9: `env` references take no query parameters",
    ),
    (
        "env:A B",
        "invalid reference `env:A B` at column 6: whitespace is not allowed in a reference",
    ),
    (
        "sops:",
        "invalid reference `sops:` at column 6: missing target after `sops:`: write sops:FILE[#key.path][?format=yaml|json|dotenv|ini|binary]",
    ),
    (
        "sops:dir/",
        "invalid reference `sops:dir/` at column 9: a file path must not end with `/`",
    ),
    (
        "sops:s.yaml#a..b",
        "invalid reference `sops:s.yaml#a..b` at column 15: empty key in field path",
    ),
    (
        "sops:s.yaml#",
        "invalid reference `sops:s.yaml#` at column 12: empty field after `#`",
    ),
    (
        "sops:s.yaml#a[x]",
        "invalid reference `sops:s.yaml#a[x]` at column 15: `[x]` is not a list index; quote map keys: [\"x\"]",
    ),
    (
        "sops:s.yaml#a[0",
        "invalid reference `sops:s.yaml#a[0` at column 14: unmatched `[` in field path",
    ),
    (
        "age:",
        "invalid reference `age:` at column 5: missing target after `age:`: write age:FILE",
    ),
    (
        "age:key.age#f",
        "invalid reference `age:key.age#f` at column 12: `age` references take no `#field`",
    ),
    (
        "vault:secret",
        "invalid reference `vault:secret` at column 13: expected MOUNT/PATH (at least two segments), e.g. secret/data/app",
    ),
    (
        "vault:/secret/app",
        "invalid reference `vault:/secret/app` at column 7: path must not start with `/`",
    ),
    (
        "vault:secret//app",
        "invalid reference `vault:secret//app` at column 14: empty path segment (`//` or trailing `/`)",
    ),
    (
        "vault:secret/../app",
        "invalid reference `vault:secret/../app` at column 14: `..` is not allowed as a path segment",
    ),
    (
        "vault://secret/app",
        "invalid reference `vault://secret/app` at column 7: `vault` references take no `//`: write vault:MOUNT/PATH[#field][?version=N|PARAM=VALUE...]",
    ),
    (
        "vault:secret/app?version",
        "invalid reference `vault:secret/app?version` at column 18: query parameter `version` needs a value: KEY=VALUE",
    ),
    (
        "vault:secret/app?=1",
        "invalid reference `vault:secret/app?=1` at column 18: empty query key",
    ),
    (
        "vault:secret/app?a=1&a=2",
        "invalid reference `vault:secret/app?a=1&a=2` at column 22: query parameter `a` given twice",
    ),
    (
        "vault:secret/app?",
        "invalid reference `vault:secret/app?` at column 17: empty query after `?`",
    ),
    (
        "vault:secret/app?x=%zz",
        "invalid reference `vault:secret/app?x=%zz` at column 20: `%` must be followed by two hex digits",
    ),
    (
        "aws-sm:staging/api",
        "invalid reference `aws-sm:staging/api` at column 8: `aws-sm` references use `//`: write aws-sm://SECRET_ID[#field][?version-stage=S|version-id=V&region=R]",
    ),
    (
        "aws-sm://",
        "invalid reference `aws-sm://` at column 10: missing target after `aws-sm://`: write aws-sm://SECRET_ID[#field][?version-stage=S|version-id=V&region=R]",
    ),
    (
        "aws-sm://bad name",
        "invalid reference `aws-sm://bad name` at column 13: whitespace is not allowed in a reference",
    ),
    (
        "aws-sm://staging/api?stage=x",
        "invalid reference `aws-sm://staging/api?stage=x` at column 22: unknown query parameter `stage` for `aws-sm` (accepted: version-stage, version-id, region)",
    ),
    (
        "aws-sm://arn:aws:secretsmanager:us-east-1:123456789012:foo:bar",
        "invalid reference `aws-sm://arn:aws:secretsmanager:us-east-1:123456789012:foo:bar` at column 10: expected arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME",
    ),
    (
        "aws-sts://role/deploy",
        "invalid reference `aws-sts://role/deploy` at column 11: expected a role ARN: arn:aws:iam::ACCOUNT_ID:role/NAME",
    ),
    (
        "aws-sts://arn:aws:iam::12345:role/x",
        "invalid reference `aws-sts://arn:aws:iam::12345:role/x` at column 24: the account id must be 12 digits",
    ),
    (
        "aws-sts://arn:aws:iam::123456789012:user/x",
        "invalid reference `aws-sts://arn:aws:iam::123456789012:user/x` at column 37: the resource must be `role/NAME`",
    ),
    (
        "aws-sts://arn:aws:iam::123456789012:role/x#f",
        "invalid reference `aws-sts://arn:aws:iam::123456789012:role/x#f` at column 43: `aws-sts` references take no `#field`",
    ),
    (
        "gcp-sm://my-project",
        "invalid reference `gcp-sm://my-project` at column 10: expected PROJECT/SECRET or PROJECT/SECRET/VERSION",
    ),
    (
        "gcp-sm://Bad_Project/secret",
        "invalid reference `gcp-sm://Bad_Project/secret` at column 10: a project is a project number or an id of 6-30 lowercase letters, digits and hyphens",
    ),
    (
        "gcp-sm://my-project/secret/1v",
        "invalid reference `gcp-sm://my-project/secret/1v` at column 28: a version is a positive number, `latest` or an alias (a letter, then letters, digits, `_` or `-`)",
    ),
    (
        "gcp-sm://my-project/secret/0",
        "invalid reference `gcp-sm://my-project/secret/0` at column 28: a version is a positive number, `latest` or an alias (a letter, then letters, digits, `_` or `-`)",
    ),
    (
        "gcp-iam://deployer@my-project.iam.gserviceaccount.com?scopes=x",
        "invalid reference `gcp-iam://deployer@my-project.iam.gserviceaccount.com?scopes=x` at column 55: unknown query parameter `scopes` for `gcp-iam` (accepted: id-token, audience)",
    ),
    (
        "gcp-iam://not-an-email",
        "invalid reference `gcp-iam://not-an-email` at column 11: expected a service account email: NAME@PROJECT.iam.gserviceaccount.com",
    ),
    (
        "gcp-iam://sa@example.com",
        "invalid reference `gcp-iam://sa@example.com` at column 14: the domain must end with .gserviceaccount.com",
    ),
    (
        "azurekv://my-vault",
        "invalid reference `azurekv://my-vault` at column 11: expected VAULT/NAME or VAULT/NAME/VERSION",
    ),
    (
        "azurekv://a/NAME",
        "invalid reference `azurekv://a/NAME` at column 11: a vault name has 3-24 letters, digits and single hyphens, starting with a letter",
    ),
    (
        "azurekv://my-vault/bad_name",
        "invalid reference `azurekv://my-vault/bad_name` at column 20: a secret name has 1-127 letters, digits and hyphens",
    ),
    (
        "azurekv://my-vault/name/123",
        "invalid reference `azurekv://my-vault/name/123` at column 25: a version is 32 hex digits",
    ),
    (
        "azure-token://tenant/client",
        "invalid reference `azure-token://tenant/client` at column 15: the tenant is a GUID or a domain such as contoso.onmicrosoft.com",
    ),
    (
        "azure-token://contoso.onmicrosoft.com/not-a-guid",
        "invalid reference `azure-token://contoso.onmicrosoft.com/not-a-guid` at column 39: the client id is a GUID",
    ),
    (
        "aws-sm://staging/api?region=x#f?region=y",
        "invalid reference `aws-sm://staging/api?region=x#f?region=y` at column 32: query given twice (before and after `#`)",
    ),
    (
        "env:NAME\tTAB",
        "invalid reference `env:NAME\\tTAB` at column 9: whitespace is not allowed in a reference",
    ),
];

#[test]
fn malformed_references() {
    assert!(MALFORMED.len() >= 30);
    for (input, message) in MALFORMED {
        let err = input.parse::<Reference>().expect_err(input);
        assert_eq!(err.kind(), ErrorKind::InvalidReference, "{input}");
        assert_eq!(err.to_string(), *message, "{input}");
        // The echoed reference has its control characters escaped (`\t`), as in the message.
        let echoed = broker_core::grammar::elide(input);
        assert_eq!(err.reference(), Some(&*echoed), "{input}");
    }
}

#[test]
fn unknown_scheme_lists_what_is_compiled_in() {
    let err = "vualt:secret/app".parse::<Reference>().unwrap_err();
    // No backend is linked into this test binary.
    assert_eq!(err.hint(), Some("schemes compiled in: none"));
}

fn query_value() -> impl Strategy<Value = String> {
    prop::collection::vec(
        any::<char>().prop_filter("no control", |c| !c.is_control()),
        0..12,
    )
    .prop_map(|v| v.into_iter().collect())
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_][a-z0-9_]{0,6}(\\.[a-z_][a-z0-9_]{0,6}){0,3}(\\[[0-9]{1,2}\\])?",
        "/[a-z0-9]{1,5}(/[a-z0-9]{1,5}){0,2}",
        "\\[\"[a-z. ]{1,6}\"\\](\\[[0-9]\\])?",
    ]
}

fn reference_text() -> impl Strategy<Value = String> {
    let target = prop_oneof![
        "[A-Za-z_][A-Za-z0-9_]{0,12}".prop_map(|t| format!("env:{t}")),
        ("[a-z0-9_.-]{0,10}[a-z0-9_]", prop::option::of(field())).prop_map(|(t, f)| {
            format!("sops:{t}{}", f.map(|f| format!("#{f}")).unwrap_or_default())
        }),
        "[a-z0-9_-]{1,10}(/[a-z0-9_-]{1,10}){0,2}".prop_map(|t| format!("agenix:{t}")),
        (
            "[a-z]{1,8}(/[a-z0-9_-]{1,8}){1,3}",
            prop::collection::vec(("[a-z_]{1,8}", query_value()), 0..3),
            prop::option::of(field())
        )
            .prop_map(|(t, q, f)| {
                let mut seen = std::collections::HashSet::new();
                let q: Vec<String> = q
                    .into_iter()
                    .filter(|(k, _)| seen.insert(k.clone()))
                    .map(|(k, v)| format!("{k}={}", percent(&v)))
                    .collect();
                let q = if q.is_empty() {
                    String::new()
                } else {
                    format!("?{}", q.join("&"))
                };
                format!(
                    "vault:{t}{q}{}",
                    f.map(|f| format!("#{f}")).unwrap_or_default()
                )
            }),
        (
            "[A-Za-z0-9_+=.@-]{1,20}(/[A-Za-z0-9_+=.@-]{1,10})?",
            prop::option::of("AWS[A-Z]{1,8}")
        )
            .prop_map(|(t, s)| format!(
                "aws-sm://{t}{}",
                s.map(|s| format!("?version-stage={s}")).unwrap_or_default()
            )),
        (
            "[a-z][a-z0-9-]{4,10}[a-z0-9]",
            "[A-Za-z0-9_-]{1,12}",
            prop::option::of(1u32..999)
        )
            .prop_map(|(p, s, v)| format!(
                "gcp-sm://{p}/{s}{}",
                v.map(|v| format!("/{v}")).unwrap_or_default()
            )),
    ];
    target
}

proptest! {
    #[test]
    fn display_round_trips(text in reference_text()) {
        let r: Reference = text.parse().map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        let shown = r.to_string();
        let again: Reference = shown.parse().map_err(|e| TestCaseError::fail(format!("{shown}: {e}")))?;
        prop_assert_eq!(&again, &r);
        prop_assert_eq!(again.to_string(), shown);
    }

    #[test]
    fn arbitrary_input_never_panics(text in "\\PC{0,40}") {
        let _ = text.parse::<Reference>();
    }
}

// A backend of this test's own, registered explicitly (no inventory), with its own grammar.

fn ticket_id(t: &str) -> std::result::Result<(), TargetError> {
    match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, c)) => Err((i, format!("`{c}` is not a digit; a ticket id is a number"))),
        None => Ok(()),
    }
}

fn no_provider(_: &BackendContext<'_>) -> Result<Arc<dyn CredentialProvider>> {
    Err(broker_core::Error::internal("not built in this test"))
}

const CAPS: Capabilities = Capabilities {
    resolve: true,
    mint: false,
    revoke: false,
    rotate: false,
};

static TICKETS: ProviderDescriptor = ProviderDescriptor {
    name: "tickets",
    schemes: &["ticket", "tickets-any"],
    capabilities: CAPS,
    default_badge: Badge::Local,
    credential_options: &[],
    grammar: &[SchemeGrammar {
        scheme: "ticket",
        form: "ticket://ID[#field][?queue=Q]",
        shape: Shape::Hierarchical,
        operation: Operation::Resolve,
        field: true,
        query: QueryKeys::Only(&["queue"]),
        validate: ticket_id,
    }],
    factory: no_provider,
};

fn tickets() -> Registry {
    let mut r = Registry::new();
    r.register(&TICKETS).unwrap();
    r
}

#[test]
fn an_explicit_registry_parses_its_own_scheme_with_its_own_grammar() {
    let r = tickets();
    let reference = r.parse("ticket://42?queue=ops#body").unwrap();
    assert_eq!(
        (reference.scheme(), reference.target(), reference.field()),
        ("ticket", "42", Some("body"))
    );
    assert_eq!(reference.query_param("queue"), Some("ops"));
    assert_eq!(reference.to_string(), "ticket://42?queue=ops#body");
    assert_eq!(
        Reference::parse_with(&r, "ticket://42").unwrap().target(),
        "42"
    );
    assert_eq!(
        r.grammar("ticket").unwrap().form,
        "ticket://ID[#field][?queue=Q]"
    );
    assert_eq!(r.require_scheme("ticket").unwrap().name, "tickets");

    for (input, message) in [
        (
            "ticket://4x2",
            "invalid reference `ticket://4x2` at column 11: `x` is not a digit; a ticket id is a number",
        ),
        (
            "ticket:42",
            "invalid reference `ticket:42` at column 8: `ticket` references use `//`: write ticket://ID[#field][?queue=Q]",
        ),
        (
            "ticket://42?prio=1",
            "invalid reference `ticket://42?prio=1` at column 13: unknown query parameter `prio` for `ticket` (accepted: queue)",
        ),
        (
            "tikcet://42",
            "invalid reference `tikcet://42` at column 1: unknown scheme `tikcet`; did you mean `ticket`?",
        ),
    ] {
        let err = r.parse(input).expect_err(input);
        assert_eq!(err.kind(), ErrorKind::InvalidReference, "{input}");
        assert_eq!(err.to_string(), message, "{input}");
    }
    // The unknown-scheme hint lists the schemes of the registry parsed against.
    let err = r.parse("nope:x").unwrap_err();
    assert_eq!(err.hint(), Some("schemes compiled in: ticket, tickets-any"));
    // The inventory registry of this binary has no `ticket` backend.
    let err = "ticket://42".parse::<Reference>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid reference `ticket://42` at column 1: unknown scheme `ticket`"
    );
    assert_eq!(err.hint(), Some("schemes compiled in: none"));
}

#[test]
fn a_registered_scheme_without_a_grammar_takes_any_shape() {
    let r = tickets();
    for text in ["tickets-any:a/b?x=1#f", "tickets-any://host/p"] {
        assert_eq!(r.parse(text).unwrap().to_string(), text);
    }
    assert!(r.grammar("tickets-any").is_none());
}

#[test]
fn the_products_grammar_applies_to_a_known_scheme_without_a_backend_grammar() {
    static PLAIN_ENV: ProviderDescriptor = ProviderDescriptor {
        name: "plain-env",
        schemes: &["env"],
        capabilities: CAPS,
        default_badge: Badge::Local,
        credential_options: &[],
        grammar: &[],
        factory: no_provider,
    };
    let mut r = Registry::new();
    r.register(&PLAIN_ENV).unwrap();
    assert_eq!(
        r.parse("env:1X").unwrap_err().to_string(),
        "invalid reference `env:1X` at column 5: `1` is not allowed in a variable name (letters, digits, `_`; not starting with a digit)"
    );
}

#[test]
fn register_refuses_a_grammar_for_a_scheme_it_does_not_serve() {
    static STRAY: ProviderDescriptor = ProviderDescriptor {
        name: "stray",
        schemes: &["stray"],
        capabilities: CAPS,
        default_badge: Badge::Local,
        credential_options: &[],
        grammar: &[broker_core::grammar::ENV],
        factory: no_provider,
    };
    let err = Registry::new().register(&STRAY).unwrap_err();
    assert_eq!(
        err.to_string(),
        "backend `stray` gives a grammar for `env`, which is not one of its schemes"
    );
}

#[test]
fn not_compiled_in_hints_name_only_features_that_exist() {
    let r = tickets();
    let err = r.require_scheme("vault").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotConfigured);
    assert_eq!(
        err.to_string(),
        "scheme `vault` is not compiled into this broker"
    );
    assert_eq!(
        err.hint(),
        Some("rebuild broker-cli with `--features vault`; compiled in: ticket, tickets-any")
    );
    let err = r.require_scheme("gcp-sm").unwrap_err();
    assert_eq!(
        err.hint(),
        Some("rebuild broker-cli with `--features gcp`; compiled in: ticket, tickets-any")
    );
    // `broker-cli`'s own unit test checks each named feature against its Cargo.toml.
    for k in broker_core::grammar::KNOWN {
        let hint = r
            .require_scheme(k.grammar.scheme)
            .unwrap_err()
            .hint()
            .map(str::to_owned);
        let hint = hint.unwrap();
        assert_eq!(
            hint.contains("--features"),
            k.feature.is_some(),
            "{}: {hint}",
            k.grammar.scheme
        );
    }
}
