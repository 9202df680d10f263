//! What a receiver checks and when an attempt is retried: the signature of a body and the
//! backoff schedule. Pure functions, so both are pinned by tests.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Applyd-Signature";
/// The header carrying the event id the receiver de-duplicates on.
pub const EVENT_ID_HEADER: &str = "X-Applyd-Event-Id";
/// The header carrying the send time, Unix seconds (the body's `at` is the event's time).
pub const TIMESTAMP_HEADER: &str = "X-Applyd-Timestamp";

/// `sha256=<hex HMAC-SHA256 of the exact body bytes keyed by the endpoint's secret>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts a key of any length; `new_from_slice` fails only for fixed-size-key MACs.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The first retry comes this long after a failed attempt; each next one twice as late.
pub const FIRST_BACKOFF_MS: u64 = 1_000;

/// How long after its `attempts`-th failed attempt a delivery is tried again: 1 s, 2 s, 4 s, …
/// capped at `max_ms`, then shortened by up to a quarter by `jitter` (any number; the same
/// delivery and attempt give the same delay) so that deliveries that failed together do not
/// retry together.
pub fn backoff_ms(attempts: u32, max_ms: u64, jitter: u64) -> u64 {
    let doubling = attempts.saturating_sub(1).min(40);
    let delay = FIRST_BACKOFF_MS
        .saturating_mul(1u64 << doubling)
        .min(max_ms);
    let quarter = delay / 4;
    if quarter == 0 {
        return delay;
    }
    delay - mix(jitter) % (quarter + 1)
}

/// A spread of `x` over 64 bits (splitmix64's finaliser).
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // The body as sent, checked independently with the same key.
        let body = br#"{"apply":"apply-7","id":"evt-1"}"#;
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(body);
        let expected = mac.finalize().into_bytes();
        let hex: String = expected.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(signature(b"s3cret", body), format!("sha256={hex}"));
        assert_ne!(signature(b"other", body), signature(b"s3cret", body));
    }

    #[test]
    fn backoff_doubles_from_one_second_up_to_the_cap_with_bounded_jitter() {
        let max = 300_000;
        let base: Vec<u64> = (1..=11).map(|a| backoff_ms(a, max, 0)).collect();
        let full = [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300];
        for (attempt, (got, secs)) in base.iter().zip(full).enumerate() {
            let delay = secs * 1000;
            assert!(
                *got <= delay && *got >= delay - delay / 4,
                "attempt {}: {got} ms not within a quarter below {delay} ms",
                attempt + 1
            );
        }
        assert_eq!(backoff_ms(1_000_000, max, 7), backoff_ms(1_000_000, max, 7));
        assert!(backoff_ms(u32::MAX, max, 3) <= max);
        let spread: std::collections::BTreeSet<u64> =
            (0..50).map(|j| backoff_ms(5, max, j)).collect();
        assert!(spread.len() > 10, "jitter spreads retries: {spread:?}");
    }
}
