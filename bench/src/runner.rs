//! Runs one benchmark point: warmup, then every session at its scheduled time, at most
//! `--max-concurrency` at once. The client runs on a thread of its own (a single-threaded
//! runtime), so that its CPU time can be measured exactly and in-process servers (the topology
//! runner's frontend) never share its scheduler.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Uri;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::client::{HttpClient, body};
use crate::config::{RequestRate, RunConfig};
use crate::dataset::{Dataset, Prompt};
use crate::record::{Failure, FailureKind, RequestRecord};
use crate::sweep::thread_cpu;
use crate::{Error, arrival};

/// Warmup requests ask for at most this many tokens (as bench_serving's do).
const WARMUP_MAX_TOKENS: u32 = 32;

/// Preallocated chunk slots per request, at most (longer outputs grow as usual).
const MAX_PREALLOCATED_CHUNKS: usize = 4096;

/// One point of a sweep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub request_rate: RequestRate,
    pub max_concurrency: Option<usize>,
}

/// What a point measured.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// Every request of the workload, in workload order.
    pub records: Vec<RequestRecord>,
    /// From the first scheduled send to the last response.
    pub duration: Duration,
    /// CPU time of the client thread during the measured run (none where unsupported).
    pub client_cpu: Option<Duration>,
}

/// Runs `point` against `config.base_url` on a dedicated client thread.
pub async fn run_point(
    config: Arc<RunConfig>,
    dataset: Arc<Dataset>,
    point: Point,
    shutdown: CancellationToken,
) -> Result<RunOutput, Error> {
    config.validate()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("bench-client".into())
        .spawn(move || {
            let result = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime.block_on(drive(config, dataset, point, shutdown)),
                Err(e) => Err(Error::Client(format!("starting its runtime: {e}"))),
            };
            let _ = tx.send(result);
        })
        .map_err(|e| Error::Client(format!("starting its thread: {e}")))?;
    let result = rx.await.map_err(|_| Error::Client("the client thread died".into()));
    // It has sent its result; joining only waits for its runtime to wind down.
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    result?
}

/// What every request task shares.
struct Ctx {
    config: Arc<RunConfig>,
    dataset: Arc<Dataset>,
    client: HttpClient,
    uri: Uri,
    progress: Option<ProgressBar>,
    /// The LoRA adapter each session asks for (`--lora-name`), if any.
    loras: Vec<Option<String>>,
}

/// The adapter of each session, drawn uniformly from `--lora-name` (as bench_serving's
/// default `uniform` distribution does), seeded.
fn lora_draws(config: &RunConfig, sessions: usize) -> Vec<Option<String>> {
    use rand::{Rng, SeedableRng};
    if config.lora_names.is_empty() {
        return vec![None; sessions];
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed ^ 0x10ba_d4a7);
    (0..sessions)
        .map(|_| Some(config.lora_names[rng.random_range(0..config.lora_names.len())].clone()))
        .collect()
}

async fn drive(
    config: Arc<RunConfig>,
    dataset: Arc<Dataset>,
    point: Point,
    shutdown: CancellationToken,
) -> Result<RunOutput, Error> {
    if dataset.sessions.is_empty() {
        return Err(Error::Config("the dataset is empty".into()));
    }
    let client =
        HttpClient::with_headers(&config.base_url, config.api_key.as_deref(), &config.headers)
            .await?;
    let uri = client.uri(config.backend.endpoint.path())?;
    let loras = lora_draws(&config, dataset.sessions.len());
    // Every first turn's bytes are built before the clock starts.
    let bodies = dataset
        .sessions
        .iter()
        .zip(&loras)
        .map(|(s, lora)| {
            body::build(&config, &s.turns[0].prompt, s.turns[0].output_len, lora.as_deref())
        })
        .collect::<Result<Vec<Bytes>, Error>>()?;
    let progress = config.progress.then(|| progress_bar(dataset.num_requests()));
    let ctx = Arc::new(Ctx { config, dataset, client, uri, progress, loras });
    let result = match warmup(&ctx).await {
        Ok(()) => match flush_cache(&ctx).await {
            Ok(()) => measure(&ctx, point, bodies, &shutdown).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    if let Some(bar) = &ctx.progress {
        bar.finish_and_clear();
    }
    ctx.client.close().await;
    result
}

/// `--flush-cache`: empties the server's prefix cache after the warmup, as bench_serving does
/// (vLLM's `/reset_prefix_cache`, SGLang's and others' `/flush_cache`).
async fn flush_cache(ctx: &Ctx) -> Result<(), Error> {
    if !ctx.config.flush_cache {
        return Ok(());
    }
    let path = if ctx.config.backend.name.starts_with("vllm") {
        "/reset_prefix_cache"
    } else {
        "/flush_cache"
    };
    ctx.client.post_empty(path, Duration::from_secs(60)).await.map(|_| ()).map_err(|e| {
        Error::Server(format!("--flush-cache: the server did not flush its cache: {e}"))
    })
}

fn progress_bar(total: usize) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    // The remaining time is the elapsed time scaled by what is left, shown only once a twentieth
    // of the requests are done: the first completions of a run that sends everything at once
    // say nothing about the rate (indicatif's own estimate then reads far off).
    let eta = |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
        let (pos, len) = (state.pos(), state.len().unwrap_or(0));
        if pos == 0 || pos * 20 < len {
            let _ = w.write_str("--:--:--");
            return;
        }
        let left = state.elapsed().as_secs_f64() * (len - pos) as f64 / pos as f64;
        // Seconds of a run: far below u64::MAX.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let s = left.round() as u64;
        let _ = write!(w, "{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
    };
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} requests [{elapsed_precise}<{left}]")
    {
        bar.set_style(style.with_key("left", eta));
    }
    bar
}

async fn warmup(ctx: &Arc<Ctx>) -> Result<(), Error> {
    let n = ctx.config.warmup_requests;
    if n == 0 {
        return Ok(());
    }
    // A prompt of its own: reusing the first prompt would let the measured run find it cached.
    let warmup = &ctx.dataset.warmup;
    let output_len = warmup.output_len.min(WARMUP_MAX_TOKENS);
    let lora = ctx.config.lora_names.first().map(String::as_str);
    let body = body::build(&ctx.config, &warmup.prompt, output_len, lora)?;
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..n {
        let (ctx, body) = (ctx.clone(), body.clone());
        set.spawn(async move {
            let request = Request {
                index: i,
                prompt_len: ctx.dataset.warmup.prompt_len,
                output_len,
                scheduled: Duration::ZERO,
            };
            one_request(&ctx, request, body, t0).await
        });
    }
    let mut first_failure = None;
    let mut any_ok = false;
    while let Some(joined) = set.join_next().await {
        let record = joined.map_err(|e| Error::Client(e.to_string()))?;
        match record.failure {
            None => any_ok = true,
            Some(f) => {
                first_failure.get_or_insert(f.message);
            }
        }
    }
    match (any_ok, first_failure) {
        (false, Some(message)) => Err(Error::Warmup(message)),
        _ => Ok(()),
    }
}

async fn measure(
    ctx: &Arc<Ctx>,
    point: Point,
    bodies: Vec<Bytes>,
    shutdown: &CancellationToken,
) -> Result<RunOutput, Error> {
    let sessions = &ctx.dataset.sessions;
    let offsets = arrival::schedule(
        sessions.len(),
        point.request_rate,
        ctx.config.burstiness,
        ctx.config.seed,
    )?;
    let limit = point.max_concurrency.map(|n| Arc::new(Semaphore::new(n)));
    let mut first_index = Vec::with_capacity(sessions.len());
    let mut total = 0;
    for s in sessions {
        first_index.push(total);
        total += s.turns.len();
    }
    let cpu_before = thread_cpu();
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    for (session, (offset, body)) in offsets.into_iter().zip(bodies).enumerate() {
        let due = t0 + offset;
        if due > Instant::now() {
            tokio::select! {
                () = tokio::time::sleep_until(due.into()) => {}
                () = shutdown.cancelled() => return Err(Error::Cancelled),
            }
        }
        let (ctx, limit, index) = (ctx.clone(), limit.clone(), first_index[session]);
        set.spawn(async move {
            // Held for the whole conversation: a session is one user.
            let _permit = match limit {
                Some(limit) => limit.acquire_owned().await.ok(),
                None => None,
            };
            run_session(&ctx, session, index, offset, body, t0).await
        });
    }
    let mut records = Vec::with_capacity(total);
    loop {
        tokio::select! {
            joined = set.join_next() => match joined {
                Some(Ok(done)) => records.extend(done),
                Some(Err(e)) => return Err(Error::Client(format!("a request task failed: {e}"))),
                None => break,
            },
            () = shutdown.cancelled() => return Err(Error::Cancelled),
        }
    }
    let duration = t0.elapsed();
    let client_cpu = match (cpu_before, thread_cpu()) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    records.sort_by_key(|r| r.index);
    Ok(RunOutput { records, duration, client_cpu })
}

/// The turns of one session, one after another; a later turn is due when the one before ends.
async fn run_session(
    ctx: &Ctx,
    session: usize,
    first_index: usize,
    scheduled: Duration,
    first_body: Bytes,
    t0: Instant,
) -> Vec<RequestRecord> {
    let turns = &ctx.dataset.sessions[session].turns;
    let mut records = Vec::with_capacity(turns.len());
    let mut history: Vec<(String, String)> = Vec::new();
    let (mut scheduled, mut history_tokens) = (scheduled, 0);
    let mut next_body = Some(first_body);
    for (k, turn) in turns.iter().enumerate() {
        let prompt_len = history_tokens + turn.prompt_len;
        let request =
            Request { index: first_index + k, prompt_len, output_len: turn.output_len, scheduled };
        let lora = ctx.loras[session].as_deref();
        let body = match next_body.take() {
            Some(body) => Ok(body),
            None => match &turn.prompt {
                Prompt::Text(text) => {
                    let prompt = body::with_history(ctx.config.backend.endpoint, &history, text);
                    body::build(&ctx.config, &prompt, turn.output_len, lora)
                }
                prompt => body::build(&ctx.config, prompt, turn.output_len, lora),
            },
        };
        let record = match body {
            Ok(body) => one_request(ctx, request, body, t0).await,
            Err(e) => unsent(request, t0, &e),
        };
        if let Some(bar) = &ctx.progress {
            bar.inc(1);
        }
        history_tokens = prompt_len + record.output_tokens();
        if let Prompt::Text(text) = &turn.prompt {
            history.push((text.clone(), record.text.clone()));
        }
        scheduled = record.end;
        records.push(record);
    }
    records
}

/// What a request is, before it is sent.
struct Request {
    index: usize,
    prompt_len: usize,
    output_len: u32,
    scheduled: Duration,
}

fn new_record(request: &Request) -> RequestRecord {
    let slots = (request.output_len as usize + 1).min(MAX_PREALLOCATED_CHUNKS);
    RequestRecord {
        index: request.index,
        prompt_len: request.prompt_len,
        output_len_requested: request.output_len,
        scheduled: request.scheduled,
        chunk_times: Vec::with_capacity(slots),
        chunk_text_ends: Vec::with_capacity(slots),
        text: String::with_capacity(slots * 4),
        ..RequestRecord::default()
    }
}

fn unsent(request: Request, t0: Instant, error: &Error) -> RequestRecord {
    let mut record = new_record(&request);
    record.sent = t0.elapsed();
    record.end = record.sent;
    record.failure = Some(Failure { kind: FailureKind::Protocol, message: error.to_string() });
    record
}

async fn one_request(ctx: &Ctx, request: Request, body: Bytes, t0: Instant) -> RequestRecord {
    let mut record = new_record(&request);
    let config = &ctx.config;
    record.sent = t0.elapsed();
    let generate = ctx.client.generate(
        &ctx.uri,
        body,
        config.backend.endpoint,
        config.stream,
        t0,
        &mut record,
    );
    let failure = match tokio::time::timeout(config.request_timeout, generate).await {
        Ok(Ok(())) => None,
        Ok(Err(failure)) => Some(failure),
        Err(_) => Some(Failure {
            kind: FailureKind::Timeout,
            message: format!("no complete response within {:?}", config.request_timeout),
        }),
    };
    if failure.is_some() {
        record.end = t0.elapsed();
    } else if record.chunk_times.is_empty()
        && request.output_len > 0
        && record.usage_completion_tokens.unwrap_or(0) == 0
    {
        // Tokens whose text is empty (e.g. half of a UTF-8 character) still count when the
        // server reports them: such a request succeeds, without a first-token time.
        record.failure = Some(Failure {
            kind: FailureKind::EmptyOutput,
            message: "the response carried no generated text".into(),
        });
    }
    if failure.is_some() {
        record.failure = failure;
    }
    record
}
