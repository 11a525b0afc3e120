//! The JetStream layout (streams, consumers, KV buckets) and typed publishing.

use crate::messages::{DecodeError, Message, encode};
use crate::options::BusOptions;
use crate::subjects::*;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, ErrorCode, consumer, kv, stream};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot reach NATS at {urls}: {message}. Start nats-server with -js, or set --nats-url / EMBEDFLEET_NATS_URL")]
    Connect { urls: String, message: String },
    #[error("JetStream setup of {what} failed: {message}. Is JetStream enabled on the server (-js)?")]
    Setup { what: String, message: String },
    #[error("publishing to {subject} failed: {message}")]
    Publish { subject: String, message: String },
    #[error("run state {key}: {message}")]
    Kv { key: String, message: String },
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl embedfleet_core::Transient for BusError {
    fn is_transient(&self) -> bool {
        !matches!(self, BusError::Decode(_))
    }
}

#[derive(Clone)]
pub struct Bus {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub runs: kv::Store,
    pub rate: kv::Store,
    pub budgets: kv::Store,
}

/// Why one set-up request failed. A transient failure (JetStream still starting, or recovering its
/// streams after a restart, answers late or not at all) is asked again; any other is final.
#[derive(Debug)]
struct SetupFailure {
    what: String,
    message: String,
    transient: bool,
}

impl SetupFailure {
    fn fatal(what: &str, message: impl std::fmt::Display) -> Self {
        SetupFailure { what: what.to_owned(), message: message.to_string(), transient: false }
    }

    fn of_create(what: &str, error: &jetstream::context::CreateStreamError) -> Self {
        use jetstream::context::CreateStreamErrorKind as Kind;
        let transient = match error.kind() {
            Kind::TimedOut | Kind::JetStreamUnavailable => true,
            Kind::JetStream(e) => e.error_code() == ErrorCode::CLUSTER_NOT_AVAILABLE,
            _ => false,
        };
        SetupFailure { what: what.to_owned(), message: error.to_string(), transient }
    }
}

/// Creates a stream, or updates it when an older deployment left one with other settings.
///
/// Never a plain update on start-up: nats-server 2.9 (Debian's) registers a new stream before its
/// storage exists, and an update landing in that window dereferences the missing storage and kills
/// the server. Every worker sets the layout up as it starts, so a fleet starting at once hits that
/// window. A create with settings equal to the existing stream's is answered with that stream, so
/// creates may race; but while another client's create of the same stream is still under way, 2.9
/// answers "subjects overlap" or "name in use", so those are asked again after a pause. Only a
/// name in use that persists means other settings, and only then is the stream updated: by then it
/// has long been fully created.
async fn ensure_stream(js: &jetstream::Context, config: stream::Config) -> Result<(), SetupFailure> {
    const ATTEMPTS: u32 = 6;
    let what = config.name.clone();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let code = match js.create_stream(config.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) => match jetstream_code(&e) {
                Some(code) if code == ErrorCode::STREAM_NAME_EXIST || code == ErrorCode::STREAM_SUBJECT_OVERLAP => code,
                _ => return Err(SetupFailure::of_create(&what, &e)),
            },
        };
        if attempt < ATTEMPTS {
            tokio::time::sleep(Duration::from_millis(25 << attempt)).await;
            continue;
        }
        if code == ErrorCode::STREAM_SUBJECT_OVERLAP {
            return Err(SetupFailure::fatal(
                &what,
                format!(
                    "its subjects {:?} overlap a stream of another name on this server; remove that stream or use another NATS account",
                    config.subjects
                ),
            ));
        }
        return js.update_stream(&config).await.map(|_| ()).map_err(|e| SetupFailure::fatal(&what, e));
    }
}

fn jetstream_code(error: &jetstream::context::CreateStreamError) -> Option<ErrorCode> {
    match error.kind() {
        jetstream::context::CreateStreamErrorKind::JetStream(e) => Some(e.error_code()),
        _ => None,
    }
}

/// Creates or updates a KV bucket through its backing stream. async-nats' own helper first asks for
/// the account's info, whose shape older servers (Debian's 2.9) answer differently; the stream
/// settings are the KV convention, so any JetStream server takes them.
async fn key_value(js: &jetstream::Context, bucket: &str, history: i64, limits: StreamLimits) -> Result<kv::Store, SetupFailure> {
    ensure_stream(
        js,
        limits.apply(stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: history,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        }),
    )
    .await?;
    // The stream exists by now, so a failed lookup is a late or lost answer.
    js.get_key_value(bucket).await.map_err(|e| SetupFailure { what: bucket.to_owned(), message: e.to_string(), transient: true })
}

/// A stream that keeps what is published to it for `days` (progress events, dead letters,
/// delivery advisories).
fn kept_for_days(name: &str, subjects: &str, days: u64) -> stream::Config {
    stream::Config {
        name: name.into(),
        subjects: vec![subjects.into()],
        max_age: Duration::from_secs(days * 24 * 3600),
        ..Default::default()
    }
}

/// Replicas and size of every stream and bucket the layout makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Copies of each stream in a NATS cluster (1 to 5; 1 on a single server).
    pub replicas: usize,
    /// Most bytes each stream keeps (None: no limit). Past it a publish is refused, never a
    /// stored message dropped: a lost task would stall its run.
    pub max_bytes: Option<i64>,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self { replicas: 1, max_bytes: None }
    }
}

impl StreamLimits {
    fn apply(self, mut config: stream::Config) -> stream::Config {
        config.num_replicas = self.replicas.max(1);
        if let Some(max) = self.max_bytes {
            config.max_bytes = max;
            config.discard = stream::DiscardPolicy::New;
        }
        config
    }
}

/// The streams and buckets every worker needs: the run state, the fleet-wide rate limit and budgets.
async fn set_up_layout(js: &jetstream::Context, limits: StreamLimits) -> Result<(kv::Store, kv::Store, kv::Store), SetupFailure> {
    let work = stream::Config {
        name: WORK_STREAM.into(),
        subjects: vec![WORK_SUBJECTS.into()],
        retention: stream::RetentionPolicy::WorkQueue,
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    };
    for config in [
        work,
        kept_for_days(EVENTS_STREAM, EVENTS_SUBJECTS, 7),
        kept_for_days(DEAD_STREAM, DEAD_SUBJECTS, 30),
        kept_for_days(ADVISORY_STREAM, MAX_DELIVERIES_SUBJECTS, 7),
    ] {
        ensure_stream(js, limits.apply(config)).await?;
    }
    let runs = key_value(js, RUNS_BUCKET, 5, limits).await?;
    let rate = key_value(js, RATE_BUCKET, 1, limits).await?;
    let budgets = key_value(js, BUDGET_BUCKET, 1, limits).await?;
    Ok((runs, rate, budgets))
}

/// The layout as it is, when every stream and bucket exists; None otherwise.
async fn bind_layout(js: &jetstream::Context) -> Option<(kv::Store, kv::Store, kv::Store)> {
    for name in [WORK_STREAM, EVENTS_STREAM, DEAD_STREAM, ADVISORY_STREAM] {
        js.get_stream(name).await.ok()?;
    }
    Some((
        js.get_key_value(RUNS_BUCKET).await.ok()?,
        js.get_key_value(RATE_BUCKET).await.ok()?,
        js.get_key_value(BUDGET_BUCKET).await.ok()?,
    ))
}

impl Bus {
    /// Connects (retrying with back-off until `options.connect_timeout`), then creates or updates
    /// the streams and buckets, so any worker can start first.
    pub async fn connect(options: &BusOptions) -> Result<Bus, BusError> {
        let urls = options.shown_urls();
        options.check_urls().map_err(|message| BusError::Connect { urls: urls.clone(), message })?;
        if let Some(ca) = options.ca.iter().chain(options.client_cert.iter().flat_map(|(c, k)| [c, k])).find(|p| !p.is_file()) {
            return Err(BusError::Connect { urls, message: format!("{} does not exist or is not a file", ca.display()) });
        }
        let nkey_seed = match &options.nkey {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map(|s| s.trim().to_owned())
                    .map_err(|e| BusError::Connect { urls: urls.clone(), message: format!("NKey seed file {}: {e}", path.display()) })?,
            ),
            None => None,
        };
        let started = std::time::Instant::now();
        let mut delay = Duration::from_millis(200);
        let client = loop {
            let mut connect = async_nats::ConnectOptions::new()
                .name(&options.client_name)
                .require_tls(options.tls)
                .max_reconnects(None)
                .reconnect_delay_callback({
                    let max = options.max_reconnect_delay;
                    move |attempt| Duration::from_millis(100 * 2u64.saturating_pow(attempt.min(10) as u32)).min(max)
                })
                .event_callback(|event| async move { tracing::info!(%event, "nats connection event") });
            if let Some((user, password)) = &options.user_password {
                connect = connect.user_and_password(user.clone(), password.clone());
            }
            if let Some(token) = &options.token {
                connect = connect.token(token.clone());
            }
            if let Some(seed) = &nkey_seed {
                connect = connect.nkey(seed.clone());
            }
            if let Some(ca) = &options.ca {
                connect = connect.add_root_certificates(ca.clone());
            }
            if let Some((cert, key)) = &options.client_cert {
                connect = connect.add_client_certificate(cert.clone(), key.clone());
            }
            if let Some(creds) = &options.creds {
                connect = connect
                    .credentials_file(creds)
                    .await
                    .map_err(|e| BusError::Connect { urls: urls.clone(), message: format!("credentials file {}: {e}", creds.display()) })?;
            }
            let addrs: Vec<async_nats::ServerAddr> = options
                .urls
                .iter()
                .map(|u| u.parse())
                .collect::<Result<_, _>>()
                .map_err(|e: std::io::Error| BusError::Connect { urls: urls.clone(), message: e.to_string() })?;
            match connect.connect(addrs.as_slice()).await {
                Ok(client) => break client,
                Err(e) => {
                    if options.connect_timeout.is_some_and(|t| started.elapsed() >= t) {
                        return Err(BusError::Connect { urls, message: e.to_string() });
                    }
                    tracing::warn!(urls, error = %e, retry_in = ?delay, "NATS unreachable; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(options.max_reconnect_delay);
                }
            }
        };
        // Setting the layout up is idempotent, so a transient failure sets it all up again, within
        // the same time limit as the connection (a server just restarted answers once its streams
        // are recovered).
        let js = jetstream::new(client.clone());
        let mut delay = Duration::from_millis(200);
        let (runs, rate, budgets) = loop {
            // A worker that does not own the layout binds to it when it is there: with NATS
            // permissions (deploy/nats/auth.conf) only the coordinator may create streams.
            if !options.owns_layout
                && let Some(layout) = bind_layout(&js).await
            {
                break layout;
            }
            match set_up_layout(&js, options.stream_limits).await {
                Ok(layout) => break layout,
                Err(f) if f.transient && options.connect_timeout.is_none_or(|t| started.elapsed() < t) => {
                    tracing::warn!(what = f.what, error = f.message, retry_in = ?delay, "JetStream not answering yet (starting, recovering, or not enabled with -js); setting the layout up again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(options.max_reconnect_delay);
                }
                Err(f) => return Err(BusError::Setup { what: f.what, message: f.message }),
            }
        };
        Ok(Bus { client, js, runs, rate, budgets })
    }

    /// Publishes a message to the stage that acts on it, with its dedup id, and waits for the
    /// stream's acknowledgement (the message is durable when this returns).
    pub async fn publish(&self, stage: Stage, message: &Message) -> Result<(), BusError> {
        let subject = stage.subject_for(message.kind());
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", message.dedup_id().as_str());
        let err = |e: &dyn std::fmt::Display| BusError::Publish { subject: subject.clone(), message: e.to_string() };
        self.js
            .publish_with_headers(subject.clone(), headers, encode(message).into())
            .await
            .map_err(|e| err(&e))?
            .await
            .map_err(|e| err(&e))?;
        Ok(())
    }

    /// A progress event for `embedfleet watch` (best effort: progress is not worth failing a task for).
    pub async fn event(&self, run_id: &str, kind: &str, payload: &serde_json::Value) {
        let subject = events_subject(run_id, kind);
        if let Err(e) = self.js.publish(subject, serde_json::to_vec(payload).unwrap_or_default().into()).await {
            tracing::debug!(error = %e, "progress event not published");
        }
    }

    /// The durable pull consumer of a stage, created or updated idempotently. A worker that dies
    /// holding a message gets it redelivered after `ack_wait`; handlers that fail back off with a
    /// delayed nak, so the consumer itself has no back-off list (it would shorten `ack_wait`).
    pub async fn consumer(&self, stage: Stage, ack_wait: Duration) -> Result<consumer::PullConsumer, BusError> {
        let setup = |e: &dyn std::fmt::Display| BusError::Setup { what: stage.consumer(), message: e.to_string() };
        let stream = self.js.get_stream(WORK_STREAM).await.map_err(|e| setup(&e))?;
        stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(stage.consumer()),
                filter_subject: stage.subjects(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait,
                max_deliver: stage.max_deliver(),
                ..Default::default()
            })
            .await
            .map_err(|e| setup(&e))
    }

    /// Records a message that will never succeed, with the reason, where an operator can find it.
    /// A payload past the size of any real message is cut (and says so): it must fit the server's
    /// limit again with the headers added.
    pub async fn dead_letter(&self, stage: Stage, payload: &[u8], reason: &str, deliveries: i64) -> Result<(), BusError> {
        let subject = stage.dead_subject();
        let mut headers = HeaderMap::new();
        let reason: String = reason.replace(['\r', '\n'], " ").chars().take(2000).collect();
        headers.insert("Embedfleet-Reason", reason.as_str());
        headers.insert("Embedfleet-Deliveries", deliveries.to_string().as_str());
        let keep = payload.len().min(crate::messages::MAX_MESSAGE_BYTES);
        if keep < payload.len() {
            headers.insert("Embedfleet-Truncated-From", payload.len().to_string().as_str());
        }
        let payload = &payload[..keep];
        let err = |e: &dyn std::fmt::Display| BusError::Publish { subject: subject.clone(), message: e.to_string() };
        self.js
            .publish_with_headers(subject.clone(), headers, payload.to_vec().into())
            .await
            .map_err(|e| err(&e))?
            .await
            .map_err(|e| err(&e))?;
        Ok(())
    }
}

/// Where a run is, as far as workers need to know: whether to still work on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Generating,
    /// Every generate task is in; the dataset is being written.
    Assembling,
    Training,
    /// Every checkpoint is scored; the best is being copied and the report written.
    Finalizing,
    Done,
    Failed,
    Cancelled,
    /// The run's LLM budget is spent; the questions paid for are kept.
    BudgetReached,
}

impl RunState {
    pub const ALL: [RunState; 8] = [
        RunState::Generating,
        RunState::Assembling,
        RunState::Training,
        RunState::Finalizing,
        RunState::Done,
        RunState::Failed,
        RunState::Cancelled,
        RunState::BudgetReached,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(self, RunState::Done | RunState::Failed | RunState::Cancelled | RunState::BudgetReached)
    }

    pub fn name(self) -> &'static str {
        match self {
            RunState::Generating => "generating",
            RunState::Assembling => "assembling",
            RunState::Training => "training",
            RunState::Finalizing => "finalizing",
            RunState::Done => "done",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
            RunState::BudgetReached => "budget_reached",
        }
    }
}

impl Bus {
    /// The state in a run's record (None: no such run). Workers ask before starting a task, so a
    /// cancelled or failed run's queued work is skipped.
    pub async fn run_state(&self, run_id: &embedfleet_core::RunId) -> Result<Option<RunState>, BusError> {
        #[derive(serde::Deserialize)]
        struct StateOnly {
            state: RunState,
        }
        let entry = self.runs.entry(run_id.as_str()).await.map_err(|e| BusError::Kv { key: run_id.to_string(), message: e.to_string() })?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let s: StateOnly = serde_json::from_slice(&e.value)
                    .map_err(|e| BusError::Kv { key: run_id.to_string(), message: format!("unreadable run record: {e}") })?;
                Ok(Some(s.state))
            }
            _ => Ok(None),
        }
    }
}
