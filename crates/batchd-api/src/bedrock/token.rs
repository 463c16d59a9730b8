//! The opaque `nextToken` of ListModelInvocationJobs: a keyset cursor (the last job's
//! submit time and id) plus the sort order it was made for, in URL-safe base64.
//!
//! A cursor rather than an offset: jobs created between two pages neither repeat nor shift
//! the rest. Filters are not in the token; clients resend them with every page.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use batchd_core::JobId;

/// Version tag, so a later token format can tell old tokens apart.
const VERSION: &str = "v1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageToken {
    pub ascending: bool,
    pub submit_time_ms: i64,
    pub job_id: JobId,
}

impl PageToken {
    /// `base64url("v1.<A|D>.<submit_time_ms>.<job_id>")`.
    pub fn encode(&self) -> String {
        let order = if self.ascending { "A" } else { "D" };
        URL_SAFE_NO_PAD.encode(format!(
            "{VERSION}.{order}.{}.{}",
            self.submit_time_ms, self.job_id
        ))
    }

    /// `None` for anything [`PageToken::encode`] did not make.
    pub fn decode(token: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
        let text = std::str::from_utf8(&bytes).ok()?;
        let mut parts = text.split('.');
        let (Some(VERSION), Some(order), Some(time), Some(id), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let ascending = match order {
            "A" => true,
            "D" => false,
            _ => return None,
        };
        Some(Self {
            ascending,
            submit_time_ms: time.parse().ok()?,
            job_id: JobId::parse(id).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        for ascending in [true, false] {
            let t = PageToken {
                ascending,
                submit_time_ms: 1_736_935_200_123,
                job_id: JobId::parse("abc123def456").unwrap(),
            };
            let s = t.encode();
            assert!(
                s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
            assert_eq!(PageToken::decode(&s), Some(t));
        }
        let forge = |s: &str| URL_SAFE_NO_PAD.encode(s);
        for bad in [
            "".to_owned(),
            "!!!".to_owned(),
            forge("v2.A.1.abc123def456"),
            forge("v1.X.1.abc123def456"),
            forge("v1.A.x.abc123def456"),
            forge("v1.A.1.ABC"),
            forge("v1.A.1.abc123def456.extra"),
        ] {
            assert_eq!(PageToken::decode(&bad), None, "{bad}");
        }
    }
}
