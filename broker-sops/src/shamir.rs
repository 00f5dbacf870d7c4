//! Shamir's secret sharing over GF(2^8), compatible with HashiCorp Vault's `shamir` package
//! (which sops uses): each share is the y-values followed by its x-coordinate byte.

use zeroize::Zeroizing;

fn mul(mut a: u8, mut b: u8) -> u8 {
    let mut r = 0u8;
    while b != 0 {
        if b & 1 != 0 {
            r ^= a;
        }
        let carry = a & 0x80;
        a <<= 1;
        if carry != 0 {
            a ^= 0x1b;
        }
        b >>= 1;
    }
    r
}

fn inverse(a: u8) -> u8 {
    // a^254 = a^-1 in GF(2^8).
    let mut result = 1u8;
    let mut base = a;
    let mut e = 254u32;
    while e > 0 {
        if e & 1 == 1 {
            result = mul(result, base);
        }
        base = mul(base, base);
        e >>= 1;
    }
    result
}

fn div(a: u8, b: u8) -> u8 {
    mul(a, inverse(b))
}

/// Recombines `parts` (at least the threshold number). Errors are value-free.
pub(crate) fn combine(parts: &[Zeroizing<Vec<u8>>]) -> Result<Zeroizing<Vec<u8>>, String> {
    if parts.len() < 2 {
        return Err("fewer than two Shamir parts".into());
    }
    let len = parts[0].len();
    if len < 2 || parts.iter().any(|p| p.len() != len) {
        return Err("Shamir parts have different or too short lengths".into());
    }
    let xs: Vec<u8> = parts.iter().map(|p| p[len - 1]).collect();
    for (i, x) in xs.iter().enumerate() {
        if xs[..i].contains(x) {
            return Err("duplicate Shamir part".into());
        }
    }
    let mut secret = Zeroizing::new(vec![0u8; len - 1]);
    for (idx, byte) in secret.iter_mut().enumerate() {
        // Lagrange interpolation at x = 0.
        let mut acc = 0u8;
        for (i, xi) in xs.iter().enumerate() {
            let mut basis = 1u8;
            for (j, xj) in xs.iter().enumerate() {
                if i != j {
                    basis = mul(basis, div(*xj, *xj ^ *xi));
                }
            }
            acc ^= mul(parts[i][idx], basis);
        }
        *byte = acc;
    }
    Ok(secret)
}

/// Splits `secret` into `parts` shares, any `threshold` of which recombine it.
pub(crate) fn split(
    secret: &[u8],
    parts: usize,
    threshold: usize,
) -> Result<Vec<Zeroizing<Vec<u8>>>, String> {
    if !(2..=255).contains(&parts) || threshold < 2 || threshold > parts {
        return Err("invalid Shamir parameters".into());
    }
    // Distinct non-zero x coordinates.
    let mut xs: Vec<u8> = (1..=255u8).collect();
    for i in (1..xs.len()).rev() {
        let j = (rand::random::<u32>() as usize) % (i + 1);
        xs.swap(i, j);
    }
    let xs = &xs[..parts];
    let mut out: Vec<Zeroizing<Vec<u8>>> = xs
        .iter()
        .map(|_| Zeroizing::new(Vec::with_capacity(secret.len() + 1)))
        .collect();
    let mut coeffs = Zeroizing::new(vec![0u8; threshold]);
    for &s in secret {
        coeffs[0] = s;
        rand::fill(&mut coeffs[1..]);
        for (k, x) in xs.iter().enumerate() {
            // Horner's rule.
            let mut y = 0u8;
            for c in coeffs.iter().rev() {
                y = mul(y, *x) ^ c;
            }
            out[k].push(y);
        }
    }
    for (k, x) in xs.iter().enumerate() {
        out[k].push(*x);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn split_combine() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let parts = split(secret, 5, 3).unwrap();
        let pick = vec![parts[4].clone(), parts[1].clone(), parts[2].clone()];
        assert_eq!(&combine(&pick).unwrap()[..], secret);
        let two = vec![parts[0].clone(), parts[1].clone()];
        assert_ne!(&combine(&two).unwrap()[..], secret);
    }

    #[test]
    fn field_inverse() {
        for a in 1..=255u8 {
            assert_eq!(mul(a, inverse(a)), 1);
        }
    }
}
