//! Parsed storage locations: a local path or `s3://bucket/key`.

use std::fmt;
use std::path::PathBuf;

use crate::StorageError;

/// A local path or an `s3://bucket/key` URI (the key may be empty or a `/`-ended prefix).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StorageUri {
    Local(PathBuf),
    S3 { bucket: String, key: String },
}

impl StorageUri {
    /// `s3://bucket/key`, `file:///path`, or a plain path.
    pub fn parse(s: &str) -> Result<Self, StorageError> {
        let bad = |reason: &str| StorageError::BadUri {
            uri: s.to_owned(),
            reason: reason.into(),
        };
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            let bucket_ok = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                })
                && !bucket.starts_with(['-', '.'])
                && !bucket.ends_with(['-', '.']);
            if !bucket_ok {
                return Err(bad("bucket name must be 3-63 characters of [a-z0-9.-]"));
            }
            if key.split('/').any(|seg| seg == "." || seg == "..") {
                return Err(bad("key must not contain '.' or '..' segments"));
            }
            // An empty segment (`s3://b//etc/passwd`, `a//b`) would make the key an absolute
            // path in local-bucket mode (`<data-dir>/buckets/b` joined with `/etc/passwd`);
            // object_store refuses such keys anyway. A trailing `/` (a prefix) is fine.
            if key.trim_end_matches('/').split('/').any(str::is_empty) && !key.is_empty() {
                return Err(bad(
                    "key must not contain empty segments ('//' or a leading '/')",
                ));
            }
            return Ok(Self::S3 {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
            });
        }
        if s.contains("://") && !s.starts_with("file://") {
            return Err(bad(
                "only local paths, file:// and s3:// URIs are supported",
            ));
        }
        let path = s.strip_prefix("file://").unwrap_or(s);
        if path.is_empty() {
            return Err(bad("empty path"));
        }
        Ok(Self::Local(PathBuf::from(path)))
    }

    /// Whether the URI names a prefix (ends with `/`, or an empty S3 key) rather than maybe
    /// one object.
    pub fn is_dir_like(&self) -> bool {
        match self {
            Self::Local(p) => p.as_os_str().to_string_lossy().ends_with('/'),
            Self::S3 { key, .. } => key.is_empty() || key.ends_with('/'),
        }
    }

    /// The last path segment.
    pub fn file_name(&self) -> Option<&str> {
        match self {
            Self::Local(p) => p.file_name().and_then(|n| n.to_str()),
            Self::S3 { key, .. } => key
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .filter(|s| !s.is_empty()),
        }
    }

    /// `self/relative` (relative uses `/` separators).
    pub fn join(&self, relative: &str) -> Self {
        match self {
            Self::Local(p) => Self::Local(
                relative
                    .split('/')
                    .fold(p.clone(), |acc, seg| acc.join(seg)),
            ),
            Self::S3 { bucket, key } => {
                let key = if key.is_empty() || key.ends_with('/') {
                    format!("{key}{relative}")
                } else {
                    format!("{key}/{relative}")
                };
                Self::S3 {
                    bucket: bucket.clone(),
                    key,
                }
            }
        }
    }
}

impl fmt::Display for StorageUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local(p) => write!(f, "{}", p.display()),
            Self::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_s3_and_local() {
        assert!(StorageUri::parse("s3://bucket/prefix/").is_ok());
        assert!(StorageUri::parse("s3://bucket/").is_ok());
        assert_eq!(
            StorageUri::parse("s3://my-bucket/in/a.jsonl").unwrap(),
            StorageUri::S3 {
                bucket: "my-bucket".into(),
                key: "in/a.jsonl".into()
            }
        );
        assert_eq!(
            StorageUri::parse("s3://my-bucket").unwrap(),
            StorageUri::S3 {
                bucket: "my-bucket".into(),
                key: "".into()
            }
        );
        assert_eq!(
            StorageUri::parse("data/x.jsonl").unwrap(),
            StorageUri::Local("data/x.jsonl".into())
        );
        assert_eq!(
            StorageUri::parse("file:///tmp/x").unwrap(),
            StorageUri::Local("/tmp/x".into())
        );
        for bad in [
            "s3://A_B/x",
            "s3://ab/x",
            "s3://bucket/../x",
            "s3://bucket//etc/passwd",
            "s3://bucket/a//b",
            "s3://bucket//",
            "http://x/y",
            "",
        ] {
            assert!(StorageUri::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn joins_and_names() {
        let s3 = StorageUri::parse("s3://bucket/out").unwrap();
        assert_eq!(
            s3.join("job/a.jsonl.out").to_string(),
            "s3://bucket/out/job/a.jsonl.out"
        );
        let s3 = StorageUri::parse("s3://bucket/out/").unwrap();
        assert!(s3.is_dir_like());
        assert_eq!(s3.join("a").to_string(), "s3://bucket/out/a");
        assert_eq!(
            StorageUri::parse("s3://bucket/in/x.jsonl")
                .unwrap()
                .file_name(),
            Some("x.jsonl")
        );
        let local = StorageUri::parse("/tmp/out").unwrap();
        assert_eq!(
            local.join("j/sub/a.out"),
            StorageUri::Local("/tmp/out/j/sub/a.out".into())
        );
    }
}
