//! The registry of compiled-in backends.
//!
//! Each backend crate submits a [`ProviderDescriptor`] with `inventory::submit!`. A crate that
//! nothing references is never linked and its registration silently disappears, so binaries
//! name every backend they want (`use broker_vault as _;`) and test that the registered schemes
//! are the expected ones. Embedders can skip inventory: build a [`Registry::new`], call
//! [`Registry::register`] with their own descriptors (a `static` in their crate), and parse
//! references with [`Registry::parse`], which checks each scheme against the grammar its
//! backend supplies ([`ProviderDescriptor::grammar`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::config::BackendSettings;
use crate::egress::Badge;
use crate::grammar::{self, SchemeGrammar};
use crate::{CredentialProvider, Error, Reference, Result};

/// What a backend can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Reads stored secrets.
    pub resolve: bool,
    /// Mints short-lived credentials.
    pub mint: bool,
    /// Revokes leases.
    pub revoke: bool,
    /// Rotates stored key material.
    pub rotate: bool,
}

/// Everything a factory gets to build a provider.
pub struct BackendContext<'a> {
    /// The backend's name (`vault`).
    pub name: &'a str,
    /// Its `backends.<name>` section, if the config has one.
    pub settings: Option<&'a BackendSettings>,
    /// The config file's directory.
    pub base_dir: &'a Path,
}

impl BackendContext<'_> {
    /// Parses the backend's section into `T` (with file and line in errors), or `T::default()`
    /// when the config has none.
    pub fn parse_settings<T: serde::de::DeserializeOwned + Default>(&self) -> Result<T> {
        match self.settings {
            Some(s) => s.parse(),
            None => Ok(T::default()),
        }
    }
    /// `path` made absolute against the config file's directory.
    pub fn path(&self, path: &str) -> PathBuf {
        crate::provider::resolve_path(self.base_dir, path)
    }
}

/// Builds a provider from its settings.
pub type Factory = fn(&BackendContext<'_>) -> Result<Arc<dyn CredentialProvider>>;

/// A backend's registration.
#[derive(Debug)]
pub struct ProviderDescriptor {
    /// The backend's name, also its cargo feature in `broker-cli` (`vault`).
    pub name: &'static str,
    /// The schemes it serves (`["age", "agenix"]`).
    pub schemes: &'static [&'static str],
    /// What it can do.
    pub capabilities: Capabilities,
    /// The badge of its destinations when nothing else is known.
    pub default_badge: Badge,
    /// Per-credential option keys it accepts besides the core ones (`["identity"]`).
    pub credential_options: &'static [&'static str],
    /// The grammar of its schemes (at most one per scheme in [`schemes`](Self::schemes)). A
    /// scheme left out takes the product's grammar for it ([`grammar::KNOWN`]) if there is
    /// one, else any shape, any query keys and a `#field`.
    pub grammar: &'static [SchemeGrammar],
    /// Builds the provider.
    pub factory: Factory,
}

inventory::collect!(ProviderDescriptor);

/// A backend's JSON Schema for its `backends.<name>` section, submitted next to its
/// [`ProviderDescriptor`] with `inventory::submit!` (optional: a backend without one gets
/// `{"type": "object"}`). `broker schema` puts it under `backends.<name>`, so the schema of
/// `.broker.yml` follows the backends compiled in.
#[derive(Debug)]
pub struct SettingsSchema {
    /// The backend's name, as in its descriptor.
    pub backend: &'static str,
    /// The schema of its section (a JSON Schema object, draft 2020-12).
    pub schema: fn() -> serde_json::Value,
}

inventory::collect!(SettingsSchema);

impl SettingsSchema {
    /// A root schema for a settings type (`schemars::schema_for!(Settings)` as JSON) made fit
    /// to sit under `backends.<name>`: `$schema`, `title` and the type's own `description` (its
    /// rustdoc, written for Rust readers) dropped, and every local `#/$defs/...` reference
    /// replaced by its definition, so nothing points at a root it no longer has. (A recursive
    /// type cannot be inlined: its inner reference is left dangling; settings have none.)
    pub fn section(root: serde_json::Value) -> serde_json::Value {
        let serde_json::Value::Object(mut root) = root else {
            return serde_json::json!({ "type": "object" });
        };
        let defs = match root.remove("$defs") {
            Some(serde_json::Value::Object(defs)) => defs,
            _ => serde_json::Map::new(),
        };
        for key in ["$schema", "title", "description"] {
            root.remove(key);
        }
        let mut section = serde_json::Value::Object(root);
        inline_refs(&mut section, &defs, &mut Vec::new());
        section
    }
}

/// Replaces `{"$ref": "#/$defs/NAME", ...}` by NAME's definition (its sibling keywords, such
/// as a field's own `description`, win over the definition's), depth-first; `seen` stops at a definition already being inlined.
fn inline_refs(
    value: &mut serde_json::Value,
    defs: &serde_json::Map<String, serde_json::Value>,
    seen: &mut Vec<String>,
) {
    match value {
        serde_json::Value::Object(map) => {
            let target = map
                .get("$ref")
                .and_then(serde_json::Value::as_str)
                .and_then(|r| r.strip_prefix("#/$defs/"))
                .map(str::to_string);
            if let Some(name) = target
                && let Some(def) = defs.get(&name)
                && !seen.contains(&name)
            {
                map.remove("$ref");
                if let serde_json::Value::Object(def) = def {
                    for (k, v) in def {
                        map.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
                seen.push(name);
                for v in map.values_mut() {
                    inline_refs(v, defs, seen);
                }
                seen.pop();
                return;
            }
            for v in map.values_mut() {
                inline_refs(v, defs, seen);
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                inline_refs(v, defs, seen);
            }
        }
        _ => {}
    }
}

/// The backends of this process, sorted by name; immutable once built.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    by_name: BTreeMap<&'static str, &'static ProviderDescriptor>,
    by_scheme: BTreeMap<&'static str, &'static ProviderDescriptor>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every descriptor submitted through `inventory` in this binary.
    ///
    /// # Panics
    /// If two linked backends claim the same name or scheme: a build error, not a runtime one.
    pub fn from_inventory() -> Self {
        let mut registry = Registry::new();
        let mut all: Vec<&'static ProviderDescriptor> =
            inventory::iter::<ProviderDescriptor>.into_iter().collect();
        all.sort_by_key(|d| d.name);
        for d in all {
            if let Err(e) = registry.register(d) {
                panic!("conflicting backend registrations: {e}");
            }
        }
        registry
    }

    /// The process-wide registry built from `inventory`.
    pub fn global() -> &'static Registry {
        static GLOBAL: OnceLock<Registry> = OnceLock::new();
        GLOBAL.get_or_init(Registry::from_inventory)
    }

    /// Adds a backend; refuses duplicate names and schemes, and a grammar for a scheme the
    /// descriptor does not serve (or two for one scheme).
    pub fn register(&mut self, descriptor: &'static ProviderDescriptor) -> Result<()> {
        for (i, g) in descriptor.grammar.iter().enumerate() {
            if !descriptor.schemes.contains(&g.scheme) {
                return Err(Error::internal(format!(
                    "backend `{}` gives a grammar for `{}`, which is not one of its schemes",
                    descriptor.name, g.scheme
                )));
            }
            if descriptor.grammar[..i].iter().any(|o| o.scheme == g.scheme) {
                return Err(Error::internal(format!(
                    "backend `{}` gives two grammars for `{}`",
                    descriptor.name, g.scheme
                )));
            }
        }
        if self.by_name.contains_key(descriptor.name) {
            return Err(Error::internal(format!(
                "backend `{}` registered twice",
                descriptor.name
            )));
        }
        for scheme in descriptor.schemes {
            if let Some(other) = self.by_scheme.get(scheme) {
                return Err(Error::internal(format!(
                    "scheme `{scheme}` claimed by both `{}` and `{}`",
                    other.name, descriptor.name
                )));
            }
        }
        self.by_name.insert(descriptor.name, descriptor);
        for scheme in descriptor.schemes {
            self.by_scheme.insert(scheme, descriptor);
        }
        Ok(())
    }

    /// The backend serving `scheme`.
    pub fn for_scheme(&self, scheme: &str) -> Option<&'static ProviderDescriptor> {
        self.by_scheme.get(scheme).copied()
    }

    /// The grammar references to `scheme` are checked against: the one its backend supplies,
    /// else the product's ([`grammar::lookup`]), whether or not the backend is compiled in.
    /// `None` for a registered scheme without one (any shape) and for an unknown scheme.
    pub fn grammar(&self, scheme: &str) -> Option<&'static SchemeGrammar> {
        self.for_scheme(scheme)
            .and_then(|d| d.grammar.iter().find(|g| g.scheme == scheme))
            .or_else(|| grammar::lookup(scheme))
    }

    /// Parses `text` against this registry's schemes and grammars (what `text.parse()` does
    /// with [`Registry::global`]).
    pub fn parse(&self, text: &str) -> Result<Reference> {
        Reference::parse_with(self, text)
    }

    /// The backend named `name`.
    pub fn by_name(&self, name: &str) -> Option<&'static ProviderDescriptor> {
        self.by_name.get(name).copied()
    }

    /// The backend serving `scheme`, or an error saying it is unknown or not compiled in.
    pub fn require_scheme(&self, scheme: &str) -> Result<&'static ProviderDescriptor> {
        if let Some(d) = self.for_scheme(scheme) {
            return Ok(d);
        }
        let compiled = self.schemes().join(", ");
        match grammar::known(scheme) {
            Some(k) => Err(Error::not_configured(format!(
                "scheme `{scheme}` is not compiled into this broker"
            ))
            .with_hint(match k.feature {
                Some(feature) => {
                    format!(
                        "rebuild broker-cli with `--features {feature}`; compiled in: {compiled}"
                    )
                }
                None => format!(
                    "the `{}` backend is planned but not written yet; compiled in: {compiled}",
                    k.backend
                ),
            })),
            None => Err(Error::new(
                crate::ErrorKind::InvalidReference,
                format!("unknown scheme `{scheme}`"),
            )
            .with_hint(format!("schemes compiled in: {compiled}"))),
        }
    }

    /// Compiled-in schemes, sorted.
    pub fn schemes(&self) -> Vec<String> {
        self.by_scheme.keys().map(|s| s.to_string()).collect()
    }

    /// The JSON Schema of backend `name`'s `backends.<name>` section: the one its crate
    /// submitted as a [`SettingsSchema`], else any object.
    pub fn settings_schema(&self, name: &str) -> serde_json::Value {
        inventory::iter::<SettingsSchema>
            .into_iter()
            .find(|s| s.backend == name)
            .map_or_else(|| serde_json::json!({ "type": "object" }), |s| (s.schema)())
    }

    /// Compiled-in backends, sorted by name.
    pub fn descriptors(&self) -> impl Iterator<Item = &'static ProviderDescriptor> + '_ {
        self.by_name.values().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::SettingsSchema;
    use serde_json::json;

    #[test]
    fn a_section_has_no_root_keywords_and_no_refs() {
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "Settings",
            "description": "Rust docs.",
            "type": "object",
            "properties": {
                "auth": { "$ref": "#/$defs/Auth", "description": "The field's own." },
                "many": { "type": "array", "items": { "$ref": "#/$defs/Auth" } }
            },
            "$defs": {
                "Auth": { "type": "object", "description": "The type's.", "properties": { "m": { "$ref": "#/$defs/M" } } },
                "M": { "enum": ["a", "b"] }
            }
        });
        assert_eq!(
            SettingsSchema::section(root),
            json!({
                "type": "object",
                "properties": {
                    "auth": { "type": "object", "description": "The field's own.", "properties": { "m": { "enum": ["a", "b"] } } },
                    "many": { "type": "array", "items": { "type": "object", "description": "The type's.", "properties": { "m": { "enum": ["a", "b"] } } } }
                }
            })
        );
        assert_eq!(
            SettingsSchema::section(json!(null)),
            json!({ "type": "object" })
        );
    }
}
