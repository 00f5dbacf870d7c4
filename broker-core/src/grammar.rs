//! Scheme grammars: what a backend's references look like.
//!
//! A reference is `scheme:opaque` or `scheme://target`, then an optional `?query` and an optional
//! `#field`. A [`SchemeGrammar`] fixes, per scheme, which shape it takes, whether it resolves or
//! mints, which query keys it accepts, whether it takes a field selector, and how its target is
//! checked. Each backend supplies the grammar of its schemes in its
//! [`ProviderDescriptor`](crate::ProviderDescriptor), so an embedder's own backend brings its
//! own grammar; parsing asks the [`Registry`](crate::Registry) it is given.
//!
//! [`KNOWN`] lists the product's schemes (the constants below, which the product's backends put
//! in their descriptors), so a reference to a scheme whose backend is not compiled in still
//! parses and the error can say "not compiled in", with the cargo feature when one exists.
//! `docs/references.md` lists the same forms, each as a doc-test.

/// What a scheme's references are used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `ref:` only: read a stored secret.
    Resolve,
    /// `mint:` only: create a short-lived credential.
    Mint,
    /// Either (Vault paths: KV reads and dynamic secrets).
    Both,
}

/// Which query keys a scheme takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKeys {
    /// No `?query` at all.
    None,
    /// Only these keys.
    Only(&'static [&'static str]),
    /// Any key (parameters passed through to the backend).
    Any,
}

/// A problem found in a target: byte offset within the target, and why.
pub type TargetError = (usize, String);

/// How many characters of user input an error message echoes before [`elide`] cuts it.
pub const ECHO_LIMIT: usize = 200;

/// `text` as an error message may echo it: unchanged up to [`ECHO_LIMIT`] characters, else its
/// first [`ECHO_LIMIT`] characters, an ellipsis and the total length (`env:AAAA… (1048581
/// chars)`), so a huge reference or config value cannot make a huge error. Control characters
/// and bidi overrides are escaped ([`escape_controls`]), so echoed input cannot drive the
/// terminal or forge lines.
pub fn elide(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(ECHO_LIMIT) {
        None => escape_controls(text),
        Some((cut, _)) => std::borrow::Cow::Owned(format!(
            "{}… ({} chars)",
            escape_controls(&text[..cut]),
            text.chars().count()
        )),
    }
}

/// Whether `c` must not reach a terminal as it is: C0 controls, DEL, C1 controls and the
/// Unicode bidi embeddings, overrides and isolates (U+202A–U+202E, U+2066–U+2069).
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every [`is_unsafe_char`] escaped: `\n`, `\r`, `\t`, `\x1b` for the other
/// ASCII controls, `\u{9b}` / `\u{202e}` for the rest. Borrowed when there is nothing to
/// escape; a backslash is left as it is, so escaping twice changes nothing.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(is_unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if is_unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// How a scheme's references are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `scheme:target` (a variable name, a file path, `MOUNT/PATH`).
    Opaque,
    /// `scheme://authority/path` (a secret id, an ARN, `PROJECT/SECRET`).
    Hierarchical,
}

/// The grammar of one scheme, supplied by the backend that serves it in its
/// [`ProviderDescriptor::grammar`](crate::ProviderDescriptor::grammar).
///
/// A scheme whose descriptor gives no grammar takes the product's grammar for it from
/// [`KNOWN`] when there is one, and otherwise any shape, any query and a field selector.
#[derive(Debug, Clone, Copy)]
pub struct SchemeGrammar {
    /// The scheme, e.g. `vault`.
    pub scheme: &'static str,
    /// The form as documentation and error messages show it, e.g. `vault:MOUNT/PATH[#field]`.
    pub form: &'static str,
    /// `scheme:target` or `scheme://target`.
    pub shape: Shape,
    /// Resolve, mint, or both.
    pub operation: Operation,
    /// Whether `#field` is accepted.
    pub field: bool,
    /// Which query keys are accepted.
    pub query: QueryKeys,
    /// Checks the target (the part between the scheme and `?`/`#`), offline.
    pub validate: fn(&str) -> Result<(), TargetError>,
}

impl SchemeGrammar {
    /// Whether references use `scheme://`.
    pub fn is_hierarchical(&self) -> bool {
        self.shape == Shape::Hierarchical
    }
}

/// `env:NAME`.
pub const ENV: SchemeGrammar = SchemeGrammar {
    scheme: "env",
    form: "env:NAME",
    shape: Shape::Opaque,
    operation: Operation::Resolve,
    field: false,
    query: QueryKeys::None,
    validate: env_name,
};

/// `sops:FILE[#key.path][?format=F]`.
pub const SOPS: SchemeGrammar = SchemeGrammar {
    scheme: "sops",
    form: "sops:FILE[#key.path][?format=yaml|json|dotenv|ini|binary]",
    shape: Shape::Opaque,
    operation: Operation::Resolve,
    field: true,
    query: QueryKeys::Only(&["format"]),
    validate: file_path,
};

/// `age:FILE`.
pub const AGE: SchemeGrammar = SchemeGrammar {
    scheme: "age",
    form: "age:FILE",
    shape: Shape::Opaque,
    operation: Operation::Resolve,
    field: false,
    query: QueryKeys::None,
    validate: file_path,
};

/// `agenix:FILE`.
pub const AGENIX: SchemeGrammar = SchemeGrammar {
    scheme: "agenix",
    form: "agenix:FILE",
    shape: Shape::Opaque,
    operation: Operation::Resolve,
    field: false,
    query: QueryKeys::None,
    validate: file_path,
};

/// `vault:MOUNT/PATH[#field][?PARAM=VALUE...]`.
pub const VAULT: SchemeGrammar = SchemeGrammar {
    scheme: "vault",
    form: "vault:MOUNT/PATH[#field][?version=N|PARAM=VALUE...]",
    shape: Shape::Opaque,
    operation: Operation::Both,
    field: true,
    query: QueryKeys::Any,
    validate: vault_path,
};

/// `aws-sm://SECRET_ID[#field][?version-stage=S|version-id=V&region=R]`.
pub const AWS_SM: SchemeGrammar = SchemeGrammar {
    scheme: "aws-sm",
    form: "aws-sm://SECRET_ID[#field][?version-stage=S|version-id=V&region=R]",
    shape: Shape::Hierarchical,
    operation: Operation::Resolve,
    field: true,
    query: QueryKeys::Only(&["version-stage", "version-id", "region"]),
    validate: aws_secret_id,
};

/// `aws-sts://ROLE_ARN[?PARAM=VALUE...]`.
pub const AWS_STS: SchemeGrammar = SchemeGrammar {
    scheme: "aws-sts",
    form: "aws-sts://ROLE_ARN[?PARAM=VALUE...]",
    shape: Shape::Hierarchical,
    operation: Operation::Mint,
    field: false,
    query: QueryKeys::Any,
    validate: aws_role_arn,
};

/// `gcp-sm://PROJECT/SECRET[/VERSION][#field][?location=L]` (VERSION: a number, `latest` or
/// an alias).
pub const GCP_SM: SchemeGrammar = SchemeGrammar {
    scheme: "gcp-sm",
    form: "gcp-sm://PROJECT/SECRET[/VERSION|/ALIAS][#field][?location=L]",
    shape: Shape::Hierarchical,
    operation: Operation::Resolve,
    field: true,
    query: QueryKeys::Only(&["location"]),
    validate: gcp_secret,
};

/// `gcp-iam://SA_EMAIL[?id-token=true&audience=URL]`.
pub const GCP_IAM: SchemeGrammar = SchemeGrammar {
    scheme: "gcp-iam",
    form: "gcp-iam://SA_EMAIL[?id-token=true&audience=URL]",
    shape: Shape::Hierarchical,
    operation: Operation::Mint,
    field: false,
    query: QueryKeys::Only(&["id-token", "audience"]),
    validate: gcp_service_account,
};

/// `azurekv://VAULT/NAME[/VERSION][#field]`.
pub const AZUREKV: SchemeGrammar = SchemeGrammar {
    scheme: "azurekv",
    form: "azurekv://VAULT/NAME[/VERSION][#field]",
    shape: Shape::Hierarchical,
    operation: Operation::Resolve,
    field: true,
    query: QueryKeys::None,
    validate: azure_secret,
};

/// `azure-token://TENANT/CLIENT[?scope=SCOPE]`.
pub const AZURE_TOKEN: SchemeGrammar = SchemeGrammar {
    scheme: "azure-token",
    form: "azure-token://TENANT/CLIENT[?scope=SCOPE]",
    shape: Shape::Hierarchical,
    operation: Operation::Mint,
    field: false,
    query: QueryKeys::Only(&["scope"]),
    validate: azure_client,
};

/// A scheme of the product, known whether or not its backend is compiled in.
#[derive(Debug, Clone, Copy)]
pub struct KnownScheme {
    /// Its grammar: the one its backend supplies, and the one references are checked against
    /// when the backend is not compiled in (so `broker check` and config errors can say
    /// "not compiled in" about a well-formed reference).
    pub grammar: &'static SchemeGrammar,
    /// The backend that serves it (`aws`).
    pub backend: &'static str,
    /// The `broker-cli` cargo feature that compiles the backend in, if the backend exists.
    pub feature: Option<&'static str>,
}

/// Every scheme of the product. Backends supply their grammar in their descriptor; this list
/// only serves references to schemes whose backend is absent, and hints.
pub const KNOWN: &[KnownScheme] = &[
    KnownScheme {
        grammar: &ENV,
        backend: "env",
        feature: Some("env"),
    },
    KnownScheme {
        grammar: &SOPS,
        backend: "sops",
        feature: Some("sops"),
    },
    KnownScheme {
        grammar: &AGE,
        backend: "age",
        feature: Some("age"),
    },
    KnownScheme {
        grammar: &AGENIX,
        backend: "age",
        feature: Some("age"),
    },
    KnownScheme {
        grammar: &VAULT,
        backend: "vault",
        feature: Some("vault"),
    },
    KnownScheme {
        grammar: &AWS_SM,
        backend: "aws",
        feature: Some("aws"),
    },
    KnownScheme {
        grammar: &AWS_STS,
        backend: "aws",
        feature: Some("aws"),
    },
    KnownScheme {
        grammar: &GCP_SM,
        backend: "gcp",
        feature: Some("gcp"),
    },
    KnownScheme {
        grammar: &GCP_IAM,
        backend: "gcp",
        feature: Some("gcp"),
    },
    KnownScheme {
        grammar: &AZUREKV,
        backend: "azure",
        feature: Some("azure"),
    },
    KnownScheme {
        grammar: &AZURE_TOKEN,
        backend: "azure",
        feature: Some("azure"),
    },
];

/// The product's entry for `scheme`, if it knows the scheme.
pub fn known(scheme: &str) -> Option<&'static KnownScheme> {
    KNOWN.iter().find(|k| k.grammar.scheme == scheme)
}

/// The product's grammar for `scheme`, if it knows the scheme. The grammar a reference is
/// checked against is [`Registry::grammar`](crate::Registry::grammar): the backend's own first.
pub fn lookup(scheme: &str) -> Option<&'static SchemeGrammar> {
    known(scheme).map(|k| k.grammar)
}

/// A target check that accepts every target (for schemes whose targets the backend checks).
pub fn any_target(_: &str) -> Result<(), TargetError> {
    Ok(())
}

fn err<T>(at: usize, why: impl Into<String>) -> Result<T, TargetError> {
    Err((at, why.into()))
}

/// An environment variable name: letters, digits and `_`, not starting with a digit.
pub fn env_name(t: &str) -> Result<(), TargetError> {
    for (i, c) in t.char_indices() {
        let ok = c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit());
        if !ok {
            return err(
                i,
                format!(
                    "`{c}` is not allowed in a variable name (letters, digits, `_`; not starting with a digit)"
                ),
            );
        }
    }
    Ok(())
}

/// A file path that does not end with `/`.
pub fn file_path(t: &str) -> Result<(), TargetError> {
    if t.ends_with('/') {
        return err(t.len() - 1, "a file path must not end with `/`");
    }
    Ok(())
}

/// Counts `/`-separated segments, refusing empty ones and `.`/`..`.
fn path_segments(t: &str) -> Result<usize, TargetError> {
    let mut start = 0;
    let mut count = 0;
    for seg in t.split('/') {
        if seg.is_empty() {
            let why = if start == 0 {
                "path must not start with `/`"
            } else {
                "empty path segment (`//` or trailing `/`)"
            };
            return err(start.min(t.len().saturating_sub(1)), why);
        }
        if seg == "." || seg == ".." {
            return err(start, format!("`{seg}` is not allowed as a path segment"));
        }
        count += 1;
        start += seg.len() + 1;
    }
    Ok(count)
}

fn vault_path(t: &str) -> Result<(), TargetError> {
    if path_segments(t)? < 2 {
        return err(
            t.len(),
            "expected MOUNT/PATH (at least two segments), e.g. secret/data/app",
        );
    }
    Ok(())
}

fn aws_secret_id(t: &str) -> Result<(), TargetError> {
    if let Some(rest) = t.strip_prefix("arn:") {
        let parts: Vec<&str> = rest.splitn(6, ':').collect();
        if parts.len() < 6
            || parts[1] != "secretsmanager"
            || parts[4] != "secret"
            || parts[5].is_empty()
        {
            return err(
                0,
                "expected arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME",
            );
        }
        if parts[2].is_empty() {
            return err(0, "the secret ARN has no region");
        }
        return Ok(());
    }
    if t.len() > 512 {
        return err(512, "a secret name has at most 512 characters");
    }
    for (i, c) in t.char_indices() {
        if !(c.is_ascii_alphanumeric() || "/_+=.@-".contains(c)) {
            return err(
                i,
                format!("`{c}` is not allowed in a secret name (letters, digits, /_+=.@-)"),
            );
        }
    }
    Ok(())
}

fn aws_role_arn(t: &str) -> Result<(), TargetError> {
    const SHAPE: &str = "expected a role ARN: arn:aws:iam::ACCOUNT_ID:role/NAME";
    let Some(rest) = t.strip_prefix("arn:") else {
        return err(0, SHAPE);
    };
    let parts: Vec<&str> = rest.splitn(5, ':').collect();
    if parts.len() != 5 || !["aws", "aws-cn", "aws-us-gov"].contains(&parts[0]) || parts[1] != "iam"
    {
        return err(0, SHAPE);
    }
    if !parts[2].is_empty() {
        return err(4 + parts[0].len() + 5, "an IAM ARN has no region (`iam::`)");
    }
    let account_at = 4 + parts[0].len() + 6;
    if parts[3].len() != 12 || !parts[3].bytes().all(|b| b.is_ascii_digit()) {
        return err(account_at, "the account id must be 12 digits");
    }
    let resource_at = account_at + 13;
    let Some(role) = parts[4].strip_prefix("role/") else {
        return err(resource_at, "the resource must be `role/NAME`");
    };
    let name = role.rsplit('/').next().unwrap_or_default();
    if name.is_empty() || name.len() > 64 {
        return err(resource_at + 5, "a role name has 1 to 64 characters");
    }
    for (i, c) in role.char_indices() {
        if !(c.is_ascii_alphanumeric() || "+=,.@_-/".contains(c)) {
            return err(
                resource_at + 5 + i,
                format!("`{c}` is not allowed in a role name"),
            );
        }
    }
    Ok(())
}

fn gcp_secret(t: &str) -> Result<(), TargetError> {
    let segs: Vec<&str> = t.split('/').collect();
    if !(2..=3).contains(&segs.len()) {
        return err(0, "expected PROJECT/SECRET or PROJECT/SECRET/VERSION");
    }
    let project = segs[0];
    let numeric = !project.is_empty() && project.bytes().all(|b| b.is_ascii_digit());
    let named = (6..=30).contains(&project.len())
        && project.starts_with(|c: char| c.is_ascii_lowercase())
        && project
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !project.ends_with('-');
    if !(numeric || named) {
        return err(
            0,
            "a project is a project number or an id of 6-30 lowercase letters, digits and hyphens",
        );
    }
    let secret_at = project.len() + 1;
    let secret = segs[1];
    if secret.is_empty()
        || secret.len() > 255
        || !secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return err(
            secret_at,
            "a secret id has 1-255 letters, digits, `_` or `-`",
        );
    }
    if let Some(version) = segs.get(2) {
        let number = !version.is_empty()
            && version.bytes().all(|b| b.is_ascii_digit())
            && !version.starts_with('0');
        // `latest` or a version alias: a letter, then letters, digits, `_` or `-`, at most 63.
        let alias = (1..=63).contains(&version.len())
            && version.starts_with(|c: char| c.is_ascii_alphabetic())
            && version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !(number || alias) {
            return err(
                secret_at + secret.len() + 1,
                "a version is a positive number, `latest` or an alias (a letter, then letters, digits, `_` or `-`)",
            );
        }
    }
    Ok(())
}

fn gcp_service_account(t: &str) -> Result<(), TargetError> {
    let Some((local, domain)) = t.split_once('@') else {
        return err(
            0,
            "expected a service account email: NAME@PROJECT.iam.gserviceaccount.com",
        );
    };
    if local.is_empty()
        || !local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return err(0, "the account name has letters, digits, `-`, `_` or `.`");
    }
    if !domain.ends_with(".gserviceaccount.com") {
        return err(
            local.len() + 1,
            "the domain must end with .gserviceaccount.com",
        );
    }
    Ok(())
}

fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn azure_secret(t: &str) -> Result<(), TargetError> {
    let segs: Vec<&str> = t.split('/').collect();
    if !(2..=3).contains(&segs.len()) {
        return err(0, "expected VAULT/NAME or VAULT/NAME/VERSION");
    }
    let vault = segs[0];
    let vault_ok = (3..=24).contains(&vault.len())
        && vault.starts_with(|c: char| c.is_ascii_alphabetic())
        && vault
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !vault.ends_with('-')
        && !vault.contains("--");
    if !vault_ok {
        return err(
            0,
            "a vault name has 3-24 letters, digits and single hyphens, starting with a letter",
        );
    }
    let name_at = vault.len() + 1;
    let name = segs[1];
    if name.is_empty()
        || name.len() > 127
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return err(
            name_at,
            "a secret name has 1-127 letters, digits and hyphens",
        );
    }
    if let Some(version) = segs.get(2)
        && (version.len() != 32 || !version.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return err(name_at + name.len() + 1, "a version is 32 hex digits");
    }
    Ok(())
}

fn azure_client(t: &str) -> Result<(), TargetError> {
    let Some((tenant, client)) = t.split_once('/') else {
        return err(t.len(), "expected TENANT/CLIENT_ID");
    };
    let tenant_ok = is_guid(tenant)
        || (tenant.contains('.')
            && tenant
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'));
    if !tenant_ok {
        return err(
            0,
            "the tenant is a GUID or a domain such as contoso.onmicrosoft.com",
        );
    }
    if !is_guid(client) {
        return err(tenant.len() + 1, "the client id is a GUID");
    }
    Ok(())
}

/// Edit distance, for did-you-mean suggestions.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate within a small edit distance, if any.
pub fn did_you_mean<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let input_len = input.chars().count();
    candidates
        .into_iter()
        // The distance is at least the difference in length: skip hopeless candidates
        // without the quadratic computation (a huge input would take seconds).
        .filter(|c| input_len.abs_diff(c.chars().count()) <= 2.max(c.len() / 3))
        .map(|c| (edit_distance(input, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3) && *d < c.len().max(input.len()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("vualt", ["env", "vault", "sops"]),
            Some("vault")
        );
        assert_eq!(
            did_you_mean("aws-ms", ["aws-sm", "aws-sts"]),
            Some("aws-sm")
        );
        assert_eq!(did_you_mean("zzzzzz", ["env", "vault"]), None);
    }

    #[test]
    fn known_schemes_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for k in KNOWN {
            assert!(
                seen.insert(k.grammar.scheme),
                "duplicate {}",
                k.grammar.scheme
            );
        }
    }
}
