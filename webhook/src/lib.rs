//! Payment webhook signatures in Stripe's scheme: `Stripe-Signature:
//! t=<unix>,v1=<hex>[,v1=…]`, where each v1 is HMAC-SHA256 of `t.payload`
//! under the endpoint secret. Pure: the time is passed in.

/// Why a webhook signature was refused.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// No `t=` or no `v1=`, or not numbers and hex.
    Malformed,
    /// Outside the tolerance around now.
    Stale,
    /// No v1 matches.
    Mismatch,
}

/// Checks a `Stripe-Signature` header against the payload; answers the
/// signed timestamp. Several `v1` entries may come (during a secret roll).
pub fn verify_signature(
    header: &str,
    payload: &[u8],
    secret: &[u8],
    now: u64,
    tolerance: u64,
) -> Result<u64, SignatureError> {
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',').take(16) {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            // A SHA-256 tag is 64 hex digits; longer ones are refused before decoding.
            Some(("v1", v)) if v.len() <= 128 => {
                sigs.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?)
            }
            Some(("v1", _)) => return Err(SignatureError::Malformed),
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::Malformed)?;
    if sigs.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if now.abs_diff(t) > tolerance {
        return Err(SignatureError::Stale);
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut msg = Vec::with_capacity(payload.len() + 12);
    msg.extend_from_slice(t.to_string().as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(payload);
    // ring's verify compares in constant time.
    if sigs
        .iter()
        .any(|s| ring::hmac::verify(&key, &msg, s).is_ok())
    {
        Ok(t)
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// The header value a sender makes (tests, benches and `cascade` tools).
pub fn sign(payload: &[u8], secret: &[u8], t: u64) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut msg = t.to_string().into_bytes();
    msg.push(b'.');
    msg.extend_from_slice(payload);
    let tag = ring::hmac::sign(&key, &msg);
    format!("t={t},v1={}", hex::encode(tag.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_round_trip_and_refuse_tampering() {
        let body = br#"{"id":"evt_1"}"#;
        let h = sign(body, b"whsec_test", 1_000_000);
        assert_eq!(
            verify_signature(&h, body, b"whsec_test", 1_000_100, 300),
            Ok(1_000_000)
        );
        assert_eq!(
            verify_signature(&h, b"{\"id\":\"evt_2\"}", b"whsec_test", 1_000_100, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(&h, body, b"whsec_other", 1_000_100, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(&h, body, b"whsec_test", 1_000_301, 300),
            Err(SignatureError::Stale)
        );
        // A second v1 (a rolled secret) is enough when one matches.
        let two = format!("{h},v1={}", "00".repeat(32));
        assert!(verify_signature(&two, body, b"whsec_test", 1_000_000, 300).is_ok());
        for bad in ["", "t=1", "v1=00", "t=x,v1=00", "t=1000000,v1=zz"] {
            assert_eq!(
                verify_signature(bad, body, b"whsec_test", 1_000_000, 300),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
    }
}
