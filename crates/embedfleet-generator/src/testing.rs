//! A local OpenAI-compatible chat-completions server for tests and benchmarks (feature
//! `test-server`). It answers like the real API and injects the failures a real provider
//! produces: latency, 429 with `Retry-After`, 500s, hangs, malformed bodies, a wrong key, an
//! unknown model, and answers with preambles, duplicates and copied text. It records every
//! request with its arrival time, so tests measure rates where the provider would.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What the server does with the next requests. Fractions are probabilities per request, drawn
/// from a seeded generator, checked in the order listed.
#[derive(Debug, Clone)]
pub struct ServerBehavior {
    /// Added before every answer.
    pub latency: Duration,
    pub rate_limit_fraction: f64,
    /// Sent with each 429 as `Retry-After` (whole seconds, rounded up) and, when it has a
    /// fraction of a second, also as OpenAI's `retry-after-ms`.
    pub retry_after: Option<Duration>,
    pub server_error_fraction: f64,
    pub hang_fraction: f64,
    /// How long a hanging request waits before answering (longer than the client's timeout).
    pub hang_for: Duration,
    pub malformed_fraction: f64,
    /// `Some(key)`: answer 401 unless `Authorization: Bearer <key>`.
    pub require_key: Option<String>,
    /// `Some(models)`: answer 404 model_not_found for any other model.
    pub models: Option<Vec<String>>,
    /// Requests whose prompt contains this text always get a 500.
    pub fail_prompts_containing: Option<String>,
    pub style: AnswerStyle,
    /// Questions when the prompt does not say ("… N questions …").
    pub default_questions: usize,
    pub seed: u64,
}

impl Default for ServerBehavior {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            rate_limit_fraction: 0.0,
            retry_after: Some(Duration::from_secs(1)),
            server_error_fraction: 0.0,
            hang_fraction: 0.0,
            hang_for: Duration::from_secs(30),
            malformed_fraction: 0.0,
            require_key: None,
            models: None,
            fail_prompts_containing: None,
            style: AnswerStyle::default(),
            default_questions: 2,
            seed: 7,
        }
    }
}

/// How the answer's text is dressed, to exercise the filters.
#[derive(Debug, Clone, Default)]
pub struct AnswerStyle {
    /// "Here are N questions…" before and "I hope…" after.
    pub preamble: bool,
    /// Every question twice (the second in capitals).
    pub duplicate: bool,
    /// A "question" that is the chunk's first 15 words.
    pub copied: bool,
    /// One question every chunk gets, so all but the first chunk lose it to corpus dedup.
    pub shared_question: bool,
    /// Answer this many questions fewer than asked.
    pub missing: usize,
}

/// A fault for the next request, ahead of the random ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    RateLimited,
    ServerError,
    Hang,
    Malformed,
}

#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub at: Instant,
    pub model: String,
    pub prompt: String,
    /// The status sent (200 for hangs and malformed bodies).
    pub status: u16,
}

struct Shared {
    behavior: Mutex<ServerBehavior>,
    script: Mutex<VecDeque<Fault>>,
    records: Mutex<Vec<RequestRecord>>,
    rng: Mutex<rand::rngs::StdRng>,
    ids: AtomicU64,
}

pub struct TestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestServer {
    /// Serves on 127.0.0.1 at a free port until dropped.
    pub async fn start(behavior: ServerBehavior) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(behavior.seed)),
            behavior: Mutex::new(behavior),
            script: Mutex::new(VecDeque::new()),
            records: Mutex::new(Vec::new()),
            ids: AtomicU64::new(0),
        });
        let app = Router::new().route("/v1/chat/completions", post(chat)).route("/v1/models", get(models)).with_state(shared.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Self { addr, shared, shutdown: Some(tx) })
    }

    /// `http://127.0.0.1:<port>/v1`, what a client takes as its base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn update(&self, change: impl FnOnce(&mut ServerBehavior)) {
        change(&mut self.shared.behavior.lock().expect("not poisoned"));
    }

    /// The next requests get these faults, in order, before any random ones.
    pub fn script(&self, faults: impl IntoIterator<Item = Fault>) {
        self.shared.script.lock().expect("not poisoned").extend(faults);
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.records.lock().expect("not poisoned").clone()
    }

    pub fn request_count(&self) -> usize {
        self.shared.records.lock().expect("not poisoned").len()
    }

    pub fn request_times(&self) -> Vec<Instant> {
        let mut times: Vec<Instant> = self.requests().iter().map(|r| r.at).collect();
        times.sort();
        times
    }

    /// The most requests that arrived within any `window` (closed at both ends).
    pub fn max_in_window(&self, window: Duration) -> usize {
        let times = self.request_times();
        let mut best = 0;
        let mut start = 0;
        for end in 0..times.len() {
            while times[end].duration_since(times[start]) > window {
                start += 1;
            }
            best = best.max(end - start + 1);
        }
        best
    }

    pub fn clear_records(&self) {
        self.shared.records.lock().expect("not poisoned").clear();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

async fn models(State(shared): State<Arc<Shared>>) -> Response {
    let models = shared.behavior.lock().expect("not poisoned").models.clone().unwrap_or_default();
    let data: Vec<Value> = models.iter().map(|m| json!({"id": m, "object": "model", "owned_by": "test"})).collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

fn error(status: StatusCode, message: &str, kind: &str, code: &str) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    (status, axum::Json(body)).into_response()
}

enum Outcome {
    Unauthorized,
    UnknownModel,
    Fault(Fault),
    Answer,
}

async fn chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let arrived = Instant::now();
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}"), "invalid_request_error", "bad_json");
        }
    };
    let model = request["model"].as_str().unwrap_or_default().to_owned();
    let prompt = request["messages"]
        .as_array()
        .map(|ms| ms.iter().filter_map(|m| m["content"].as_str()).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default();
    let behavior = shared.behavior.lock().expect("not poisoned").clone();

    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let outcome = if behavior.require_key.as_ref().is_some_and(|k| authorization != format!("Bearer {k}")) {
        Outcome::Unauthorized
    } else if behavior.models.as_ref().is_some_and(|ms| !ms.contains(&model)) {
        Outcome::UnknownModel
    } else if let Some(fault) = shared.script.lock().expect("not poisoned").pop_front() {
        Outcome::Fault(fault)
    } else if behavior.fail_prompts_containing.as_ref().is_some_and(|m| prompt.contains(m.as_str())) {
        Outcome::Fault(Fault::ServerError)
    } else {
        let r: f64 = shared.rng.lock().expect("not poisoned").random();
        let mut edge = 0.0;
        let mut pick = None;
        for (fraction, fault) in [
            (behavior.rate_limit_fraction, Fault::RateLimited),
            (behavior.server_error_fraction, Fault::ServerError),
            (behavior.hang_fraction, Fault::Hang),
            (behavior.malformed_fraction, Fault::Malformed),
        ] {
            edge += fraction;
            if pick.is_none() && r < edge {
                pick = Some(fault);
            }
        }
        pick.map_or(Outcome::Answer, Outcome::Fault)
    };
    let status = match outcome {
        Outcome::Unauthorized => 401,
        Outcome::UnknownModel => 404,
        Outcome::Fault(Fault::RateLimited) => 429,
        Outcome::Fault(Fault::ServerError) => 500,
        _ => 200,
    };
    shared.records.lock().expect("not poisoned").push(RequestRecord { at: arrived, model: model.clone(), prompt: prompt.clone(), status });

    if !behavior.latency.is_zero() {
        tokio::time::sleep(behavior.latency).await;
    }
    match outcome {
        Outcome::Unauthorized => error(
            StatusCode::UNAUTHORIZED,
            "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            "invalid_api_key",
        ),
        Outcome::UnknownModel => error(
            StatusCode::NOT_FOUND,
            &format!("The model `{model}` does not exist or you do not have access to it."),
            "invalid_request_error",
            "model_not_found",
        ),
        Outcome::Fault(Fault::RateLimited) => {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "Rate limit reached for requests per min (RPM). Please try again later.",
                "requests",
                "rate_limit_exceeded",
            );
            if let Some(wait) = behavior.retry_after {
                let headers = response.headers_mut();
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                headers.insert("retry-after", HeaderValue::from(secs));
                if wait.subsec_nanos() > 0 {
                    headers.insert("retry-after-ms", HeaderValue::from(wait.as_millis() as u64));
                }
            }
            response
        }
        Outcome::Fault(Fault::ServerError) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server had an error while processing your request.",
            "server_error",
            "server_error",
        ),
        Outcome::Fault(Fault::Malformed) => (
            StatusCode::OK,
            [("content-type", "application/json")],
            r#"{"id":"chatcmpl-broken","object":"chat.completion","choices":[{"index":0,"mess"#,
        )
            .into_response(),
        Outcome::Fault(Fault::Hang) => {
            tokio::time::sleep(behavior.hang_for).await;
            completion(&shared, &model, &prompt, &behavior)
        }
        Outcome::Answer => completion(&shared, &model, &prompt, &behavior),
    }
}

fn completion(shared: &Shared, model: &str, prompt: &str, behavior: &ServerBehavior) -> Response {
    let content = questions_for(prompt, behavior);
    let prompt_tokens = prompt.chars().count().div_ceil(4);
    let completion_tokens = content.chars().count().div_ceil(4);
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let id = shared.ids.fetch_add(1, Ordering::Relaxed);
    axum::Json(json!({
        "id": format!("chatcmpl-test{id}"),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": null,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "logprobs": null,
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }))
    .into_response()
}

/// The context between the default prompt's dashed lines, else the whole prompt.
fn context_of(prompt: &str) -> &str {
    const RULE: &str = "---------------------\n";
    if let Some(start) = prompt.find(RULE) {
        let rest = &prompt[start + RULE.len()..];
        if let Some(end) = rest.find("\n---------------------") {
            return &rest[..end];
        }
    }
    prompt
}

/// "… 3 questions …" in the instructions (not in the context).
fn asked_count(prompt: &str, context: &str) -> Option<usize> {
    // Without dashed rules the context is the whole prompt; then search all of it.
    let instructions = if context.len() < prompt.len() { prompt.replacen(context, " ", 1) } else { prompt.to_owned() };
    let words: Vec<&str> = instructions.split_whitespace().collect();
    words.windows(2).find_map(|w| w[1].to_lowercase().starts_with("question").then(|| w[0].parse().ok()).flatten())
}

/// Questions unique to the context (a hash tag), about words of it, dressed per `style`.
fn questions_for(prompt: &str, behavior: &ServerBehavior) -> String {
    let style = &behavior.style;
    let context = context_of(prompt);
    let n = asked_count(prompt, context).unwrap_or(behavior.default_questions);
    let tag = &hex::encode(Sha256::digest(context.as_bytes()))[..8];
    let topics: Vec<&str> = context.split_whitespace().filter(|w| w.len() >= 4 && w.chars().all(char::is_alphabetic)).collect();
    let topic = |k: usize| if topics.is_empty() { "the text" } else { topics[(k * 7) % topics.len()] };
    let mut questions: Vec<String> = Vec::new();
    if style.shared_question {
        questions.push("What is the main topic of this passage?".to_owned());
    }
    questions.extend((0..n).map(|k| format!("What does passage {tag} say about {}, point {}?", topic(k), k + 1)));
    questions.truncate(n.saturating_sub(style.missing));

    let mut lines = Vec::new();
    if style.preamble {
        lines.push(format!("Here are {n} questions based on the context:"));
        lines.push(String::new());
    }
    for (i, q) in questions.iter().enumerate() {
        lines.push(format!("{}. {q}", i + 1));
        if style.duplicate {
            lines.push(format!("{}. {}", i + 1, q.to_uppercase()));
        }
    }
    if style.copied {
        let first: Vec<&str> = context.split_whitespace().take(15).collect();
        lines.push(format!("- {}?", first.join(" ")));
    }
    if style.preamble {
        lines.push(String::new());
        lines.push("I hope these questions help with your quiz.".to_owned());
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_follow_the_prompt() {
        let prompt = crate::PromptTemplate::default().render("alpha bravo charlie delta echo foxtrot", 3);
        let behavior = ServerBehavior::default();
        let answer = questions_for(&prompt, &behavior);
        assert_eq!(answer.lines().count(), 3, "{answer}");
        assert!(answer.starts_with("1. What does passage "));
        let shorter = ServerBehavior { style: AnswerStyle { missing: 1, ..Default::default() }, ..behavior };
        assert_eq!(questions_for(&prompt, &shorter).lines().count(), 2);
    }
}
