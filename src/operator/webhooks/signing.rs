//! What a receiver checks and when an attempt is retried: the signature of a body and the
//! backoff schedule. Pure functions, so both are pinned by tests.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Applyd-Signature";
/// The header carrying the event id the receiver de-duplicates on.
pub const EVENT_ID_HEADER: &str = "X-Applyd-Event-Id";
/// The header carrying the send time, Unix seconds: the `t` the signature covers (the body's
/// `at` is the event's time, which a retry may send hours later).
pub const TIMESTAMP_HEADER: &str = "X-Applyd-Timestamp";

/// `t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<body>" keyed by the endpoint's secret>`.
/// The send time is signed with the exact body bytes, so a receiver refuses a replay by the age
/// of `t` (the common practice of signed webhooks: Stripe's `t=…,v1=…` over `t.body`).
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    // HMAC accepts a key of any length; `new_from_slice` fails only for fixed-size-key MACs.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = format!("t={timestamp},v1=");
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
    fn the_signature_is_hmac_sha256_of_the_time_and_the_body() {
        // Pinned from an independent HMAC-SHA256 (Python's `hmac`) of "1.what do ya want for
        // nothing?" under RFC 4231 test case 2's key.
        assert_eq!(
            signature(b"Jefe", 1, b"what do ya want for nothing?"),
            "t=1,v1=a9049465ce89cfb8e9aac62333abda66f80e3403f51f57f6bae3c3a4485eca38"
        );
        // The body as sent, checked independently with the same key.
        let body = br#"{"apply":"apply-7","id":"evt-1"}"#;
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(b"1700000000.");
        mac.update(body);
        let expected = mac.finalize().into_bytes();
        let hex: String = expected.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            signature(b"s3cret", 1_700_000_000, body),
            format!("t=1700000000,v1={hex}")
        );
        assert_ne!(
            signature(b"other", 1_700_000_000, body),
            signature(b"s3cret", 1_700_000_000, body)
        );
        // A replay with a fresh time needs a new signature.
        assert_ne!(
            signature(b"s3cret", 1_700_000_001, body)[13..],
            signature(b"s3cret", 1_700_000_000, body)[13..]
        );
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
