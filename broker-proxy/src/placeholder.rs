//! Placeholders: what the child holds instead of a value.
//!
//! `prefix` followed by `length` characters drawn uniformly from `A-Z a-z 0-9` by the
//! operating system's CSPRNG (through `rand`): at least 22 characters, so at least 130 bits,
//! whatever the prefix. A placeholder is not a secret — it is worthless away from this run's
//! proxy — but it is unguessable, so it cannot collide with text the child sends for other
//! reasons.

use rand::Rng;
use rand::distr::Alphanumeric;

use crate::settings::PlaceholderShape;

/// A fresh placeholder of `shape`.
pub fn generate(shape: &PlaceholderShape) -> String {
    let mut out = String::with_capacity(shape.prefix.len() + shape.length);
    out.push_str(&shape.prefix);
    out.extend(
        rand::rng()
            .sample_iter(&Alphanumeric)
            .take(shape.length)
            .map(char::from),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_and_uniqueness() {
        let shape = PlaceholderShape {
            prefix: "sk-".into(),
            length: 32,
        };
        let a = generate(&shape);
        let b = generate(&shape);
        assert!(a.starts_with("sk-") && a.len() == 35);
        assert!(a[3..].bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
