//! A streaming JSONL line reader: yields each line with its 1-based number, holding no more
//! than one chunk plus the longest line in memory.

use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::StorageError;

pub struct LineReader {
    uri: String,
    stream: BoxStream<'static, Result<Bytes, StorageError>>,
    /// The current chunk, not yet split into lines.
    chunk: Bytes,
    /// The start of a line that crosses chunk boundaries.
    partial: BytesMut,
    line_no: u64,
    max_line_bytes: usize,
    done: bool,
    /// The stream failed: what is buffered is not a whole line and must never be emitted.
    failed: bool,
}

impl LineReader {
    pub(crate) fn new(
        uri: String,
        stream: BoxStream<'static, Result<Bytes, StorageError>>,
        max_line_bytes: usize,
    ) -> Self {
        Self {
            uri,
            stream,
            chunk: Bytes::new(),
            partial: BytesMut::new(),
            line_no: 0,
            max_line_bytes,
            done: false,
            failed: false,
        }
    }

    /// Numbers the first line `first_line` (a reader that starts inside a file).
    pub(crate) fn numbered_from(mut self, first_line: u64) -> Self {
        self.line_no = first_line.saturating_sub(1);
        self
    }

    /// Builds a reader over bytes already in memory (tests, small inputs).
    pub fn from_bytes(uri: &str, bytes: Bytes, max_line_bytes: usize) -> Self {
        let stream = futures::stream::once(async move { Ok(bytes) }).boxed();
        Self::new(uri.to_owned(), stream, max_line_bytes)
    }

    /// The next line without its `\n` (and without a trailing `\r`), with its 1-based line
    /// number. A final line without a newline is returned too.
    pub async fn next_line(&mut self) -> Result<Option<(u64, Bytes)>, StorageError> {
        if self.failed {
            return Err(StorageError::Io {
                uri: self.uri.clone(),
                source: std::io::Error::other("reading stopped at an earlier error"),
            });
        }
        loop {
            if let Some(pos) = memchr::memchr(b'\n', &self.chunk) {
                let mut line = self.chunk.split_to(pos + 1);
                line.truncate(pos);
                let line = if self.partial.is_empty() {
                    line
                } else {
                    self.partial.extend_from_slice(&line);
                    self.partial.split().freeze()
                };
                return self.emit(line).map(Some);
            }
            // No newline in what is left of the chunk: keep it and read more.
            if !self.chunk.is_empty() {
                self.partial.extend_from_slice(&self.chunk);
                self.chunk.advance(self.chunk.len());
                if self.partial.len() > self.max_line_bytes {
                    return Err(StorageError::LineTooLong {
                        uri: self.uri.clone(),
                        line: self.line_no + 1,
                        limit: self.max_line_bytes,
                    });
                }
            }
            if self.done {
                if self.partial.is_empty() {
                    return Ok(None);
                }
                let line = self.partial.split().freeze();
                return self.emit(line).map(Some);
            }
            match self.stream.next().await {
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => {
                    self.failed = true;
                    return Err(e);
                }
                None => self.done = true,
            }
        }
    }

    fn emit(&mut self, mut line: Bytes) -> Result<(u64, Bytes), StorageError> {
        self.line_no += 1;
        if line.len() > self.max_line_bytes {
            return Err(StorageError::LineTooLong {
                uri: self.uri.clone(),
                line: self.line_no,
                limit: self.max_line_bytes,
            });
        }
        if line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
        }
        Ok((self.line_no, line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(
        chunks: Vec<&'static [u8]>,
        max: usize,
    ) -> Result<Vec<(u64, String)>, StorageError> {
        let stream =
            futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from_static(c)))).boxed();
        let mut reader = LineReader::new("t".into(), stream, max);
        let mut out = Vec::new();
        while let Some((n, line)) = reader.next_line().await? {
            out.push((n, String::from_utf8(line.to_vec()).unwrap()));
        }
        Ok(out)
    }

    #[tokio::test]
    async fn splits_lines_across_chunks() {
        let got = collect(vec![b"ab", b"c\nde", b"f\r\n\ng", b"h"], 100)
            .await
            .unwrap();
        let want = [(1, "abc"), (2, "def"), (3, ""), (4, "gh")];
        assert_eq!(got, want.map(|(n, s)| (n, s.to_string())));
    }

    #[tokio::test]
    async fn trailing_newline_yields_no_extra_line() {
        let got = collect(vec![b"a\nb\n"], 100).await.unwrap();
        assert_eq!(got, vec![(1, "a".to_string()), (2, "b".to_string())]);
        assert!(collect(vec![], 100).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn overlong_line_is_an_error_naming_the_line() {
        let err = collect(vec![b"ok\n", b"0123456789", b"0123456789\n"], 15)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StorageError::LineTooLong { line: 2, .. }),
            "{err}"
        );
    }
}
