//! Files of the OpenAI Files API: what the job store keeps of an uploaded (or published) file
//! ([`FileRecord`]) and how files are listed ([`FileFilter`]). The content itself lives in
//! storage, at the record's `uri`.

/// The purpose of an uploaded batch input file.
pub const PURPOSE_BATCH: &str = "batch";
/// The purpose of a batch's output and error files.
pub const PURPOSE_BATCH_OUTPUT: &str = "batch_output";

/// One file: its metadata, and where its content is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    /// `file-` and 24 random `[a-z0-9]`.
    pub id: String,
    /// The uploader's account, or that of the batch that published it.
    pub account_id: String,
    pub bytes: u64,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; past it the file is gone (`None`: it never expires).
    pub expires_at: Option<i64>,
    pub filename: String,
    /// [`PURPOSE_BATCH`] or [`PURPOSE_BATCH_OUTPUT`].
    pub purpose: String,
    /// The storage URI of the content (a local path or `s3://...`).
    pub uri: String,
}

impl FileRecord {
    /// Whether the file has expired at `now` (Unix seconds).
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// One page of files, ordered by `(created_at, id)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFilter {
    /// Only files of this account (the API lists its caller's); `None`: every account.
    pub account_id: Option<String>,
    /// Only files of this purpose.
    pub purpose: Option<String>,
    /// Continue after this file id in the chosen order (keyset cursor); a cursor that names
    /// no file gives an empty page.
    pub after: Option<String>,
    pub limit: u32,
    /// Oldest first when true; newest first otherwise.
    pub ascending: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_expires_at_its_expiry_second_and_never_without_one() {
        let mut file = FileRecord {
            id: "file-abc".into(),
            account_id: "000000000000".into(),
            bytes: 1,
            created_at: 100,
            expires_at: Some(200),
            filename: "a.jsonl".into(),
            purpose: PURPOSE_BATCH.into(),
            uri: "/x".into(),
        };
        assert!(!file.is_expired(199));
        assert!(file.is_expired(200));
        file.expires_at = None;
        assert!(!file.is_expired(i64::MAX));
    }
}
