//! aws-chunked bodies (`Content-Encoding: aws-chunked`, what botocore sends with
//! `x-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER`): `<hex size>[;ext]\r\n<data>\r\n`
//! chunks, a zero-size chunk, then trailer lines (`x-amz-checksum-crc32:...`) and an empty line.
//! [`decode`] streams the data out; chunk extensions and trailers are read past.

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};

/// Longest chunk header or trailer section accepted.
const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Data(u64),
    DataEnd,
    Trailer,
    Done,
}

struct Decoder<S> {
    inner: S,
    buf: BytesMut,
    state: State,
}

fn malformed(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("malformed aws-chunked body: {what}"),
    )
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

impl<S> Decoder<S>
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
{
    async fn next_piece(&mut self) -> Result<Option<Bytes>, std::io::Error> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Header => {
                    if let Some(pos) = find_crlf(&self.buf) {
                        let line = self.buf.split_to(pos + 2);
                        let size = line[..pos].split(|&b| b == b';').next().unwrap_or_default();
                        let size = std::str::from_utf8(size)
                            .ok()
                            .filter(|s| !s.is_empty() && s.len() <= 16)
                            .and_then(|s| u64::from_str_radix(s, 16).ok())
                            .ok_or_else(|| malformed("a chunk size is not hex"))?;
                        self.state = if size == 0 {
                            State::Trailer
                        } else {
                            State::Data(size)
                        };
                        continue;
                    }
                    if self.buf.len() > MAX_LINE {
                        return Err(malformed("a chunk header is too long"));
                    }
                }
                State::Data(remaining) => {
                    if !self.buf.is_empty() {
                        let n = usize::try_from(remaining)
                            .unwrap_or(usize::MAX)
                            .min(self.buf.len());
                        let out = self.buf.split_to(n).freeze();
                        let left = remaining - n as u64;
                        self.state = if left == 0 {
                            State::DataEnd
                        } else {
                            State::Data(left)
                        };
                        return Ok(Some(out));
                    }
                }
                State::DataEnd => {
                    if self.buf.len() >= 2 {
                        if &self.buf[..2] != b"\r\n" {
                            return Err(malformed("a chunk does not end in CRLF"));
                        }
                        self.buf.advance(2);
                        self.state = State::Header;
                        continue;
                    }
                }
                State::Trailer => {
                    if let Some(pos) = find_crlf(&self.buf) {
                        self.buf.advance(pos + 2);
                        if pos == 0 {
                            self.state = State::Done;
                            return Ok(None);
                        }
                        continue;
                    }
                    if self.buf.len() > MAX_LINE {
                        return Err(malformed("the trailer is too long"));
                    }
                }
            }
            match self.inner.next().await {
                Some(Ok(bytes)) => self.buf.extend_from_slice(&bytes),
                Some(Err(e)) => return Err(e),
                // Some clients end the trailer section without its final empty line.
                None if self.state == State::Trailer => {
                    self.state = State::Done;
                    return Ok(None);
                }
                None => return Err(malformed("the body ends inside a chunk")),
            }
        }
    }
}

/// The data of an aws-chunked body, chunk by chunk; a malformed or cut-off body ends the
/// stream with an error (so nothing is stored).
pub fn decode<S>(inner: S) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Unpin + Send,
{
    let decoder = Decoder {
        inner,
        buf: BytesMut::new(),
        state: State::Header,
    };
    futures::stream::unfold(decoder, |mut d| async move {
        match d.next_piece().await {
            Ok(Some(bytes)) => Some((Ok(bytes), d)),
            Ok(None) => None,
            Err(e) => {
                d.state = State::Done;
                Some((Err(e), d))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(pieces: Vec<&'static [u8]>) -> Result<Vec<u8>, std::io::Error> {
        let inner = futures::stream::iter(
            pieces
                .into_iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        );
        let mut out = Vec::new();
        let mut stream = std::pin::pin!(decode(inner));
        while let Some(piece) = stream.next().await {
            out.extend_from_slice(&piece?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn chunks_are_joined_whatever_the_read_boundaries() {
        let body: &[u8] =
            b"5\r\nhello\r\n6;chunk-signature=ab\r\n world\r\n0\r\nx-amz-checksum-crc32:AAAA\r\n\r\n";
        assert_eq!(run(vec![body]).await.unwrap(), b"hello world");
        // Split at every byte.
        let pieces: Vec<&'static [u8]> = body.chunks(1).collect();
        assert_eq!(run(pieces).await.unwrap(), b"hello world");
        // No final empty line.
        assert_eq!(run(vec![b"3\r\nabc\r\n0\r\n"]).await.unwrap(), b"abc");
    }

    #[tokio::test]
    async fn cut_off_or_malformed_bodies_are_errors() {
        assert!(run(vec![b"5\r\nhel"]).await.is_err());
        assert!(run(vec![b"zz\r\nhello\r\n0\r\n\r\n"]).await.is_err());
        assert!(run(vec![b"3\r\nabcXX0\r\n\r\n"]).await.is_err());
    }
}
