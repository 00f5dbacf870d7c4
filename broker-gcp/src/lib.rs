//! `gcp-sm://` and `gcp-iam://` — Google Cloud Secret Manager secrets and IAM Credentials tokens.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
