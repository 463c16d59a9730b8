//! Groups a job's embedding records into backend calls of up to `embed_batch_size` inputs and
//! hands each record its own vector back, so records keep their own retries and errors.

use std::sync::Arc;
use std::time::Duration;

use batchd_backends::{BackendError, ErrorKind, ModelBackend};
use batchd_formats::neutral::EmbedRequest;
use tokio::sync::{mpsc, oneshot};

/// One record's vector and its share of the call's input tokens.
pub(crate) type EmbedResult = Result<(Vec<f32>, u64), BackendError>;

struct Pending {
    text: String,
    dimensions: Option<u32>,
    reply: oneshot::Sender<EmbedResult>,
}

/// The sending side; the batching task ends when the last record context is dropped.
pub(crate) struct EmbedBatcher {
    tx: mpsc::UnboundedSender<Pending>,
}

impl EmbedBatcher {
    /// Starts the batching task. Must run inside the runtime.
    pub(crate) fn new(backend: Arc<dyn ModelBackend>, max_batch: usize) -> Self {
        // Unbounded is safe: the pipeline bounds records in flight.
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(batch_loop(backend, rx, max_batch.max(1)));
        Self { tx }
    }

    /// The vector for one text, from whichever batch it joins.
    pub(crate) async fn embed(&self, text: String, dimensions: Option<u32>) -> EmbedResult {
        let (reply, answer) = oneshot::channel();
        let lost = || BackendError::new(ErrorKind::Server, "the embedding batcher stopped");
        self.tx
            .send(Pending {
                text,
                dimensions,
                reply,
            })
            .map_err(|_| lost())?;
        answer.await.map_err(|_| lost())?
    }
}

/// How long a batch that is not full waits for more records: records of a job arrive
/// microseconds apart, and a model call takes milliseconds.
const LINGER: Duration = Duration::from_millis(2);

/// Takes what is waiting, plus what arrives within [`LINGER`], and runs each batch as its own
/// task, so batches overlap like single records would.
async fn batch_loop(
    backend: Arc<dyn ModelBackend>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    max_batch: usize,
) {
    let mut carry: Option<Pending> = None;
    loop {
        let first = match carry.take() {
            Some(pending) => pending,
            None => match rx.recv().await {
                Some(pending) => pending,
                None => return,
            },
        };
        let dimensions = first.dimensions;
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < max_batch {
            let next = match rx.try_recv() {
                Ok(pending) => Some(pending),
                Err(_) => tokio::time::timeout_at(deadline, rx.recv())
                    .await
                    .ok()
                    .flatten(),
            };
            match next {
                // One call has one `dimensions`: a record asking for others starts the next.
                Some(pending) if pending.dimensions == dimensions => batch.push(pending),
                Some(pending) => {
                    carry = Some(pending);
                    break;
                }
                None => break,
            }
        }
        tokio::spawn(run_batch(backend.clone(), batch, dimensions));
    }
}

async fn run_batch(backend: Arc<dyn ModelBackend>, batch: Vec<Pending>, dimensions: Option<u32>) {
    let (texts, replies): (Vec<String>, Vec<_>) =
        batch.into_iter().map(|p| (p.text, p.reply)).unzip();
    let lengths: Vec<usize> = texts.iter().map(|t| t.len()).collect();
    let request = EmbedRequest {
        inputs: texts,
        dimensions,
    };
    let result = backend.embed(&request).await.and_then(|response| {
        if response.embeddings.len() == replies.len() {
            Ok(response)
        } else {
            Err(BackendError::new(
                ErrorKind::Protocol,
                format!(
                    "the backend returned {} embeddings for {} inputs",
                    response.embeddings.len(),
                    replies.len()
                ),
            ))
        }
    });
    match result {
        Ok(response) => {
            let shares = split_tokens(response.input_tokens, &lengths);
            for ((reply, vector), tokens) in
                replies.into_iter().zip(response.embeddings).zip(shares)
            {
                // A record that timed out has dropped its receiver: nothing to do.
                let _ = reply.send(Ok((vector, tokens)));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

/// Splits a call's input tokens over its inputs in proportion to their lengths; the shares
/// add up to the total exactly, so job counters match the backend's.
fn split_tokens(total: u64, lengths: &[usize]) -> Vec<u64> {
    let sum: u64 = lengths.iter().map(|&l| l as u64).sum();
    if lengths.is_empty() {
        return Vec::new();
    }
    let mut shares: Vec<u64> = if sum == 0 {
        vec![total / lengths.len() as u64; lengths.len()]
    } else {
        lengths
            .iter()
            .map(|&l| (u128::from(total) * l as u128 / u128::from(sum)) as u64)
            .collect()
    };
    let given: u64 = shares.iter().sum();
    if let Some(last) = shares.last_mut() {
        *last += total - given;
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;
    use batchd_backends::BackendInfo;
    use batchd_formats::neutral::{ChatRequest, ChatResponse, EmbedResponse};
    use std::sync::Mutex;

    #[test]
    fn token_shares_add_up() {
        assert_eq!(split_tokens(10, &[1, 1]), vec![5, 5]);
        assert_eq!(split_tokens(10, &[1, 2]), vec![3, 7]);
        assert_eq!(split_tokens(7, &[0, 0, 0]), vec![2, 2, 3]);
        assert_eq!(split_tokens(0, &[5]), vec![0]);
        assert!(split_tokens(3, &[]).is_empty());
    }

    /// Records every call's batch; the vector is `[len(text), dimensions]`.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<Vec<String>>>,
    }

    #[async_trait::async_trait]
    impl ModelBackend for Recorder {
        fn info(&self) -> BackendInfo {
            BackendInfo {
                chat: false,
                ..BackendInfo::NEUTRAL
            }
        }
        async fn chat(&self, _: &ChatRequest) -> Result<ChatResponse, BackendError> {
            Err(BackendError::new(ErrorKind::Unsupported, "no chat"))
        }
        async fn embed(&self, request: &EmbedRequest) -> Result<EmbedResponse, BackendError> {
            self.calls.lock().unwrap().push(request.inputs.clone());
            tokio::task::yield_now().await;
            Ok(EmbedResponse {
                embeddings: request
                    .inputs
                    .iter()
                    .map(|t| vec![t.len() as f32, request.dimensions.unwrap_or(0) as f32])
                    .collect(),
                input_tokens: request.inputs.iter().map(|t| t.len() as u64).sum(),
            })
        }
    }

    #[tokio::test]
    async fn records_share_calls_and_get_their_own_vectors() {
        let backend = Arc::new(Recorder::default());
        let batcher = Arc::new(EmbedBatcher::new(backend.clone(), 4));
        let texts: Vec<String> = (0..10).map(|i| "x".repeat(i + 1)).collect();
        let tasks: Vec<_> = texts
            .iter()
            .map(|t| {
                let (b, t) = (batcher.clone(), t.clone());
                tokio::spawn(async move { b.embed(t, Some(8)).await })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            let (vector, tokens) = task.await.unwrap().unwrap();
            assert_eq!(vector, vec![(i + 1) as f32, 8.0]);
            assert_eq!(tokens, (i + 1) as u64);
        }
        let calls = backend.calls.lock().unwrap();
        assert!(calls.iter().all(|c| c.len() <= 4), "{calls:?}");
        assert_eq!(calls.iter().map(Vec::len).sum::<usize>(), 10);
        assert!(calls.len() < 10, "no batching happened: {calls:?}");
    }

    #[tokio::test]
    async fn different_dimensions_never_share_a_call() {
        let backend = Arc::new(Recorder::default());
        let batcher = Arc::new(EmbedBatcher::new(backend.clone(), 16));
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let b = batcher.clone();
                let dims = if i % 2 == 0 { 256 } else { 512 };
                tokio::spawn(async move { (dims, b.embed("abc".into(), Some(dims)).await) })
            })
            .collect();
        for task in tasks {
            let (dims, result) = task.await.unwrap();
            assert_eq!(result.unwrap().0[1], dims as f32);
        }
    }
}
