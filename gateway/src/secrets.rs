//! Start-up rules for secrets an operator generates (`auth.hs256_secret`, its `_file`
//! variant, every `publish.api_keys` entry): a value copied from an example, a placeholder
//! nobody replaced, or a value too regular to have been generated is refused, so a copied
//! configuration file cannot start with a publicly known key.
//!
//! The rules (docs/SECURITY.md, "Secrets"), checked in this order:
//! 1. not one of the example values this repository ships or has shipped;
//! 2. no placeholder word ([`PLACEHOLDER_WORDS`], any case);
//! 3. at least [`MIN_ENTROPY_BITS`] bits of estimated entropy: the length times the Shannon
//!    entropy of the value's own character frequencies. `openssl rand -hex 32` gives about
//!    230 bits, `openssl rand -hex 16` at least 84; 16 hex characters can give at most 64;
//! 4. not mostly a run or a sequence: at most half of the neighbouring characters may be
//!    equal or consecutive (`aaaa`, `abcd`, `0123`, `9876`).

/// How to make a value that passes, quoted in every refusal.
pub const GENERATE_HINT: &str = "generate one with `openssl rand -hex 32`";

/// Example values shipped in deploy files and docs, now and in earlier versions.
pub const SHIPPED_EXAMPLES: [&str; 4] = [
    "replace-with-openssl-rand-hex-32",
    "replace-with-openssl-rand-hex-24",
    "CHANGE_ME_run_openssl_rand_hex_32",
    "CHANGE_ME_run_openssl_rand_hex_24",
];

/// Words that mark a value someone was meant to replace (compared case-insensitively).
pub const PLACEHOLDER_WORDS: [&str; 14] = [
    "replace",
    "example",
    "changeme",
    "change_me",
    "change-me",
    "secret",
    "password",
    "passwd",
    "placeholder",
    "your",
    "xxx",
    "todo",
    "insecure",
    "dummy",
];

/// Least estimated entropy accepted. Every 128-bit random value tried (hex, base64,
/// URL-safe base64) measured above 73; a 64-bit one can never reach it.
pub const MIN_ENTROPY_BITS: f64 = 70.0;

/// Why `value` cannot be used as a secret; `None` when it can. The message says what is
/// wrong (never the value) and how to generate a good one.
pub fn weakness(value: &str) -> Option<String> {
    if SHIPPED_EXAMPLES.contains(&value) {
        return Some(format!(
            "is the example value shipped with the gateway, which anyone can read; {GENERATE_HINT}"
        ));
    }
    let lower = value.to_ascii_lowercase();
    if let Some(word) = PLACEHOLDER_WORDS.iter().find(|w| lower.contains(*w)) {
        return Some(format!(
            "contains the placeholder word {word:?}, so it looks like a value that was meant to \
             be replaced; {GENERATE_HINT}"
        ));
    }
    let bits = entropy_bits(value);
    if bits < MIN_ENTROPY_BITS {
        return Some(format!(
            "is too predictable to have been generated (about {bits:.0} bits of entropy, at \
             least {MIN_ENTROPY_BITS:.0} needed); {GENERATE_HINT}"
        ));
    }
    if is_mostly_sequential(value) {
        return Some(format!(
            "is mostly runs or sequences of characters (like aaaa, abcd, 1234), not random; \
             {GENERATE_HINT}"
        ));
    }
    None
}

/// The length times the Shannon entropy of the value's character frequencies.
pub fn entropy_bits(value: &str) -> f64 {
    let mut counts = std::collections::HashMap::<char, usize>::new();
    let mut len = 0usize;
    for c in value.chars() {
        *counts.entry(c).or_default() += 1;
        len += 1;
    }
    if len == 0 {
        return 0.0;
    }
    let n = len as f64;
    let per_char: f64 = counts
        .values()
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum();
    per_char * n
}

/// More than half of the neighbouring pairs equal or one apart (`aa`, `ab`, `ba`).
fn is_mostly_sequential(value: &str) -> bool {
    let chars: Vec<u32> = value.chars().map(u32::from).collect();
    let pairs = chars.len().saturating_sub(1);
    if pairs == 0 {
        return false;
    }
    let regular = chars
        .windows(2)
        .filter(|w| w[0].abs_diff(w[1]) <= 1)
        .count();
    regular * 2 > pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `openssl rand -hex 32` prints (a value made once for this test).
    const GENERATED: &str = "3f9c2b7e81d04a6f5c1e9b2d7a8f0e4c6b3d9a1f2e7c5b8d0a4f6e1c3b9d7a2e";

    #[test]
    fn generated_values_pass() {
        assert_eq!(weakness(GENERATED), None);
        // 128 bits in the shorter encodings.
        assert_eq!(weakness("9b1f0c4e7a2d5f8e3c6b1a9d0e4f7c2b"), None);
        assert_eq!(weakness("Xq3vN8kR2pL7mT5wZ1yB9c"), None);
    }

    #[test]
    fn shipped_example_values_are_refused() {
        for value in SHIPPED_EXAMPLES {
            let why = weakness(value).unwrap_or_else(|| panic!("{value} accepted"));
            assert!(why.contains("example value"), "{value}: {why}");
        }
    }

    #[test]
    fn placeholder_words_are_refused_in_any_case() {
        for value in [
            "please-ReplAce-this-9f8e7d6c5b4a3f2e1d0c",
            "4c8e1a9f7b3d5e2c-CHANGEME-0a6f8b2d4e1c9a7f",
            "my-jwt-Secret-1f2e3d4c5b6a79880f1e2d3c4b5a",
            "yourkey_9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c",
            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            "django-insecure-0a9b8c7d6e5f4a3b2c1d0e9f8a7b",
        ] {
            let why = weakness(value).unwrap_or_else(|| panic!("{value} accepted"));
            assert!(why.contains("placeholder word"), "{value}: {why}");
            assert!(!why.contains(value), "the refusal never repeats the value");
            assert!(why.contains("openssl rand -hex 32"), "{why}");
        }
    }

    #[test]
    fn low_entropy_values_are_refused() {
        for value in [
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "abababababababababababababababababababab",
            "aaaaaaaaaaaaaaaabbbbbbbbbbbbbbbbcccccccc",
            // 64 random bits: 16 hex characters.
            "9b1f0c4e7a2d5f8e",
        ] {
            let why = weakness(value).unwrap_or_else(|| panic!("{value} accepted"));
            assert!(why.contains("too predictable"), "{value}: {why}");
        }
        assert!(entropy_bits(GENERATED) > 200.0);
    }

    #[test]
    fn sequences_are_refused() {
        for value in [
            "0123456789abcdefghijklmnopqrstuvwxyz",
            "zyxwvutsrqponmlkjihgfedcba9876543210",
        ] {
            let why = weakness(value).unwrap_or_else(|| panic!("{value} accepted"));
            assert!(why.contains("sequences"), "{value}: {why}");
        }
    }
}
