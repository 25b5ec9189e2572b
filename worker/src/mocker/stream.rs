//! The output stream of one request: chunks from the scheduler, cancellation on drop, and a
//! closing error chunk if the engine goes away mid-request, so a reader never hangs.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use switchyard_proto::{ErrorKind, FinishReason, GenerateChunk, WorkerError};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

pub(crate) struct OutputStream {
    chunks: mpsc::UnboundedReceiver<GenerateChunk>,
    /// Set once the last chunk went out.
    finished: bool,
    /// Cancels the request when the stream is dropped.
    _abort: DropGuard,
}

impl OutputStream {
    pub(crate) fn new(
        chunks: mpsc::UnboundedReceiver<GenerateChunk>,
        abort: CancellationToken,
    ) -> Self {
        Self { chunks, finished: false, _abort: abort.drop_guard() }
    }
}

impl Stream for OutputStream {
    type Item = GenerateChunk;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<GenerateChunk>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.chunks.poll_recv(cx) {
            Poll::Ready(Some(chunk)) => {
                if chunk.finish_reason() != FinishReason::Unspecified || chunk.error.is_some() {
                    self.finished = true;
                }
                Poll::Ready(Some(chunk))
            }
            Poll::Ready(None) => {
                self.finished = true;
                Poll::Ready(Some(GenerateChunk {
                    finish_reason: FinishReason::Error as i32,
                    error: Some(WorkerError {
                        kind: ErrorKind::ShuttingDown as i32,
                        message: "the mocker engine stopped before the request finished".to_owned(),
                        ..Default::default()
                    }),
                    ..GenerateChunk::default()
                }))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
