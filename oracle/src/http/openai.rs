//! The OpenAI-compatible API: `/v1/models`, `/v1/completions`,
//! `/v1/chat/completions`, with streaming (server-sent events ending in
//! `data: [DONE]`), `stop`, `seed`, `logprobs` and `usage` in OpenAI's shapes.
//! Options this server does not implement are refused with a 400 naming them,
//! never silently ignored.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use shared_model::sampling::SamplingParams;
use shared_model::session::{
    MAX_TOP_LOGPROBS, OutputToken, SamplingVerifier, Session, SessionConfig, SessionStats,
};
use shared_model::tokenizer::EncodeOptions;

use super::{ApiError, AppState};
use crate::chat::Message;
use crate::engine::{SessionEvent, SessionStream};
use crate::scheduler::{Finish, Priority, Request as GenerationRequest};

/// Most stop strings per request (OpenAI's limit).
const MAX_STOP_STRINGS: usize = 4;
/// Longest stop string, bytes.
const MAX_STOP_BYTES: usize = 256;

/// A JSON body, refused in OpenAI's error shape when it is not valid.
pub(super) struct ApiJson<T>(pub T);

impl<S: Send + Sync> FromRequest<S> for ApiJson<Value> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    code: Some("request_too_large"),
                    ..ApiError::invalid("the request body is too large", None)
                }
            } else {
                ApiError::invalid(format!("cannot read the request body: {e}"), None)
            }
        })?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::invalid(format!("the request body is not valid JSON: {e}"), None)
        })?;
        if !value.is_object() {
            return Err(ApiError::invalid(
                "the request body must be a JSON object",
                None,
            ));
        }
        Ok(ApiJson(value))
    }
}

/// Reads the fields of `T` from a request object; a wrong field is named.
fn fields<T: DeserializeOwned>(body: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::invalid(format!("invalid request: {inner}"), None)
        } else {
            ApiError::invalid(format!("`{path}`: {inner}"), Some(&path))
        }
    })
}

/// A string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// `/v1/completions`' prompt.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// Options both endpoints share.
#[derive(Debug, Deserialize)]
struct Common {
    model: Option<String>,
    max_tokens: Option<u64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    /// An extension (llama.cpp, vLLM): keep the k most likely tokens.
    top_k: Option<u32>,
    seed: Option<i64>,
    stop: Option<OneOrMany>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    n: Option<u32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    logit_bias: Option<HashMap<String, f32>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct CompletionRequest {
    prompt: Prompt,
    logprobs: Option<u32>,
    echo: Option<bool>,
    best_of: Option<u32>,
    suffix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ChatRequest {
    messages: Vec<ChatMessage>,
    max_completion_tokens: Option<u64>,
    logprobs: Option<bool>,
    top_logprobs: Option<u32>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
    functions: Option<Value>,
    response_format: Option<Value>,
}

/// Which endpoint a generation answers, and how its logprobs look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Completion,
    Chat,
}

/// Everything needed to answer one generation request.
struct Job {
    endpoint: Endpoint,
    id: String,
    created: u64,
    model: String,
    prompt_tokens: usize,
    /// Whether to report logprobs.
    logprobs: bool,
    /// Alternatives per token the client asked for (the session may record
    /// more, for golden tickets).
    top_n: usize,
    include_usage: bool,
    /// Characters of completion text so far (legacy `text_offset`).
    text_offset: usize,
    state: Arc<AppState>,
}

pub(super) async fn list_models(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(json!({"object": "list", "data": [model_object(&state)]})).into_response()
}

pub(super) async fn get_model(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    check_model(&state, Some(&model))?;
    Ok(axum::Json(model_object(&state)).into_response())
}

pub(super) async fn not_found(request: Request) -> ApiError {
    ApiError::no_route(request.uri().path())
}

fn model_object(state: &AppState) -> Value {
    json!({
        "id": state.info.id,
        "object": "model",
        "created": state.info.created,
        "owned_by": "shard",
        "max_context": state.info.max_context,
    })
}

fn check_model(state: &AppState, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        None | Some("default" | "") => Ok(()),
        Some(m) if m == state.info.id => Ok(()),
        Some(m) => Err(ApiError::model_not_found(m, &state.info.id)),
    }
}

pub(super) async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let req: CompletionRequest = fields(&body)?;
    let common: Common = fields(&body)?;
    if req.echo == Some(true) {
        return Err(ApiError::unsupported("echo", "the prompt is not repeated"));
    }
    if req.best_of.is_some_and(|b| b != 1) {
        return Err(ApiError::unsupported(
            "best_of",
            "one completion per request",
        ));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::unsupported("suffix", "no fill-in-the-middle"));
    }
    check_alternatives(req.logprobs, "logprobs")?;
    let prompt = match req.prompt {
        Prompt::Text(text) => tokenize(&state, text).await?,
        Prompt::Texts(mut texts) if texts.len() == 1 => {
            tokenize(&state, texts.pop().unwrap_or_default()).await?
        }
        Prompt::Tokens(ids) => {
            let vocab = state.tokenizer.vocab_size();
            if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
                return Err(ApiError::invalid(
                    format!("token id {bad} is outside the vocabulary of {vocab}"),
                    Some("prompt"),
                ));
            }
            ids
        }
        Prompt::Texts(prompts) => return Err(one_prompt(prompts.len())),
        Prompt::TokenLists(prompts) => return Err(one_prompt(prompts.len())),
    };
    let top = req.logprobs.map(|n| n as usize);
    generate(
        state,
        &headers,
        Endpoint::Completion,
        prompt,
        "prompt",
        common,
        top,
    )
    .await
}

/// Tokenizes `text` as a prompt, off the async workers (a prompt may be up to
/// the body limit long).
async fn tokenize(state: &Arc<AppState>, text: String) -> Result<Vec<u32>, ApiError> {
    let worker = state.clone();
    tokio::task::spawn_blocking(move || worker.tokenizer.encode(&text, EncodeOptions::PROMPT))
        .await
        .map_err(|e| ApiError::internal(format!("tokenizing failed: {e}")))
}

/// How many alternatives per token may be asked for (`logprobs`, `top_logprobs`).
fn check_alternatives(n: Option<u32>, param: &str) -> Result<(), ApiError> {
    match n {
        Some(n) if n as usize > MAX_TOP_LOGPROBS => Err(ApiError::invalid(
            format!("`{param}` must be between 0 and {MAX_TOP_LOGPROBS}, got {n}"),
            Some(param),
        )),
        _ => Ok(()),
    }
}

fn one_prompt(given: usize) -> ApiError {
    ApiError::unsupported(
        "prompt",
        &format!("one prompt per request, {given} were sent"),
    )
}

pub(super) async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let req: ChatRequest = fields(&body)?;
    let common: Common = fields(&body)?;
    for (name, value) in [
        ("tools", &req.tools),
        ("tool_choice", &req.tool_choice),
        ("functions", &req.functions),
    ] {
        if value.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(ApiError::unsupported(name, "no tool calling"));
        }
    }
    if let Some(format) = &req.response_format
        && format.get("type").and_then(Value::as_str) != Some("text")
    {
        return Err(ApiError::unsupported("response_format", "only plain text"));
    }
    check_alternatives(req.top_logprobs, "top_logprobs")?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            "`messages` must not be empty",
            Some("messages"),
        ));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::invalid(
                    format!("role `{other}` is not supported (system, user, assistant)"),
                    Some(&format!("messages[{i}].role")),
                ));
            }
        };
        let content = match m.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for (j, part) in parts.into_iter().enumerate() {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        (kind, _) => {
                            return Err(ApiError::unsupported(
                                &format!("messages[{i}].content[{j}]"),
                                &format!("content of type `{kind}` (only text)"),
                            ));
                        }
                    }
                }
                text
            }
        };
        messages.push(Message {
            role: role.to_owned(),
            content,
        });
    }
    // Rendering and tokenizing a long conversation is CPU work: off the async workers.
    let worker = state.clone();
    let prompt = tokio::task::spawn_blocking(move || {
        let text = worker
            .chat
            .render(&messages)
            .map_err(|e| ApiError::invalid(e.to_string(), Some("messages")))?;
        Ok::<_, ApiError>(worker.tokenizer.encode(&text, EncodeOptions::PROMPT))
    })
    .await
    .map_err(|e| ApiError::internal(format!("tokenizing failed: {e}")))??;
    let top = match (req.logprobs, req.top_logprobs) {
        (Some(true), n) => Some(n.unwrap_or(0) as usize),
        (_, Some(_)) => {
            return Err(ApiError::invalid(
                "`top_logprobs` needs `logprobs: true`",
                Some("top_logprobs"),
            ));
        }
        _ => None,
    };
    // Chat's newer name for the limit wins over the old one.
    let mut common = common;
    common.max_tokens = req.max_completion_tokens.or(common.max_tokens);
    generate(
        state,
        &headers,
        Endpoint::Chat,
        prompt,
        "messages",
        common,
        top,
    )
    .await
}

/// Validates the shared options, starts the session and answers, streamed or whole.
async fn generate(
    state: Arc<AppState>,
    headers: &HeaderMap,
    endpoint: Endpoint,
    prompt: Vec<u32>,
    prompt_param: &str,
    common: Common,
    top_logprobs: Option<usize>,
) -> Result<Response, ApiError> {
    check_model(&state, common.model.as_deref())?;
    let payer = super::credit_payer(&state, headers).await?;
    let (params, stops) = sampling(&common, state.tokenizer.vocab_size())?;
    let max_context = state.info.max_context;
    if prompt.is_empty() {
        return Err(ApiError::invalid("the prompt is empty", Some(prompt_param)));
    }
    if prompt.len() >= max_context {
        return Err(ApiError::invalid_code(
            format!(
                "the prompt has {} tokens; this server's context is {max_context} tokens, \
                 with room for at least one more",
                prompt.len()
            ),
            prompt_param,
            "context_length_exceeded",
        ));
    }
    let room = max_context - prompt.len();
    let max_new_tokens = match common.max_tokens {
        None => room,
        Some(0) => {
            return Err(ApiError::invalid(
                "`max_tokens` must be at least 1",
                Some("max_tokens"),
            ));
        }
        Some(n) if n as usize > room => {
            return Err(ApiError::invalid_code(
                format!(
                    "`max_tokens` is {n}, but the prompt's {} tokens leave room for {room} \
                     in this server's context of {max_context}",
                    prompt.len()
                ),
                "max_tokens",
                "context_length_exceeded",
            ));
        }
        Some(n) => n as usize,
    };
    let session = Session::new(
        prompt,
        SessionConfig {
            params,
            verifier: SamplingVerifier::MatchTarget,
            max_new_tokens,
            stop_tokens: state.tokenizer.end_of_generation_tokens(),
            max_context,
            top_logprobs: crate::engine::alternatives_to_record(&params, top_logprobs),
        },
    )
    .map_err(|e| ApiError::invalid(e.to_string(), Some(prompt_param)))?;
    let prompt_tokens = session.context().len();
    let stream = state
        .engine
        .submit(
            GenerationRequest {
                session,
                stop_strings: stops,
                priority: if payer.is_some() {
                    Priority::Contributor
                } else {
                    Priority::Normal
                },
            },
            payer,
        )
        .await?;
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let prefix = match endpoint {
        Endpoint::Completion => "cmpl",
        Endpoint::Chat => "chatcmpl",
    };
    let job = Job {
        endpoint,
        id: format!("{prefix}-{:x}{:06x}", state.info.created, stream.id()),
        created,
        model: state.info.id.clone(),
        prompt_tokens,
        logprobs: top_logprobs.is_some(),
        top_n: top_logprobs.unwrap_or(0),
        include_usage: common
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        text_offset: 0,
        state,
    };
    let mut response = if common.stream == Some(true) {
        stream_response(job, stream)
    } else {
        whole_response(job, stream).await?
    };
    response.headers_mut().insert(
        super::PRIORITY_HEADER,
        HeaderValue::from_static(if payer.is_some() {
            "contributor"
        } else {
            "normal"
        }),
    );
    Ok(response)
}

/// Sampling settings and stop strings from the shared options.
fn sampling(c: &Common, vocab: usize) -> Result<(SamplingParams, Vec<String>), ApiError> {
    if c.n.is_some_and(|n| n != 1) {
        return Err(ApiError::unsupported("n", "one choice per request"));
    }
    for (name, value) in [
        ("presence_penalty", c.presence_penalty),
        ("frequency_penalty", c.frequency_penalty),
    ] {
        if value.is_some_and(|v| v != 0.0) {
            return Err(ApiError::unsupported(
                name,
                "penalties would change the verified output",
            ));
        }
    }
    if c.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
        return Err(ApiError::unsupported("logit_bias", "no logit biases"));
    }
    let temperature = c.temperature.unwrap_or(1.0);
    if !temperature.is_finite() || !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            format!("`temperature` must be between 0 and 2, got {temperature}"),
            Some("temperature"),
        ));
    }
    let top_p = c.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            format!("`top_p` must be in (0, 1], got {top_p}"),
            Some("top_p"),
        ));
    }
    let top_k = c.top_k.unwrap_or(0) as usize;
    if top_k > vocab {
        return Err(ApiError::invalid(
            format!("`top_k` must be at most the vocabulary size {vocab}"),
            Some("top_k"),
        ));
    }
    let seed = match c.seed {
        Some(s) => s as u64,
        // Unseeded sampling differs run to run, as users expect.
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    };
    let stops = match &c.stop {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s.clone()],
        Some(OneOrMany::Many(v)) => v.clone(),
    };
    if stops.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid(
            format!("at most {MAX_STOP_STRINGS} stop strings"),
            Some("stop"),
        ));
    }
    if stops
        .iter()
        .any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
    {
        return Err(ApiError::invalid(
            format!("stop strings must have 1 to {MAX_STOP_BYTES} bytes"),
            Some("stop"),
        ));
    }
    Ok((
        SamplingParams {
            temperature,
            top_k,
            top_p,
            seed,
        },
        stops,
    ))
}

/// The error a session's unnatural end becomes.
fn finish_error(finish: &Finish) -> Option<ApiError> {
    match finish {
        Finish::Stopped(_) | Finish::StopString => None,
        Finish::Cancelled => Some(ApiError::unavailable(
            "the request was cancelled: the server is shutting down",
        )),
        Finish::Failed(e) => Some(ApiError::internal(format!("generation failed: {e}"))),
    }
}

async fn whole_response(mut job: Job, mut stream: SessionStream) -> Result<Response, ApiError> {
    let mut text = String::new();
    let mut tokens = Vec::new();
    loop {
        match stream.next().await {
            Some(SessionEvent::Delta { tokens: t, text: x }) => {
                text.push_str(&x);
                tokens.extend(t);
            }
            Some(SessionEvent::Finished { finish, stats }) => {
                if let Some(e) = finish_error(&finish) {
                    return Err(e);
                }
                let logprobs = job.logprobs(&tokens);
                let choice = match job.endpoint {
                    Endpoint::Completion => json!({
                        "index": 0,
                        "text": text,
                        "logprobs": logprobs,
                        "finish_reason": finish.reason(),
                    }),
                    Endpoint::Chat => json!({
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": logprobs,
                        "finish_reason": finish.reason(),
                    }),
                };
                let object = match job.endpoint {
                    Endpoint::Completion => "text_completion",
                    Endpoint::Chat => "chat.completion",
                };
                return Ok(axum::Json(json!({
                    "id": job.id,
                    "object": object,
                    "created": job.created,
                    "model": job.model,
                    "choices": [choice],
                    "usage": job.usage(&stats),
                }))
                .into_response());
            }
            None => return Err(ApiError::unavailable("the engine stopped")),
        }
    }
}

/// What the SSE stream still has to do.
struct Streaming {
    job: Job,
    session: SessionStream,
    queue: VecDeque<Event>,
    done: bool,
}

fn stream_response(job: Job, session: SessionStream) -> Response {
    let mut queue = VecDeque::new();
    if job.endpoint == Endpoint::Chat {
        let first = job.chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
            Value::Null,
        );
        queue.push_back(data(&first));
    }
    let state = Streaming {
        job,
        session,
        queue,
        done: false,
    };
    let events = stream::unfold(state, |mut s| async move {
        loop {
            if let Some(event) = s.queue.pop_front() {
                return Some((Ok::<Event, Infallible>(event), s));
            }
            if s.done {
                return None;
            }
            match s.session.next().await {
                Some(SessionEvent::Delta { tokens, text }) => {
                    if text.is_empty() && tokens.is_empty() {
                        continue;
                    }
                    let logprobs = s.job.logprobs(&tokens);
                    let mut chunk = s.job.content_chunk(&text, logprobs);
                    chunk["shard"] = s.job.shard_extension(&tokens);
                    s.queue.push_back(data(&chunk));
                }
                Some(SessionEvent::Finished { finish, stats }) => {
                    if let Some(e) = finish_error(&finish) {
                        s.queue.push_back(data(&e.body()));
                    } else {
                        let last = s.job.finish_chunk(finish.reason());
                        s.queue.push_back(data(&last));
                        if s.job.include_usage {
                            s.queue.push_back(data(&s.job.usage_chunk(&stats)));
                        }
                    }
                    s.queue.push_back(Event::default().data("[DONE]"));
                    s.done = true;
                }
                None => {
                    let e = ApiError::unavailable("the engine stopped");
                    s.queue.push_back(data(&e.body()));
                    s.queue.push_back(Event::default().data("[DONE]"));
                    s.done = true;
                }
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn data(value: &Value) -> Event {
    Event::default().data(value.to_string())
}

impl Job {
    fn object(&self) -> &'static str {
        match self.endpoint {
            Endpoint::Completion => "text_completion",
            Endpoint::Chat => "chat.completion.chunk",
        }
    }

    /// A streamed chunk with one choice.
    fn chunk(&self, delta: Value, logprobs: Value, finish_reason: Value) -> Value {
        let choice = match self.endpoint {
            Endpoint::Completion => json!({
                "index": 0,
                "text": delta.get("content").and_then(Value::as_str).unwrap_or(""),
                "logprobs": logprobs,
                "finish_reason": finish_reason,
            }),
            Endpoint::Chat => json!({
                "index": 0,
                "delta": delta,
                "logprobs": logprobs,
                "finish_reason": finish_reason,
            }),
        };
        let mut chunk = json!({
            "id": self.id,
            "object": self.object(),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    fn content_chunk(&self, text: &str, logprobs: Value) -> Value {
        self.chunk(json!({"content": text}), logprobs, Value::Null)
    }

    /// Shard's addition to a streamed content chunk: the text of each token
    /// and whether a draft proposed it, so the web console can mark what scouts
    /// drafted. OpenAI clients ignore the extra field.
    fn shard_extension(&self, tokens: &[OutputToken]) -> Value {
        let tokenizer = &self.state.tokenizer;
        let pieces: Vec<String> = tokens
            .iter()
            .map(|t| String::from_utf8_lossy(&tokenizer.token_bytes(t.token, false)).into_owned())
            .collect();
        let drafted: Vec<bool> = tokens.iter().map(|t| t.drafted).collect();
        json!({"pieces": pieces, "drafted": drafted})
    }

    fn finish_chunk(&self, reason: &str) -> Value {
        let delta = match self.endpoint {
            Endpoint::Completion => json!({"content": ""}),
            Endpoint::Chat => json!({}),
        };
        self.chunk(delta, Value::Null, json!(reason))
    }

    fn usage(&self, stats: &SessionStats) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": stats.generated_tokens,
            "total_tokens": self.prompt_tokens + stats.generated_tokens,
        })
    }

    fn usage_chunk(&self, stats: &SessionStats) -> Value {
        json!({
            "id": self.id,
            "object": self.object(),
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": self.usage(stats),
        })
    }

    /// The `logprobs` object of `tokens` in this endpoint's shape (null when not asked).
    fn logprobs(&mut self, tokens: &[OutputToken]) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        let tokenizer = &self.state.tokenizer;
        let piece = |id: u32| tokenizer.token_bytes(id, false);
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        match self.endpoint {
            Endpoint::Chat => {
                let content: Vec<Value> = tokens
                    .iter()
                    .map(|t| {
                        let bytes = piece(t.token);
                        let top: Vec<Value> = t
                            .top
                            .iter()
                            .take(self.top_n)
                            .map(|a| {
                                let b = piece(a.token);
                                json!({"token": text(&b), "logprob": a.logprob, "bytes": b})
                            })
                            .collect();
                        json!({
                            "token": text(&bytes),
                            "logprob": t.logprob,
                            "bytes": bytes,
                            "top_logprobs": top,
                        })
                    })
                    .collect();
                json!({"content": content})
            }
            Endpoint::Completion => {
                let mut strings = Vec::new();
                let mut lps = Vec::new();
                let mut tops = Vec::new();
                let mut offsets = Vec::new();
                for t in tokens {
                    let s = text(&piece(t.token));
                    offsets.push(self.text_offset);
                    self.text_offset += s.chars().count();
                    strings.push(s);
                    lps.push(t.logprob);
                    let top: serde_json::Map<String, Value> = t
                        .top
                        .iter()
                        .take(self.top_n)
                        .map(|a| (text(&piece(a.token)), json!(a.logprob)))
                        .collect();
                    tops.push(Value::Object(top));
                }
                json!({
                    "tokens": strings,
                    "token_logprobs": lps,
                    "top_logprobs": tops,
                    "text_offset": offsets,
                })
            }
        }
    }
}
