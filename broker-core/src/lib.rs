//! Core of the credential broker.
//!
//! A config names *references* (`vault:secret/data/staging#token`), never values. The broker
//! resolves or mints the value just in time, hands it to one task as an environment variable
//! or a 0600 file, and wipes it when the task ends. Nothing leaves the machine unless egress is
//! enabled, and [`Broker::manifest`] shows, without resolving anything, what would leave and to
//! where.
//!
//! - [`Reference`]: the reference grammar ([`grammar`] has every scheme).
//! - [`CredentialProvider`]: the trait each backend implements; backends register a
//!   [`ProviderDescriptor`] with `inventory`.
//! - [`SecretValue`], [`Credential`]: values, zeroized on drop, never printed.
//! - [`Error`]: one error type with an [`ErrorKind`]; never holds a value.
//! - [`config`]: `.broker.yml`; [`egress`]: destinations, badges and the gate;
//!   [`scratch`]: per-task scratch dirs; [`Broker`]: the facade.
//! - [`session`]: the delivery engine (apply to a child, redact its output, re-mint file
//!   credentials, wipe) shared by `broker run`, the daemon and embedders.
//!
//! This crate has no HTTP client or cloud SDK dependency; backends bring their own.
// `unsafe` only in `sys` (`mlock` of the pages under secret buffers), nowhere else.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod audit;
mod broker;
pub mod config;
pub mod egress;
mod error;
pub mod grammar;
pub mod json;
mod layers;
pub mod lease;
pub mod localfile;
pub mod policy;
pub mod provider;
pub mod redact;
mod reference;
pub mod registry;
pub mod retry;
pub mod scratch;
mod secret;
pub mod session;
#[allow(unsafe_code)]
mod sys;
#[cfg(feature = "testkit")]
pub mod testkit;

/// `docs/references.md`: every accepted reference form, run as doc-tests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/references.md")]
pub struct ReferencesDoc;

pub use async_trait::async_trait;
pub use inventory;

pub use broker::{BackendReport, Broker, Delivery, Manifest, ManifestEntry};
pub use config::{Config, CredentialSpec, DeliveryKind, Source};
pub use egress::{Badge, Destination, Target};
pub use error::{Error, ErrorKind, Result};
pub use layers::Refreshed;
pub use provider::{
    Check, CredentialProvider, Request, RequestContext, ResolveRef, Rotation, Terms,
};
pub use reference::{FieldPath, FieldSegment, Reference};
pub use registry::{BackendContext, Capabilities, ProviderDescriptor, Registry};
pub use secret::{Credential, Lease, SecretValue};
pub use session::{Pumps, Session, SharedRedactor};

/// Selects `path` from a JSON document held in a secret; the result is a new secret (strings
/// as their text, other values as compact JSON). Errors never contain the document, and the
/// parsed document is wiped before this returns ([`json::select`]).
pub fn select_json(document: &SecretValue, path: &FieldPath) -> Result<SecretValue> {
    json::select(document, path)
}
