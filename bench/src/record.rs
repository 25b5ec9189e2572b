//! What is measured of one request. Times are offsets from the start of the run, taken on the
//! client thread as bytes arrive, so every figure can be recomputed from these alone.

use std::time::Duration;

/// Why a request failed; counted per kind in the results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureKind {
    /// No TCP connection could be made.
    Connect,
    /// The request did not finish within `--request-timeout-secs`.
    Timeout,
    /// The server answered with this non-200 status.
    Status(u16),
    /// The connection broke while sending or receiving.
    Io,
    /// The response was not the expected JSON / SSE.
    Protocol,
    /// The server sent an error event inside the stream.
    StreamError,
    /// The response ended without any generated text, and `usage` counted no tokens either.
    EmptyOutput,
}

impl FailureKind {
    /// The key errors are counted under in the results (`http_503`, `timeout`, …).
    pub fn key(self) -> String {
        match self {
            FailureKind::Connect => "connect".into(),
            FailureKind::Timeout => "timeout".into(),
            FailureKind::Status(code) => format!("http_{code}"),
            FailureKind::Io => "io".into(),
            FailureKind::Protocol => "protocol".into(),
            FailureKind::StreamError => "stream_error".into(),
            FailureKind::EmptyOutput => "empty_output".into(),
        }
    }
}

/// A failed request's kind and what the client or server said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

/// One request as it happened.
#[derive(Debug, Clone, Default)]
pub struct RequestRecord {
    /// Position in the workload (conversations' turns in order).
    pub index: usize,
    /// Prompt tokens as the client counted them (for a conversation turn: the whole history).
    pub prompt_len: usize,
    /// Output tokens asked for (`max_tokens`).
    pub output_len_requested: u32,
    /// When the arrival process (or the end of the previous turn) said to send it.
    pub scheduled: Duration,
    /// When it was handed to the connection (after waiting for `--max-concurrency`).
    pub sent: Duration,
    /// Arrival of every chunk that carried text; the first is the time to first token.
    pub chunk_times: Vec<Duration>,
    /// End offset in `text` of each chunk's text (chunk `i` is `text[ends[i-1]..ends[i]]`).
    pub chunk_text_ends: Vec<u32>,
    /// When the response ended (`[DONE]`, or the end of the body).
    pub end: Duration,
    /// The generated text, for re-tokenizing.
    pub text: String,
    /// `usage.completion_tokens` as the server reported it.
    pub usage_completion_tokens: Option<u32>,
    /// `usage.prompt_tokens` as the server reported it.
    pub usage_prompt_tokens: Option<u32>,
    /// `usage.prompt_tokens_details.cached_tokens`: prompt tokens the server served from its
    /// prefix cache.
    pub usage_cached_tokens: Option<u32>,
    pub failure: Option<Failure>,
}

impl RequestRecord {
    pub fn succeeded(&self) -> bool {
        self.failure.is_none()
    }

    /// Time to first token from the actual send.
    pub fn ttft(&self) -> Option<Duration> {
        self.chunk_times.first().map(|t| t.saturating_sub(self.sent))
    }

    /// End-to-end latency from the actual send.
    pub fn e2e(&self) -> Duration {
        self.end.saturating_sub(self.sent)
    }

    /// Output tokens: the server's `usage`, else one per text chunk.
    pub fn output_tokens(&self) -> usize {
        match self.usage_completion_tokens {
            Some(n) => n as usize,
            None => self.chunk_times.len(),
        }
    }

    /// Gaps between consecutive text chunks (bench_serving's ITL).
    pub fn itls(&self) -> impl Iterator<Item = Duration> + '_ {
        self.chunk_times.windows(2).map(|w| w[1].saturating_sub(w[0]))
    }

    /// (E2E − TTFT) / (output tokens − 1), bench_serving's TPOT; none for one-token outputs.
    pub fn tpot(&self) -> Option<Duration> {
        let n = self.output_tokens();
        let ttft = self.ttft()?;
        (n > 1).then(|| self.e2e().saturating_sub(ttft) / u32::try_from(n - 1).unwrap_or(u32::MAX))
    }

    /// The text of each chunk.
    pub fn chunk_texts(&self) -> impl Iterator<Item = &str> + '_ {
        let mut start = 0usize;
        self.chunk_text_ends.iter().map(move |&end| {
            let end = end as usize;
            let piece = self.text.get(start..end).unwrap_or("");
            start = end;
            piece
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn figures_follow_bench_serving_definitions() {
        let r = RequestRecord {
            scheduled: ms(5),
            sent: ms(10),
            chunk_times: vec![ms(30), ms(35), ms(45)],
            chunk_text_ends: vec![1, 3, 6],
            text: "abcdef".into(),
            end: ms(50),
            usage_completion_tokens: Some(5),
            ..RequestRecord::default()
        };
        assert_eq!(r.ttft(), Some(ms(20)));
        assert_eq!(r.e2e(), ms(40));
        assert_eq!(r.itls().collect::<Vec<_>>(), [ms(5), ms(10)]);
        // (40 − 20) / (5 − 1)
        assert_eq!(r.tpot(), Some(ms(5)));
        assert_eq!(r.chunk_texts().collect::<Vec<_>>(), ["a", "bc", "def"]);
        assert_eq!(FailureKind::Status(503).key(), "http_503");
    }
}
