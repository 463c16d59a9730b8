//! Job ids, job ARNs and generated record ids.

use std::fmt;

const LOWER_ALNUM: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
const UPPER_ALNUM: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("job id must be 12 characters of [a-z0-9], got {0:?}")]
    BadJobId(String),
    #[error("not a job identifier (a 12-character job id or a model-invocation-job ARN): {0:?}")]
    BadIdentifier(String),
}

/// A job id: exactly 12 characters of `[a-z0-9]`, the last segment of the job ARN.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(String);

impl JobId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.len() == 12
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::BadJobId(s.to_owned()))
        }
    }

    /// Builds an id from caller-supplied randomness (core does no IO, so it has no RNG).
    pub fn from_random(mut entropy: u128) -> Self {
        let mut s = String::with_capacity(12);
        for _ in 0..12 {
            s.push(LOWER_ALNUM[(entropy % 36) as usize] as char);
            entropy /= 36;
        }
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `arn:aws:bedrock:{region}:{account}:model-invocation-job/{id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobArn {
    pub partition: String,
    pub region: String,
    pub account: String,
    pub id: JobId,
}

impl JobArn {
    pub fn new(region: &str, account: &str, id: JobId) -> Self {
        Self {
            partition: "aws".into(),
            region: region.into(),
            account: account.into(),
            id,
        }
    }

    /// Parses a full job ARN.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let bad = || IdError::BadIdentifier(s.to_owned());
        let mut parts = s.splitn(6, ':');
        let (
            Some("arn"),
            Some(partition),
            Some("bedrock"),
            Some(region),
            Some(account),
            Some(rest),
        ) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        )
        else {
            return Err(bad());
        };
        let partition_ok = partition == "aws"
            || partition
                .strip_prefix("aws-")
                .is_some_and(|p| !p.is_empty());
        let region_ok = (1..=20).contains(&region.len())
            && region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let account_ok = account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit());
        let id = rest.strip_prefix("model-invocation-job/").ok_or_else(bad)?;
        if !(partition_ok && region_ok && account_ok) {
            return Err(bad());
        }
        let id = JobId::parse(id).map_err(|_| bad())?;
        Ok(Self {
            partition: partition.into(),
            region: region.into(),
            account: account.into(),
            id,
        })
    }

    /// Parses a `jobIdentifier`: a full ARN or a bare 12-character id. Returns the id.
    pub fn parse_identifier(s: &str) -> Result<JobId, IdError> {
        if s.starts_with("arn:") {
            Ok(Self::parse(s)?.id)
        } else {
            JobId::parse(s).map_err(|_| IdError::BadIdentifier(s.to_owned()))
        }
    }
}

impl fmt::Display for JobArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "arn:{}:bedrock:{}:{}:model-invocation-job/{}",
            self.partition, self.region, self.account, self.id
        )
    }
}

/// FNV-1a over the parts, each followed by a separator byte: stable across runs and
/// platforms, so anything derived from it survives a restart.
pub fn stable_hash64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.iter().chain(std::iter::once(&0xffu8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The record id batchd gives a record that has none: 11 upper-case alphanumerics, derived
/// from the job, the file and the line so that a resumed job generates the same id again.
pub fn generated_record_id(job_id: &str, file: &str, line: u64) -> String {
    let line = line.to_le_bytes();
    // Two differently seeded hashes give 128 bits; 11 base-36 digits use about 57 of them.
    let a = stable_hash64(&[job_id.as_bytes(), file.as_bytes(), &line]);
    let b = stable_hash64(&[&line, file.as_bytes(), job_id.as_bytes()]);
    let mut n = (u128::from(a) << 64) | u128::from(b);
    let mut s = String::with_capacity(11);
    for _ in 0..11 {
        s.push(UPPER_ALNUM[(n % 36) as usize] as char);
        n /= 36;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_id_accepts_only_twelve_lower_alnum() {
        assert!(JobId::parse("abc123def456").is_ok());
        for bad in [
            "abc123def45",
            "abc123def4567",
            "ABC123DEF456",
            "abc123def45-",
            "",
        ] {
            assert!(JobId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn random_job_ids_are_valid_and_differ() {
        let a = JobId::from_random(1);
        let b = JobId::from_random(u128::MAX);
        assert!(JobId::parse(a.as_str()).is_ok());
        assert!(JobId::parse(b.as_str()).is_ok());
        assert_ne!(a, b);
    }

    #[test]
    fn arn_round_trips_and_identifier_accepts_both_forms() {
        let id = JobId::parse("abc123def456").unwrap();
        let arn = JobArn::new("us-east-1", "123456789012", id.clone());
        let text = arn.to_string();
        assert_eq!(
            text,
            "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/abc123def456"
        );
        assert_eq!(JobArn::parse(&text).unwrap(), arn);
        assert_eq!(JobArn::parse_identifier(&text).unwrap(), id);
        assert_eq!(JobArn::parse_identifier("abc123def456").unwrap(), id);
        let gov =
            "arn:aws-us-gov:bedrock:us-gov-west-1:123456789012:model-invocation-job/abc123def456";
        assert_eq!(JobArn::parse_identifier(gov).unwrap(), id);
        for bad in [
            "arn:aws:bedrock:us-east-1:12345:model-invocation-job/abc123def456",
            "arn:aws:s3:us-east-1:123456789012:model-invocation-job/abc123def456",
            "arn:aws:bedrock:us-east-1:123456789012:job/abc123def456",
            "abc",
        ] {
            assert!(JobArn::parse_identifier(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn generated_record_ids_are_stable_eleven_upper_alnum() {
        let a = generated_record_id("abc123def456", "in/a.jsonl", 4);
        assert_eq!(a.len(), 11);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        );
        assert_eq!(a, generated_record_id("abc123def456", "in/a.jsonl", 4));
        assert_ne!(a, generated_record_id("abc123def456", "in/a.jsonl", 5));
        assert_ne!(a, generated_record_id("abc123def456", "in/b.jsonl", 4));
    }
}
